"""Which process owns a piece of work, and whether it is still alive (for runs a killed process left open)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: tags every slidemil MLflow run carries: which process on which host owns it while it is RUNNING
HOST_TAG, PID_TAG, PID_START_TAG = "slidemil.host", "slidemil.pid", "slidemil.pid_start"


def process_tags() -> dict[str, str]:
    """Tags naming this process, so a later run can tell a live RUNNING run from one whose process was killed."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PID_START_TAG: start_time(os.getpid())}


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' off Linux): tells a reused pid from the original."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` runs on this host and, when ``start`` is known, is the same process that had that start."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return not start or start_time(pid) in ("", start)
