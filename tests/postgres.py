"""A real PostgreSQL for tests: ``$SLIDEMIL_TEST_POSTGRES_URL`` (CI starts one, `.ci/run`), else a throwaway
cluster started here from Debian's binaries (initdb into a temp folder, a unix socket, trust auth; as the
``postgres`` user when running as root, since PostgreSQL refuses to run as root), else ``None``."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

URL_ENV = "SLIDEMIL_TEST_POSTGRES_URL"
PORT = 54329


def postgres_bin() -> Path | None:
    """Folder holding initdb/pg_ctl: on the PATH, or the newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str | None]:
    """The server URL (database ``postgres``, user ``slidemil``), or None when no PostgreSQL is available."""
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    bindir = postgres_bin()
    if bindir is None:
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="slidemil-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    data = home / "data"
    subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "slidemil"]),
                   check=True, capture_output=True)
    opts = f"-k {home} -p {PORT} -c listen_addresses='' -c fsync=off"
    subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(home / "log"), "-w",
                              "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://slidemil@/postgres?host={home}&port={PORT}"
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def new_database(server_url: str, prefix: str) -> str:
    """Create a fresh database on the server and return its URL (tests never share state)."""
    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
