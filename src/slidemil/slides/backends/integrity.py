"""Is a slide file whole? One structural check, before any backend, that says *truncated* or *corrupt*.

Backends given a damaged file fail each in its own way: tifffile raises ``struct.error`` on a 5-byte header,
a half-copied SVS opens as a one-level "plain" image without mpp (its first page survives, the pyramid and
the Aperio description do not), pydicom decodes a cut DICOM until a frame is missing. So :func:`open_slide`
asks this module first, and every entry point (pipeline, CLI, serving) gets the same classified error:

- :class:`TruncatedSlideError`: the file ends before its own structure says it should (a header, an image
  directory or image data lies beyond the last byte; a PNG without ``IEND``, a JPEG without ``EOI``);
- :class:`CorruptSlideError`: the structure is damaged (a looping directory chain, a header the TIFF/DICOM
  parser rejects);
- :class:`UnsupportedFormatError`: the content is not the format the name says (an ``.svs`` that is not a
  TIFF, a ``.png`` that is not a PNG), as serving's upload check answers it (415).

Only structure is read (TIFF directories and strip/tile tables, a DICOM header and the end of its pixel
data), never pixels, so the check costs milliseconds even for a multi-gigabyte slide. A file that passes is
remembered by (path, size, mtime) so DataLoader workers and later stages do not repeat it.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

from slidemil.slides.backends.common import library_message
from slidemil.slides.backends.sniff import DICOM_SUFFIXES, TIFF_FAMILY_SUFFIXES, TIFF_MAGICS
from slidemil.slides.errors import CorruptSlideError, TruncatedSlideError, UnsupportedFormatError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DICOM_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) + zero length, little endian
_MAX_IFDS = 100_000
#: bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8, SLONG8, IFD8)
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_VERIFIED: set[tuple[str, int, int]] = set()


def check_integrity(path: Path, slide_id: str) -> None:
    """Raise :class:`TruncatedSlideError` or :class:`CorruptSlideError` for a damaged file; else return.

    A folder (a DICOM series) has each of its DICOM instances checked. Formats this module does not know
    pass unchecked: the backends (and their own errors) decide.
    """
    if path.is_dir():
        for member in sorted(path.iterdir()):
            if member.is_file() and _read_head(member)[128:132] == b"DICM":
                check_integrity(member, slide_id)
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    _check_file(path, slide_id, stat.st_size)
    if len(_VERIFIED) > 4096:
        _VERIFIED.clear()
    _VERIFIED.add(key)


def _check_file(path: Path, sid: str, size: int) -> None:
    name, suffix = path.name, path.suffix.lower()
    if size == 0:
        raise TruncatedSlideError(sid, f"{name} is empty (0 bytes): an interrupted copy or upload?")
    head = _read_head(path)
    if head[:4] in TIFF_MAGICS or (size < 4 and any(m.startswith(head) for m in TIFF_MAGICS)):
        _check_tiff(path, sid, size, head)
    elif head[128:132] == b"DICM":
        _check_dicom(path, sid, size)
    elif suffix in TIFF_FAMILY_SUFFIXES:
        raise UnsupportedFormatError(
            sid, f"{name} is named {suffix}, a TIFF-based format, but does not start with a TIFF header "
            f"(first bytes: {head[:8].hex(' ')})",
        )
    elif suffix in DICOM_SUFFIXES:
        if size < 132:
            raise TruncatedSlideError(sid, f"{name} is {size} bytes, shorter than the 132-byte DICOM preamble")
        raise UnsupportedFormatError(sid, f"{name} is named {suffix} but has no DICOM 'DICM' marker at byte 128")
    elif suffix == ".png":
        _check_signature(sid, name, head, _PNG_MAGIC, "PNG")
        if b"IEND" not in _read_tail(path, 64):
            raise TruncatedSlideError(sid, f"{name}: the PNG ends without its IEND chunk (cut short?)")
    elif suffix in (".jpg", ".jpeg"):
        _check_signature(sid, name, head, b"\xff\xd8\xff", "JPEG")
        if b"\xff\xd9" not in _read_tail(path, 4096):
            raise TruncatedSlideError(sid, f"{name}: the JPEG ends without its end-of-image marker (cut short?)")
    elif suffix == ".bmp":
        _check_signature(sid, name, head, b"BM", "BMP")
        declared = struct.unpack("<I", head[2:6])[0] if len(head) >= 6 else 0
        if declared > size:
            raise TruncatedSlideError(sid, f"{name} is {size:,} bytes; its BMP header declares {declared:,}")


def _check_signature(sid: str, name: str, head: bytes, magic: bytes, fmt: str) -> None:
    if not head.startswith(magic):
        raise UnsupportedFormatError(sid, f"{name} is not a {fmt} file as its name says (first bytes: {head[:8].hex(' ')})")


def _check_tiff(path: Path, sid: str, size: int, head: bytes) -> None:
    name = path.name
    big = head[2:4] in (b"+\x00", b"\x00+")
    need = 16 if big else 8
    if size < need:
        raise TruncatedSlideError(sid, f"{name} is {size} bytes, shorter than the {need}-byte TIFF header")
    order = "<" if head[:2] == b"II" else ">"
    first = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
    if big or size < 2**32:  # classic TIFFs past 4 GB (NDPI) keep 64-bit offsets their own way: tifffile knows
        _walk_ifds(path, sid, size, order, big, first)
    _check_image_data(path, sid, size)


def _walk_ifds(path: Path, sid: str, size: int, order: str, big: bool, offset: int) -> None:
    """Follow the chain of image directories; each must lie inside the file and none may repeat."""
    count_fmt, entry_size, next_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
    seen: set[int] = set()
    with open(path, "rb") as f:
        while offset:
            n = len(seen) + 1
            if offset in seen or n > _MAX_IFDS:
                raise CorruptSlideError(sid, f"the image directory chain of {path.name} loops (directory {n})")
            seen.add(offset)
            if offset + count_size > size:
                raise TruncatedSlideError(
                    sid, f"{path.name} is {size:,} bytes but its image directory {n} starts at byte {offset:,}: "
                    "the file was cut short (incomplete copy or upload?)",
                )
            f.seek(offset)
            (count,) = struct.unpack(order + count_fmt, f.read(count_size))
            end = offset + count_size + count * entry_size + next_size
            if end > size:
                raise TruncatedSlideError(
                    sid, f"{path.name} is {size:,} bytes but its image directory {n} runs to byte {end:,}: "
                    "the file was cut short (incomplete copy or upload?)",
                )
            entries = f.read(count * entry_size)
            _check_tag_values(path, sid, size, order, big, entries, n)
            (offset,) = struct.unpack(order + next_fmt, f.read(next_size))


def _check_tag_values(path: Path, sid: str, size: int, order: str, big: bool, entries: bytes, n: int) -> None:
    """Tag values too long to sit in their entry (descriptions, JPEG tables, offset tables) must be in the file."""
    entry_size, inline, layout = (20, 8, order + "HHQQ") if big else (12, 4, order + "HHII")
    for i in range(0, len(entries), entry_size):
        tag, dtype, count, value = struct.unpack(layout, entries[i : i + entry_size])
        nbytes = _TIFF_TYPE_SIZES.get(dtype, 1) * count
        if nbytes > inline and value + nbytes > size:
            raise TruncatedSlideError(
                sid, f"{path.name} is {size:,} bytes but tag {tag} of image directory {n} runs to byte "
                f"{value + nbytes:,}: the file was cut short (incomplete copy or upload?)",
            )


def _check_image_data(path: Path, sid: str, size: int) -> None:
    """Every strip/tile of every page must end inside the file."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for i, page in enumerate(tif.pages):
                offsets, counts = page.dataoffsets, page.databytecounts
                end = max((o + c for o, c in zip(offsets, counts, strict=False) if c), default=0)
                if end > size:
                    shape = "x".join(str(v) for v in getattr(page, "shape", ())[:2][::-1])
                    raise TruncatedSlideError(
                        sid, f"{path.name} is {size:,} bytes but image {i} ({shape} px) stores data up to byte "
                        f"{end:,}: the file was cut short (incomplete copy or upload?)",
                    )
    except TruncatedSlideError:
        raise
    except Exception as e:  # tifffile raises many types (struct.error, ValueError, ...) on damaged input
        raise CorruptSlideError(
            sid, f"damaged TIFF structure in {path.name}: {type(e).__name__}: {library_message(e, path)}"
        ) from e


