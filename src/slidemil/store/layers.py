"""One HDF5 reader/writer for every per-slide layer (tile sets, features, and the layers later stages add).

A layer file is ``<stage folder>/<slide_id>.h5``. Its root attributes always hold ``kind`` (what the layer
is: ``tiles``, ``features``, ``stains``, ...), ``format_version``, ``resume_key`` (what produced it, code
version included) and ``complete=True``, written last. Arrays live at the root or in named groups (one group
per tile set, for instance). Writes go to a temporary file that is renamed only once ``complete`` is set, so
a killed writer leaves no file that looks finished.

Reading checks, in this order and naming the file in every refusal: the file is HDF5; every member is a plain
dataset or group stored in the file itself (no soft/external links, virtual or external datasets: a file
from outside must not make us read paths it chooses); ``kind`` and ``format_version`` match; ``complete`` is
set; floating-point arrays are finite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from slidemil.utils.atomic import atomic_path

#: version of the on-disk layout shared by every layer (1 = the flat tile/feature files before the store)
FORMAT_VERSION = 2
_RESERVED = ("kind", "format_version", "resume_key", "complete")
_FINITE_CHUNK_ROWS = 65536


class LayerError(ValueError):
    """A layer file that must not be used; ``problem`` is the message without the path (for callers that
    show the file under another name, like serving)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class LayerTooLarge(LayerError):
    """A layer with more rows than the caller allows (refused before its arrays are loaded)."""


@dataclass
class LayerGroup:
    """Arrays and attributes of one HDF5 group (sub-groups nested)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, LayerGroup] = field(default_factory=dict)


@dataclass
class Layer(LayerGroup):
    """A whole layer file as read: its kind, where it came from, and the root group."""

    kind: str = ""
    path: str = ""


def write_layer(
    path: str | Path,
    kind: str,
    arrays: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    *,
    groups: Mapping[str, LayerGroup] | None = None,
    resume_key: str = "",
) -> Path:
    """Write a complete layer atomically; refuses non-finite float arrays (nothing is published then)."""
    with layer_writer(path, kind, attrs, resume_key=resume_key) as f:
        _write_group(f, LayerGroup(dict(arrays or {}), {}, dict(groups or {})))
    return Path(path)


@contextlib.contextmanager
def layer_writer(
    path: str | Path, kind: str, attrs: Mapping[str, Any] | None = None, *, resume_key: str = ""
) -> Iterator[h5py.File]:
    """Yield the open temporary HDF5 file of a new layer, for writers that stream (feature batches).

    On leaving the block every float dataset is checked to be finite, ``complete`` is set and the file is
    renamed over ``path``. If the block or the check raises, nothing appears at ``path`` (an older file there
    stays untouched).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            set_attrs(f, attrs or {})
            f.attrs["kind"] = kind
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["resume_key"] = resume_key
            yield f
            bad = _first_non_finite(f)
            if bad:
                raise LayerError(path, f"refusing to write: `{bad}` contains NaN or infinite values")
            f.attrs["complete"] = True


def read_layer(path: str | Path, kind: str) -> Layer:
    """Every array and attribute of a checked layer file (see the module docstring for the checks)."""
    with open_layer(path, kind) as f:
        root = read_group(f, path)
    return Layer(root.arrays, root.attrs, root.groups, kind=kind, path=str(path))


