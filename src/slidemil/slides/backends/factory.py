""":func:`open_slide`: the one entry point that picks a backend per file."""

from __future__ import annotations

from pathlib import Path

from slidemil.slides.backends.common import library_message
from slidemil.slides.backends.dicom import DicomReader
from slidemil.slides.backends.integrity import check_integrity
from slidemil.slides.backends.openslide_reader import OpenSlideReader
from slidemil.slides.backends.plain_image import PlainImageReader
from slidemil.slides.backends.sniff import (
    DICOM_SUFFIXES,
    PLAIN_SUFFIXES,
    TIFF_SUFFIXES,
    has_dicom_magic,
    has_tiff_magic,
    openslide_format,
)
from slidemil.slides.errors import (
    CorruptSlideError,
    SlideError,
    SlideFileMissingError,
    TruncatedSlideError,
    UnsupportedFormatError,
)
from slidemil.slides.reader import SlideReader


def open_slide(path: str | Path, *, slide_id: str | None = None, mpp: float | None = None) -> SlideReader:
    """Open ``path`` with the first backend that can read it.

    Order: a folder, ``.dcm`` or a DICOM preamble -> :class:`DicomReader`; PNG/JPEG/BMP ->
    :class:`PlainImageReader`; otherwise OpenSlide when ``detect_format`` recognises the file, then
    plain TIFF reading for TIFFs OpenSlide refuses. ``mpp`` overrides the file's metadata.

    The file's structure is checked first (:mod:`.integrity`), so a damaged file is refused the same way
    whatever backend would have read it. Raises :class:`SlideFileMissingError`, :class:`TruncatedSlideError`,
    :class:`CorruptSlideError`, or :class:`UnsupportedFormatError` when no backend recognises the file; each
    names the file and the problem, and no library exception escapes.
    """
    p = Path(path)
    sid = slide_id or p.stem
    if not p.exists():
        raise SlideFileMissingError(sid, f"file not found: {p}")
    check_integrity(p, sid)
    suffix = p.suffix.lower()
    candidates: list[type[SlideReader]] = []
    if p.is_dir() or suffix in DICOM_SUFFIXES or has_dicom_magic(p):
        candidates.append(DicomReader)
    elif suffix in PLAIN_SUFFIXES:
        candidates.append(PlainImageReader)
    if not p.is_dir() and suffix not in PLAIN_SUFFIXES and openslide_format(p) is not None:
        candidates.append(OpenSlideReader)
    if (
        not p.is_dir()
        and (suffix in TIFF_SUFFIXES or has_tiff_magic(p))
        and PlainImageReader not in candidates
    ):
        candidates.append(PlainImageReader)
    if not candidates:
        raise UnsupportedFormatError(
            sid,
            f"no backend recognises {p.name}: not DICOM, not a plain image suffix ({', '.join(sorted(PLAIN_SUFFIXES))}), "
            "not a format OpenSlide detects and not a TIFF",
        )
    failures: list[SlideError] = []
    for backend in candidates:
        try:
            return backend(p, slide_id=sid, mpp=mpp)
        except SlideError as e:
            failures.append(e)
        except Exception as e:  # a library's own exception on input its parser did not expect
            failures.append(CorruptSlideError(sid, f"{type(e).__name__}: {library_message(e, p)}"))
    tried = "; ".join(f"{b.__name__}: {e.problem}" for b, e in zip(candidates, failures, strict=True))
    if all(isinstance(e, UnsupportedFormatError) for e in failures):
        raise UnsupportedFormatError(sid, f"no backend could open {p.name} ({tried})")
    for cls in (TruncatedSlideError, CorruptSlideError):
        if any(isinstance(e, cls) for e in failures):
            raise cls(sid, f"cannot read {p.name} ({tried})")
    raise SlideError(sid, f"cannot read {p.name} ({tried})")