def _check_dicom(path: Path, sid: str, size: int) -> None:
    """The header parses and the pixel data ends inside the file.

    Encapsulated (compressed) pixel data ends with a sequence delimiter; when the file's last bytes are
    that delimiter only the header is parsed. Otherwise pydicom walks the data (deferring every large value,
    so nothing is loaded) and reports where the file ends early.
    """
    import pydicom

    complete_tail = _read_tail(path, len(_DICOM_SEQUENCE_END)) == _DICOM_SEQUENCE_END
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=complete_tail, defer_size=1024)
        except Exception as e:  # pydicom raises many types on damaged headers
            cls = TruncatedSlideError if "end of file" in str(e).lower() else CorruptSlideError
            raise cls(sid, f"damaged DICOM header in {path.name}: {library_message(e, path)}") from e
    if any("end of file" in str(w.message).lower() for w in caught):
        raise TruncatedSlideError(
            sid, f"{path.name}: the DICOM pixel data ends before its delimiter: the file was cut short "
            "(incomplete copy or upload?)",
        )
    meta_end = 132 + 12 + int(ds.file_meta.get("FileMetaInformationGroupLength", 0) or 0)
    if meta_end > size or "SOPClassUID" not in ds:
        raise TruncatedSlideError(
            sid, f"{path.name} is {size:,} bytes and ends inside its DICOM header: the file was cut short "
            "(incomplete copy or upload?)",
        )
    if complete_tail:
        return
    if "PixelData" not in ds:
        if "TotalPixelMatrixColumns" in ds:  # a WSI instance always has pixels
            raise TruncatedSlideError(sid, f"{path.name}: the file ends before its DICOM pixel data")
        return
    raw = ds.get_item("PixelData")
    length, start = getattr(raw, "length", 0), getattr(raw, "value_tell", 0)
    if length != 0xFFFFFFFF and start + length > size:
        raise TruncatedSlideError(
            sid, f"{path.name} is {size:,} bytes but its DICOM pixel data runs to byte {start + length:,}: "
            "the file was cut short (incomplete copy or upload?)",
        )


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(132)


def _read_tail(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - n))
        return f.read()
