"""Feature-extraction throughput on CPU: tiles/s per encoder and DataLoader worker count.

Three numbers per setting, so a slow run can be attributed:

- ``read``: tiles/s of the DataLoader alone (slide I/O + JPEG decode + resize, no model);
- ``encode``: tiles/s of the encoder alone on tiles already in memory (preprocess + forward);
- ``end_to_end``: tiles/s of :func:`slidemil.features.extract_slide_features` (read, encode, write HDF5).

Tiles come from a real slide (``CMU-1-Small-Region.svs`` from the shared data by default; any slide with
``--slide``) or a procedural one (``--slide synthetic``), tiled at 0.5 um/px, 224 px. A small slide has few
non-overlapping tiles, so the grid stride shrinks until ``--n-tiles`` distinct positions exist (overlapping
tiles share slide pixels, which flatters I/O a little through OpenSlide's tile cache; the stride used is
recorded). Encoders use random weights (offline; weights do not change the speed).

    python benchmarks/features.py --encoder resnet50_trunc resnet18 --workers 0 1 2 \\
        --n-tiles 512 --batch-size 32 --out docs/benchmarks/features_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from slidemil.encoders import build_encoder
from slidemil.features.extract import TileDataset, extract_slide_features
from slidemil.slides.backends import open_slide
from slidemil.store import TileSetLayer, read_tile_set, write_tile_sets

REPO = Path(__file__).resolve().parents[1]
TILE_PX, TARGET_MPP = 224, 0.5


def shared_slide() -> Path:
    root = Path(os.environ.get("SLIDEMIL_SHARED_DATA", REPO.parent / "shared" / "data"))
    return root / "slides" / "CMU-1-Small-Region.svs"


def synthetic_slide(out_dir: Path) -> Path:
    """A 4096 px procedural H&E slide at 0.5 um/px (the project's demo generator)."""
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    spec = SyntheticSlideSpec(
        slide_id="bench_synthetic",
        case_id="bench",
        label="subtype_a",
        width_px=4096,
        height_px=4096,
        mpp=0.5,
        seed=0,
        tumour_fraction=0.1,
        tissue_coverage=0.8,
        n_tissue_pieces=1,
    )
    return generate_slide(spec, out_dir)["slide"]


def grid(width: int, height: int, size: int, stride: int) -> np.ndarray:
    """Row-major level-0 (x, y) of every full ``size`` tile on a ``stride`` grid."""
    gx, gy = np.meshgrid(np.arange(0, width - size + 1, stride), np.arange(0, height - size + 1, stride))
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)


def make_tile_file(slide: Path, n_tiles: int, out: Path) -> dict:
    """Write a tile file with ``n_tiles`` grid positions spread over the slide; returns its description."""
    with open_slide(slide) as reader:
        for stride in range(TILE_PX, 15, -16):
            geometry = reader.tile_geometry(TILE_PX, TARGET_MPP, stride_px=stride)
            positions = grid(*reader.dimensions, geometry.level0_px, geometry.level0_stride)
            if len(positions) >= n_tiles:
                break
        else:
            raise SystemExit(
                f"{slide.name}: only {len(positions)} tile positions at stride 16 px; lower --n-tiles"
            )
        coords = positions[np.linspace(0, len(positions) - 1, n_tiles).round().astype(int)]
        tiles = TileSetLayer("tiles", out.stem, str(slide), coords, geometry, np.ones(n_tiles, np.float32))
        write_tile_sets(out, [tiles], resume_key="benchmark")
        return {
            "slide": slide.name,
            "slide_px": list(reader.dimensions),
            "slide_mpp": reader.mpp,
            "backend": reader.backend,
            "tile_px": TILE_PX,
            "target_mpp": TARGET_MPP,
            "read_level": geometry.read_level,
            "read_px": geometry.read_px,
            "stride_px": stride,
            "n_tiles": n_tiles,
        }


def read_rate(tile_h5: Path, workers: int, batch_size: int) -> float:
    """Tiles/s of reading alone, through the same Dataset/DataLoader the extractor uses."""
    ds = TileDataset.from_tiles(read_tile_set(tile_h5))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, persistent_workers=False)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch.shape[0]
    ds.close()
    return n / (time.perf_counter() - start)


def encode_rate(encoder, tiles: torch.Tensor, batch_size: int) -> float:
    """Tiles/s of preprocess + forward on uint8 tiles already in memory (after one warm-up batch)."""
    encoder.eval()
    with torch.inference_mode():
        encoder(encoder.preprocess(tiles[:batch_size]))
        start = time.perf_counter()
        for i in range(0, len(tiles), batch_size):
            encoder(encoder.preprocess(tiles[i : i + batch_size]))
    return len(tiles) / (time.perf_counter() - start)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| encoder | workers | end-to-end tiles/s | encode-only tiles/s | read-only tiles/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['workers']} | {r['end_to_end']:.1f} | {r['encode']:.1f} | {r['read']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", nargs="+", default=["resnet50_trunc", "resnet18"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-tiles", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--slide", default=None, help="slide path, or 'synthetic' (default: shared CMU-1-Small-Region)"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="slidemil-bench-") as tmp:
        tmp = Path(tmp)
        if args.slide == "synthetic":
            slide = synthetic_slide(tmp / "slides")
        else:
            slide = Path(args.slide) if args.slide else shared_slide()
            if not slide.is_file():
                print(f"{slide} not found; use --slide PATH or --slide synthetic", file=sys.stderr)
                return 2
        tile_h5 = tmp / "tiles" / f"{slide.stem}.h5"
        setup = make_tile_file(slide, args.n_tiles, tile_h5)
        print(
            f"# {setup['n_tiles']} tiles of {slide.name} ({setup['tile_px']} px @ {TARGET_MPP} um/px, "
            f"stride {setup['stride_px']} px), batch {args.batch_size}, torch threads {torch.get_num_threads()}",
            flush=True,
        )

        reads = {w: read_rate(tile_h5, w, args.batch_size) for w in args.workers}
        ds = TileDataset.from_tiles(read_tile_set(tile_h5))
        tiles = torch.stack([ds[i] for i in range(len(ds))])
        ds.close()

        rows = []
        for name in args.encoder:
            enc = build_encoder(name, "random")
            enc_rate = encode_rate(enc, tiles, args.batch_size)
            for w in args.workers:
                st = extract_slide_features(
                    tile_h5,
                    enc,
                    tmp / "features" / name / f"{slide.stem}.h5",
                    batch_size=args.batch_size,
                    num_workers=w,
                    device="cpu",
                    progress=False,
                    overwrite=True,
                )
                rows.append(
                    {
                        "encoder": name,
                        "feature_dim": enc.feature_dim,
                        "workers": w,
                        "end_to_end": st.tiles_per_s,
                        "encode": enc_rate,
                        "read": reads[w],
                        "seconds": st.seconds,
                    }
                )
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)

    print()
    print(markdown(rows))
    result = {
        "benchmark": "feature extraction throughput (CPU)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "setup": {**setup, "batch_size": args.batch_size, "weights": "random", "device": "cpu"},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "cpu": _cpu_model(),
        },
        "results": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
