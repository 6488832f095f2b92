"""One model thread per worker: every prediction of the worker runs here, interactive requests first.

``SlidePredictor`` is not safe to call concurrently and a CPU worker gains nothing from running two slides at
once, so synchronous requests and queued jobs share one loaded model through one thread. A priority queue puts
synchronous requests (a client is waiting on the socket) ahead of jobs (a client polls), so a synchronous
request waits for at most the slide in progress plus the synchronous requests admitted before it.

Cancellation is cooperative (threads cannot be killed): each work item gets a ``check`` that raises
:class:`PredictionCancelled` once the caller gave up or the run passed its time limit;
the predictor calls it before every tile, so abandoned work stops within one tile.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INTERACTIVE = 0
JOB = 1


class PredictionCancelled(Exception):
    """The caller gave up (client gone, request timed out): raised by ``check`` inside the work."""


class WorkTimedOut(Exception):
    """The work ran past its time limit and was stopped."""


@dataclass(order=True)
class _Work:
    priority: int
    seq: int
    fn: Callable[[Callable[[], None]], Any] = field(compare=False)
    run_limit_s: float | None = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    future: asyncio.Future = field(compare=False)
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)
    started: float | None = field(default=None, compare=False)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise PredictionCancelled("the request was cancelled")
        if self.run_limit_s is not None and self.started is not None:
            if time.monotonic() - self.started > self.run_limit_s:
                raise WorkTimedOut(f"stopped after the time limit of {self.run_limit_s:.0f} s")


class ModelRunner:
    """``await runner.run(fn, priority=..., timeout_s=...)`` runs ``fn(check)`` on the model thread."""

    def __init__(self, name: str = "slidemil-model") -> None:
        self._queue: queue.PriorityQueue[_Work] = queue.PriorityQueue()
        self._seq = itertools.count()
        self.running: _Work | None = None
        self.waiting = {INTERACTIVE: 0, JOB: 0}
        self.mean_run_s = 10.0  # exponential moving average of finished runs: the Retry-After estimate
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self.running is not None

    async def run(self, fn: Callable[[Callable[[], None]], Any], *, priority: int,
                  timeout_s: float | None = None, run_limit_s: float | None = None) -> Any:
        """Result of ``fn(check)``. ``timeout_s`` bounds waiting plus running (then the work is cancelled and
        :class:`WorkTimedOut` raised); ``run_limit_s`` bounds the run alone. Cancelling the awaiting task
        (client gone, server timeout) cancels the work too."""
        loop = asyncio.get_running_loop()
        work = _Work(priority, next(self._seq), fn, run_limit_s, loop, loop.create_future())
        with self._lock:
            self.waiting[priority] += 1
        self._queue.put(work)
        try:
            return await asyncio.wait_for(asyncio.shield(work.future), timeout_s)
        except TimeoutError:
            self._abandon(work)
            raise WorkTimedOut(f"not finished within {timeout_s:.0f} s") from None
        except asyncio.CancelledError:
            self._abandon(work)
            raise

    @staticmethod
    def _abandon(work: _Work) -> None:
        """Stop the work at its next check; its late outcome is collected, not logged as never retrieved."""
        work.cancelled.set()
        work.future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def retry_after_s(self, ahead: int) -> int:
        """Seconds after which a refused client may find room: the expected time for ``ahead`` slides."""
        return int(min(600, max(1, round(self.mean_run_s * max(1, ahead)))))

    def _serve(self) -> None:
        while True:
            work = self._queue.get()
            with self._lock:
                self.waiting[work.priority] -= 1
            if work.cancelled.is_set():
                self._finish(work, exc=PredictionCancelled("cancelled before it started"))
                continue
            self.running = work
            work.started = time.monotonic()
            try:
                result = work.fn(work.check)
            except BaseException as exc:  # handed to the awaiting request, which decides what it means
                self._finish(work, exc=exc)
            else:
                self._finish(work, result=result)
            finally:
                elapsed = time.monotonic() - work.started
                self.mean_run_s = 0.8 * self.mean_run_s + 0.2 * elapsed
                self.running = None

    @staticmethod
    def _finish(work: _Work, result: Any = None, exc: BaseException | None = None) -> None:
        def settle() -> None:
            if work.future.done():
                return
            if exc is not None:
                work.future.set_exception(exc)
            else:
                work.future.set_result(result)

        work.loop.call_soon_threadsafe(settle)
