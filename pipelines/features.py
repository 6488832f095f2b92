"""DVC stage `features`: encode the configured tile sets of every validated slide with the chosen encoder.

One process by default; under ``torchrun --nproc-per-node N -m pipelines.features`` or ``srun`` (SLURM) each
rank encodes its deterministic share of the slides (``Ranks.shard``: slide i goes to rank i mod N) on its own
device, so every slide file is written once, atomically, by its owner. A rerun skips the slides that are up to
date on every rank, and rank 0 alone writes the summary once all ranks are done. The feature files are those of
one process: sharding only decides who computes a slide, never how.
"""

from __future__ import annotations

import logging
import sys

from pipelines.common import load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest
from slidemil.encoders.registry import build_encoder
from slidemil.features.extract import ExtractionSummary, extract_many
from slidemil.utils.atomic import remove_stale_temps, write_json_atomic
from slidemil.utils.distributed import Ranks, barrier, gather, process_group, ranks_from_env


def main() -> int:
    ranks = ranks_from_env()
    tag = "features" if ranks.world_size == 1 else f"features rank {ranks.rank}/{ranks.world_size}"
    log = setup_logging(tag)
    p = load_params()
    device = ranks.device(p["features"]["device"])
    with process_group(ranks, device, timeout_s=p["features"]["barrier_timeout_s"]):
        return run(p, ranks, device, log)


def run(p: dict, ranks: Ranks, device: str, log: logging.Logger) -> int:
    """This rank's share of the stage; every rank returns the same exit code."""
    f = p["features"]
    enc = f["encoder"]
    encoder = build_encoder(enc["name"], enc["weights"], seed=enc.get("seed", 0))
    if encoder.weights_id.startswith("random") and ranks.is_main:
        log.warning("encoder %s uses RANDOM weights (%s): fine for the offline demo, not for real studies",
                    encoder.name, encoder.weights_id)
    slide_ids = list(read_manifest(project_path(p["validate"]["manifest_out"]))["slide_id"])
    tiles_dir = project_path(p["tile"]["tiles_dir"])
    out_dir = project_path(f["out_dir"])
    if ranks.is_main:  # before any rank starts writing: the temporaries swept are a killed earlier run's
        swept = remove_stale_temps(out_dir)  # (.dvcignore hides them too)
        if swept:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", swept, out_dir)
    barrier()
    mine = ranks.shard(slide_ids)
    if ranks.world_size > 1:
        log.info("%d of %d slides on %s", len(mine), len(slide_ids), device)
    try:
        summary = extract_many([tiles_dir / f"{s}.h5" for s in mine], encoder, out_dir,
                               tile_sets=tuple(f.get("tile_sets", ["tiles"])), batch_size=f["batch_size"],
                               num_workers=f["num_workers"], device=device, progress=ranks.is_main,
                               precision=f.get("precision", "auto"),
                               allow_failures=True)
    except Exception as exc:  # e.g. the device is unusable: reported like a slide failure, so no rank hangs
        summary = ExtractionSummary(failures={f"rank {ranks.rank}": f"{type(exc).__name__}: {exc}"})
    done = gather({"n_tiles": summary.n_tiles, "seconds": summary.seconds, "failures": summary.failures,
                   "precision": summary.precision})
    failures = {k: v for d in done for k, v in d["failures"].items()}
    if failures:
        if ranks.is_main:
            log.error("feature extraction failed for %d slide(s):\n%s", len(failures),
                      "\n".join(f"  {sid}: {msg}" for sid, msg in failures.items()))
        return 1
    n_tiles = sum(d["n_tiles"] for d in done)
    if ranks.is_main:
        write_json_atomic(project_path(f["summary"]), {
            "encoder": encoder.name, "weights_id": encoder.weights_id, "feature_dim": encoder.feature_dim,
            "tile_sets": list(f.get("tile_sets", ["tiles"])),
            "n_slides": len(slide_ids), "n_tiles": n_tiles, **done[0]["precision"],
        })
        seconds = max(d["seconds"] for d in done)
        log.info("features: %d slides, %d tiles, %.1f tiles/s over %d process(es)", len(slide_ids), n_tiles,
                 n_tiles / seconds if seconds > 0 else 0.0, ranks.world_size)
    barrier()  # the summary exists before any rank exits (the launcher reports the job done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
