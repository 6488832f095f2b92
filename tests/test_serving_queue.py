"""The serving worker's model thread and job queue without a server: priorities, cancellation, limits."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.jobs import TOKEN_PREFIX, JobQueue
from serving.runner import INTERACTIVE, JOB, ModelRunner, PredictionCancelled, WorkTimedOut
from serving.uploads import ServingError


def _slow_work(stopped: list[str], seconds: float = 5.0):
    """Work that checks for cancellation every 10 ms (as the predictor does before every tile)."""

    def work(check):
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < seconds:
                check()
                time.sleep(0.01)
        except (PredictionCancelled, WorkTimedOut) as exc:
            stopped.append(type(exc).__name__)
            raise
        return "finished"

    return work


def test_timed_out_work_is_cancelled_not_left_running():
    runner = ModelRunner()
    stopped: list[str] = []

    async def main():
        t0 = time.monotonic()
        with pytest.raises(WorkTimedOut):
            await runner.run(_slow_work(stopped), priority=INTERACTIVE, timeout_s=0.3)
        assert time.monotonic() - t0 < 1.0
        # the thread is free again at once: the abandoned work stopped at its next check
        assert await runner.run(lambda check: "next", priority=INTERACTIVE, timeout_s=2) == "next"

    asyncio.run(main())
    assert stopped == ["PredictionCancelled"] and not runner.busy


def test_run_limit_stops_a_job_that_runs_too_long():
    runner = ModelRunner()
    stopped: list[str] = []

    async def main():
        with pytest.raises(WorkTimedOut, match="time limit of 0 s"):
            await runner.run(_slow_work(stopped), priority=JOB, run_limit_s=0.2)

    asyncio.run(main())
    assert stopped == ["WorkTimedOut"]


def test_a_caller_that_gives_up_cancels_its_work():
    runner = ModelRunner()
    stopped: list[str] = []

    async def main():
        task = asyncio.ensure_future(runner.run(_slow_work(stopped), priority=INTERACTIVE))
        await asyncio.sleep(0.2)
        task.cancel()  # what the server does when the client is gone or its timeout fires
        with pytest.raises(asyncio.CancelledError):
            await task
        await runner.run(lambda check: None, priority=INTERACTIVE)

    asyncio.run(main())
    assert stopped == ["PredictionCancelled"]


def test_interactive_requests_run_before_queued_jobs():
    runner = ModelRunner()
    order: list[str] = []
    gate = threading.Event()

    async def main():
        first = asyncio.ensure_future(runner.run(lambda check: gate.wait(5), priority=JOB))
        await asyncio.sleep(0.1)  # the model thread is busy with the first job
        jobs = [asyncio.ensure_future(runner.run(lambda check, i=i: order.append(f"job{i}"), priority=JOB))
                for i in range(3)]
        await asyncio.sleep(0.05)
        sync = asyncio.ensure_future(runner.run(lambda check: order.append("sync"), priority=INTERACTIVE))
        await asyncio.sleep(0.05)
        assert runner.waiting == {INTERACTIVE: 1, JOB: 3}
        gate.set()
        await asyncio.gather(first, sync, *jobs)

    asyncio.run(main())
    assert order == ["sync", "job0", "job1", "job2"]
    assert 1 <= runner.retry_after_s(3) <= 600


def test_job_queue_limits_reservations_and_tokens(tmp_path):
    q = JobQueue(tmp_path / "spool", max_jobs=2, max_bytes=1000)
    a = q.admit(600)
    assert a is not None and a.folder.is_dir() and oct(a.folder.stat().st_mode & 0o777) == "0o700"
    assert q.admit(500) is None  # 1100 bytes would be queued
    b = q.admit(300)
    assert b is not None and q.admit(1) is None  # two jobs: full
    upload = a.folder / "upload.svs"
    upload.write_bytes(b"II*\x00" + bytes(96))
    q.spooled(a, upload, "slide.svs")
    assert q.queued_bytes == 400  # the reservation shrank to the real size
    token_file = tmp_path / "tmpabcdefghslide.svs"
    token_file.write_bytes(TOKEN_PREFIX + a.token.encode())
    assert q.claim(token_file) is a
    q.release(a)
    assert not a.folder.exists() and q.describe() == {"jobs": 1, "queued_mb": 0.0}
    with pytest.raises(ServingError) as info:  # a released (or made-up) token is not an upload
        q.claim(token_file)
    assert (info.value.status, info.value.code) == (410, "job_upload_gone")
    token_file.write_bytes(b"/etc/passwd")
    with pytest.raises(ServingError):
        q.claim(token_file)
