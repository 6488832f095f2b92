"""Slides: a worklist of the test slides, a zoomable viewer with score-layer overlays, heatmaps side by side,
the prediction and top tiles. Every number names the exact model (family + the fold model that tested the slide).
"""

from __future__ import annotations

import cv2
import matplotlib
import pandas as pd
import streamlit as st

from dashboard import data_access as da
from dashboard import heatmap_view as hv

CMAPS = ["viridis", "magma", "inferno", "plasma", "cividis", "turbo", "jet", "coolwarm", "RdYlBu_r"]
NONE = "(none)"

st.title("Slides")
project = da.get_project()
index = da.heatmap_index(project)
if index is None:
    st.info(f"No heatmaps yet (`{project.get('heatmaps.out_dir')}/index.csv`). Run `dvc repro` "
            "(stage `heatmaps`).")
    st.stop()

hm_model = project.heatmap_model
models = [hm_model] + [m for m in da.trained_models(project) if m != hm_model]
classes = project.classes

# ---- worklist ------------------------------------------------------------------------------------------
st.subheader("Worklist")
w1, w2, w3 = st.columns([2, 1, 2])
model = w1.selectbox("Model", models, key="model",
                     help="Predictions, heatmap and top tiles of this family; each slide is scored by the fold "
                          "model that held it out (its test fold).")
wrong_only = w2.toggle("Misclassified only", value=False, key="misclassified")
table = da.worklist(project, model, index)
present = [c for c in classes if c in set(table["true label"])] + sorted(set(table["true label"]) - set(classes))
picked_classes = w3.multiselect("True class", present, default=[], key="true_class",
                                placeholder="all classes")
shown = table[~table["correct"]] if wrong_only else table
if picked_classes:
    shown = shown[shown["true label"].isin(picked_classes)]
st.dataframe(shown, hide_index=True, key="worklist", column_config={
    "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="%.3f",
                                                  help="probability of the predicted class"),
    "correct": st.column_config.CheckboxColumn("correct"),
    "model": st.column_config.TextColumn("model", help="family and the fold model that tested the slide")})
st.caption(f"{len(shown)} of {len(table)} slides · predictions of `{model}` on its test folds "
           f"(data/train/{model}/predictions.csv)")
if table.empty:
    st.info(f"`{model}` has no test predictions for these slides (data/train/{model}/predictions.csv).")
    st.stop()
if shown.empty:
    st.info("No slide matches the filters.")
    st.stop()
labels = da.slide_choice_labels(shown)
slide = st.selectbox("Slide", list(labels), format_func=labels.get, key="slide")
row = shown[shown["slide"] == slide].iloc[0]
folder = da.heatmap_dir(project, slide)
with_records = da.families_with_records(project, slide, models)


def load_record(family: str) -> tuple[hv.SlideRecord | None, str | None]:
    try:
        return da.family_record(project, slide, family), None
    except ValueError as e:
        return None, str(e)


record, record_problem = load_record(model)
primary_record, _ = load_record(hm_model)

# ---- render controls --------------------------------------------------------------------------------
render = project.get("heatmaps.render")  # every key is there: params.yaml's defaults fill the gaps
default_cmap = str(render["cmap"])
cmaps = [c for c in dict.fromkeys([default_cmap, *CMAPS]) if c in matplotlib.colormaps]
others = [m for m in with_records if m != model]
compare, alpha, cmap, blur, show_contours = NONE, float(render["alpha"]), default_cmap, 0.0, False
if with_records:  # records from before the viewer (or none) cannot be re-painted: nothing to tune
    k1, k2, k3, k4, k5 = st.columns(5)
    compare = k1.selectbox("Compare with", [NONE, *others], key="compare",
                           help="Another family's heatmap of the same slide, side by side (its own fold model).")
    alpha = k2.slider("Opacity", 0.0, 1.0, alpha, 0.05, key="alpha")
    cmap = k3.selectbox("Colormap", cmaps, index=cmaps.index(default_cmap) if default_cmap in cmaps else 0,
                        key="cmap")
    blur = k4.slider("Smoothing (tiles)", 0.0, 3.0, float(render.get("blur_tiles") or 0.0), 0.25, key="blur",
                     help="Gaussian blur, sigma in tile widths (params heatmaps.render.blur_tiles)")
    show_contours = k5.toggle("Tissue contours", value=False, key="contours")

