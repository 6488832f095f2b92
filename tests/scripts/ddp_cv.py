"""Cross-validation of one method with DDP on CPU (gloo): run as a script, since Lightning's DDP launcher
re-executes it once per extra process. Usage: python tests/scripts/ddp_cv.py ROOT DEVICES"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from slidemil.data.splits import SplitConfig, make_splits  # noqa: E402
from slidemil.tracking import setup_tracking  # noqa: E402
from slidemil.training.config import TrainConfig  # noqa: E402
from slidemil.training.cross_validation import CVSpec, run_cross_validation  # noqa: E402
from tests.synthetic_bags import CLASSES, DIM, bag_source, bundle_context, feature_bags  # noqa: E402


def main(root: Path, devices: int) -> None:
    slides = feature_bags(root / "features", n_cases=12)
    splits = make_splits(slides, SplitConfig(folds=1, seed=0, val_frac=0.25, test_frac=0.25))
    setup_tracking(root, "ddp")
    train = TrainConfig(lr=1e-3, max_epochs=6, min_epochs=3, patience=3, seed=0, accelerator="cpu",
                        devices=devices, strategy="ddp" if devices > 1 else "auto")
    spec = CVSpec("abmil", {"in_dim": DIM, "n_classes": 2}, train, CLASSES, bundle_context())
    res = run_cross_validation(slides, splits, spec, bag_source(slides), root / "out")
    if res is not None:
        print(f"RESULT parent={res.parent_run_id} test_auc={res.summary['test']['auc']['mean']:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
