"""Feature extraction against the encoder's own limit: compute-only rates and the end-to-end rate, one run.

Printed for each encoder, so the end-to-end figure always comes with the ceiling it should reach:

- ``compute``: tiles/s of preprocess + forward on uint8 tiles already in memory (after a warm-up batch), in
  fp32, fp32 + channels_last, and bf16 autocast + channels_last (labelled ``not native`` where the CPU has no
  bf16 hardware: still measured, to show why ``auto`` skips it);
- ``end_to_end``: tiles/s of :func:`slidemil.features.extract_many` (one tile stream, worker processes reading
  the real slide, encoding, atomic HDF5 writes) in the precision ``auto`` picks and in fp32, with the ratio to
  the compute-only rate of the same precision and layout;
- on CUDA (``--device cuda``): the same, plus the GPU utilisation sampled during the end-to-end run.

Tiles come from a real slide (``CMU-1-Small-Region.svs`` from the shared data by default; any slide with
``--slide``) or a procedural one (``--slide synthetic``), 224 px at 0.5 um/px, split over ``--slides`` tile
files so the stream crosses slide boundaries. A small slide has few non-overlapping tiles, so the grid stride
shrinks until ``--n-tiles`` distinct positions exist (the stride used is printed). Encoders use random weights
(offline; weights do not change the speed).

    python benchmarks/features.py --encoder resnet50_trunc resnet18 --n-tiles 256 --workers 1 \\
        --out benchmarks/results/features.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from slidemil.encoders import build_encoder
from slidemil.encoders.precision import Precision, choose_precision, cpu_flags, cpu_native_bf16
from slidemil.features.extract import TileDataset, encode_batch, extract_many, prepare_encoder, resolve_device
from slidemil.slides.backends import open_slide
from slidemil.store import TileSetLayer, read_tile_set, write_tile_sets

REPO = Path(__file__).resolve().parents[1]
TILE_PX, TARGET_MPP = 224, 0.5
#: flags worth naming next to a CPU figure
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def shared_slide() -> Path:
    root = Path(os.environ.get("SLIDEMIL_SHARED_DATA", REPO.parent / "shared" / "data"))
    return root / "slides" / "CMU-1-Small-Region.svs"


def synthetic_slide(out_dir: Path) -> Path:
    """A 4096 px procedural H&E slide at 0.5 um/px (the project's demo generator)."""
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    spec = SyntheticSlideSpec(slide_id="bench_synthetic", case_id="bench", label="subtype_a", width_px=4096,
                              height_px=4096, mpp=0.5, seed=0, tumour_fraction=0.1, tissue_coverage=0.8,
                              n_tissue_pieces=1)
    return generate_slide(spec, out_dir)["slide"]


def grid(width: int, height: int, size: int, stride: int) -> np.ndarray:
    """Row-major level-0 (x, y) of every full ``size`` tile on a ``stride`` grid."""
    gx, gy = np.meshgrid(np.arange(0, width - size + 1, stride), np.arange(0, height - size + 1, stride))
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)


def make_tile_files(slide: Path, n_tiles: int, n_files: int, out_dir: Path) -> tuple[list[Path], dict]:
    """``n_tiles`` grid positions spread over the slide, split over ``n_files`` tile files."""
    with open_slide(slide) as reader:
        for stride in range(TILE_PX, 15, -16):
            geometry = reader.tile_geometry(TILE_PX, TARGET_MPP, stride_px=stride)
            positions = grid(*reader.dimensions, geometry.level0_px, geometry.level0_stride)
            if len(positions) >= n_tiles:
                break
        else:
            raise SystemExit(f"{slide.name}: only {len(positions)} tile positions at stride 16 px; lower --n-tiles")
        coords = positions[np.linspace(0, len(positions) - 1, n_tiles).round().astype(int)]
        files = []
        for i, part in enumerate(np.array_split(coords, n_files)):
            files.append(out_dir / f"{slide.stem}_{i}.h5")
            tiles = TileSetLayer("tiles", files[-1].stem, str(slide), part, geometry, np.ones(len(part), np.float32))
            write_tile_sets(files[-1], [tiles], resume_key="benchmark")
        return files, {"slide": slide.name, "slide_px": list(reader.dimensions), "slide_mpp": reader.mpp,
                       "backend": reader.backend, "tile_px": TILE_PX, "target_mpp": TARGET_MPP,
                       "read_level": geometry.read_level, "read_px": geometry.read_px, "stride_px": stride,
                       "n_tiles": n_tiles, "n_tile_files": n_files}


