"""DVC stage `tile`: tissue segmentation, tile coordinates and QC images for every validated slide."""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.common import load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest, row_mpp
from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_slides
from slidemil.slides.tiling import TilingParams
from slidemil.slides.tissue import TissueParams, load_overrides
from slidemil.utils.atomic import write_json_atomic


def build_jobs(manifest_csv: Path, overrides_csv: Path | None, default_mpp: float | None) -> list[SlideJob]:
    df = read_manifest(manifest_csv)
    overrides = load_overrides(overrides_csv) if overrides_csv and overrides_csv.exists() else {}
    unknown = set(overrides) - set(df["slide_id"])
    if unknown:
        raise SystemExit(f"tissue overrides name slides not in the manifest: {sorted(unknown)}")
    return [
        SlideJob(
            slide_id=row.slide_id,
            path=row.abs_path,
            mpp=row_mpp(row),
            default_mpp=default_mpp,
            tissue_overrides=tuple(sorted(overrides.get(row.slide_id, {}).items())),
        )
        for _, row in df.iterrows()
    ]


def prune_stale(outputs: TileOutputs, keep_ids: set[str]) -> int:
    """Remove outputs of slides no longer in the manifest (outputs persist across runs for resume)."""
    n = 0
    for folder, pattern in ((outputs.tiles_dir, "*.h5"), (outputs.tissue_dir, "*.geojson"), (outputs.qc_dir, "*.png")):
        for f in folder.glob(pattern):
            if f.stem not in keep_ids:
                f.unlink()
                n += 1
    return n


def main() -> int:
    log = setup_logging("tile")
    p = load_params()
    t = dict(p["tiling"])
    workers = int(t.pop("workers"))
    tiling = TilingParams.from_dict(t)
    tissue = TissueParams.from_dict(p["tissue"]["params"])
    overrides_csv = p["tissue"].get("overrides_csv")
    jobs = build_jobs(project_path(p["validate"]["manifest_out"]),
                      project_path(overrides_csv) if overrides_csv else None,
                      p["slides"].get("default_mpp"))
    out = p["tile"]
    outputs = TileOutputs(project_path(out["tiles_dir"]), project_path(out["tissue_dir"]), project_path(out["qc_dir"]))
    outputs.make()
    pruned = prune_stale(outputs, {j.slide_id for j in jobs})
    if pruned:
        log.info("removed %d outputs of slides no longer in the manifest", pruned)
    results = tile_slides(jobs, tiling, tissue, outputs, workers=workers)
    failed = [r for r in results if r.status == "failed"]
    summary = {
        "n_slides": len(results),
        "n_done": sum(r.status == "done" for r in results),
        "n_skipped": sum(r.status == "skipped" for r in results),
        "n_failed": len(failed),
        "failures": {r.slide_id: r.error for r in failed},
    }
    write_json_atomic(project_path(out["summary"]), summary)
    log.info("tiled %d slides (%d new, %d already done, %d failed)", len(results), summary["n_done"],
             summary["n_skipped"], len(failed))
    if failed and not p["tile"].get("allow_failures", False):
        for r in failed:
            log.error("%s", r.error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
