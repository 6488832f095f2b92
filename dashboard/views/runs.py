"""Runs: the cross-validation parent runs of an experiment, compared side by side."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data_access as da

KEY_PARAMS = ("method.size", "method.dropout", "method.bag_weight", "train.lr", "train.max_epochs",
              "encoder.tiles.name", "encoder.tiles.weights", "tiling.target_mpp", "n_folds", "selected_fold")

st.title("Runs")
project = da.get_project()
uri = project.tracking_uri
if problem := da.store_problem(uri):
    st.info(problem)
    st.stop()

exps = da.experiments(uri)
if not exps:
    st.info("The MLflow store has no experiments yet. Run `dvc repro` (stage `train`).")
    st.stop()
names = [name for _, name in exps]
exp_name = st.selectbox("Experiment", names,
                        index=names.index(project.experiment) if project.experiment in names else 0)
exp_id = dict((n, i) for i, n in exps)[exp_name]
runs = da.parent_runs(uri, exp_id)
if not runs:
    st.info(f"No cross-validation runs in experiment `{exp_name}` yet. Run `dvc repro` (stage `train`).")
    st.stop()


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def runs_table(rs: list[da.RunInfo]) -> pd.DataFrame:
    rows = []
    for r in rs:
        row = {"run": r.label, "model": r.model, "started": r.start_time, "status": r.status}
        for split in ("test", "val"):
            row[f"{split} AUC"] = _fmt(r.metrics.get(f"{split}_auc_mean"), r.metrics.get(f"{split}_auc_std"))
        row["test bal. acc."] = _fmt(r.metrics.get("test_balanced_accuracy_mean"),
                                     r.metrics.get("test_balanced_accuracy_std"))
        row.update({k: r.params.get(k) for k in KEY_PARAMS if any(k in x.params for x in rs)})
        row["run_id"] = r.run_id
        rows.append(row)
    return pd.DataFrame(rows)


st.dataframe(runs_table(runs), hide_index=True)

by_id = {r.run_id: r for r in runs}
latest_per_model = list({r.model: r.run_id for r in reversed(runs)}.values())[::-1]  # runs are newest first
chosen = st.multiselect("Compare runs", list(by_id), default=latest_per_model,
                        format_func=lambda rid: by_id[rid].label)
if not chosen:
    st.info("Select one or more runs to compare.")
    st.stop()
sel = [by_id[rid] for rid in chosen]

# ---- metrics with fold error bars --------------------------------------------------------------------
st.subheader("Metrics (mean ± std over folds)")
c1, c2 = st.columns([1, 3])
split = c1.radio("Split", ["test", "val"], horizontal=True)
metrics = c2.multiselect("Metrics", list(da.METRICS), default=list(da.METRICS))
fig = go.Figure()
for r in sel:
    fig.add_bar(name=r.label, x=metrics, y=[r.metrics.get(f"{split}_{m}_mean") for m in metrics],
                error_y={"type": "data", "array": [r.metrics.get(f"{split}_{m}_std", 0.0) for m in metrics],
                         "visible": True})
fig.update_layout(barmode="group", yaxis={"range": [0, 1.05], "title": split}, height=380,
                  margin={"t": 20, "b": 20}, legend={"orientation": "h"})
st.plotly_chart(fig, key="metric_bars")
st.dataframe(pd.DataFrame({r.label: {m: _fmt(r.metrics.get(f"{split}_{m}_mean"), r.metrics.get(f"{split}_{m}_std"))
                                     for m in metrics} for r in sel}))

# ---- ROC ---------------------------------------------------------------------------------------------
st.subheader("Test ROC (folds pooled, one-vs-rest)")
curves = {r.run_id: da.run_roc(project, r) for r in sel}
available = [c for roc, _ in curves.values() if roc is not None for c in roc["class"].unique()]
classes = [c for c in project.classes if c in available] + sorted(set(available) - set(project.classes))
if not classes:
    st.info("No ROC data for these runs yet (`data/eval/roc/` or the runs' `report/predictions.csv`).")
else:
    cls = st.selectbox("Positive class", classes)
    roc_fig = go.Figure()
    roc_fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"}, name="chance")
    sources = []
    for r in sel:
        roc, source = curves[r.run_id]
        if roc is None:
            continue
        curve = roc[roc["class"] == cls]
        if curve.empty:
            continue
        roc_fig.add_scatter(x=curve["fpr"], y=curve["tpr"], mode="lines",
                            name=f"{r.label} (AUC {da.auc_of(curve):.3f})")
        sources.append(f"{r.label}: {source}")
    roc_fig.update_layout(xaxis={"title": "false positive rate", "range": [0, 1]},
                          yaxis={"title": "true positive rate", "range": [0, 1.02]}, height=420,
                          margin={"t": 20, "b": 20})
    st.plotly_chart(roc_fig, key="roc")
    st.caption("Sources: " + "; ".join(sources))

# ---- params diff -------------------------------------------------------------------------------------
st.subheader("Parameters")
keys = sorted({k for r in sel for k in r.params})
table = pd.DataFrame({r.label: [r.params.get(k) for k in keys] for r in sel}, index=pd.Index(keys, name="param"))
differs = pd.Series([len({repr(v) for v in row}) > 1 for row in table.itertuples(index=False)], index=table.index,
                    dtype=bool)  # a key missing from one run (None) differs too
only = st.toggle("Only parameters that differ", value=len(sel) > 1)
shown = table[differs] if only else table
st.caption(f"{int(differs.sum())} of {len(keys)} parameters differ between the selected runs.")
if shown.empty:
    st.info("The selected runs share every parameter." if len(sel) > 1 else "Select a second run to diff.")
else:
    st.dataframe(shown.style.apply(
        lambda row: ["background-color: rgba(255, 196, 0, 0.35)" if differs[row.name] else "" for _ in row], axis=1))

# ---- per-fold detail ---------------------------------------------------------------------------------
with st.expander("Per-fold results and training curves"):
    focus_id = st.selectbox("Run", chosen, format_func=lambda rid: by_id[rid].label, key="fold_run")
    folds = da.fold_runs(uri, exp_id, focus_id)
    if not folds:
        st.info("This run has no nested fold runs.")
    else:
        cols = ["test_auc", "val_auc", "test_balanced_accuracy", "best_epoch", "epochs_run", "best_val_loss"]
        st.dataframe(pd.DataFrame([{"fold": f.tags.get("slidemil.fold"), **{c: f.metrics.get(c) for c in cols}}
                                   for f in folds]), hide_index=True)
        if st.checkbox("Show loss curves"):
            curve_fig = go.Figure()
            for f in folds:
                for key, dash in (("train_loss", "solid"), ("val_loss", "dot")):
                    h = da.metric_history(uri, f.run_id, key)
                    if not h.empty:
                        curve_fig.add_scatter(x=h["step"], y=h["value"], mode="lines", line={"dash": dash},
                                              name=f"fold {f.tags.get('slidemil.fold')} {key}")
            curve_fig.update_layout(xaxis_title="epoch", yaxis_title="loss", height=380)
            st.plotly_chart(curve_fig, key="loss_curves")
    imgs = [(p, da.artifact_file(uri, focus_id, f"report/{p}")) for p in ("roc_test.png", "confusion_test.png")]
    imgs = [(p, f) for p, f in imgs if f]
    if imgs:
        st.image([f for _, f in imgs], caption=[p for p, _ in imgs], width=420)