def load_tiles(files: list[Path]) -> torch.Tensor:
    parts = []
    for f in files:
        ds = TileDataset.from_tiles(read_tile_set(f))
        parts.extend(ds[i] for i in range(len(ds)))
        ds.close()
    return torch.stack(parts)


def compute_rate(encoder, tiles: torch.Tensor, batch_size: int, device: torch.device, prec: Precision) -> float:
    """Tiles/s of preprocess + forward (as the extractor runs them) on tiles in memory, after one warm-up."""
    encoder.to(memory_format=torch.channels_last if prec.channels_last else torch.contiguous_format)
    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    encode_batch(encoder, batches[0], device, prec)
    _sync(device)
    start = time.perf_counter()
    for b in batches:
        encode_batch(encoder, b, device, prec)
    _sync(device)
    return len(tiles) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GpuSampler:
    """Mean GPU utilisation (%) while running: torch.cuda.utilization (NVML), else nvidia-smi, else None."""

    def __init__(self, device: torch.device, period_s: float = 0.2):
        self.device, self.period_s, self.samples = device, period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # noqa: BLE001 - no pynvml: ask nvidia-smi
            smi = shutil.which("nvidia-smi")
            if not smi:
                return None
            out = subprocess.run([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={self.device.index or 0}"], capture_output=True, text=True)
            return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.period_s)

    def __enter__(self) -> GpuSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def end_to_end(files: list[Path], encoder, out_dir: Path, *, batch_size: int, workers: int,
               device: torch.device, precision: str) -> dict:
    """Wall-clock tiles/s of extract_many over the tile files (output rewritten each time)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    with GpuSampler(device) as gpu:
        start = time.perf_counter()
        summary = extract_many(files, encoder, out_dir, batch_size=batch_size, num_workers=workers,
                               device=device, precision=precision, progress=False, overwrite=True)
        wall = time.perf_counter() - start
    return {"tiles_per_s": summary.n_tiles / wall, "seconds": wall, "gpu_util_mean": gpu.mean}


def run_encoder(name: str, tiles: torch.Tensor, files: list[Path], tmp: Path, args, device: torch.device) -> dict:
    """Compute-only rates (best of ``--repeats``), then per setting the end-to-end rate, each repeat measured
    right after a compute-only run of the same precision: on a shared machine the ratio of neighbours is far
    steadier than either rate (the median ratio is reported)."""
    enc = build_encoder(name, "random")
    prepare_encoder(enc, device, "fp32")
    fp32 = Precision(device.type, None, False, "benchmark: fp32, default layout")
    fp32_cl = choose_precision(device, "fp32")
    bf16_cl = choose_precision(device, "bf16") if device.type == "cpu" else choose_precision(device, "auto")
    auto = choose_precision(device, "auto")
    native = device.type == "cuda" or cpu_native_bf16()
    variants = {"fp32": fp32, "fp32_channels_last": fp32_cl, f"{bf16_cl.name}_channels_last": bf16_cl}
    compute = {k: max(compute_rate(enc, tiles, args.batch_size, device, p) for _ in range(args.repeats))
               for k, p in variants.items()}
    line = "  ".join(f"{k} {v:.1f}" for k, v in compute.items())
    print(f"{name}: compute-only tiles/s (best of {args.repeats}): {line}"
          + ("" if native else "  (bf16 NOT native here: auto skips it)"), flush=True)
    rows = []
    for precision, prec in (("auto", auto), ("fp32", fp32_cl)):
        if precision == "fp32" and auto.name == "float32":
            continue  # auto already is fp32 + channels_last here
        for w in args.workers:
            pairs = []
            for _ in range(args.repeats):
                c = compute_rate(enc, tiles, args.batch_size, device, prec)
                e = end_to_end(files, enc, tmp / "features" / name, batch_size=args.batch_size, workers=w,
                               device=device, precision=precision)
                pairs.append((c, e))
            ratios = [e["tiles_per_s"] / c for c, e in pairs]
            row = {"encoder": name, "precision": prec.name, "workers": w,
                   "end_to_end": max(e["tiles_per_s"] for _, e in pairs),
                   "compute_same_precision": max(c for c, _ in pairs),
                   "ratio": float(np.median(ratios)), "ratios": ratios,
                   "gpu_util_mean": pairs[-1][1]["gpu_util_mean"]}
            rows.append(row)
            gpu = f", GPU utilisation {row['gpu_util_mean']:.0f} %" if row["gpu_util_mean"] is not None else ""
            print(f"{name}: end-to-end {prec.name} ({precision}), {w} reading worker(s): "
                  f"{row['end_to_end']:.1f} tiles/s vs compute-only {row['compute_same_precision']:.1f} (best of "
                  f"{args.repeats}); ratio median {100 * row['ratio']:.0f} % "
                  f"({', '.join(f'{100 * r:.0f}' for r in ratios)}){gpu}", flush=True)
    return {"encoder": name, "feature_dim": enc.feature_dim, "compute": compute, "bf16_native": native,
            "auto": auto.describe(), "end_to_end": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| encoder | compute fp32 | + channels_last | bf16 + channels_last | end to end (precision, workers) "
             "| ratio (median) |", "|---|---:|---:|---:|---|---:|"]
    for r in results:
        c = list(r["compute"].values())
        bf16 = f"{c[2]:.1f}" + ("" if r["bf16_native"] else " (not native)")
        for row in r["end_to_end"]:
            lines.append(f"| {r['encoder']} | {c[0]:.1f} | {c[1]:.1f} | {bf16} | {row['end_to_end']:.1f} "
                         f"({row['precision']}, {row['workers']} worker) | {100 * row['ratio']:.0f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", nargs="+", default=["resnet50_trunc", "resnet18"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1], help="DataLoader reading workers")
    ap.add_argument("--n-tiles", type=int, default=256)
    ap.add_argument("--slides", type=int, default=4, help="tile files the tiles are split over")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="alternating compute-only / end-to-end pairs")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--slide", default=None, help="slide path, or 'synthetic' (default: shared CMU-1-Small-Region)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    flags = [f for f in SHOWN_FLAGS if f in cpu_flags()]
    print(f"# {_cpu_model()}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'none of ' + ' '.join(SHOWN_FLAGS)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""), flush=True)

    with tempfile.TemporaryDirectory(prefix="slidemil-bench-") as tmp:
        tmp = Path(tmp)
        if args.slide == "synthetic":
            slide = synthetic_slide(tmp / "slides")
        else:
            slide = Path(args.slide) if args.slide else shared_slide()
            if not slide.is_file():
                print(f"{slide} not found; use --slide PATH or --slide synthetic", file=sys.stderr)
                return 2
        files, setup = make_tile_files(slide, args.n_tiles, args.slides, tmp / "tiles")
        print(f"# {setup['n_tiles']} tiles of {slide.name} in {len(files)} tile files ({TILE_PX} px @ "
              f"{TARGET_MPP} um/px, stride {setup['stride_px']} px), batch {args.batch_size}", flush=True)
        tiles = load_tiles(files)
        results = [run_encoder(name, tiles, files, tmp, args, device) for name in args.encoder]

    print()
    print(markdown(results))
    result = {
        "benchmark": "feature extraction: compute-only vs end-to-end",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/features.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setup": {**setup, "batch_size": args.batch_size, "weights": "random", "device": str(device)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu": _cpu_model(),
                        "cpu_flags": flags, "load_avg": os.getloadavg()[0],
                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "results": results,
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
