"""Slides: one slide's score layers (re-painted live from the stage's record.json), its prediction and top tiles."""

from __future__ import annotations

import matplotlib
import pandas as pd
import streamlit as st

from dashboard import data_access as da
from dashboard import heatmap_view as hv

CMAPS = ["jet", "turbo", "viridis", "inferno", "magma", "plasma", "coolwarm", "RdYlBu_r"]

st.title("Slides")
project = da.get_project()
index = da.heatmap_index(project)
if index is None:
    st.info(f"No heatmaps yet (`{project.get('heatmaps.out_dir')}/index.csv`). Run `dvc repro` "
            "(stage `heatmaps`).")
    st.stop()

hm_model = project.heatmap_model
models = [hm_model] + [m for m in da.trained_models(project) if m != hm_model]
labels = da.slide_choice_labels(index)
c1, c2 = st.columns(2)
model = c1.selectbox("Model", models, key="model",
                     help=f"The heatmap is always from `{hm_model}` (params heatmaps.model); other models change "
                          "only the prediction shown.")
slide = c2.selectbox("Slide", list(labels), format_func=labels.get, key="slide")
row = index[index["slide_id"] == slide].iloc[0]
folder = da.heatmap_dir(project, slide)
try:
    record, record_problem = da.slide_record(project, slide), None
except ValueError as e:
    record, record_problem = None, str(e)
family = record.family if record is not None else hm_model


@st.cache_data(ttl=da.TTL, show_spinner="Painting heatmap...", max_entries=32)
def overlay(folder: str, stamp: tuple, layer_name: str, cmap: str, alpha: float, blur: float, contours: bool,
            _record: hv.SlideRecord, _tissue_path: str) -> tuple:
    """Heatmap image plus a caption; ``stamp`` (file mtimes) invalidates it when the stage re-runs."""
    from pathlib import Path

    thumb = da.read_rgb(Path(folder) / "thumbnail.png")
    if thumb is None:
        return None, ""
    layer = _record.layer(layer_name)
    tissue = da.read_json(Path(_tissue_path))
    img = hv.composite(thumb, _record, layer, cmap=cmap, alpha=alpha, blur_sigma_px=blur, tissue_fc=tissue,
                       contours=contours)
    note = f"{len(layer.values)} tiles · {_record.thumb_downsample:.2f} level-0 px per thumbnail px"
    if contours and tissue is None:
        note += " · no tissue contours saved for this slide"
    return img, note


left, right = st.columns([3, 2])
with left:
    if record is None or not record.layers:
        why = record_problem or ("it has no score layers" if record is not None else "it has no `record.json`")
        st.info(f"`{folder}` cannot be re-painted: {why}. It comes from an older run of the heatmaps stage; "
                "re-run `dvc repro heatmaps` to get its score layers. Showing the stage's image if there is one.")
        if (folder / "heatmap.png").exists():
            st.image(str(folder / "heatmap.png"), width="stretch")
    else:
        names = [la.name for la in record.layers]
        layer = record.layer(st.selectbox("Score layer", names, key="layer") if len(names) > 1 else names[0])
        render = project.get("heatmaps.render")  # every key is there: params.yaml's defaults fill the gaps
        default_cmap = str(render["cmap"])
        cmaps = [c for c in dict.fromkeys([default_cmap, *CMAPS]) if c in matplotlib.colormaps]
        k1, k2, k3, k4 = st.columns(4)
        alpha = k1.slider("Opacity", 0.0, 1.0, float(render["alpha"]), 0.05, key="alpha")
        cmap = k2.selectbox("Colormap", cmaps, index=cmaps.index(default_cmap) if default_cmap in cmaps else 0,
                            key="cmap")
        blur = k3.slider("Blur (px)", 0.0, 8.0, float(render["blur_sigma_px"] or 0.0), 0.5, key="blur")
        show_contours = k4.toggle("Tissue contours", value=False, key="contours")
        tissue_path = project.path("tile.tissue_dir") / f"{slide}.geojson"
        stamp = da.mtimes(folder / "record.json", folder / "thumbnail.png", tissue_path)
        img, note = overlay(str(folder), stamp, layer.name, cmap, round(alpha, 2), blur, show_contours,
                            record, str(tissue_path))
        if img is None:
            st.info("The thumbnail is missing, so the heatmap cannot be re-painted; showing the stage's image "
                    "if there is one.")
            if (folder / "heatmap.png").exists():
                st.image(str(folder / "heatmap.png"), width="stretch")
        else:
            st.image(img, width="stretch",
                     caption=f"{slide}: heatmap of {family} (params heatmaps.model), fold {record.fold} model, "
                             f"layer {layer.name}: opacity {alpha:.2f}, {cmap}")
            st.caption(f"Layer `{layer.name}`: {hv.layer_summary(layer)}. {hv.colour_meaning(layer)}."
                       + (f" {layer.description}" if layer.description else ""))
            if model != family:
                st.caption(f"The heatmap is from `{family}`, not `{model}`: the model choice changes only the "
                           "prediction on the right.")
            st.caption(note)

