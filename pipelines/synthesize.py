"""DVC stage `synthesize`: write the built-in demo dataset (procedural H&E slides + ground truth + manifest)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipelines.common import load_params, project_path, setup_logging
from slidemil.demo.dataset import generate_demo_dataset
from slidemil.utils.hashing import code_version, config_hash


def reset_if_settings_changed(out_dir: Path, cfg: dict) -> None:
    """Slides already written are reused (resume), but only if they were made with these settings and this
    version of the demo generator's code (editing the renderer re-renders the demo)."""
    digest = config_hash({k: v for k, v in cfg.items() if k != "workers"}, code_version(["slidemil.demo"]))
    stamp = out_dir / ".settings_hash"
    if out_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != digest):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")


def main() -> None:
    log = setup_logging("synthesize")
    p = load_params()
    cfg = dict(p["synthesize"])
    out_dir = project_path(cfg.pop("out_dir"))
    cfg["mpp_choices"] = tuple(cfg["mpp_choices"])
    cfg["classes"] = tuple(p["data"]["classes"])
    cfg["tumour_fraction_range"] = tuple(cfg["tumour_fraction_range"])
    reset_if_settings_changed(out_dir, cfg)
    df = generate_demo_dataset(out_dir, **cfg)
    log.info("demo dataset: %d slides of %d cases in %s", len(df), df["case_id"].nunique(), out_dir)


if __name__ == "__main__":
    main()
