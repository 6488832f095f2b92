"""Concrete slide readers and the factory that picks one per file.

- :class:`OpenSlideReader`: everything OpenSlide reads (.svs, .ndpi, .mrxs, .scn, tiled TIFF, ...).
- :class:`PlainImageReader`: PNG/JPEG/BMP and non-pyramidal TIFF as one-level slides (mpp must be supplied).
- :class:`DicomReader`: DICOM VL whole-slide images. A single-file TILED_FULL instance is read frame by frame
  with pydicom (OpenSlide 4.0.1 refuses files without the full WSI module set); a folder of instances goes
  through wsidicom.

Readers own an open file handle: never share one across processes (each DataLoader worker opens its own).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np

from slidemil.slides.errors import SlideError, UnsupportedFormatError
from slidemil.slides.reader import SlideReader

log = logging.getLogger(__name__)

PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
#: plain images are decoded whole; refuse absurd sizes instead of exhausting memory
MAX_PLAIN_PIXELS = 40_000 * 40_000


class OpenSlideReader(SlideReader):
    backend = "openslide"

    def __init__(self, path, *, slide_id=None, mpp=None):
        import openslide

        super().__init__(path, slide_id=slide_id, mpp=mpp)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideError as exc:
            raise SlideError(self.slide_id, f"OpenSlide cannot read {self.path.name}: {exc}") from exc
        self._props = dict(self._slide.properties)

    @property
    def level_dimensions(self):
        return [tuple(map(int, d)) for d in self._slide.level_dimensions]

    @property
    def level_downsamples(self):
        return [float(d) for d in self._slide.level_downsamples]

    @property
    def native_mpp(self):
        vals = []
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            try:
                v = float(self._props.get(key, "nan"))
            except ValueError:
                v = float("nan")
            if math.isfinite(v) and v > 0:
                vals.append(v)
        return float(np.mean(vals)) if vals else None

    @property
    def objective_power(self):
        try:
            v = float(self._props.get("openslide.objective-power", "nan"))
        except ValueError:
            return None
        return v if math.isfinite(v) and v > 0 else None

    def _read_region(self, location, level, size):
        import openslide

        try:
            rgba = np.asarray(self._slide.read_region(location, level, size))
        except openslide.OpenSlideError as exc:
            raise SlideError(self.slide_id, f"read failed at {location} level {level}: {exc}") from exc
        return _rgba_on_white(rgba)

    def close(self):
        self._slide.close()


class PlainImageReader(SlideReader):
    """One-level slide from an ordinary image (decoded once, lazily; uncompressed TIFFs are memory-mapped)."""

    backend = "image"

    def __init__(self, path, *, slide_id=None, mpp=None):
        super().__init__(path, slide_id=slide_id, mpp=mpp)
        self._array = None
        self._zarr = None
        self._tif = None
        try:
            if self.path.suffix.lower() in TIFF_SUFFIXES:
                self._open_tiff()
            else:
                from PIL import Image

                with Image.open(self.path) as im:
                    self._size = im.size
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder error means "not an image we can read"
            raise UnsupportedFormatError(
                self.slide_id, f"cannot open {self.path.name} as an image: {exc}"
            ) from exc
        if self._size[0] * self._size[1] > MAX_PLAIN_PIXELS:
            raise UnsupportedFormatError(
                self.slide_id,
                f"{self._size[0]}x{self._size[1]} plain image is too large; convert it to a pyramidal TIFF",
            )

    def _open_tiff(self):
        import tifffile

        self._tif = tifffile.TiffFile(self.path)
        page = self._tif.pages[0]
        self._size = (int(page.imagewidth), int(page.imagelength))
        if page.is_memmappable:  # uncompressed: regions straight from disk
            self._zarr = self._tif.asarray(key=0, out="memmap")

    @property
    def level_dimensions(self):
        return [self._size]

    @property
    def native_mpp(self):
        return None  # plain images carry no trustworthy pixel size: it must come from the manifest

    def _image(self) -> np.ndarray:
        if self._array is None:
            if self._tif is not None:
                self._array = _to_rgb(self._tif.pages[0].asarray())
            else:
                from PIL import Image

                with Image.open(self.path) as im:
                    self._array = np.asarray(im.convert("RGB"))
        return self._array

    def _read_region(self, location, level, size):
        x, y = location
        w, h = size
        W, H = self._size
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 <= x0 or y1 <= y0:
            return out
        if self._zarr is not None:
            crop = np.asarray(self._zarr[y0:y1, x0:x1])
        else:
            crop = self._image()[y0:y1, x0:x1]
        out[y0 - y : y1 - y, x0 - x : x1 - x] = _to_rgb(crop)
        return out

    def close(self):
        if self._tif is not None:
            self._tif.close()
        self._array = None


class DicomReader(SlideReader):
    """A single DICOM VL whole-slide instance (TILED_FULL frames) read with pydicom, one level."""

    backend = "dicom"

    def __init__(self, path, *, slide_id=None, mpp=None):
        import pydicom

        super().__init__(path, slide_id=slide_id, mpp=mpp)
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._ds = pydicom.dcmread(str(self.path))
        except Exception as exc:  # noqa: BLE001
            raise SlideError(self.slide_id, f"not a readable DICOM file: {exc}") from exc
        ds = self._ds
        if "TotalPixelMatrixColumns" not in ds or "NumberOfFrames" not in ds:
            raise UnsupportedFormatError(
                self.slide_id,
                "DICOM file is not a tiled whole-slide image (no TotalPixelMatrixColumns/NumberOfFrames)",
            )
        organisation = str(ds.get("DimensionOrganizationType", "TILED_FULL") or "TILED_FULL")
        if organisation != "TILED_FULL":
            raise UnsupportedFormatError(
                self.slide_id,
                f"DICOM {organisation} frame organisation is not supported;"
                " convert with wsidicomizer or open the series folder",
            )
        self._size = (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
        self._tile = (int(ds.Columns), int(ds.Rows))
        self._cols = math.ceil(self._size[0] / self._tile[0])
        self._rows = math.ceil(self._size[1] / self._tile[1])
        self._frame = functools.lru_cache(maxsize=64)(self._decode_frame)
        self._column_major = self._detect_column_major()

    def _frame_index(self, row: int, col: int) -> int:
        return col * self._rows + row if self._column_major else row * self._cols + col

    def _detect_column_major(self) -> bool:
        """TILED_FULL frames are row-major by the standard, but some converters write them column-major.

        The padding of edge frames (beyond the pixel matrix) is uniform filler; pick the order under which the
        edge frames' out-of-matrix areas are flattest.
        """
        W, H = self._size
        tw, th = self._tile
        pad_x, pad_y = self._cols * tw - W, self._rows * th - H
        if (pad_x == 0 and pad_y == 0) or self._cols == 1 or self._rows == 1:
            return False

        def padding_spread(column_major: bool) -> float:
            spread = []
            for row in range(self._rows):
                for col in range(self._cols):
                    if (col == self._cols - 1 and pad_x) or (row == self._rows - 1 and pad_y):
                        i = col * self._rows + row if column_major else row * self._cols + col
                        f = self._frame(i).astype(np.float32)
                        if col == self._cols - 1 and pad_x:
                            spread.append(f[:, tw - pad_x :].std())
                        if row == self._rows - 1 and pad_y:
                            spread.append(f[th - pad_y :, :].std())
            return float(np.mean(spread))

        return padding_spread(True) < padding_spread(False)

    @property
    def level_dimensions(self):
        return [self._size]

    @property
    def native_mpp(self):
        ds = self._ds
        try:
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            return float(np.mean([float(v) for v in spacing])) * 1000.0
        except (AttributeError, IndexError, KeyError):
            pass
        width_mm = ds.get("ImagedVolumeWidth")
        if width_mm:
            return float(width_mm) * 1000.0 / self._size[0]
        return None

    def _decode_frame(self, index: int) -> np.ndarray:
        from pydicom.pixels import pixel_array

        return _to_rgb(np.asarray(pixel_array(self._ds, index=index)))

    def _read_region(self, location, level, size):
        x, y = location
        w, h = size
        W, H = self._size
        tw, th = self._tile
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        for row in range(y0 // th, (y1 - 1) // th + 1 if y1 > y0 else 0):
            for col in range(x0 // tw, (x1 - 1) // tw + 1 if x1 > x0 else 0):
                frame = self._frame(self._frame_index(row, col))
                fx0, fy0 = col * tw, row * th
                ax0, ay0 = max(x0, fx0), max(y0, fy0)
                ax1, ay1 = min(x1, fx0 + frame.shape[1]), min(y1, fy0 + frame.shape[0])
                if ax1 > ax0 and ay1 > ay0:
                    out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = frame[
                        ay0 - fy0 : ay1 - fy0, ax0 - fx0 : ax1 - fx0
                    ]
        return out


class WsiDicomReader(SlideReader):
    """A folder holding a DICOM WSI series (several levels), via wsidicom."""

    backend = "wsidicom"

    def __init__(self, path, *, slide_id=None, mpp=None):
        from wsidicom import WsiDicom

        super().__init__(path, slide_id=slide_id, mpp=mpp)
        try:
            self._wsi = WsiDicom.open(str(self.path))
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedFormatError(
                self.slide_id, f"wsidicom cannot open {self.path.name}: {exc}"
            ) from exc

    @property
    def level_dimensions(self):
        return [(int(lv.size.width), int(lv.size.height)) for lv in self._wsi.levels]

    @property
    def native_mpp(self):
        mpp = self._wsi.mpp
        return float((mpp.width + mpp.height) / 2) if mpp else None

    def _read_region(self, location, level, size):
        ds = self.level_downsamples[level]
        img = self._wsi.read_region((round(location[0] / ds), round(location[1] / ds)), level, size)
        return _to_rgb(np.asarray(img))

    def close(self):
        self._wsi.close()


def open_slide(path: str | Path, *, slide_id: str | None = None, mpp: float | None = None) -> SlideReader:
    """Open ``path`` with the first backend that can read it; errors name the slide and what was tried."""
    path = Path(path)
    sid = slide_id or path.stem
    if not path.exists():
        raise SlideError(sid, f"file not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():
        return WsiDicomReader(path, slide_id=sid, mpp=mpp)
    if suffix in DICOM_SUFFIXES:
        return DicomReader(path, slide_id=sid, mpp=mpp)
    if suffix in PLAIN_SUFFIXES:
        return PlainImageReader(path, slide_id=sid, mpp=mpp)
    import openslide

    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        fmt = None
    if fmt is not None and not (fmt == "generic-tiff" and _is_untiled_tiff(path)):
        return OpenSlideReader(path, slide_id=sid, mpp=mpp)
    if suffix in TIFF_SUFFIXES:
        return PlainImageReader(path, slide_id=sid, mpp=mpp)
    raise UnsupportedFormatError(
        sid,
        f"{path.name} is not a format slidemil reads (tried OpenSlide; supported: OpenSlide formats such as "
        ".svs/.ndpi/.mrxs/.scn/tiled .tif, plain .png/.jpg/.tif images, DICOM .dcm)",
    )


def _is_untiled_tiff(path: Path) -> bool:
    """OpenSlide's generic-tiff needs tiles; striped TIFFs go to the plain reader."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return not tif.pages[0].is_tiled
    except Exception:  # noqa: BLE001
        return False


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied-or-not RGBA from OpenSlide on white (transparent = outside the scan)."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    if np.all(alpha == 1.0):
        return np.ascontiguousarray(rgba[..., :3])
    out = rgb + 255.0 * (1.0 - alpha)  # OpenSlide returns premultiplied colour
    return np.clip(out, 0, 255).astype(np.uint8)


def _to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2).astype(np.uint8)
    if a.shape[2] == 4:
        return _rgba_on_white(a)
    if a.dtype != np.uint8:
        a = (a / max(1, a.max()) * 255).astype(np.uint8) if a.dtype.kind in "ui" else a.astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])
