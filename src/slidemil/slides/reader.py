"""One reader interface over OpenSlide formats, plain images, non-pyramidal TIFF and DICOM WSI.

Every read names its resolution explicitly: either a pyramid ``level`` with level-0 coordinates
(:meth:`SlideReader.read_region`) or a physical resolution in um/px (:meth:`SlideReader.read_tile`,
:meth:`SlideReader.read_at_mpp`). No method ever materialises a whole level-0 image of a pyramidal slide.

Use :func:`open_slide`, which picks a backend from the file (see :mod:`slidemil.slides.backends`, one module per backend).
"""

from __future__ import annotations

import abc
import math
from pathlib import Path

import cv2
import numpy as np

from slidemil.slides.errors import MissingMppError
from slidemil.slides.geometry import TileGeometry, best_level_for_downsample


class SlideReader(abc.ABC):
    """A slide opened for reading. Coordinates are level-0 pixels ``(x, y)``; sizes are ``(w, h)``."""

    #: short name of the backend, for logs and HDF5 attributes
    backend: str = "abstract"
    #: why the file gives no mpp, when a backend can say more than "absent" (goes into MissingMppError)
    mpp_note: str | None = None

    def __init__(self, path: str | Path, *, slide_id: str | None = None, mpp: float | None = None):
        self.path = Path(path)
        self.slide_id = slide_id or self.path.stem
        self._mpp_override = float(mpp) if mpp is not None and not _isnan(mpp) else None

    # ---- metadata every backend provides -------------------------------------------------------
    @property
    @abc.abstractmethod
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(w, h) of every pyramid level, level 0 first."""

    @property
    @abc.abstractmethod
    def native_mpp(self) -> float | None:
        """mpp recorded in the file (level 0, mean of x and y), or None when absent."""

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification, when recorded."""
        return None

    @abc.abstractmethod
    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Backend read: RGB uint8 (h, w, 3); regions beyond the slide are white."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    # ---- derived ------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        w0, h0 = self.dimensions
        return [((w0 / w) + (h0 / h)) / 2 for (w, h) in self.level_dimensions]

    @property
    def has_mpp(self) -> bool:
        return self._mpp_override is not None or self.native_mpp is not None

    @property
    def mpp(self) -> float:
        """Level-0 um/px: the supplied override wins, else the file's metadata; else a clear error."""
        if self._mpp_override is not None:
            return self._mpp_override
        native = self.native_mpp
        if native is None:
            raise MissingMppError(self.slide_id, note=self.mpp_note)
        return native

    def use_fallback_mpp(self, mpp: float | None) -> None:
        """Use ``mpp`` only when neither the file nor the caller gave one (the config-level default)."""
        if mpp is not None and not self.has_mpp:
            self._mpp_override = float(mpp)
            self._mpp_is_fallback = True

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """Coarsest level not coarser than ``target_mpp`` (reading finer wastes I/O, coarser loses detail)."""
        return best_level_for_downsample(self.level_downsamples, target_mpp / self.mpp)

    # ---- reads --------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size`` pixels at ``level``, top-left at level-0 ``location``."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.slide_id}: level {level} out of range 0..{self.level_count - 1}")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.slide_id}: empty read size {size}")
        return self._read_region((int(location[0]), int(location[1])), level, (w, h))

    def tile_geometry(self, tile_px: int, target_mpp: float, stride_px: int | None = None) -> TileGeometry:
        return TileGeometry.plan(
            tile_px=tile_px,
            target_mpp=target_mpp,
            slide_mpp=self.mpp,
            level_downsamples=self.level_downsamples,
            stride_px=stride_px,
        )

    def read_tile(self, xy: tuple[int, int], geometry: TileGeometry) -> np.ndarray:
        """Read one tile planned by ``geometry`` at level-0 ``xy``; returns (tile_px, tile_px, 3) uint8."""
        region = self.read_region(xy, geometry.read_level, (geometry.read_px, geometry.read_px))
        return resize_rgb(region, geometry.tile_px, geometry.tile_px)

    def read_at_mpp(self, xy: tuple[int, int], size_px: tuple[int, int], target_mpp: float) -> np.ndarray:
        """Region of ``size_px`` (w, h) pixels at ``target_mpp`` starting at level-0 ``xy``."""
        level = self.best_level_for_mpp(target_mpp)
        scale = target_mpp / self.mpp / self.level_downsamples[level]
        read_size = (max(1, round(size_px[0] * scale)), max(1, round(size_px[1] * scale)))
        region = self.read_region(xy, level, read_size)
        return resize_rgb(region, size_px[0], size_px[1])

    def thumbnail(self, max_side: int = 2048, min_downsample: float = 1.0) -> tuple[np.ndarray, float]:
        """Whole-slide image with its longer side <= ``max_side``; returns (image, level-0 downsample).

        Reads from the coarsest level that still has enough pixels, so memory stays bounded.
        """
        w0, h0 = self.dimensions
        downsample = max(min_downsample, max(w0, h0) / max_side, 1.0)
        level = best_level_for_downsample(self.level_downsamples, downsample)
        lw, lh = self.level_dimensions[level]
        out_w, out_h = max(1, math.floor(w0 / downsample)), max(1, math.floor(h0 / downsample))
        region = self._read_level_in_strips(level, (lw, lh))
        return resize_rgb(region, out_w, out_h), downsample

    def _read_level_in_strips(self, level: int, size: tuple[int, int], strip_px: int = 4096) -> np.ndarray:
        """Whole (already small) level, read in strips so backends with per-read limits cope."""
        w, h = size
        out = np.empty((h, w, 3), np.uint8)
        ds = self.level_downsamples[level]
        for y in range(0, h, strip_px):
            sh = min(strip_px, h - y)
            out[y : y + sh] = self.read_region((0, round(y * ds)), level, (w, sh))
        return out

    @property
    def mpp_source(self) -> str:
        """Where the mpp comes from: 'file', 'supplied' (manifest/caller), 'default' (config) or 'missing'."""
        if self._mpp_override is not None:
            return "default" if getattr(self, "_mpp_is_fallback", False) else "supplied"
        return "file" if self.native_mpp is not None else "missing"

    def properties(self) -> dict[str, object]:
        """Summary for logs, manifests and HDF5 attributes."""
        return {
            "slide_id": self.slide_id,
            "path": str(self.path),
            "backend": self.backend,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "level_count": self.level_count,
            "level_downsamples": [round(d, 4) for d in self.level_downsamples],
            "mpp": self.mpp if self.has_mpp else None,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
        }

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.slide_id!r}, {self.dimensions[0]}x{self.dimensions[1]}, levels={self.level_count})"


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if width < w or height < h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _isnan(value: object) -> bool:
    try:
        return math.isnan(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
