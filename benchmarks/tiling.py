"""Tiling benchmark: segmentation + tile coordinates + reading every tile once at a physical resolution.

Reports tiles/s and peak RSS per slide, each slide measured in its own fresh process so peak memory is not
inherited. Usage:

    python benchmarks/tiling.py --large 50000 --real      # synthetic 50k x 50k slide + ../shared/data slides
    python benchmarks/tiling.py --slide path/to/slide.svs --mpp 0.25

Results are printed as a markdown table and written to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path


def _measure(path: str, mpp: float | None, tile_px: int, target_mpp: float, queue) -> None:
    from slidemil.slides.backends import open_slide
    from slidemil.slides.tiling import TilingParams, plan_tiles
    from slidemil.slides.tissue import TissueParams, segment_tissue

    t0 = time.perf_counter()
    with open_slide(path, mpp=mpp) as reader:
        seg = segment_tissue(reader, TissueParams())
        t_seg = time.perf_counter() - t0
        tiles = plan_tiles(reader, seg, TilingParams(tile_px=tile_px, target_mpp=target_mpp))
        t_plan = time.perf_counter() - t0 - t_seg
        t1 = time.perf_counter()
        checksum = 0
        for x, y in tiles.coords:
            checksum += int(reader.read_tile((int(x), int(y)), tiles.geometry)[::32, ::32].sum())
        t_read = time.perf_counter() - t1
        dims = reader.dimensions
    total = time.perf_counter() - t0
    queue.put({
        "slide": Path(path).name,
        "width": dims[0],
        "height": dims[1],
        "n_tiles": len(tiles),
        "read_level": tiles.geometry.read_level,
        "segment_s": round(t_seg, 2),
        "plan_s": round(t_plan, 3),
        "read_s": round(t_read, 2),
        "total_s": round(total, 2),
        "tiles_per_s_read": round(len(tiles) / t_read, 1) if t_read else None,
        "tiles_per_s_total": round(len(tiles) / total, 1),
        "peak_rss_mb": peak_rss_mb(),
        "checksum": checksum,
    })


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    spawned child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(path: str, mpp: float | None, tile_px: int, target_mpp: float) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: peak RSS belongs to this slide only
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(path, mpp, tile_px, target_mpp, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", type=int, default=0, help="also generate and tile a synthetic N x N px slide")
    ap.add_argument("--large-mpp", type=float, default=0.25)
    ap.add_argument("--cache", default="benchmarks/.cache", help="where the large synthetic slide is kept")
    ap.add_argument("--real", action="store_true", help="tile the real slides in ../shared/data/slides")
    ap.add_argument("--slide", action="append", default=[], help="extra slide path (repeatable)")
    ap.add_argument("--mpp", type=float, default=None, help="mpp for --slide files without one")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--out", default="benchmarks/results/tiling.json")
    args = ap.parse_args()

    jobs: list[tuple[str, float | None]] = [(s, args.mpp) for s in args.slide]
    if args.large:
        from slidemil.demo.dataset import generate_large_slide

        path = Path(args.cache) / f"large_{args.large}px.svs"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            generate_large_slide(path, width_px=args.large, height_px=args.large, mpp=args.large_mpp, seed=0)
            print(f"generated {path} in {time.perf_counter() - t0:.0f} s")
        jobs.insert(0, (str(path), None))
    if args.real:
        root = Path(os.environ.get("SLIDEMIL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
        jobs += [(str(root / "slides/CMU-1-Small-Region.svs"), None),
                 (str(root / "slides/TCGA-CR-7395-01A-01-TS1.svs"), 0.25)]

    rows = [measure(p, m, args.tile_px, args.target_mpp) for p, m in jobs]
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    print(f"\nmachine: {machine}\ntile_px={args.tile_px} target_mpp={args.target_mpp}\n")
    cols = ["slide", "width", "height", "n_tiles", "read_level", "segment_s", "read_s", "total_s",
            "tiles_per_s_total", "peak_rss_mb"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "args": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
