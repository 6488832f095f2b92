"""DVC stage `synthesize`: write the built-in demo dataset (procedural H&E slides + ground truth + manifest)."""

from __future__ import annotations

from pipelines.common import load_params, project_path, setup_logging
from slidemil.slides.synthetic import generate_demo_dataset


def main() -> None:
    log = setup_logging("synthesize")
    p = load_params()
    cfg = dict(p["synthesize"])
    out_dir = project_path(cfg.pop("out_dir"))
    cfg["mpp_choices"] = tuple(cfg["mpp_choices"])
    cfg["classes"] = tuple(p["data"]["classes"])
    df = generate_demo_dataset(out_dir, **cfg)
    log.info("demo dataset: %d slides of %d cases in %s", len(df), df["case_id"].nunique(), out_dir)


if __name__ == "__main__":
    main()
