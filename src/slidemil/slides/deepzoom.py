"""Deep Zoom tiles from any slide slidemil reads: OpenSlide's ``DeepZoomGenerator`` over a :class:`SlideReader`.

Why an adapter and not ``openslide.OpenSlide(path)``: the viewer must show exactly the pixels the pipeline read
(DICOM, plain TIFF and PNG/JPEG go through slidemil's own backends, with the same white fill beyond the edge),
and OpenSlide's generator only needs the small ``AbstractSlide`` surface: level sizes, downsamples and
``read_region``. Plain images have a single level; the generator then downscales level 0 for the coarse
Deep Zoom levels, which is what an image pyramid would hold.
"""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import numpy as np
from openslide import AbstractSlide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from slidemil.slides.backends import open_slide
from slidemil.slides.reader import SlideReader

TILE_SIZE, OVERLAP = 254, 1  # 256-px tiles with their 1-px overlap, OpenSeadragon's usual choice
TILE_FORMAT = "jpeg"


class ReaderSlide(AbstractSlide):
    """A :class:`SlideReader` seen as an OpenSlide slide (RGBA PIL regions, as the generator expects)."""

    def __init__(self, reader: SlideReader):
        self.reader = reader

    @classmethod
    def detect_format(cls, filename) -> str | None:  # the reader was opened already
        return None

    def close(self) -> None:
        self.reader.close()

    @property
    def level_count(self) -> int:
        return self.reader.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(tuple(int(v) for v in d) for d in self.reader.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.reader.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        return {}

    @property
    def associated_images(self) -> dict[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        ds = np.asarray(self.level_downsamples)
        ok = np.nonzero(ds <= downsample + 1e-9)[0]
        return int(ok[-1]) if ok.size else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        rgb = self.reader.read_region((int(location[0]), int(location[1])), int(level), (int(size[0]), int(size[1])))
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("RGBA")


class DeepZoomSource:
    """Deep Zoom descriptor and JPEG tiles of one slide file, safe to use from several threads (one lock:
    slide backends are not all thread-safe, and a dashboard serves one reviewer)."""

    def __init__(self, path: str | Path, *, slide_id: str | None = None, quality: int = 85):
        self.reader = open_slide(path, slide_id=slide_id)
        self.generator = DeepZoomGenerator(ReaderSlide(self.reader), tile_size=TILE_SIZE, overlap=OVERLAP)
        self.quality = quality
        self._lock = threading.Lock()

    @property
    def level_count(self) -> int:
        return self.generator.level_count

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.reader.dimensions

    def dzi(self) -> str:
        return self.generator.get_dzi(TILE_FORMAT)

    def tile(self, level: int, col: int, row: int) -> bytes:
        """JPEG bytes of one Deep Zoom tile; ValueError names a level or address outside the pyramid."""
        if not 0 <= level < self.generator.level_count:
            raise ValueError(f"{self.reader.slide_id}: no Deep Zoom level {level} (0..{self.generator.level_count - 1})")
        cols, rows = self.generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"{self.reader.slide_id}: no tile {col}_{row} at level {level} ({cols} x {rows})")
        with self._lock:
            image = self.generator.get_tile(level, (col, row))

        buf = BytesIO()
        image.convert("RGB").save(buf, "JPEG", quality=self.quality)
        return buf.getvalue()

    def close(self) -> None:
        self.reader.close()
