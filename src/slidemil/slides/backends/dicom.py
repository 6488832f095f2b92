"""DICOM VL whole-slide images through wsidicom, with the pydicom frame reader as a fallback."""

from __future__ import annotations

import logging
import math
import threading
import warnings
from pathlib import Path

import numpy as np

from slidemil.slides.backends.common import library_message, positive_mean
from slidemil.slides.backends.dicom_frames import DicomFrameGrid, NotReadable
from slidemil.slides.backends.pixels import paste_clipped, to_rgb_uint8
from slidemil.slides.errors import SlideError, UnsupportedFormatError
from slidemil.slides.reader import SlideReader

log = logging.getLogger(__name__)


class DicomReader(SlideReader):
    """DICOM VL whole-slide images: a ``.dcm`` file or a folder of instances.

    ``wsidicom`` reads conformant series (all pyramid levels, sparse tiling, multi-file). Files it
    rejects get one more chance with :class:`DicomFrameGrid`, a pydicom reader for a single
    instance whose frames form a complete grid. mpp comes from the DICOM pixel spacing.
    """

    backend = "dicom"

    def __init__(self, path: str | Path, *, slide_id: str | None = None, mpp: float | None = None):
        super().__init__(path, slide_id=slide_id, mpp=mpp)
        self._engine: _WsiDicomEngine | DicomFrameGrid
        try:
            self._engine = _WsiDicomEngine(self.path)
            self.backend = "wsidicom"
            return
        except Exception as e:  # wsidicom/pydicom raise many unrelated types for non-conformant input
            wsidicom_problem = f"{type(e).__name__}: {library_message(e, self.path)}"
        if self.path.is_dir():
            raise UnsupportedFormatError(
                self.slide_id, f"wsidicom cannot open the folder {self.path.name}: {wsidicom_problem}"
            )
        try:
            self._engine = DicomFrameGrid(self.path)
            self.backend = "pydicom-frames"
        except NotReadable as e:
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

    @property
    def mpp_note(self) -> str | None:
        return self._engine.mpp_note

    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        level_xy = (math.floor(location[0] / ds), math.floor(location[1] / ds))
        try:
            return paste_clipped(
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
                f"DICOM read failed in {self.path.name} at {location}, level {level}: {library_message(e, self.path)}",
            ) from e

    def close(self) -> None:
        self._engine.close()


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
            self.mpp = positive_mean(base_mpp.width, base_mpp.height) if base_mpp is not None else None
            self.mpp_note = None if self.mpp is not None else "wsidicom found no pixel spacing"
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
