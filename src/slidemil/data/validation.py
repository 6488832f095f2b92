"""Manifest validation with a Great Expectations 1.x suite, before any slide is tiled.

Checks that need the file system (exists, opens, mpp known) are computed into helper columns first, then
expressed as expectations, so one GX report holds every reason a row is bad. The report is saved as JSON
(machine-readable) and HTML (for people) and lists every bad row with its reasons.
"""

from __future__ import annotations

import html
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from slidemil.data.manifest import REQUIRED_COLUMNS, row_mpp
from slidemil.utils.atomic import write_json_atomic, write_text_atomic

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# helper columns computed before the GX run; their expectations explain a failure in words
_CHECKS = {
    "_file_exists": "file does not exist",
    "_opens": "file cannot be opened as a slide",
    "_mpp_known": "no mpp in the file, the manifest or the config default",
}


@dataclass
class ValidationReport:
    success: bool
    n_rows: int
    expectations: list[dict]
    bad_rows: pd.DataFrame  # columns: row, slide_id, reasons
    missing_columns: list[str] = field(default_factory=list)
    #: problems of the table as a whole (no rows at all), besides missing columns
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.success:
            return f"manifest OK: {self.n_rows} slides, {len(self.expectations)} expectations met"
        lines = [f"manifest INVALID: {len(self.bad_rows)} bad row(s) of {self.n_rows}"]
        lines += [f"  {p}" for p in self.problems]
        if self.missing_columns:
            lines.append(f"  missing required column(s): {', '.join(self.missing_columns)}")
        for r in self.bad_rows.itertuples(index=False):
            lines.append(f"  row {r.row} ({r.slide_id}): {r.reasons}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "n_rows": self.n_rows,
            "missing_columns": self.missing_columns,
            "problems": self.problems,
            "bad_rows": self.bad_rows.to_dict(orient="records"),
            "expectations": self.expectations,
        }


def probe_slides(df: pd.DataFrame, default_mpp: float | None = None) -> pd.DataFrame:
    """Add the file-system helper columns (exists, opens, mpp known) and ``_open_error``."""
    from slidemil.slides.backends import open_slide  # slides import is heavier; only needed here

    out = df.copy()
    exists, opens, mpp_known, errors = [], [], [], []
    for _, row in out.iterrows():
        path = row.get("abs_path") or ""
        ok_exists = bool(path) and Path(path).exists()
        ok_open, ok_mpp, err = False, False, ""
        if ok_exists:
            try:
                with open_slide(path, slide_id=str(row.get("slide_id")), mpp=row_mpp(row)) as reader:
                    ok_open = True
                    ok_mpp = reader.has_mpp or default_mpp is not None
            except Exception as exc:  # noqa: BLE001 - the reason goes into the report
                err = str(exc)
        exists.append(ok_exists)
        opens.append(ok_open if ok_exists else None)
        mpp_known.append(ok_mpp if ok_open else None)
        errors.append(err)
    out["_file_exists"], out["_opens"], out["_mpp_known"], out["_open_error"] = exists, opens, mpp_known, errors
    return out


