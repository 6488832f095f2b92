"""Serving latency: one demo slide sent N times sequentially, then N times concurrently, over real HTTP.

By default it starts its own server (``bentoml serve serving.service:SlideMIL`` on 127.0.0.1) on a throwaway
MLflow store holding an untrained bundle with the demo's encoder, so it runs before any training. Point it
at a running server with ``--url``, or at a real registry with ``--tracking-uri`` and ``--model-name``.

    python benchmarks/serving_latency.py -n 20
    python benchmarks/serving_latency.py --url http://127.0.0.1:3000 --slide data/demo/slide_000.svs

Prints a markdown table and writes ``--out`` (JSON) plus the same markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `serving` lives beside src/, not inside the package

from serving.devserver import BentoServer, register_random_bundle  # noqa: E402


def demo_slide(out_dir: Path, width_um: float, height_um: float, mpp: float) -> Path:
    """A slide of the demo dataset's default size (1500 x 1200 um) and pixel size."""
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    spec = SyntheticSlideSpec(
        "bench_slide",
        "bench",
        "subtype_a",
        round(width_um / mpp),
        round(height_um / mpp),
        mpp,
        seed=11,
        tumour_fraction=0.1,
    )
    return generate_slide(spec, out_dir)["slide"]


def one_request(url: str, slide: Path, mpp: float | None) -> dict:
    data = {"top_k": "5"} | ({"mpp": str(mpp)} if mpp else {})
    t0 = time.perf_counter()
    with open(slide, "rb") as f:
        resp = requests.post(f"{url}/predict", files={"slide": (slide.name, f)}, data=data, timeout=1800)
    elapsed = time.perf_counter() - t0
    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    if resp.status_code != 200:
        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:500]}")
    return {
        "latency_s": elapsed,
        "n_tiles": body.get("n_tiles"),
        "timings_s": body.get("timings_s", {}),
        "probabilities": body.get("probabilities"),
    }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarise(results: list[dict], wall_s: float) -> dict:
    lat = [r["latency_s"] for r in results]
    phases = sorted({k for r in results for k in r["timings_s"]})
    return {
        "n": len(lat),
        "p50_s": round(percentile(lat, 50), 3),
        "p95_s": round(percentile(lat, 95), 3),
        "mean_s": round(statistics.fmean(lat), 3),
        "max_s": round(max(lat), 3),
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(lat) / wall_s, 3),
        "server_mean_s": {
            p: round(statistics.fmean(r["timings_s"].get(p, 0.0) for r in results), 3) for p in phases
        },
    }


def run(url: str, slide: Path, mpp: float | None, n: int, concurrency: int) -> dict:
    load_before = os.getloadavg()[0]
    warm = one_request(url, slide, mpp)  # not counted: first-request effects
    t0 = time.perf_counter()
    sequential = [one_request(url, slide, mpp) for _ in range(n)]
    seq = summarise(sequential, time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        concurrent = list(pool.map(lambda _: one_request(url, slide, mpp), range(n)))
    conc = summarise(concurrent, time.perf_counter() - t0)
    consistent = all(r["probabilities"] == warm["probabilities"] for r in sequential + concurrent)
    return {
        "n_tiles": warm["n_tiles"],
        "sequential": seq,
        "concurrent": conc,
        "identical_results": consistent,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # shared machines: context
    }


def markdown(report: dict) -> str:
    s, c = report["sequential"], report["concurrent"]
    lines = [
        f"Slide `{report['slide']}` ({report['slide_mb']} MB, {report['n_tiles']} tiles), encoder "
        f"`{report['encoder']}`, {report['cpu_count']} CPU cores, {report['workers']} worker(s); "
        f"N = {s['n']}, concurrency {report['concurrency']}; 1-min load average before/after "
        f"{report['load_avg_1m'][0]}/{report['load_avg_1m'][1]}.",
        "",
        "| mode | p50 (s) | p95 (s) | mean (s) | max (s) | requests/s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {mode} | {r['p50_s']} | {r['p95_s']} | {r['mean_s']} | {r['max_s']} | {r['requests_per_s']} |"
            for mode, r in (("sequential", s), ("concurrent", c))
        ),
        "",
        "Server-side time per request (sequential means, s): "
        + ", ".join(f"{k} {v}" for k, v in s["server_mean_s"].items()),
        f"All responses identical: {report['identical_results']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server; default: start one")
    ap.add_argument("--slide", type=Path, help="slide to send; default: a generated demo-sized .svs")
    ap.add_argument("--mpp", type=float, help="pixel size to send with the slide (plain images)")
    ap.add_argument("-n", type=int, default=20, help="requests per mode")
    ap.add_argument("--concurrency", type=int, default=8, help="parallel clients in the concurrent mode")
    ap.add_argument(
        "--encoder", default="resnet50_trunc", help="encoder of the throwaway bundle (demo default)"
    )
    ap.add_argument(
        "--tracking-uri", help="serve the champion of this MLflow store instead of a throwaway one"
    )
    ap.add_argument("--model-name", default="slidemil-demo")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--width-um", type=float, default=1500.0)
    ap.add_argument("--height-um", type=float, default=1200.0)
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="pixel size of the generated slide")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_latency.json")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="slidemil-serving-bench-") as tmp_str:
        tmp = Path(tmp_str)
        slide = args.slide or demo_slide(tmp, args.width_um, args.height_um, args.slide_mpp)
        encoder = args.encoder
        server = None
        url = args.url
        if url is None:
            uri = args.tracking_uri
            model_name = args.model_name
            if uri is None:
                uri, model_name = f"sqlite:///{tmp / 'mlflow.db'}", "serving-bench"
                register_random_bundle(uri, tmp, model_name, encoder=encoder)
            env = {
                "MLFLOW_TRACKING_URI": uri,
                "BENTOML_HOME": str(tmp / "bentoml_home"),
                "SLIDEMIL_MODEL_NAME": model_name,
                "SLIDEMIL_WORKERS": str(args.workers),
            }
            server = BentoServer(env, tmp / "server.log").start()
            url = server.url
        try:
            meta = requests.post(f"{url}/metadata", json={}, timeout=60).json()
            encoder = meta["encoder"]["name"]
            report = run(url, slide, args.mpp, args.n, args.concurrency)
        finally:
            if server is not None:
                server.stop()
        report.update(
            {
                "slide": slide.name,
                "slide_mb": round(slide.stat().st_size / 1e6, 2),
                "encoder": encoder,
                "model": meta["model"],
                "cpu_count": os.cpu_count(),
                "workers": args.workers if server else None,
                "concurrency": args.concurrency,
                "python": platform.python_version(),
                "platform": platform.platform(),
            }
        )
    md = markdown(report)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
