"""One value-to-JSON conversion for files and HTTP answers: numpy, bytes, paths and NaN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slidemil.utils.atomic import write_json_atomic
from slidemil.utils.jsonable import to_jsonable


def test_to_jsonable_gives_strict_json():
    value = {
        "int": np.int64(7), "float": np.float32(0.5), "nan": float("nan"), "inf": np.float64(np.inf),
        "array": np.array([[1, 2], [3, 4]], np.uint8), "scores": np.array([0.25, np.nan]), "bytes": b"abc\xff",
        "path": Path("data/x.h5"), "tuple": (np.bool_(True), None), 3: "int key",
    }
    out = to_jsonable(value)
    assert out == {"int": 7, "float": 0.5, "nan": None, "inf": None, "array": [[1, 2], [3, 4]],
                   "scores": [0.25, None], "bytes": "abc\ufffd", "path": "data/x.h5", "tuple": [True, None],
                   "3": "int key"}
    assert type(out["int"]) is int and type(out["tuple"][0]) is bool
    json.dumps(out, allow_nan=False)


def test_json_files_are_strict(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"auc": {"mean": float("nan"), "n": np.int64(3)}})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and json.loads(text) == {"auc": {"mean": None, "n": 3}}
