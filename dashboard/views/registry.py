"""Registry: which version serves (champion), which waits (challenger), and why."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data_access as da

ALIASES = ("champion", "challenger")

st.title("Model registry")
project = da.get_project()
uri = project.tracking_uri
name = project.registered_model_name
st.caption(f"Registered model `{name}` (set `SLIDEMIL_MODEL_NAME` to look at another).")
if problem := da.store_problem(uri):
    st.info(problem)
    st.stop()

holders = da.registry_aliases(uri, name, ALIASES)
if all(v is None for v in holders.values()):
    st.info(f"Nothing is registered as `{name}` yet. Run `dvc repro` (stage `promote`) to register the "
            "trained bundle; it becomes the champion.")
    st.stop()


def metric_rows(metrics: dict) -> pd.DataFrame:
    rows = []
    for m in da.METRICS:
        row = {"metric": m}
        for split in ("val", "test"):
            mean, std = metrics.get(f"{split}_{m}_mean"), metrics.get(f"{split}_{m}_std")
            row[split] = None if mean is None else (f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}")
        if row["val"] is not None or row["test"] is not None:
            rows.append(row)
    return pd.DataFrame(rows, columns=["metric", "val", "test"])


for alias, col in zip(ALIASES, st.columns(len(ALIASES)), strict=True):
    v = holders[alias]
    with col:
        st.subheader(alias.capitalize())
        if v is None:
            st.info(f"No version holds `{alias}`" + (" (every newer version beat the champion)."
                                                     if alias == "challenger" else "."))
            continue
        a, b = st.columns(2)
        a.metric("Version", f"v{v.version}")
        if v.selection_metric and v.selection_value is not None:
            b.metric(v.selection_metric, f"{v.selection_value:.4f}")
        st.markdown(f"**Promotion:** {v.promotion or 'not recorded'}")
        st.caption(f"run `{v.run_id}` ({v.run_name or '?'}) · registered "
                   f"{v.created:%Y-%m-%d %H:%M}" if v.created is not None else f"run `{v.run_id}`")
        if v.description:
            st.caption(v.description)
        table = metric_rows(v.run_metrics)
        if table.empty:
            st.caption("The version's run has no cross-validation metrics.")
        else:
            st.dataframe(table, hide_index=True)

st.subheader("All versions")
versions = da.registry_versions(uri, name)
st.dataframe(pd.DataFrame([{
    "version": f"v{v.version}", "aliases": ", ".join(v.aliases), "registered": v.created,
    "selection metric": v.selection_metric, "value": v.selection_value, "promotion": v.promotion,
    "run_id": v.run_id,
} for v in versions]), hide_index=True)
