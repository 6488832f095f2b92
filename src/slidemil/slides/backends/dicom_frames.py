"""A pydicom frame reader for single DICOM WSI instances that wsidicom rejects."""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slidemil.slides.backends.common import library_message, positive_mean
from slidemil.slides.backends.pixels import to_rgb_uint8, white

log = logging.getLogger(__name__)


class _QuietJfifNotice(logging.Filter):
    """Drop pydicom's per-frame notice that an 'RGB' instance holds YCbCr JFIF frames (it decodes them right)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "JFIF APP marker" not in record.getMessage()


_JFIF_FILTER = _QuietJfifNotice()


class NotReadable(Exception):
    """The pydicom frame reader cannot read this file (message says why)."""


class DicomFrameGrid:
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
            raise NotReadable(f"not a readable DICOM file: {library_message(e, path)}") from e
        if ds.get("SOPClassUID") != VLWholeSlideMicroscopyImageStorage:
            raise NotReadable(f"SOP class {ds.get('SOPClassUID')!r} is not VL Whole Slide Microscopy")
        try:
            self._w, self._h = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
            self._tw, self._th = int(ds.Columns), int(ds.Rows)
            frames = int(ds.get("NumberOfFrames", 1))
        except (AttributeError, TypeError, ValueError) as e:
            raise NotReadable(f"missing pixel matrix attributes: {library_message(e, path)}") from e
        if int(ds.get("BitsAllocated", 8)) != 8:
            raise NotReadable(f"BitsAllocated {ds.get('BitsAllocated')} (only 8-bit is read)")
        self._nx, self._ny = math.ceil(self._w / self._tw), math.ceil(self._h / self._th)
        if frames != self._nx * self._ny:
            raise NotReadable(
                f"{frames} frames do not form one {self._nx}x{self._ny} grid of {self._tw}x{self._th} tiles"
            )
        self.level_dimensions = [(self._w, self._h)]
        self.mpp, self.mpp_note = dicom_mpp(ds)
        self.objective_power = positive_mean(
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
            raise NotReadable(
                "frame order not stated (no DimensionOrganizationType) and no edge padding to infer it"
            )
        fits = [
            order
            for order in (self._row_major, self._column_major)
            if self._padding_fits(order, pad_w, pad_h)
        ]
        if len(fits) != 1:
            raise NotReadable(
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
        out = white(h, w)
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


def dicom_mpp(ds) -> tuple[float | None, str | None]:
    """``(um/px, None)`` from PixelSpacing (mm; shared functional groups, else top level), or ``(None, why)``.

    Fallback: Imaged Volume Width/Height (mm) over the matrix size, believed only when x and y agree
    within 2% (dummy volumes such as 15 x 15 mm on a non-square matrix give unequal values). ``why`` says
    what the file holds instead, for the "no mpp" message.
    """
    spacing = None
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    except (AttributeError, IndexError):
        spacing = ds.get("PixelSpacing")
    if spacing is not None:
        mm = positive_mean(*spacing)
        if mm is not None:
            return mm * 1000.0, None
    try:
        width_mm, height_mm = float(ds.ImagedVolumeWidth), float(ds.ImagedVolumeHeight)
        cols, rows = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        mpp_x, mpp_y = width_mm * 1000.0 / cols, height_mm * 1000.0 / rows
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None, "no PixelSpacing and no ImagedVolumeWidth/Height"
    if mpp_x > 0 and mpp_y > 0 and abs(mpp_x - mpp_y) <= 0.02 * max(mpp_x, mpp_y):
        return (mpp_x + mpp_y) / 2, None
    return None, (
        f"no PixelSpacing; the imaged volume {width_mm:g} x {height_mm:g} mm over {cols} x {rows} px gives "
        f"{mpp_x:.3f} x {mpp_y:.3f} um/px, which disagree (a placeholder volume)"
    )