# ---- zoomable viewer ----------------------------------------------------------------------------------
viewer_cfg = project.get("dashboard.viewer") or {}
if with_records and st.toggle("Zoomable viewer", value=True, key="viewer"):
    server = da.viewer_server(project)
    families = [model, *(m for m in with_records if m != model)] if model in with_records else with_records
    if compare != NONE:
        families = [model, compare, *(m for m in families if m not in (model, compare))]
    height = int(viewer_cfg.get("height_px") or 560)
    url = server.viewer_url(slide, families, cmap=cmap, blur_tiles=blur) + f"&height={height}"
    st.iframe(url, height=height + 70)
    st.caption(f"Deep Zoom over the slide file the heatmaps stage read (the thumbnail when it is not on this "
               f"machine); score layers of {', '.join(f'`{f}`' for f in families)}; served at {server.url}.")


@st.cache_data(ttl=da.TTL, show_spinner="Painting heatmap...", max_entries=32)
def overlay(folder: str, stamp: tuple, family: str, layer_name: str, cmap: str, alpha: float, blur: float,
            contours: bool, _record: hv.SlideRecord, _tissue_path: str) -> tuple:
    """Heatmap image plus a caption; ``stamp`` (file mtimes) invalidates it when the stage re-runs."""
    from pathlib import Path

    thumb = da.read_rgb(Path(folder) / "thumbnail.png")
    if thumb is None:
        return None, ""
    layer = _record.layer(layer_name)
    tissue = da.read_json(Path(_tissue_path))
    img = hv.composite(thumb, _record, layer, cmap=cmap, alpha=alpha, blur_tiles=blur, tissue_fc=tissue,
                       contours=contours)
    note = f"{len(layer.values)} tiles · {_record.thumb_downsample:.2f} level-0 px per thumbnail px"
    if contours and tissue is None:
        note += " · no tissue contours saved for this slide"
    return img, note


def heatmap(family: str, rec: hv.SlideRecord | None, problem: str | None, key: str) -> None:
    """One family's heatmap image of the slide (re-painted from its record), or why there is none."""
    if rec is None or not rec.layers:
        if problem is None and rec is None and family != hm_model:
            st.info(f"No heatmap of `{family}` for `{slide}`: the heatmaps stage explains the families in params "
                    "`heatmaps.models` (empty = every trained family). Re-run `dvc repro heatmaps`.")
            return
        why = problem or ("it has no score layers" if rec is not None else "it has no `record.json`")
        st.info(f"`{folder}` cannot be re-painted: {why}. It comes from an older run of the heatmaps stage; "
                "re-run `dvc repro heatmaps` to get its score layers. Showing the stage's image if there is one.")
        if family == hm_model and (folder / "heatmap.png").exists():
            st.image(str(folder / "heatmap.png"), width="stretch")
        return
    names = [la.name for la in rec.layers]
    layer = rec.layer(st.selectbox("Score layer", names, key=key) if len(names) > 1 else names[0])
    tissue_path = project.path("tile.tissue_dir") / f"{slide}.geojson"
    record_file = hv.family_record_path(folder, family, hm_model)
    stamp = da.mtimes(record_file, folder / "thumbnail.png", tissue_path)
    img, note = overlay(str(folder), stamp, family, layer.name, cmap, round(alpha, 2), blur, show_contours, rec,
                        str(tissue_path))
    if img is None:
        st.info("The thumbnail is missing, so the heatmap cannot be re-painted; showing the stage's image "
                "if there is one.")
        if (folder / "heatmap.png").exists():
            st.image(str(folder / "heatmap.png"), width="stretch")
        return
    st.image(img, width="stretch", caption=f"{slide}: heatmap of {rec.model_label}, layer {layer.name}: "
                                           f"opacity {alpha:.2f}, {cmap}, smoothing {blur:g} tiles")
    st.caption(f"Layer `{layer.name}`: {hv.layer_summary(layer)}. {hv.colour_meaning(layer)}."
               + (f" {layer.description}" if layer.description else ""))
    st.caption(note)
    scales = hv.scale_layers(rec)
    if scales:  # MSA: parent and child maps side by side
        for col, (name, caption) in zip(st.columns(len(scales)), scales, strict=True):
            scale_img, _ = overlay(str(folder), stamp, family, name, cmap, round(alpha, 2), blur, show_contours,
                                   rec, str(tissue_path))
            if scale_img is not None:
                col.image(scale_img, width="stretch", caption=f"{slide}: {caption}")
    segments(rec, key)


