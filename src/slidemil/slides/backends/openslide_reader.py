"""Pyramidal vendor formats (.svs, .ndpi, .mrxs, .scn, tiled .tif, ...) through OpenSlide."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidemil.slides.backends.common import library_message, positive_mean
from slidemil.slides.backends.pixels import to_rgb_uint8
from slidemil.slides.errors import SlideError, UnsupportedFormatError
from slidemil.slides.reader import SlideReader


class OpenSlideReader(SlideReader):
    """Pyramidal vendor formats through ``openslide.OpenSlide`` (thread-safe handle, not fork-safe)."""

    backend = "openslide"

    def __init__(self, path: str | Path, *, slide_id: str | None = None, mpp: float | None = None):
        super().__init__(path, slide_id=slide_id, mpp=mpp)
        import openslide

        self._openslide_error = openslide.OpenSlideError
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as e:
            raise UnsupportedFormatError(
                self.slide_id, f"OpenSlide cannot open {self.path.name}: {library_message(e, self.path)}"
            ) from e
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideError(
                self.slide_id,
                f"unreadable slide {self.path.name} (corrupt or truncated?): {library_message(e, self.path)}",
            ) from e
        props = self._slide.properties
        self._level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self._native_mpp = positive_mean(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
        self._objective = positive_mean(props.get("openslide.objective-power"))
        self.vendor = props.get("openslide.vendor")

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        # OpenSlide's own downsamples match its internal level choice and read_region offsets
        return [float(d) for d in self._slide.level_downsamples]

    @property
    def native_mpp(self) -> float | None:
        return self._native_mpp

    @property
    def objective_power(self) -> float | None:
        return self._objective

    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            rgba = self._slide.read_region(location, level, size)
        except self._openslide_error as e:
            raise SlideError(
                self.slide_id,
                f"read failed in {self.path.name} at {location}, level {level}: {library_message(e, self.path)}",
            ) from e
        return to_rgb_uint8(np.asarray(rgba))  # transparent (outside the scanned area) -> white

    def close(self) -> None:
        self._slide.close()
