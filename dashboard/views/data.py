"""Data: the latest manifest validation report, the tiling summary, the tissue QC thumbnails and the per-slide
stain matrices with their QC panels."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data_access as da

GALLERY_MAX = 24

st.title("Data")
project = da.get_project()

# ---- manifest validation ---------------------------------------------------------------------------------
st.subheader("Manifest validation")
report_path = project.path("validate.report_json")
report = da.read_json(report_path)
if report is None:
    st.info(f"No validation report yet (`{project.get('validate.report_json')}`). Run `dvc repro` "
            "(stage `validate`).")
else:
    bad = pd.DataFrame(report.get("bad_rows") or [], columns=["row", "slide_id", "reasons"])
    expectations = pd.DataFrame(report.get("expectations") or [])
    n_rows = report.get("n_rows", "?")
    if report.get("success"):
        st.success(f"PASSED: {n_rows} slides, {len(expectations)} expectations met "
                   f"(report of {da.modified(report_path)}).")
    else:
        st.error(f"FAILED: {len(bad)} bad row(s) of {n_rows} (report of {da.modified(report_path)}). "
                 "Fix the manifest and re-run `dvc repro`; nothing downstream ran on it.")
    if report.get("missing_columns"):
        st.warning("Missing required column(s): " + ", ".join(report["missing_columns"]))
    if not bad.empty:
        st.dataframe(bad, hide_index=True)
    if not expectations.empty:
        with st.expander("Expectations"):
            cols = [c for c in ("expectation", "column", "success", "reason", "unexpected_count")
                    if c in expectations]
            st.dataframe(expectations[cols], hide_index=True)
    html = project.path("validate.report_html")
    if html.exists():
        st.download_button("Full report (HTML)", html.read_bytes, file_name="validation.html", mime="text/html")

# ---- tiling summary --------------------------------------------------------------------------------------
st.subheader("Tiling")
tiling = da.read_json(project.path("tile.summary"))
if tiling is None:
    st.info(f"No tiling summary yet (`{project.get('tile.summary')}`). Run `dvc repro` (stage `tile`).")
else:
    cols = st.columns(4)
    for col, (key, label) in zip(cols, (("n_slides", "slides"), ("n_done", "tiled now"),
                                        ("n_skipped", "already done"), ("n_failed", "failed")), strict=True):
        col.metric(label, tiling.get(key, "–"))
    failures = tiling.get("failures") or {}
    if failures:
        st.dataframe(pd.DataFrame({"slide_id": list(failures), "error": list(failures.values())}), hide_index=True)
features = da.read_json(project.path("features.summary"))
if features is not None:
    with st.expander("Feature extraction summary"):
        st.json(features)

# ---- QC thumbnails ---------------------------------------------------------------------------------------
st.subheader("Tissue QC")
qc = da.qc_images(project)
if not qc:
    st.info(f"No QC thumbnails yet (`{project.get('tile.qc_dir')}/`). Run `dvc repro` (stage `tile`).")
else:
    pick = st.selectbox("Slide", list(qc), key="qc_slide")
    st.image(str(qc[pick]), caption=f"{pick}: tissue contours and kept tiles", width="content")
    shown = list(qc.items())[:GALLERY_MAX]
    st.caption(f"All slides ({len(shown)} of {len(qc)} shown)")
    grid = st.columns(4)
    for i, (sid, path) in enumerate(shown):
        grid[i % 4].image(str(path), caption=sid, width="stretch")

# ---- stain separation ------------------------------------------------------------------------------------
st.subheader("Stain separation")
stains = da.read_json(project.path("stains.summary")) if project.get("stains.summary") else None
panels = da.stain_qc_images(project)
if stains is None or not panels:
    st.info(f"No stain matrices yet (`{project.get('stains.out_dir')}/`). Run `dvc repro` (stage `stains`).")
else:
    slides = stains.get("slides") or {}
    pick = st.selectbox("Slide", list(panels), key="stain_slide")
    st.image(str(panels[pick]), caption=f"{pick}: tiles as RGB | hematoxylin | eosin", width="content")
    m = slides.get(pick)
    if m:
        st.dataframe(pd.DataFrame(m["vectors"], index=["hematoxylin", "eosin"], columns=["R", "G", "B"])
                     .assign(max_concentration=m["max_concentrations"]))
        st.caption(f"{m['source']} matrix from {m['n_pixels']} sampled tissue pixels")
    if stains.get("n_fallback"):
        st.warning(f"{stains['n_fallback']} slide(s) had too little tissue and use the reference H&E matrix: "
                   + ", ".join(s for s, r in slides.items() if r.get("source") == "fallback"))