def segments(rec: hv.SlideRecord, key: str) -> None:
    """SAM-MIL families: the slide's tiles coloured by their smallest segment, named by the real segmenter."""
    seg = rec.segments
    if not seg or not (folder / "thumbnail.png").exists():
        return
    name = str(seg.get("segmenter", "unknown"))
    if st.toggle(f"Segments ({name})", value=False, key=f"segments_{key}"):
        thumb = cv2.cvtColor(cv2.imread(str(folder / "thumbnail.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        st.image(hv.segments_image(thumb, rec), width="stretch",
                 caption=f"{slide}: {seg.get('n_segments', '?')} segments of segmenter {name} "
                         "(each tile in the colour of its smallest segment; grey: unsegmented)")


# ---- heatmaps (side by side) and prediction ----------------------------------------------------------
if compare != NONE:
    st.subheader(f"`{model}` and `{compare}` on {slide}")
    a, b = st.columns(2)
    with a:
        heatmap(model, record, record_problem, "layer")
    with b:
        heatmap(compare, *load_record(compare), "layer_compare")
    _, right = st.columns([1, 2])  # the prediction under the pair, not beside an empty column
else:
    left, right = st.columns([3, 2])
    with left:
        heatmap(model, record, record_problem, "layer")

with right:
    label = row["model"]
    m1, m2 = st.columns(2)
    m1.metric("True label", row["true label"])
    m2.metric("Predicted", row["predicted"], help=f"by {label}")
    if row["correct"]:
        st.success(f"Correct ({label} model, test split)")
    else:
        st.error(f"Misclassified ({label} model, test split)")
    preds = da.test_predictions(project, model)
    hit = None if preds is None else preds[preds["slide_id"] == slide]
    src = hit.iloc[0] if hit is not None and not hit.empty else index[index["slide_id"] == slide].iloc[0]
    probs = {c[len("prob_"):]: float(src[c]) for c in src.index if c.startswith("prob_") and not pd.isna(src[c])}
    order = [c for c in classes if c in probs] + [c for c in probs if c not in classes]
    st.dataframe(pd.DataFrame({"class": order, "probability": [probs[c] for c in order]}),
                 hide_index=True, column_config={"probability": st.column_config.ProgressColumn(
                     f"probability ({label})", min_value=0.0, max_value=1.0, format="%.3f")})
    facts = {"tiles": None, "localisation AUROC": None}
    idx_row = index[index["slide_id"] == slide]
    if not idx_row.empty:
        facts = {"tiles": idx_row.iloc[0].get("n_tiles"),
                 f"localisation AUROC ({hm_model})": idx_row.iloc[0].get("localisation_auroc")}
    st.caption(" · ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                          for k, v in facts.items() if v is not None and not pd.isna(v)))
    api = da.api_model_note(project)
    if api:
        st.caption(api)
    geo = folder / "tiles.geojson"
    if geo.exists():
        st.download_button("tiles.geojson (QuPath)", geo.read_bytes,  # read on click: can be large
                           file_name=f"{slide}_tiles.geojson", mime="application/geo+json")

# ---- top tiles ---------------------------------------------------------------------------------------
if record is not None and record.primary is not None:
    st.subheader(f"Top tiles by {record.primary.name} ({record.model_label})")
    saved = [(t, hv.top_tile_image(folder / "top_tiles", slide, t)) for t in record.saved_top_tiles]
    shown_tiles = [(t, p) for t, p in saved if p is not None]  # same rank and corner = the same tile
    if shown_tiles:
        st.image([str(p) for _, p in shown_tiles],
                 caption=[f"#{t['rank']} · score {t['score']:+.3f} · ({t['x']}, {t['y']})" for t, _ in shown_tiles],
                 width=180)
    missing = [t for t, p in saved if p is None]
    if missing:
        st.caption("Tiles of the record without a saved image (marked in the viewer):")
        st.dataframe(pd.DataFrame(missing)[["rank", "x", "y", "score"]], hide_index=True)
