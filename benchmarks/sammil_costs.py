"""What SAM-MIL costs on this machine (methods.md section D): Segment Anything per 1024-px frame, and the spatial
consistency loss on a 50,000-tile bag.

* SAM ViT-B with random weights (the architecture's cost does not depend on the weights; nothing is downloaded):
  one image embedding of a 1024-px frame of a real slide, and the automatic mask generator with the paper's
  settings (32 x 32 points, one crop layer = 1 + 4 embeddings); wall time and peak resident memory.
* L_cons forward + backward on a synthetic 50k-tile bag (every tile in one of ``--segments`` regions plus ~10%
  in a second, overlapping one): wall time and the memory the linear-memory form needs, against the pairwise
  |S| x |S| definition's size.

Each measurement runs in its own child process so its peak RSS is its own.

    python benchmarks/sammil_costs.py                 # ~3-6 min on 2 CPU cores (the full SAM generator dominates)
    python benchmarks/sammil_costs.py --skip-generator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sam_frame(slide: str, generator: bool) -> dict:
    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    from slidemil.segmenters.sam import GENERATOR_DEFAULTS, generate_masks
    from slidemil.slides import open_slide

    torch.manual_seed(0)
    with open_slide(slide) as reader:
        frame, _ = reader.thumbnail(max_side=1024)
    frame = np.ascontiguousarray(frame)
    model = sam_model_registry["vit_b"]().eval()
    base = _peak_mb()
    out: dict = {"frame_px": list(frame.shape[:2]), "model_mb": round(base, 0),
                 "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    with torch.inference_mode():
        predictor = SamPredictor(model)
        t0 = time.perf_counter()
        predictor.set_image(frame)
        out["embedding_s"] = round(time.perf_counter() - t0, 2)
        out["embedding_peak_mb"] = round(_peak_mb(), 0)
        if generator:
            gen = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **GENERATOR_DEFAULTS)
            t0 = time.perf_counter()
            masks = generate_masks(gen, frame)
            out["generator_s"] = round(time.perf_counter() - t0, 1)
            out["generator_masks_random_weights"] = len(masks)
            out["generator_settings"] = GENERATOR_DEFAULTS
    out["peak_rss_mb"] = round(_peak_mb(), 0)
    return out


def consistency(n_tiles: int, n_segments: int) -> dict:
    import numpy as np
    import torch

    from slidemil.methods.sammil import consistency_loss

    rng = np.random.default_rng(0)
    first = rng.integers(0, n_segments, n_tiles)
    extra = rng.choice(n_tiles, n_tiles // 10, replace=False)
    pairs = np.concatenate([np.stack([np.arange(n_tiles), first], 1),
                            np.stack([extra, rng.integers(0, n_segments, extra.size)], 1)])
    pairs = torch.from_numpy(np.unique(pairs, axis=0))
    raw = torch.randn(n_tiles, requires_grad=True)
    base = _peak_mb()
    t0 = time.perf_counter()
    for _ in range(5):
        loss = consistency_loss(torch.softmax(raw, 0), pairs)
        loss.backward()
    seconds = (time.perf_counter() - t0) / 5
    sizes = np.bincount(pairs[:, 1].numpy(), minlength=n_segments)
    return {"n_tiles": n_tiles, "n_segments": n_segments, "memberships": int(pairs.shape[0]),
            "forward_backward_s": round(seconds, 4), "peak_rss_increase_mb": round(_peak_mb() - base, 1),
            "pairwise_matrix_mb": round(float((sizes.astype(np.float64) ** 2).sum()) * 4 / 2**20, 1),
            "loss": float(loss)}


def _child(what: str, args: argparse.Namespace) -> dict:
    code = f"import json, sys; sys.path[:0] = [{str(REPO / 'src')!r}, {str(REPO)!r}]; " \
           f"from benchmarks.sammil_costs import *; print(json.dumps({what}))"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = Path(os.environ.get("SLIDEMIL_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--slide", default=str(data / "slides" / "CMU-1-Small-Region.svs"))
    ap.add_argument("--tiles", type=int, default=50_000)
    ap.add_argument("--segments", type=int, default=200)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-generator", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sammil_costs.json")
    args = ap.parse_args(argv)
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads},
        "sam_vit_b": _child(f"sam_frame({args.slide!r}, {not args.skip_generator})", args),
        "consistency": _child(f"consistency({args.tiles}, {args.segments})", args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