@contextlib.contextmanager
def open_layer(path: str | Path, kind: str) -> Iterator[h5py.File]:
    """The open file of a layer whose structure, kind, format and completion are checked; arrays are not read,
    so a reader can take one group (and check sizes before loading anything)."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError):
        raise LayerError(path, "not a readable HDF5 file") from None
    with f:
        _check_structure(f, path)
        attrs = plain_attrs(f.attrs)
        got = attrs.get("kind")
        if got is None:
            raise LayerError(path, f"not a slidemil layer file (no `kind` attribute; expected a {kind!r} layer)")
        if got != kind:
            raise LayerError(path, f"is a {got!r} layer, expected {kind!r}")
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise LayerError(
                path, f"format version {version}, this slidemil reads {FORMAT_VERSION} (re-run the stage)"
            )
        if attrs.get("complete") is not True:
            raise LayerError(path, "the file is incomplete (interrupted write?)")
        yield f


def read_group(g: h5py.Group, path: str | Path, *, finite: bool = True) -> LayerGroup:
    """Arrays, attributes and sub-groups of ``g``; float arrays must be finite when ``finite``."""
    out = LayerGroup(attrs=plain_attrs(g.attrs))
    for name, obj in g.items():
        if isinstance(obj, h5py.Group):
            out.groups[name] = read_group(obj, path, finite=finite)
            continue
        arr = obj[()]
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise LayerError(path, f"`{obj.name}` contains NaN or infinite values")
        out.arrays[name] = arr
    return out


def read_layer_attrs(path: str | Path, kind: str) -> dict[str, Any]:
    """Root attributes of a checked layer (cheap: no arrays are read)."""
    with open_layer(path, kind) as f:
        return plain_attrs(f.attrs)


def rewrite_attrs(path: str | Path, kind: str, updates: Mapping[str, Any]) -> None:
    """Re-publish a layer with some root attributes changed (atomic; arrays and resume key kept).

    For facts that do not change the layer's content, e.g. where its slide file now lives.
    """
    layer = read_layer(path, kind)
    attrs = {k: v for k, v in layer.attrs.items() if k not in _RESERVED}
    write_layer(path, kind, layer.arrays, {**attrs, **updates}, groups=layer.groups,
                resume_key=str(layer.attrs.get("resume_key", "")))


def is_current(path: str | Path, resume_key: str, kind: str | None = None) -> bool:
    """True when ``path`` is a finished layer (of ``kind``, if given) written under ``resume_key``.

    Cheap (attributes only) and never raises: a missing, truncated or foreign file is simply not current.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            attrs = plain_attrs(f.attrs)
    except (OSError, ValueError):
        return False
    return (
        attrs.get("complete") is True
        and attrs.get("format_version") == FORMAT_VERSION
        and attrs.get("resume_key") == resume_key
        and (kind is None or attrs.get("kind") == kind)
    )


def set_attrs(obj: h5py.Group | h5py.Dataset, attrs: Mapping[str, Any]) -> None:
    """Write attributes; None becomes "" (HDF5 has no null) and the store's own keys are refused."""
    for k, v in attrs.items():
        if k in _RESERVED:
            raise ValueError(f"attribute {k!r} is set by the store itself")
        obj.attrs[k] = "" if v is None else v


def plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in attrs.items()}


def plain(value: Any) -> Any:
    """h5py attribute -> plain Python (bytes -> str, numpy scalars -> Python, arrays -> lists)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _write_group(g: h5py.Group, spec: LayerGroup) -> None:
    set_attrs(g, spec.attrs)
    for name, arr in spec.arrays.items():
        g.create_dataset(name, data=np.asarray(arr))
    for name, sub in spec.groups.items():
        _write_group(g.create_group(name), sub)


def _check_structure(f: h5py.File, path: str | Path) -> None:
    def visit(g: h5py.Group) -> None:
        for name in g:
            link = g.get(name, getlink=True)
            where = f"{g.name.rstrip('/')}/{name}"
            if not isinstance(link, h5py.HardLink):
                raise LayerError(path, f"`{where}` is a link; it must be stored in the file itself")
            obj = g[name]
            if isinstance(obj, h5py.Group):
                visit(obj)
            elif not isinstance(obj, h5py.Dataset) or obj.is_virtual or obj.external:
                raise LayerError(path, f"`{where}` must be a plain dataset stored in the file itself")

    visit(f)


def _first_non_finite(f: h5py.File) -> str | None:
    """Name of the first float dataset holding NaN/inf, read in row chunks (a slide's features can be large)."""
    found: list[str] = []

    def check(name: str, obj: Any) -> None:
        if found or not isinstance(obj, h5py.Dataset) or obj.dtype.kind != "f":
            return
        if obj.ndim == 0:
            ok = np.isfinite(obj[()])
        else:
            ok = all(
                np.isfinite(obj[i : i + _FINITE_CHUNK_ROWS]).all() for i in range(0, obj.shape[0], _FINITE_CHUNK_ROWS)
            )
        if not ok:
            found.append("/" + name)

    f.visititems(check)
    return found[0] if found else None
