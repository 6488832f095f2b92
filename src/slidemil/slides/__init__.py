"""Reading slides at a physical resolution: :func:`open_slide` picks a backend per file."""

from slidemil.slides.backends import DicomReader, OpenSlideReader, PlainImageReader, open_slide
from slidemil.slides.errors import MissingMppError, NoTissueError, SlideError, UnsupportedFormatError
from slidemil.slides.geometry import TileGeometry
from slidemil.slides.reader import SlideReader

__all__ = [
    "DicomReader",
    "MissingMppError",
    "NoTissueError",
    "OpenSlideReader",
    "PlainImageReader",
    "SlideError",
    "SlideReader",
    "TileGeometry",
    "UnsupportedFormatError",
    "open_slide",
]
