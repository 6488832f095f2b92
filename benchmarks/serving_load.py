"""Serving under load: N concurrent clients submit a demo slide as jobs while a few post it synchronously.

By default it starts its own server (``bentoml serve serving.service:SlideMIL`` on 127.0.0.1, 1 worker) on a
throwaway MLflow store holding an untrained bundle with the demo's encoder, and a slide of the demo dataset's
default size; ``--url`` points it at a running server instead (RSS is then not measured).

    python benchmarks/serving_load.py                    # 50 job clients + 6 synchronous clients
    python benchmarks/serving_load.py --clients 10 --slide data/demo/slide_000.svs

Reports: successes and errors, p50/p95 of job completion (submit to result), /health answers during the run,
peak RSS of the server's process tree, and what the synchronous endpoint answered (200 / 429 + Retry-After,
never 504). Writes ``--out`` (JSON) and the same figures as markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `serving` lives beside src/, not inside the package

from serving.devserver import BentoServer, register_random_bundle  # noqa: E402
from serving.loadgen import job_load  # noqa: E402


def demo_slide(out_dir: Path) -> Path:
    """A slide of the demo dataset's default size (1500 x 1200 um at 0.5 um/px)."""
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    spec = SyntheticSlideSpec("load_slide", "bench", "subtype_a", 3000, 2400, 0.5, seed=11, tumour_fraction=0.1)
    return generate_slide(spec, out_dir)["slide"]


def markdown(s: dict, slide: Path) -> str:
    sync = s["sync"]
    return "\n".join([
        f"Slide `{slide.name}` ({slide.stat().st_size / 1e6:.2f} MB), {s['clients']} job clients at once, "
        f"{sync['clients']} synchronous clients meanwhile, 1 worker.",
        "",
        "| job clients | successes | errors | p50 | p95 | wall | /health polls (failed, max latency) | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['clients']} | {s['successes']} | {len(s['errors'])} | {s['p50_s']} s | {s['p95_s']} s | "
        f"{s['wall_s']} s | {s['health_polls']} ({s['health_failures']}, {s['health_max_s']} s) | "
        f"{s['peak_rss_mb']} MB |",
        "",
        f"Synchronous answers under the same load: {sync['status_counts']} "
        f"(every 429 with Retry-After: {sync['retry_after_on_429']}).",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (default: start one)")
    ap.add_argument("--slide", type=Path, help="slide to send (default: a demo-sized synthetic slide)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--sync-clients", type=int, default=6)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_load.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        slide = args.slide or demo_slide(tmp)
        if args.url:
            summary = job_load(args.url, slide, args.clients, sync_clients=args.sync_clients)
        else:
            uri = f"sqlite:///{tmp / 'mlflow.db'}"
            register_random_bundle(uri, tmp, "serving-load", encoder=args.encoder)
            env = {"MLFLOW_TRACKING_URI": uri, "BENTOML_HOME": str(tmp / "bentoml_home"),
                   "SLIDEMIL_MODEL_NAME": "serving-load", "SLIDEMIL_SPOOL_DIR": str(tmp / "spool")}
            with BentoServer(env, tmp / "server.log") as srv:
                summary = job_load(srv.url, slide, args.clients, sync_clients=args.sync_clients,
                                   server_pid=srv.proc.pid)
        summary["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
        text = markdown(summary, slide)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
