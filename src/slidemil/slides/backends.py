"""Concrete slide readers and :func:`open_slide`, the factory that picks one per file.

Backends:

- :class:`OpenSlideReader`: pyramidal vendor formats (.svs, .ndpi, .mrxs, .scn, tiled .tif, ...).
- :class:`PlainImageReader`: PNG/JPEG/BMP and TIFFs OpenSlide refuses (strips, no pyramid). One level.
- :class:`DicomReader`: DICOM WSI through ``wsidicom``, with a small ``pydicom`` frame reader as a fallback
  for single-file instances that wsidicom rejects (e.g. missing ``ImageType`` / ``PixelSpacing``).

Concurrency: every reader owns exactly one open handle. Never share a reader across processes (a
forked file handle shares its offset with the parent); DataLoader workers must each call
:func:`open_slide` themselves. Within one process, reads are serialised by the library (OpenSlide) or
by a lock (the TIFF and DICOM-frame readers), so sharing between threads is safe but not parallel.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slidemil.slides.errors import SlideError, UnsupportedFormatError
from slidemil.slides.reader import SlideReader, resize_rgb

log = logging.getLogger(__name__)

PLAIN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})

#: PNG/JPEG/BMP are decoded whole; above this many pixels we refuse instead of exhausting memory
#: (12k x 12k RGB is ~430 MB). Bigger images belong in a tiled pyramidal TIFF.
MAX_PLAIN_PIXELS = 12_000 * 12_000
#: Non-pyramidal TIFFs up to this size are decoded whole once; larger ones are read strip by strip.
TIFF_WHOLE_LOAD_MAX_PIXELS = 4096 * 4096
#: TIFF resolution tags often hold a meaningless screen default (72/96/300 dpi = 353/265/85 um/px).
#: Only values in this microscope-plausible range (um/px) are believed.
PLAUSIBLE_MPP = (0.05, 20.0)


# ---- pixel conversion shared by all backends ----------------------------------------------------
def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any gray / gray+alpha / RGB / RGBA array of any common dtype -> RGB uint8, alpha composited on white.

    White is what glass looks like, so transparent or padded areas read as background, never as black
    tissue-like pixels.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D image array, got shape {a.shape}")
    a = _scale_to_uint8(a)
    channels = a.shape[2]
    alpha = None
    if channels == 1:
        rgb = np.repeat(a, 3, axis=2)
    elif channels == 2:
        rgb, alpha = np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1]
    else:
        rgb = a[:, :, :3]
        alpha = a[:, :, 3] if channels >= 4 else None
    if alpha is not None and not np.all(alpha == 255):
        a16 = alpha.astype(np.uint16)[:, :, None]
        rgb = ((rgb.astype(np.uint16) * a16 + 255 * (255 - a16) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        scale = 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
    # other integers: 8-bit content stored wide, else 16-bit range
    top = int(a.max()) if a.size else 0
    if top <= 255:
        return np.clip(a, 0, 255).astype(np.uint8)
    return ((np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)


def _lib(error: BaseException, path: Path) -> str:
    """A library's error text with the file's directory removed.

    Messages name files by their name only: enough to find the slide in a manifest, and a server
    answering a client must not reveal where it keeps uploads.
    """
    return str(error).replace(str(path.parent) + "/", "").replace(str(path.resolve().parent) + "/", "")


def _white(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 255, np.uint8)


def _paste_clipped(
    location: tuple[int, int],
    size: tuple[int, int],
    bounds: tuple[int, int],
    read: Callable[[int, int, int, int], np.ndarray],
) -> np.ndarray:
    """White canvas of ``size`` at ``location``; the part inside ``bounds`` (w, h) filled by ``read(x, y, w, h)``."""
    (x, y), (w, h), (bw, bh) = location, size, bounds
    out = _white(h, w)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, bw), min(y + h, bh)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = read(x0, y0, x1 - x0, y1 - y0)
    return out


def _positive_mean(*values: object) -> float | None:
    """Mean of the values that parse as positive finite floats, or None."""
    good = []
    for v in values:
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and f > 0:
            good.append(f)
    return sum(good) / len(good) if good else None


# ---- OpenSlide ------------------------------------------------------------------------------------
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
                self.slide_id, f"OpenSlide cannot open {self.path.name}: {_lib(e, self.path)}"
            ) from e
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideError(
                self.slide_id,
                f"unreadable slide {self.path.name} (corrupt or truncated?): {_lib(e, self.path)}",
            ) from e
        props = self._slide.properties
        self._level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self._native_mpp = _positive_mean(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
        self._objective = _positive_mean(props.get("openslide.objective-power"))
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
                f"read failed in {self.path.name} at {location}, level {level}: {_lib(e, self.path)}",
            ) from e
        return to_rgb_uint8(np.asarray(rgba))  # transparent (outside the scanned area) -> white

    def close(self) -> None:
        self._slide.close()


# ---- plain images and non-pyramidal TIFF ---------------------------------------------------------
class PlainImageReader(SlideReader):
    """PNG/JPEG/BMP (decoded whole, once, on first read) and single-level TIFF (read by strips/tiles).

    Plain images carry no trustworthy mpp, so it must be supplied; the one exception is a TIFF whose
    X/YResolution with a centimetre or inch unit gives a microscope-plausible value (see
    :data:`PLAUSIBLE_MPP`), which scanners and converters such as QuPath or vips write correctly.
    """

    backend = "plain"

    def __init__(self, path: str | Path, *, slide_id: str | None = None, mpp: float | None = None):
        super().__init__(path, slide_id=slide_id, mpp=mpp)
        self._lock = threading.Lock()
        self._image: np.ndarray | None = None
        self._tiff = None
        self._segments: tuple[int, int] | None = None
        self._native_mpp: float | None = None
        #: TIFFs up to this many pixels are decoded whole; bigger ones segment by segment
        self.whole_load_max_pixels = TIFF_WHOLE_LOAD_MAX_PIXELS
        if self.path.suffix.lower() in TIFF_SUFFIXES or _has_tiff_magic(self.path):
            self._open_tiff()
        else:
            self._open_pil()

    # -- opening
    def _open_pil(self) -> None:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(self.path) as im:
                    w, h = im.size
        except Image.DecompressionBombError as e:
            raise SlideError(
                self.slide_id, f"{self.path.name} is too large to decode whole: {_lib(e, self.path)}"
            ) from e
        except (OSError, ValueError, SyntaxError) as e:
            raise SlideError(
                self.slide_id, f"unreadable image {self.path.name} (corrupt?): {_lib(e, self.path)}"
            ) from e
        self._check_size(w, h, MAX_PLAIN_PIXELS)
        self._dims = (w, h)

    def _open_tiff(self) -> None:
        import tifffile

        tif = None
        try:
            tif = tifffile.TiffFile(self.path)
            page = tif.pages.first
            sep, depth, h, w, _ = page.shaped
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, TypeError) as e:
            if tif is not None:
                tif.close()
            why = (
                "no readable image directory" if isinstance(e, IndexError | KeyError) else _lib(e, self.path)
            )
            raise SlideError(
                self.slide_id, f"unreadable TIFF {self.path.name} (corrupt or truncated?): {why}"
            ) from e
        try:
            if depth != 1:
                raise UnsupportedFormatError(
                    self.slide_id, f"{self.path.name}: volumetric TIFF (depth {depth})"
                )
            if int(page.photometric) == 5:  # SEPARATED (CMYK)
                raise UnsupportedFormatError(self.slide_id, f"{self.path.name}: CMYK TIFF is not supported")
            self._check_size(w, h, 2**31)
            # strips/tiles decoded one at a time need contiguous samples; else the page is decoded whole
            segments = None
            if sep == 1:
                segments = (
                    (page.tilewidth, page.tilelength) if page.is_tiled else (w, min(page.rowsperstrip, h))
                )
                self._check_size(*segments, MAX_PLAIN_PIXELS)
            elif w * h > TIFF_WHOLE_LOAD_MAX_PIXELS * 4:
                raise UnsupportedFormatError(
                    self.slide_id,
                    f"{self.path.name}: {w}x{h} TIFF with separate colour planes is too large to read",
                )
        except Exception:
            tif.close()
            raise
        self._tiff, self._page, self._dims, self._segments = tif, page, (int(w), int(h)), segments
        self._native_mpp = _tiff_mpp(page)

    def _check_size(self, w: int, h: int, limit: int) -> None:
        if w <= 0 or h <= 0 or w * h > limit:
            raise SlideError(
                self.slide_id,
                f"{self.path.name} is {w}x{h} px, beyond the {limit:,} px this backend reads safely; "
                "convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid`)",
            )

    # -- metadata
    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [self._dims]

    @property
    def native_mpp(self) -> float | None:
        return self._native_mpp

    # -- reads
    @property
    def _reads_whole(self) -> bool:
        if self._tiff is None or self._segments is None:
            return True
        return self._dims[0] * self._dims[1] <= self.whole_load_max_pixels

    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if self._reads_whole:
            image = self._whole()
            return _paste_clipped(location, size, self._dims, lambda x, y, w, h: image[y : y + h, x : x + w])
        return _paste_clipped(location, size, self._dims, self._read_tiff_segments)

    def _whole(self) -> np.ndarray:
        with self._lock:
            if self._image is None:
                self._image = self._decode_tiff_page() if self._tiff is not None else self._decode_pil()
            return self._image

    def _decode_pil(self) -> np.ndarray:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(self.path) as im:
                    if im.mode in ("P", "PA", "RGBa", "La"):
                        im = im.convert("RGBA")
                    elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                        im = im.convert("RGB")
                    array = np.asarray(im)
        except (OSError, ValueError, SyntaxError) as e:
            raise SlideError(
                self.slide_id, f"unreadable image {self.path.name} (corrupt?): {_lib(e, self.path)}"
            ) from e
        return to_rgb_uint8(array)

    def _decode_tiff_page(self) -> np.ndarray:
        try:
            return self._page_to_rgb(self._page.asarray())
        except Exception as e:  # tifffile/imagecodecs raise many types for damaged data
            raise SlideError(
                self.slide_id, f"cannot decode TIFF {self.path.name}: {_lib(e, self.path)}"
            ) from e

    def _page_to_rgb(self, array: np.ndarray) -> np.ndarray:
        photometric = int(self._page.photometric)
        if array.ndim == 3 and array.shape[0] == self._page.samplesperpixel and self._page.planarconfig == 2:
            array = np.moveaxis(array, 0, -1)
        if photometric == 3 and self._page.colormap is not None:  # palette
            cmap = _scale_to_uint8(np.asarray(self._page.colormap)).T  # (n, 3)
            return np.ascontiguousarray(cmap[np.asarray(array).astype(np.intp)])
        rgb = to_rgb_uint8(array)
        return 255 - rgb if photometric == 0 else rgb  # MINISWHITE

    def _read_tiff_segments(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Decode only the strips/tiles that intersect the region (never the whole page)."""
        page = self._page
        seg_w, seg_h = self._segments
        nx = math.ceil(self._dims[0] / seg_w)
        out = _white(h, w)
        with self._lock:
            fh = self._tiff.filehandle
            for ty in range(y // seg_h, (y + h - 1) // seg_h + 1):
                for tx in range(x // seg_w, (x + w - 1) // seg_w + 1):
                    index = ty * nx + tx
                    offset, count = page.dataoffsets[index], page.databytecounts[index]
                    if count == 0:
                        continue  # empty segment: left white
                    fh.seek(offset)
                    try:
                        seg, _, _ = page.decode(fh.read(count), index, jpegtables=page.jpegtables)
                    except Exception as e:
                        raise SlideError(
                            self.slide_id,
                            f"cannot decode TIFF segment {index} of {self.path.name}: {_lib(e, self.path)}",
                        ) from e
                    seg = self._page_to_rgb(seg[0])
                    sx, sy = tx * seg_w, ty * seg_h
                    ox0, oy0 = max(x, sx), max(y, sy)
                    ox1, oy1 = min(x + w, sx + seg.shape[1]), min(y + h, sy + seg.shape[0])
                    if ox1 > ox0 and oy1 > oy0:
                        out[oy0 - y : oy1 - y, ox0 - x : ox1 - x] = seg[
                            oy0 - sy : oy1 - sy, ox0 - sx : ox1 - sx
                        ]
        return out

    def thumbnail(self, max_side: int = 2048, min_downsample: float = 1.0) -> tuple[np.ndarray, float]:
        """Like the base class, but a big TIFF is shrunk block by block so memory stays bounded."""
        if self._reads_whole:
            return super().thumbnail(max_side, min_downsample)
        w0, h0 = self._dims
        downsample = max(min_downsample, max(w0, h0) / max_side, 1.0)
        out_w, out_h = max(1, math.floor(w0 / downsample)), max(1, math.floor(h0 / downsample))
        out = np.empty((out_h, out_w, 3), np.uint8)
        block = 256
        for oy in range(0, out_h, block):
            for ox in range(0, out_w, block):
                bw, bh = min(block, out_w - ox), min(block, out_h - oy)
                sx, sy = math.floor(ox * downsample), math.floor(oy * downsample)
                sw = max(1, min(w0, math.ceil((ox + bw) * downsample)) - sx)
                sh = max(1, min(h0, math.ceil((oy + bh) * downsample)) - sy)
                out[oy : oy + bh, ox : ox + bw] = resize_rgb(self.read_region((sx, sy), 0, (sw, sh)), bw, bh)
        return out, downsample

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        self._image = None


def _has_tiff_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_mpp(page) -> float | None:
    """um/px from X/YResolution when the unit is inch or cm and the value is microscope-plausible."""
    tags = page.tags
    unit_tag, xres_tag, yres_tag = (
        tags.get("ResolutionUnit"),
        tags.get("XResolution"),
        tags.get("YResolution"),
    )
    if unit_tag is None or xres_tag is None:
        return None
    um_per_unit = {2: 25_400.0, 3: 10_000.0}.get(int(unit_tag.value))
    if um_per_unit is None:
        return None

    def per_unit(tag) -> float:
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        return float(num) / float(den) if den else 0.0

    values = [per_unit(t) for t in (xres_tag, yres_tag) if t is not None]
    mpp = _positive_mean(*(um_per_unit / v for v in values if v > 0))
    if mpp is None or not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return None
    return mpp


# ---- DICOM ------------------------------------------------------------------------------------------
class DicomReader(SlideReader):
    """DICOM VL whole-slide images: a ``.dcm`` file or a folder of instances.

    ``wsidicom`` reads conformant series (all pyramid levels, sparse tiling, multi-file). Files it
    rejects get one more chance with :class:`_DicomFrameGrid`, a pydicom reader for a single
    instance whose frames form a complete grid. mpp comes from the DICOM pixel spacing.
    """

    backend = "dicom"

    def __init__(self, path: str | Path, *, slide_id: str | None = None, mpp: float | None = None):
        super().__init__(path, slide_id=slide_id, mpp=mpp)
        self._engine: _WsiDicomEngine | _DicomFrameGrid
        try:
            self._engine = _WsiDicomEngine(self.path)
            self.backend = "wsidicom"
            return
        except Exception as e:  # wsidicom/pydicom raise many unrelated types for non-conformant input
            wsidicom_problem = f"{type(e).__name__}: {_lib(e, self.path)}"
        if self.path.is_dir():
            raise UnsupportedFormatError(
                self.slide_id, f"wsidicom cannot open the folder {self.path.name}: {wsidicom_problem}"
            )
        try:
            self._engine = _DicomFrameGrid(self.path)
            self.backend = "pydicom-frames"
        except _NotReadable as e:
            raise UnsupportedFormatError(
                self.slide_id,
                f"cannot read DICOM {self.path.name}: wsidicom refused it ({wsidicom_problem}) and the "
                f"pydicom frame reader refused it ({e}). wsidicom needs conformant VL Whole Slide Microscopy "
                "instances (ImageType, PixelSpacing, DimensionOrganizationType); the frame reader needs one "
                "such instance whose frames form a full tile grid in a stated or inferable order",
            ) from None
        log.info(
            "%s: wsidicom refused %s (%s); reading frames with pydicom",
            self.slide_id,
            self.path,
            wsidicom_problem,
        )

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._engine.level_dimensions)

    @property
    def native_mpp(self) -> float | None:
        return self._engine.mpp

    @property
    def objective_power(self) -> float | None:
        return self._engine.objective_power

    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        level_xy = (math.floor(location[0] / ds), math.floor(location[1] / ds))
        try:
            return _paste_clipped(
                level_xy,
                size,
                self.level_dimensions[level],
                lambda x, y, w, h: self._engine.read(level, x, y, w, h),
            )
        except SlideError:
            raise
        except Exception as e:
            raise SlideError(
                self.slide_id,
                f"DICOM read failed in {self.path.name} at {location}, level {level}: {_lib(e, self.path)}",
            ) from e

    def close(self) -> None:
        self._engine.close()


class _QuietJfifNotice(logging.Filter):
    """Drop pydicom's per-frame notice that an 'RGB' instance holds YCbCr JFIF frames (it decodes them right)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "JFIF APP marker" not in record.getMessage()


_JFIF_FILTER = _QuietJfifNotice()


class _NotReadable(Exception):
    """The pydicom frame reader cannot read this file (message says why)."""


class _WsiDicomEngine:
    def __init__(self, path: Path):
        import wsidicom

        with warnings.catch_warnings():
            # pydicom's notes on over-long UIDs/names in real files are not our concern here
            warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
            self._wsi = wsidicom.WsiDicom.open(path)
        try:
            self._levels = sorted(self._wsi.levels, key=lambda lv: -lv.size.width)
            self.level_dimensions = [(int(lv.size.width), int(lv.size.height)) for lv in self._levels]
            base_mpp = self._levels[0].mpp
            self.mpp = _positive_mean(base_mpp.width, base_mpp.height) if base_mpp is not None else None
        except Exception:
            self._wsi.close()
            raise
        self.objective_power: float | None = None
        self._lock = threading.Lock()

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        with self._lock:
            region = self._wsi.read_region(
                (x, y), self._levels[level].level, (w, h), threads=1, as_array=True
            )
        return to_rgb_uint8(region)

    def close(self) -> None:
        self._wsi.close()


class _DicomFrameGrid:
    """One DICOM WSI instance whose frames tile the total pixel matrix, decoded frame by frame by pydicom.

    The frame order comes from ``DimensionOrganizationType`` (TILED_FULL = row-major) or per-frame plane
    positions. When neither is present it is inferred: the frames on the right and bottom edges are the
    only ones with padding beyond the matrix, so the order (row- or column-major) that puts uniform
    padding exactly there is the right one. If the padding cannot decide, the file is refused rather
    than read scrambled.
    """

    CACHE_FRAMES = 64
    PADDING_MARGIN = 16  # px next to the matrix edge skipped: JPEG blocks blur the boundary
    PADDING_MAX_STD = 6.0

    def __init__(self, path: Path):
        import pydicom
        from pydicom.uid import VLWholeSlideMicroscopyImageStorage

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:
            raise _NotReadable(f"not a readable DICOM file: {_lib(e, path)}") from e
        if ds.get("SOPClassUID") != VLWholeSlideMicroscopyImageStorage:
            raise _NotReadable(f"SOP class {ds.get('SOPClassUID')!r} is not VL Whole Slide Microscopy")
        try:
            self._w, self._h = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
            self._tw, self._th = int(ds.Columns), int(ds.Rows)
            frames = int(ds.get("NumberOfFrames", 1))
        except (AttributeError, TypeError, ValueError) as e:
            raise _NotReadable(f"missing pixel matrix attributes: {_lib(e, path)}") from e
        if int(ds.get("BitsAllocated", 8)) != 8:
            raise _NotReadable(f"BitsAllocated {ds.get('BitsAllocated')} (only 8-bit is read)")
        self._nx, self._ny = math.ceil(self._w / self._tw), math.ceil(self._h / self._th)
        if frames != self._nx * self._ny:
            raise _NotReadable(
                f"{frames} frames do not form one {self._nx}x{self._ny} grid of {self._tw}x{self._th} tiles"
            )
        self.level_dimensions = [(self._w, self._h)]
        self.mpp = _dicom_mpp(ds)
        self.objective_power = _positive_mean(
            *(item.get("ObjectiveLensPower") for item in ds.get("OpticalPathSequence", []))
        )
        logging.getLogger("pydicom").addFilter(_JFIF_FILTER)  # idempotent: a filter is added once
        self._fh = open(path, "rb")  # noqa: SIM115 - owned for the reader's lifetime, closed in close()
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        try:
            self._frame_at = self._frame_order(ds)
        except Exception:
            self._fh.close()
            raise

    # -- frame order
    def _frame_order(self, ds) -> Callable[[int, int], int | None]:
        organisation = str(ds.get("DimensionOrganizationType", "")).upper()
        if organisation == "TILED_FULL":
            return self._row_major
        positions = self._plane_positions(ds)
        if positions is not None:
            return lambda col, row: positions.get((col, row))
        order = self._infer_order()
        name = "row-major" if order == self._row_major else "column-major"
        log.warning("%s states no frame order; edge padding shows it is %s", self._fh.name, name)
        return order

    def _row_major(self, col: int, row: int) -> int:
        return row * self._nx + col

    def _column_major(self, col: int, row: int) -> int:
        return col * self._ny + row

    def _plane_positions(self, ds) -> dict[tuple[int, int], int] | None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if not per_frame:
            return None
        positions = {}
        for index, item in enumerate(per_frame):
            try:
                pos = item.PlanePositionSlideSequence[0]
                col = (int(pos.ColumnPositionInTotalImagePixelMatrix) - 1) // self._tw
                row = (int(pos.RowPositionInTotalImagePixelMatrix) - 1) // self._th
            except (AttributeError, IndexError, TypeError, ValueError):
                return None
            positions[(col, row)] = index
        return positions

    def _infer_order(self) -> Callable[[int, int], int]:
        pad_w, pad_h = self._nx * self._tw - self._w, self._ny * self._th - self._h
        if max(pad_w, pad_h) <= 2 * self.PADDING_MARGIN:
            raise _NotReadable(
                "frame order not stated (no DimensionOrganizationType) and no edge padding to infer it"
            )
        fits = [
            order
            for order in (self._row_major, self._column_major)
            if self._padding_fits(order, pad_w, pad_h)
        ]
        if len(fits) != 1:
            raise _NotReadable(
                "frame order not stated (no DimensionOrganizationType) and edge padding "
                + (
                    "fits both row- and column-major order"
                    if fits
                    else "fits neither row- nor column-major order"
                )
            )
        return fits[0]

    def _padding_fits(self, order: Callable[[int, int], int], pad_w: int, pad_h: int) -> bool:
        m = self.PADDING_MARGIN
        checks = []
        if pad_w > 2 * m:
            checks += [(order(self._nx - 1, r), np.s_[:, self._tw - pad_w + m :]) for r in range(self._ny)]
        if pad_h > 2 * m:
            checks += [(order(c, self._ny - 1), np.s_[self._th - pad_h + m :, :]) for c in range(self._nx)]
        for index, region in checks:
            if float(self._frame(index)[region].std()) > self.PADDING_MAX_STD:
                return False
        return True

    # -- pixels
    def _frame(self, index: int) -> np.ndarray:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            from pydicom.pixels import iter_pixels

            with warnings.catch_warnings():
                # e.g. "Photometric RGB but JFIF codestream": pydicom decodes such frames correctly
                warnings.simplefilter("ignore")
                frame = to_rgb_uint8(next(iter_pixels(self._fh, indices=[index])))
            self._cache[index] = frame
            if len(self._cache) > self.CACHE_FRAMES:
                self._cache.popitem(last=False)
            return frame

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = _white(h, w)
        for row in range(y // self._th, (y + h - 1) // self._th + 1):
            for col in range(x // self._tw, (x + w - 1) // self._tw + 1):
                index = self._frame_at(col, row)
                if index is None:
                    continue  # sparse grid: no frame here, glass
                tile = self._frame(index)
                sx, sy = col * self._tw, row * self._th
                ox0, oy0, ox1, oy1 = (
                    max(x, sx),
                    max(y, sy),
                    min(x + w, sx + self._tw),
                    min(y + h, sy + self._th),
                )
                out[oy0 - y : oy1 - y, ox0 - x : ox1 - x] = tile[oy0 - sy : oy1 - sy, ox0 - sx : ox1 - sx]
        return out

    def close(self) -> None:
        self._fh.close()
        self._cache.clear()


def _dicom_mpp(ds) -> float | None:
    """um/px from PixelSpacing (mm; shared functional groups, else top level).

    Fallback: Imaged Volume Width/Height (mm) over the matrix size, believed only when x and y agree
    within 2% (dummy volumes such as 15 x 15 mm on a non-square matrix give unequal values).
    """
    spacing = None
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    except (AttributeError, IndexError):
        spacing = ds.get("PixelSpacing")
    if spacing is not None:
        mm = _positive_mean(*spacing)
        if mm is not None:
            return mm * 1000.0
    try:
        mpp_x = float(ds.ImagedVolumeWidth) * 1000.0 / int(ds.TotalPixelMatrixColumns)
        mpp_y = float(ds.ImagedVolumeHeight) * 1000.0 / int(ds.TotalPixelMatrixRows)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    if mpp_x > 0 and mpp_y > 0 and abs(mpp_x - mpp_y) <= 0.02 * max(mpp_x, mpp_y):
        return (mpp_x + mpp_y) / 2
    return None


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# ---- factory ----------------------------------------------------------------------------------------
def open_slide(path: str | Path, *, slide_id: str | None = None, mpp: float | None = None) -> SlideReader:
    """Open ``path`` with the first backend that can read it.

    Order: a folder, ``.dcm`` or a DICOM preamble -> :class:`DicomReader`; PNG/JPEG/BMP ->
    :class:`PlainImageReader`; otherwise OpenSlide when ``detect_format`` recognises the file, then
    plain TIFF reading for TIFFs OpenSlide refuses. ``mpp`` overrides the file's metadata.

    Raises :class:`SlideError` for a missing or corrupt file and :class:`UnsupportedFormatError` when no
    backend recognises it; both name the file and what was tried.
    """
    p = Path(path)
    sid = slide_id or p.stem
    if not p.exists():
        raise SlideError(sid, f"file not found: {p}")
    suffix = p.suffix.lower()
    candidates: list[type[SlideReader]] = []
    if p.is_dir() or suffix in DICOM_SUFFIXES or _has_dicom_magic(p):
        candidates.append(DicomReader)
    elif suffix in PLAIN_SUFFIXES:
        candidates.append(PlainImageReader)
    if not p.is_dir() and suffix not in PLAIN_SUFFIXES and _openslide_format(p) is not None:
        candidates.append(OpenSlideReader)
    if (
        not p.is_dir()
        and (suffix in TIFF_SUFFIXES or _has_tiff_magic(p))
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
    tried = "; ".join(f"{b.__name__}: {e.problem}" for b, e in zip(candidates, failures, strict=True))
    if all(isinstance(e, UnsupportedFormatError) for e in failures):
        raise UnsupportedFormatError(sid, f"no backend could open {p.name} ({tried})")
    raise SlideError(sid, f"cannot read {p.name} ({tried})")


def _openslide_format(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        return None
