"""Slides: one slide's attention heatmap (re-painted live), its prediction and its most attended tiles."""

from __future__ import annotations

import math

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
c1, c2 = st.columns(2)
model = c1.selectbox("Model", models, help=f"Attention is always from `{hm_model}` (params heatmaps.model); "
                                          "other models change the prediction shown.")
slide = c2.selectbox("Slide", index["slide_id"].tolist())
row = index[index["slide_id"] == slide].iloc[0]
folder = da.heatmap_dir(project, slide)

render = project.get("heatmaps.render")  # every key is there: params.yaml's defaults fill the gaps
default_cmap = str(render["cmap"])
cmaps = [c for c in dict.fromkeys([default_cmap, *CMAPS]) if c in matplotlib.colormaps]
k1, k2, k3, k4 = st.columns(4)
alpha = k1.slider("Opacity", 0.0, 1.0, float(render["alpha"]), 0.05)
cmap = k2.selectbox("Colormap", cmaps, index=cmaps.index(default_cmap) if default_cmap in cmaps else 0)
blur = k3.slider("Blur (px)", 0.0, 8.0, float(render["blur_sigma_px"] or 0.0), 0.5)
show_contours = k4.toggle("Tissue contours", value=False)


@st.cache_data(ttl=da.TTL, show_spinner="Painting heatmap...", max_entries=32)
def overlay(folder: str, tissue_path: str, dims: tuple[int, int] | None, thumb_ds: float | None, stamp: tuple,
            cmap: str, alpha: float, blur: float, contours: bool) -> tuple:
    """Heatmap image plus a caption; ``stamp`` (file mtimes) invalidates it when the stage re-runs."""
    from pathlib import Path

    thumb = da.read_rgb(Path(folder) / "thumbnail.png")
    fc = da.read_json(Path(folder) / "tiles.geojson")
    if thumb is None or fc is None:
        return None, ""
    tiles = hv.tile_scores_from_geojson(fc, "attention" if "attention" in hv.measurement_names(fc)
                                        else (hv.measurement_names(fc) or ["attention"])[0])
    ds, slide_dims, how = hv.resolve_geometry(thumb.shape[:2], slide_dims=dims, thumb_downsample=thumb_ds,
                                              tiles=tiles)
    tissue = da.read_json(Path(tissue_path))
    img = hv.composite(thumb, ds, tiles, slide_dims, cmap=cmap, alpha=alpha, blur_sigma_px=blur,
                       tissue_fc=tissue, contours=contours)
    note = f"{len(tiles)} tiles · {ds:.2f} level-0 px per px ({how})"
    if contours and tissue is None:
        note += " · no tissue contours saved for this slide"
    return img, note


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


dims = None
if _num(row.get("slide_width")) and _num(row.get("slide_height")):
    dims = (int(row["slide_width"]), int(row["slide_height"]))
dims = dims or da.tile_store_dims(project, slide)
tissue_path = project.path("tile.tissue_dir") / f"{slide}.geojson"
stamp = tuple(da.modified(p) for p in (folder / "thumbnail.png", folder / "tiles.geojson", tissue_path))
img, note = overlay(str(folder), str(tissue_path), dims, _num(row.get("thumb_downsample")), stamp,
                    cmap, round(alpha, 2), blur, show_contours)

left, right = st.columns([3, 2])
with left:
    if img is not None:
        st.image(img, caption=f"{slide}: {hm_model} attention (percentiles within the slide), opacity {alpha:.2f}, "
                              f"{cmap}", width="stretch")
        st.caption(note)
    elif (folder / "heatmap.png").exists():
        st.info("The thumbnail or tiles.geojson is missing, so the heatmap cannot be re-painted; "
                "showing the stage's image.")
        st.image(str(folder / "heatmap.png"), width="stretch")
    else:
        st.info(f"No heatmap files for `{slide}` in `{folder}`.")

# ---- prediction --------------------------------------------------------------------------------------
classes = project.classes


def prediction_for(model: str) -> dict | None:
    """True/predicted class and probabilities of ``slide`` for ``model`` (its first test fold)."""
    if model == hm_model:
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
    facts = {"tiles": row.get("n_tiles"), "localisation AUROC": _num(row.get("localisation_auroc"))}
    st.caption(" · ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                          for k, v in facts.items() if v is not None and not pd.isna(v)))
    geo = folder / "tiles.geojson"
    if geo.exists():
        st.download_button("tiles.geojson (QuPath)", geo.read_bytes,  # read on click: can be large file_name=f"{slide}_tiles.geojson",
                           mime="application/geo+json")

# ---- top tiles ---------------------------------------------------------------------------------------
st.subheader("Most attended tiles")
tops = [t for t in hv.top_tiles(folder / "top_tiles") if t["kind"] == "top"]
if not tops:
    st.info("No top tiles saved for this slide.")
else:
    st.image([str(t["path"]) for t in tops],
             caption=[f"#{t['rank']} · score {t['score']:+.3f} · ({t['x']}, {t['y']})" for t in tops], width=180)
