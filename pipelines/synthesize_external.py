"""DVC stage `synthesize_external`: the demo's second site, a small cohort with another lab's H&E colours.

Same generator and slide settings as `synthesize`, other patients (own seed and ``case_prefix``) and a
stain shift (``external.demo.stain``), so the champion can be validated on slides from a site it never saw.
"""

from __future__ import annotations

from pipelines.common import load_params, project_path, setup_logging
from pipelines.synthesize import reset_if_settings_changed
from slidemil.demo.dataset import generate_demo_dataset
from slidemil.demo.render import StainShift


def main() -> None:
    log = setup_logging("synthesize_external")
    p = load_params()
    base, demo = p["synthesize"], dict(p["external"]["demo"])
    out_dir = project_path(demo.pop("out_dir"))
    cfg = {
        "n_cases": demo["n_cases"], "slides_per_case": demo["slides_per_case"], "seed": demo["seed"],
        "case_prefix": demo["case_prefix"], "classes": tuple(p["data"]["classes"]),
        "width_um": base["width_um"], "height_um": base["height_um"], "mpp_choices": tuple(base["mpp_choices"]),
        "tumour_fraction_range": tuple(base["tumour_fraction_range"]), "workers": base["workers"],
    }
    reset_if_settings_changed(out_dir, {**cfg, "stain": demo["stain"]})
    df = generate_demo_dataset(out_dir, stain=StainShift.from_dict(demo["stain"]), **cfg)
    log.info("external demo cohort: %d slides of %d cases in %s (stain %s)", len(df), df["case_id"].nunique(),
             out_dir, demo["stain"])


if __name__ == "__main__":
    main()
