"""DVC stage `segment`: tile -> region memberships of every validated slide (the `segments` layer) for
methods that read regions (SAM-MIL, methods.md section D), and a QC overlay PNG per slide.

Runs after `features` (the `kmeans` segmenter clusters tile features) and before `train`. Slides whose layer
carries the current resume key (segmenter settings + checkpoint hash, tile-set digest, features key, code
version) are skipped.
"""

from __future__ import annotations

import json
import sys
import time

from pipelines.common import load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest
from slidemil.segmenters.base import SlideInput
from slidemil.segmenters.layer import KIND, segments_resume_key, write_segments
from slidemil.segmenters.overlay import save_png, segment_overlay
from slidemil.segmenters.registry import build_segmenter
from slidemil.slides import open_slide
from slidemil.store import SlideStore, is_current, read_feature_attrs, tiles_digest
from slidemil.utils.atomic import write_json_atomic


def main() -> int:
    log = setup_logging("segment")
    p = load_params()
    s = p["segment"]
    segmenter = build_segmenter(s["segmenter"], s)
    fingerprint = segmenter.fingerprint()  # hashes a SAM checkpoint once per run
    slide_ids = [str(x) for x in read_manifest(project_path(p["validate"]["manifest_out"]))["slide_id"]]
    out_dir, qc_dir = project_path(s["out_dir"]), project_path(s["qc_dir"])
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]),
                       {KIND: out_dir})
    tissue_dir = project_path(p["tile"]["tissue_dir"])
    rows, skipped, t0 = {}, 0, time.perf_counter()
    for sid in slide_ids:
        tiles = store.tile_set(sid)
        digest = tiles_digest(tiles)
        feats_key = read_feature_attrs(store.path(sid, "features")).get("resume_key") if segmenter.needs_features \
            else None
        key = segments_resume_key(fingerprint, digest, feats_key)
        out = store.path(sid, KIND)
        if is_current(out, key, KIND):
            skipped += 1
            continue
        tissue = tissue_dir / f"{sid}.geojson"
        contours = json.loads(tissue.read_text()) if tissue.is_file() else None
        with open_slide(tiles.slide_path, slide_id=sid, mpp=tiles.geometry.slide_mpp) as reader:
            slide = SlideInput.from_tissue(
                sid, tiles.coords, tiles.geometry.level0_px, contours, reader,
                features=store.features(sid).features if segmenter.needs_features else None)
            segments, _ = segmenter.segment(slide)
            thumb, ds = reader.thumbnail(int(s["qc_max_side"]))
        write_segments(out, segments, segmenter=segmenter.id, tiles_digest=digest, resume_key=key)
        save_png(segment_overlay(thumb, ds, tiles.coords, tiles.geometry.level0_px, segments), qc_dir / f"{sid}.png")
        unseg = segments.pairs[:, 1] == segments.unsegmented
        rows[sid] = {"segments": segments.n_segments, "tiles": segments.n_tiles,
                     "unsegmented_tiles": int(unseg.sum())}
        log.info("%s: %d segments, %d/%d tiles unsegmented", sid, segments.n_segments, int(unseg.sum()),
                 segments.n_tiles)
    write_json_atomic(project_path(s["summary"]), {
        "segmenter": segmenter.id, "n_slides": len(slide_ids), "skipped": skipped, "slides": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    log.info("segment: %d slides with %s (%d already current)", len(slide_ids), segmenter.id, skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
