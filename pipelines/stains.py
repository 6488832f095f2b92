"""DVC stage `stains`: one stain matrix per validated slide (the `stains` layer, methods.md section C), fitted
once from its tissue tiles, a QC panel per slide (RGB | H | E of a few tiles) and a summary.

Runs after `tile`. A slide whose layer carries the current resume key (fit settings, tile-set digest, the tile
file's key, code version) is skipped, so an interrupted run resumes. A slide that fails is named with the
reason; the others are still fitted, and the stage then fails unless `stains.allow_failures` is set.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipelines.common import load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest
from slidemil.slides import open_slide
from slidemil.slides.errors import SlideError
from slidemil.stains import StainConfig, StainMatrix, fit_slide_stains
from slidemil.stains.layer import KIND, read_stains, stains_resume_key, write_stains
from slidemil.stains.qc import stain_qc_panel
from slidemil.stains.slide import sampled_tiles
from slidemil.store import LayerError, SlideStore, is_current, read_layer_attrs, tiles_digest
from slidemil.utils.atomic import remove_stale_temps, write_json_atomic, write_png_atomic

QC_FOLDER = "qc"  # inside stains.out_dir, so the one DVC output holds layers and panels


def fit_one(store: SlideStore, sid: str, cfg: StainConfig, tile_set: str, qc_tiles: int,
            qc_dir: Path) -> tuple[StainMatrix, bool]:
    """Fit one slide, or read its current layer; returns the matrix and whether it was fitted now."""
    tiles = store.tile_set(sid, tile_set)
    digest = tiles_digest(tiles)
    key = stains_resume_key(cfg, digest, str(read_layer_attrs(store.path(sid, "tiles"), "tiles")["resume_key"]))
    out = store.path(sid, KIND)
    if is_current(out, key, KIND) and (qc_dir / f"{sid}.png").is_file():
        return read_stains(out, digest), False
    if len(tiles) == 0:
        raise SlideError(sid, "the tile set is empty: no tissue tiles to fit stains on")
    with open_slide(tiles.slide_path, slide_id=sid, mpp=tiles.geometry.slide_mpp) as reader:
        matrix = fit_slide_stains(reader, tiles.coords, tiles.geometry, cfg, name=sid)
        shown = [reader.read_tile(tuple(int(v) for v in tiles.coords[i]), tiles.geometry)
                 for i in sampled_tiles(len(tiles), qc_tiles)]
    write_stains(out, matrix, config=cfg, tiles_digest=digest, resume_key=key, tile_set=tile_set)
    write_png_atomic(qc_dir / f"{sid}.png", stain_qc_panel(shown, matrix))
    return matrix, True


def prune_stale(out_dir: Path, qc_dir: Path, keep: set[str]) -> int:
    """Remove layers and panels of slides no longer in the manifest (the outputs persist for resume)."""
    n = 0
    for folder, pattern in ((out_dir, "*.h5"), (qc_dir, "*.png")):
        for f in folder.glob(pattern):
            if f.stem not in keep:
                f.unlink()
                n += 1
    return n


def main() -> int:
    log = setup_logging("stains")
    p = load_params()
    s = p["stains"]
    cfg = StainConfig.from_dict(s["fit"])
    slide_ids = [str(x) for x in read_manifest(project_path(p["validate"]["manifest_out"]))["slide_id"]]
    out_dir = project_path(s["out_dir"])
    qc_dir = out_dir / QC_FOLDER
    qc_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    remove_stale_temps(qc_dir)
    if prune_stale(out_dir, qc_dir, set(slide_ids)):
        log.info("removed the stain outputs of slides no longer in the manifest")
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]), {KIND: out_dir})
    rows: dict[str, dict] = {}
    failures: dict[str, str] = {}
    skipped, t0 = 0, time.perf_counter()
    for sid in slide_ids:
        try:
            matrix, fitted_now = fit_one(store, sid, cfg, str(s["tile_set"]), int(s["qc_tiles"]), qc_dir)
        except (SlideError, LayerError, OSError, ValueError) as exc:
            failures[sid] = str(exc) if sid in str(exc) else f"{sid}: {exc}"
            log.error("%s", failures[sid])
            continue
        rows[sid] = matrix.to_dict()
        if not fitted_now:
            skipped += 1
            continue
        log.info("%s: %s matrix from %d pixels, H=%s E=%s", sid, matrix.source, matrix.n_pixels,
                 matrix.vectors[0].round(3).tolist(), matrix.vectors[1].round(3).tolist())
    write_json_atomic(project_path(s["summary"]), {
        "n_slides": len(slide_ids), "n_fitted": sum(r["source"] == "fitted" for r in rows.values()),
        "n_fallback": sum(r["source"] == "fallback" for r in rows.values()), "n_skipped": skipped,
        "n_failed": len(failures), "failures": failures, "slides": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    log.info("stains: %d slides (%d fitted now, %d already current, %d failed)", len(slide_ids),
             len(rows) - skipped, skipped, len(failures))
    return 1 if failures and not s.get("allow_failures", False) else 0


if __name__ == "__main__":
    sys.exit(main())
