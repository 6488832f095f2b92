"""Python, numpy and h5py values -> what strict JSON can hold, in one place.

Why one converter: JSON has no NaN, numpy scalars are not ``int`` / ``float`` to :mod:`json`, and h5py hands
back bytes; every file and every HTTP answer slidemil writes should treat them alike.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Mappings -> dicts with string keys; lists, tuples and arrays -> lists; numpy scalars -> Python scalars;
    bytes -> text (undecodable bytes replaced); paths -> strings; NaN and infinities -> None. Anything else is
    returned as is.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