def validate_manifest(df: pd.DataFrame, classes: list[str], default_mpp: float | None = None) -> ValidationReport:
    """Run the manifest suite on ``df`` (as read by :func:`read_manifest`)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    no_rows = ["manifest has no slides (a header but no rows)"] if df.empty else []
    if missing or no_rows:
        return ValidationReport(
            False, len(df), [], pd.DataFrame(columns=["row", "slide_id", "reasons"]), missing, no_rows
        )
    probed = probe_slides(df, default_mpp).reset_index(drop=True)
    results = _run_suite(probed, classes)
    reasons: dict[int, list[str]] = defaultdict(list)
    for res in results:
        for idx in res["unexpected_index_list"]:
            reasons[idx].append(res["reason"])
    for idx, err in enumerate(probed["_open_error"]):
        if err and idx in reasons:
            reasons[idx] = [r if r != _CHECKS["_opens"] else f"{r}: {err}" for r in reasons[idx]]
    bad = pd.DataFrame(
        [
            {"row": i + 2, "slide_id": probed.at[i, "slide_id"], "reasons": "; ".join(dict.fromkeys(reasons[i]))}
            for i in sorted(reasons)
        ],  # row numbers as in a spreadsheet: header is line 1
        columns=["row", "slide_id", "reasons"],
    )
    return ValidationReport(all(r["success"] for r in results), len(df), results, bad)


#: GX loggers that narrate an in-memory run at INFO ("temporary directory ... for ephemeral docs site",
#: "Loading 'datasources'"); importing GX resets its package logger, so these are quietened after the import
GX_CHATTY_LOGGERS = ("great_expectations.data_context.types.base", "great_expectations.datasource.fluent.config")


def _run_suite(df: pd.DataFrame, classes: list[str]) -> list[dict]:
    import great_expectations as gx

    for name in GX_CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    batch_def = (
        context.data_sources.add_pandas("manifest_source")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("whole_manifest")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="slidemil_manifest"))
    E = gx.expectations
    reasons = []

    def add(expectation, reason: str) -> None:
        suite.add_expectation(expectation)
        reasons.append(reason)

    for col in REQUIRED_COLUMNS:
        add(E.ExpectColumnValuesToNotBeNull(column=col), f"empty {col}")
    add(E.ExpectColumnValuesToBeUnique(column="slide_id"), "duplicate slide_id")
    add(E.ExpectColumnValuesToBeInSet(column="label", value_set=list(classes)),
        f"label not in the declared classes {list(classes)}")
    for col, reason in _CHECKS.items():
        add(E.ExpectColumnValuesToBeInSet(column=col, value_set=[True]), reason)
    if "mpp" in df.columns:
        add(E.ExpectColumnValuesToBeBetween(column="mpp", min_value=0.05, max_value=50.0),
            "mpp outside 0.05..50 um/px")
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest_validation", data=batch_def, suite=suite)
    )
    run = validation.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")
    by_id = {exp.id: reason for exp, reason in zip(suite.expectations, reasons, strict=True)}
    out = []
    for r in run.results:
        cfg = r.expectation_config
        out.append({
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column"),
            "success": bool(r.success),
            "reason": by_id.get(cfg.id, cfg.type),
            "unexpected_count": int(r.result.get("unexpected_count", 0) or 0),
            "unexpected_index_list": [int(i) for i in (r.result.get("unexpected_index_list") or [])],
        })
    return out


def write_report(report: ValidationReport, json_path: str | Path, html_path: str | Path) -> None:
    """Save the report as JSON and as a small self-contained HTML page (both atomic)."""
    write_json_atomic(json_path, report.to_dict())
    write_text_atomic(html_path, render_html(report))


def render_html(report: ValidationReport) -> str:
    status = "PASSED" if report.success else "FAILED"
    colour = "#1a7f37" if report.success else "#cf222e"
    exp_rows = "".join(
        f"<tr><td>{html.escape(e['expectation'])}</td><td>{html.escape(str(e['column']))}</td>"
        f"<td style='color:{'#1a7f37' if e['success'] else '#cf222e'}'>{'ok' if e['success'] else 'failed'}</td>"
        f"<td>{e['unexpected_count']}</td><td>{html.escape(e['reason'])}</td></tr>"
        for e in report.expectations
    )
    bad_rows = "".join(
        f"<tr><td>{r['row']}</td><td>{html.escape(str(r['slide_id']))}</td><td>{html.escape(r['reasons'])}</td></tr>"
        for r in report.bad_rows.to_dict(orient="records")
    )
    missing = (
        f"<p>Missing required columns: {html.escape(', '.join(report.missing_columns))}</p>"
        if report.missing_columns else ""
    ) + "".join(f"<p>{html.escape(p)}</p>" for p in report.problems)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>slidemil manifest validation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Manifest validation: <span style="color:{colour}">{status}</span></h1>
<p>{report.n_rows} rows; {len(report.bad_rows)} bad.</p>{missing}
<h2>Bad rows</h2><table><tr><th>row</th><th>slide_id</th><th>reasons</th></tr>{bad_rows}</table>
<h2>Expectations (Great Expectations suite <code>slidemil_manifest</code>)</h2>
<table><tr><th>expectation</th><th>column</th><th>result</th><th>unexpected</th><th>meaning</th></tr>{exp_rows}</table>
</body></html>
"""
