"""DVC stage `features`: encode the configured tile sets of every validated slide with the chosen encoder."""

from __future__ import annotations

import sys

from pipelines.common import load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest
from slidemil.encoders.registry import build_encoder
from slidemil.features.extract import FeatureExtractionError, extract_many
from slidemil.utils.atomic import remove_stale_temps, write_json_atomic


def main() -> int:
    log = setup_logging("features")
    p = load_params()
    f = p["features"]
    enc = f["encoder"]
    encoder = build_encoder(enc["name"], enc["weights"], seed=enc.get("seed", 0))
    if encoder.weights_id.startswith("random"):
        log.warning("encoder %s uses RANDOM weights (%s): fine for the offline demo, not for real studies",
                    encoder.name, encoder.weights_id)
    slide_ids = read_manifest(project_path(p["validate"]["manifest_out"]))["slide_id"]
    tiles_dir = project_path(p["tile"]["tiles_dir"])
    out_dir = project_path(f["out_dir"])
    swept = remove_stale_temps(out_dir)  # a killed earlier run's half-written files (.dvcignore hides them too)
    if swept:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", swept, out_dir)
    try:
        summary = extract_many([tiles_dir / f"{s}.h5" for s in slide_ids], encoder, out_dir,
                               tile_sets=tuple(f.get("tile_sets", ["tiles"])), batch_size=f["batch_size"],
                               num_workers=f["num_workers"], device=f["device"],
                               precision=f.get("precision", "auto"), progress=True)
    except FeatureExtractionError as exc:
        log.error("%s", exc)
        return 1
    write_json_atomic(project_path(f["summary"]), {
        "encoder": encoder.name, "weights_id": encoder.weights_id, "feature_dim": encoder.feature_dim,
        "tile_sets": list(f.get("tile_sets", ["tiles"])),
        "n_slides": len(slide_ids), "n_tiles": summary.n_tiles, **summary.precision,
    })
    log.info("features: %d slides, %d tiles, %.1f tiles/s", len(slide_ids), summary.n_tiles, summary.tiles_per_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
