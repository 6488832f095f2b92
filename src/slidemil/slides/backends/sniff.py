"""Which backend a file is for: suffixes, magic bytes and OpenSlide's own format detection."""

from __future__ import annotations

from pathlib import Path

PLAIN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: vendor formats that are TIFF files inside: a file with one of these names must start with a TIFF header
TIFF_FAMILY_SUFFIXES = TIFF_SUFFIXES | {".svs", ".ndpi", ".scn", ".bif", ".svslide"}
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def has_tiff_magic(path: Path) -> bool:
    """Classic or BigTIFF header, either byte order (suffixes lie, e.g. ``.svs`` or no suffix at all)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in TIFF_MAGICS


def has_dicom_magic(path: Path) -> bool:
    """The ``DICM`` marker after the 128-byte preamble of a DICOM Part 10 file."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def openslide_format(path: Path) -> str | None:
    """OpenSlide's vendor name for the file, or None when OpenSlide does not recognise it."""
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        return None
