"""Install the project into a venv with uv, configured from the machine's pip configuration.

Why: uv installs the pinned stack several times faster than pip, but it does not read pip.conf or PIP_*
variables. Corporate and offline machines put their index, extra indexes, wheel directories, certificates and
constraints there, so this script reads them through ``pip config list`` (files and environment, with pip's own
precedence) and passes the uv equivalents. Exit status 3 means "uv is not usable here" (the Makefile then runs
plain pip); any other failure is the install's own and is reported as is.

    python scripts/uv_install.py .venv -e ".[dev]"
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

NO_UV = 3
# pip option -> (uv environment variable, how several values are joined); see uv's environment reference
_MAPPING = {
    "index-url": ("UV_INDEX_URL", None),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
    "constraint": ("UV_CONSTRAINT", " "),
    "no-index": ("UV_NO_INDEX", None),
    "trusted-host": ("UV_INSECURE_HOST", " "),
    "timeout": ("UV_HTTP_TIMEOUT", None),
    "default-timeout": ("UV_HTTP_TIMEOUT", None),
    "cert": ("SSL_CERT_FILE", None),
}


def pip_config(pip: Path) -> dict[str, str]:
    """pip's effective settings (``global``/``install`` sections and PIP_* variables; later sources win)."""
    out = subprocess.run([str(pip), "config", "list"], capture_output=True, text=True, check=True).stdout
    ranked: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.partition(".")
        rank = {"global": 0, "install": 1, ":env:": 2}.get(section)
        if rank is None or not option:
            continue
        # pip prints values as Python literals: multi-line values (several indexes) come with escaped newlines
        value = value.strip().strip("'\"").replace("\\n", " ").strip()
        if option not in ranked or rank >= ranked[option][0]:
            ranked[option] = (rank, value)
    return {k: v for k, (_, v) in ranked.items()}


def uv_environment(settings: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """``base`` plus the UV_* equivalents of ``settings``; variables the user already set win."""
    env = dict(base)
    for option, value in settings.items():
        if option not in _MAPPING:
            continue
        var, sep = _MAPPING[option]
        parts = value.split()
        if option == "no-index":
            value = "1" if value.lower() in ("1", "true", "yes", "on") else ""
        elif sep:
            value = sep.join(parts)
        if value:
            env.setdefault(var, value)
    # pip looks at every index for the best version; uv by default stops at the first index that has the name
    env.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")
    if "SSL_CERT_FILE" in env:
        env.setdefault("UV_NATIVE_TLS", "1")
    return env


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    venv, install_args = Path(argv[0]), argv[1:]
    pip, python = venv / "bin" / "pip", venv / "bin" / "python"
    settings = pip_config(pip)
    got_uv = subprocess.run([str(pip), "install", "--quiet", "uv"], check=False)
    uv = venv / "bin" / "uv"
    if got_uv.returncode != 0 or not uv.exists():
        print("uv could not be installed; falling back to pip", file=sys.stderr)
        return NO_UV
    env = uv_environment(settings, dict(os.environ))
    shown = {k: env[k] for k in sorted(env) if k.startswith("UV_") or k == "SSL_CERT_FILE"}
    print("uv pip install with " + " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()), flush=True)
    cmd = [str(uv), "pip", "install", "--python", str(python), *install_args]
    return subprocess.run(cmd, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