# ---- prediction --------------------------------------------------------------------------------------
classes = project.classes


def prediction_for(model: str) -> dict | None:
    """True/predicted class and probabilities of ``slide`` for ``model`` (its first test fold)."""
    if model == family:
        probs = {c[len("prob_"):]: float(row[c]) for c in index.columns if c.startswith("prob_")}
        return {"label": str(row["label"]), "pred": str(row["pred"]), "fold": row.get("fold"), "probs": probs}
    preds = da.train_predictions(project, model)
    if preds is None:
        return None
    hit = preds[(preds["slide_id"].astype(str) == slide) & (preds["split"] == "test")].sort_values("fold")
    if hit.empty:
        return None
    r = hit.iloc[0]
    names = [c[len("prob_"):] for c in preds.columns if c.startswith("prob_")]
    probs = {n: float(r[f"prob_{n}"]) for n in names}

    def name(i) -> str:
        return names[int(i)] if str(i).lstrip("-").isdigit() and 0 <= int(i) < len(names) else str(i)

    pred = r["pred"] if "pred" in r else max(probs, key=probs.get)
    return {"label": name(r["label"]), "pred": name(pred), "fold": r["fold"], "probs": probs}


with right:
    p = prediction_for(model)
    if p is None:
        st.info(f"No test prediction for `{slide}` from `{model}` (data/train/{model}/predictions.csv).")
    else:
        m1, m2 = st.columns(2)
        m1.metric("True label", p["label"])
        m2.metric("Predicted", p["pred"])
        if p["label"] == p["pred"]:
            st.success(f"Correct ({model}, test fold {p['fold']})")
        else:
            st.error(f"Misclassified ({model}, test fold {p['fold']})")
        order = [c for c in classes if c in p["probs"]] + [c for c in p["probs"] if c not in classes]
        st.dataframe(pd.DataFrame({"class": order, "probability": [p["probs"][c] for c in order]}),
                     hide_index=True, column_config={"probability": st.column_config.ProgressColumn(
                         "probability", min_value=0.0, max_value=1.0, format="%.3f")})
    facts = {"tiles": row.get("n_tiles"), "localisation AUROC": row.get("localisation_auroc")}
    st.caption(" · ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                          for k, v in facts.items() if v is not None and not pd.isna(v)))
    geo = folder / "tiles.geojson"
    if geo.exists():
        st.download_button("tiles.geojson (QuPath)", geo.read_bytes,  # read on click: can be large
                           file_name=f"{slide}_tiles.geojson", mime="application/geo+json")

# ---- top tiles ---------------------------------------------------------------------------------------
if record is not None and record.primary is not None:
    st.subheader(f"Top tiles by {record.primary.name}")
    saved = [(t, hv.top_tile_image(folder / "top_tiles", slide, t)) for t in record.saved_top_tiles]
    shown = [(t, p) for t, p in saved if p is not None]
    if shown:
        st.image([str(p) for _, p in shown],
                 caption=[f"#{t['rank']} · score {t['score']:+.3f} · ({t['x']}, {t['y']})" for t, _ in shown],
                 width=180)
    missing = [t for t, p in saved if p is None]
    if missing:
        st.caption("Tiles of the record without a saved image:")
        st.dataframe(pd.DataFrame(missing)[["rank", "x", "y", "score"]], hide_index=True)
