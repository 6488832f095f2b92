"""The job queue's bookkeeping: admitted jobs, their spooled uploads on disk, and the limits on both.

A submitted slide is written to a private folder under ``spool_dir`` before BentoML sees the request; BentoML
then stores and replays only a small token (its task store keeps the whole request body, in memory and in
SQLite), so a queued job costs disk, not memory. A ticket is taken before the upload is read (its declared
size is reserved, so concurrent submits cannot overshoot) and released when BentoML's task ends, whatever the
outcome; its folder goes with it.
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from serving.uploads import ServingError

TOKEN_PREFIX = b"slidemil-job:"
_TOKEN = re.compile(rb"^slidemil-job:([0-9a-f]{32})$")


@dataclass
class Ticket:
    """One admitted job: its reserved bytes and, once spooled, the upload's folder, path and client name."""

    token: str
    reserved: int
    folder: Path
    path: Path | None = None
    name: str = ""
    released: bool = field(default=False)


class JobQueue:
    """Admission and lookup of queued jobs of one worker (thread-safe; the event loop and model thread use it)."""

    def __init__(self, spool_dir: Path, max_jobs: int, max_bytes: int) -> None:
        self.spool_dir = Path(spool_dir)
        self.max_jobs = int(max_jobs)
        self.max_bytes = int(max_bytes)
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()

    @property
    def jobs(self) -> int:
        return len(self._tickets)

    @property
    def queued_bytes(self) -> int:
        return sum(t.reserved for t in self._tickets.values())

    def admit(self, declared_bytes: int) -> Ticket | None:
        """A ticket reserving ``declared_bytes``, or None past either limit (the caller answers 429)."""
        with self._lock:
            if len(self._tickets) >= self.max_jobs:
                return None
            if self.queued_bytes + declared_bytes > self.max_bytes:
                return None
            self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            token = secrets.token_hex(16)
            folder = self.spool_dir / token
            folder.mkdir(mode=0o700)
            ticket = Ticket(token, int(declared_bytes), folder)
            self._tickets[token] = ticket
            return ticket

    def spooled(self, ticket: Ticket, path: Path, name: str) -> None:
        """Record the upload's file; the reservation shrinks to the real size."""
        with self._lock:
            ticket.path, ticket.name = path, name
            ticket.reserved = path.stat().st_size

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            self._tickets.pop(ticket.token, None)
        shutil.rmtree(ticket.folder, ignore_errors=True)

    def claim(self, token_file: Path) -> Ticket:
        """The ticket whose token BentoML handed to the task method (as the content of its file field)."""
        with open(token_file, "rb") as f:
            head = f.read(len(TOKEN_PREFIX) + 33)
        m = _TOKEN.match(head)
        ticket = None if m is None else self._tickets.get(m.group(1).decode())
        if ticket is None or ticket.path is None:
            raise ServingError(410, "job_upload_gone",
                               "this job's upload is no longer held by the server (a retried or replayed job); "
                               "submit the slide again")
        return ticket

    def describe(self) -> dict:
        return {"jobs": self.jobs, "queued_mb": round(self.queued_bytes / 1024 / 1024, 3)}
