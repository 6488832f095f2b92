"""scripts/uv_install.py: pip's configuration (files and PIP_* variables) reaches uv as UV_* settings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("uv_install", ROOT / "scripts" / "uv_install.py")
uv_install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(uv_install)


def test_pip_config_file_and_environment_become_uv_settings(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                    "extra-index-url =\n  https://a.example/simple\n  https://b.example/simple\n"
                    "cert = /etc/corp-ca.pem\nconstraint = /etc/file-constraints.txt\n")
    for var in [v for v in list(__import__("os").environ) if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_CONSTRAINT", "/etc/env-constraints.txt")  # the environment beats the file
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels /opt/more")
    settings = uv_install.pip_config(Path(sys.executable).parent / "pip")
    env = uv_install.uv_environment(settings, {"UV_HTTP_TIMEOUT": "5"})
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert env["UV_EXTRA_INDEX_URL"] == "https://a.example/simple https://b.example/simple"
    assert env["UV_CONSTRAINT"] == "/etc/env-constraints.txt"
    assert env["UV_FIND_LINKS"] == "/opt/wheels,/opt/more"
    assert env["SSL_CERT_FILE"] == "/etc/corp-ca.pem" and env["UV_NATIVE_TLS"] == "1"
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match"  # pip's "best version over all indexes"
    assert env["UV_HTTP_TIMEOUT"] == "5"  # a variable the user set wins


def test_no_index_flag():
    assert uv_install.uv_environment({"no-index": "true"}, {})["UV_NO_INDEX"] == "1"
    assert "UV_NO_INDEX" not in uv_install.uv_environment({"no-index": "false"}, {})
