"""DVC stage `validate`: the Great Expectations manifest suite. A failure stops the pipeline before tiling."""

from __future__ import annotations

import sys

from pipelines.common import load_params, project_path, setup_logging
from slidemil.data.manifest import ManifestError, read_manifest, write_manifest
from slidemil.data.validation import validate_manifest, write_report


def main() -> int:
    log = setup_logging("validate")
    p = load_params()
    manifest_path = project_path(p["data"]["manifest"])
    out = p["validate"]
    try:
        df = read_manifest(manifest_path)
    except (ManifestError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    report = validate_manifest(df, p["data"]["classes"], p["slides"].get("default_mpp"))
    write_report(report, project_path(out["report_json"]), project_path(out["report_html"]))
    print(report.summary(), file=sys.stderr)
    if not report.success:
        log.error("validation failed; report: %s", project_path(out["report_html"]))
        return 1
    write_manifest(df, project_path(out["manifest_out"]))
    log.info("validated manifest written to %s", out["manifest_out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
