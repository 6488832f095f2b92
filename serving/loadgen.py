"""Load the real service the way the reliability test and ``benchmarks/serving_load.py`` do (not used by it).

``job_load`` starts ``clients`` threads that each submit one slide as a job and poll it to the end, plus
``sync_clients`` threads that post the same slide to the synchronous endpoint while the queue is full; a
watcher polls ``GET /health`` and samples the RSS of the server's whole process tree throughout.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants (BentoML's arbiter plus its workers)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class Watcher(threading.Thread):
    """Polls ``/health`` (status, latency) and the server's RSS every ``interval_s`` until stopped."""

    def __init__(self, url: str, server_pid: int | None, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.url, self.server_pid, self.interval_s = url, server_pid, interval_s
        self.stop_event = threading.Event()
        self.health: list[tuple[int, float]] = []  # (status or 0 on error, seconds)
        self.peak_rss = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            try:
                status = requests.get(f"{self.url}/health", timeout=10).status_code
            except requests.RequestException:
                status = 0
            self.health.append((status, time.perf_counter() - t0))
            if self.server_pid is not None:
                self.peak_rss = max(self.peak_rss, tree_rss_bytes(self.server_pid))
            self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=15)


def submit_and_wait(url: str, slide: Path, timeout_s: float, poll_s: float = 0.5) -> dict:
    """Submit ``slide`` as a job, poll its status, fetch the result: what happened and how long it took."""
    t0 = time.perf_counter()
    with open(slide, "rb") as f:
        resp = requests.post(f"{url}/predict_job/submit", files={"slide": (slide.name, f)},
                             data={"top_k": "3"}, timeout=120)
    out = {"submit_status": resp.status_code, "submit_s": time.perf_counter() - t0}
    if resp.status_code != 200:
        return {**out, "ok": False, "error": resp.text[:300]}
    task_id = resp.json()["task_id"]
    status = "in_progress"
    while status == "in_progress" and time.perf_counter() - t0 < timeout_s:
        time.sleep(poll_s)
        status = requests.get(f"{url}/predict_job/status", params={"task_id": task_id}, timeout=30).json()["status"]
    result = requests.get(f"{url}/predict_job/get", params={"task_id": task_id}, timeout=60)
    body = result.json() if result.headers.get("content-type", "").startswith("application/json") else {}
    return {**out, "ok": status == "completed" and result.status_code == 200 and "label" in body,
            "status": status, "result_status": result.status_code, "seconds": time.perf_counter() - t0,
            "label": body.get("label"), "error": None if result.status_code == 200 else result.text[:300]}


def post_sync(url: str, slide: Path) -> dict:
    t0 = time.perf_counter()
    with open(slide, "rb") as f:
        resp = requests.post(f"{url}/predict", files={"slide": (slide.name, f)}, data={"top_k": "3"}, timeout=900)
    return {"status": resp.status_code, "retry_after": resp.headers.get("Retry-After"),
            "seconds": time.perf_counter() - t0}


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def job_load(url: str, slide: Path, clients: int, *, sync_clients: int = 0, server_pid: int | None = None,
             timeout_s: float = 900) -> dict:
    """Run the load; a summary (counts, p50/p95 job completion, health, peak RSS, sync answers)."""
    watcher = Watcher(url, server_pid)
    watcher.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients + sync_clients) as pool:
        jobs = [pool.submit(submit_and_wait, url, slide, timeout_s) for _ in range(clients)]
        time.sleep(2.0)  # the queue is full now: the synchronous endpoint meets the same load
        syncs = [pool.submit(post_sync, url, slide) for _ in range(sync_clients)]
        job_results = [f.result() for f in jobs]
        sync_results = [f.result() for f in syncs]
    wall = time.perf_counter() - t0
    watcher.stop()
    done = [r["seconds"] for r in job_results if r["ok"]]
    health_codes = [s for s, _ in watcher.health]
    return {
        "clients": clients,
        "successes": len(done),
        "errors": [r for r in job_results if not r["ok"]],
        "p50_s": round(statistics.median(done), 2) if done else None,
        "p95_s": round(percentile(done, 95), 2) if done else None,
        "max_s": round(max(done), 2) if done else None,
        "wall_s": round(wall, 1),
        "submit_p95_s": round(percentile([r["submit_s"] for r in job_results], 95), 3),
        "labels": sorted({r.get("label") for r in job_results if r["ok"]}),
        "health_polls": len(health_codes),
        "health_failures": sum(1 for s in health_codes if s != 200),
        "health_max_s": round(max((t for _, t in watcher.health), default=0.0), 3),
        "peak_rss_mb": round(watcher.peak_rss / 1024 / 1024, 1),
        "sync": {
            "clients": sync_clients,
            "status_counts": {str(s): sum(1 for r in sync_results if r["status"] == s)
                              for s in sorted({r["status"] for r in sync_results})},
            "retry_after_on_429": all(r["retry_after"] for r in sync_results if r["status"] == 429),
        },
    }
