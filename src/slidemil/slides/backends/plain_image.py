"""PNG/JPEG/BMP and the TIFFs OpenSlide refuses (strips, no pyramid): one level, bounded memory."""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path

import numpy as np

from slidemil.slides.backends.common import library_message, positive_mean
from slidemil.slides.backends.pixels import paste_clipped, scale_to_uint8, to_rgb_uint8, white
from slidemil.slides.backends.sniff import TIFF_SUFFIXES, has_tiff_magic
from slidemil.slides.errors import SlideError, UnsupportedFormatError
from slidemil.slides.reader import SlideReader, resize_rgb

#: PNG/JPEG/BMP are decoded whole; above this many pixels we refuse instead of exhausting memory
#: (12k x 12k RGB is ~430 MB). Bigger images belong in a tiled pyramidal TIFF.
MAX_PLAIN_PIXELS = 12_000 * 12_000
#: Non-pyramidal TIFFs up to this size are decoded whole once; larger ones are read strip by strip.
TIFF_WHOLE_LOAD_MAX_PIXELS = 4096 * 4096
#: TIFF resolution tags often hold a meaningless screen default (72/96/300 dpi = 353/265/85 um/px).
#: Only values in this microscope-plausible range (um/px) are believed.
PLAUSIBLE_MPP = (0.05, 20.0)


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
        if self.path.suffix.lower() in TIFF_SUFFIXES or has_tiff_magic(self.path):
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
                self.slide_id, f"{self.path.name} is too large to decode whole: {library_message(e, self.path)}"
            ) from e
        except (OSError, ValueError, SyntaxError) as e:
            raise SlideError(
                self.slide_id, f"unreadable image {self.path.name} (corrupt?): {library_message(e, self.path)}"
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
                "no readable image directory" if isinstance(e, IndexError | KeyError) else library_message(e, self.path)
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
            return paste_clipped(location, size, self._dims, lambda x, y, w, h: image[y : y + h, x : x + w])
        return paste_clipped(location, size, self._dims, self._read_tiff_segments)

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
                self.slide_id, f"unreadable image {self.path.name} (corrupt?): {library_message(e, self.path)}"
            ) from e
        return to_rgb_uint8(array)

    def _decode_tiff_page(self) -> np.ndarray:
        try:
            return self._page_to_rgb(self._page.asarray())
        except Exception as e:  # tifffile/imagecodecs raise many types for damaged data
            raise SlideError(
                self.slide_id, f"cannot decode TIFF {self.path.name}: {library_message(e, self.path)}"
            ) from e

    def _page_to_rgb(self, array: np.ndarray) -> np.ndarray:
        photometric = int(self._page.photometric)
        if array.ndim == 3 and array.shape[0] == self._page.samplesperpixel and self._page.planarconfig == 2:
            array = np.moveaxis(array, 0, -1)
        if photometric == 3 and self._page.colormap is not None:  # palette
            cmap = scale_to_uint8(np.asarray(self._page.colormap)).T  # (n, 3)
            return np.ascontiguousarray(cmap[np.asarray(array).astype(np.intp)])
        rgb = to_rgb_uint8(array)
        return 255 - rgb if photometric == 0 else rgb  # MINISWHITE

    def _read_tiff_segments(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Decode only the strips/tiles that intersect the region (never the whole page)."""
        page = self._page
        seg_w, seg_h = self._segments
        nx = math.ceil(self._dims[0] / seg_w)
        out = white(h, w)
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
                            f"cannot decode TIFF segment {index} of {self.path.name}: {library_message(e, self.path)}",
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
    mpp = positive_mean(*(um_per_unit / v for v in values if v > 0))
    if mpp is None or not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return None
    return mpp
