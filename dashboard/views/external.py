"""External: a registered model on a cohort it never saw - metrics with 95% CIs, calibration, worst slides."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data_access as da

st.title("External validation")
project = da.get_project()
cohorts = da.external_cohorts(project)
if not cohorts:
    st.info(f"No external validation yet (`{project.get('external.out_dir')}/<cohort>/metrics.json`). Run "
            "`dvc repro external` or `slidemil evaluate --model NAME@ALIAS --manifest M --out DIR`.")
    st.stop()

cohort = st.selectbox("Cohort", cohorts, key="external_cohort")
folder = da.external_dir(project, cohort)
m = da.read_json(folder / "metrics.json")
preds = da.read_csv(folder / "predictions.csv")
st.caption(f"Model `{m['model']}` · {m['n_slides']} slides of {m['n_cases']} patients · stain normalisation: "
           f"{m['stain_normalisation']} · results of {da.modified(folder / 'metrics.json')}")


def ci_text(v: dict) -> str:
    if v.get("estimate") is None:
        return "n/a"
    if v.get("low") is None:
        return f"{v['estimate']:.3f}"
    return f"{v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


auc = m["auc"]
op = m["operating_point"]
cols = st.columns(4)
cols[0].metric("AUC", f"{auc['estimate']:.3f}" if auc["estimate"] is not None else "n/a",
               help=f"{int(auc['level'] * 100)}% CI {auc['low']}-{auc['high']}")
cols[1].metric("ECE raw -> calibrated", f"{m['ece']:.3f} -> {m['ece_calibrated']:.3f}")
cols[2].metric("sensitivity", "n/a" if op["sensitivity"] is None else f"{op['sensitivity']:.3f}")
cols[3].metric("specificity", "n/a" if op["specificity"] is None else f"{op['specificity']:.3f}")
st.dataframe(pd.DataFrame([
    {"metric": "AUC", f"value [{int(auc['level'] * 100)}% CI]": ci_text(auc)},
    {"metric": "balanced accuracy", f"value [{int(auc['level'] * 100)}% CI]": ci_text(m["balanced_accuracy"])},
    {"metric": "macro F1", f"value [{int(auc['level'] * 100)}% CI]": ci_text(m["macro_f1"])},
]), hide_index=True)
st.caption(f"Bootstrap: {auc['n_boot']} resamples of {auc['unit']}s ({auc['n_units']}). Operating point from "
           f"validation: disease = 1 - p({op['negative_class']}) >= {op['threshold']:.3f} ({op['rule']}); "
           f"temperature {m['temperature']:.3f}.")

left, right = st.columns(2)
with left:
    st.subheader("Reliability")
    img = da.read_rgb(folder / "reliability.png")
    if img is None:
        st.info("No reliability diagram in this cohort's folder.")
    else:
        st.image(img, caption=f"{cohort}: reliability ({m['ece_bins']} equal-width bins)")
with right:
    st.subheader("Worst slides")
    if preds is None or preds.empty:
        st.info("No per-slide predictions in this cohort's folder.")
        st.stop()
    worst = preds.sort_values("true_prob").head(10)
    st.dataframe(worst[["slide_id", "case_id", "label", "pred", "true_prob"]], hide_index=True)
    slide = st.selectbox("Heatmap of", list(worst["slide_id"].astype(str)), key="external_slide")
    heat = da.read_rgb(folder / "heatmaps" / f"{slide}.png")
    if heat is None:
        st.info(f"No heatmap for {slide} (the cohort was evaluated without heatmaps).")
    else:
        st.image(heat, caption=f"{slide}: heatmap")
