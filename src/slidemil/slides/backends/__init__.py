"""Concrete slide readers, one module per backend, and :func:`open_slide`, the factory that picks one.

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

from slidemil.slides.backends.dicom import DicomReader
from slidemil.slides.backends.factory import open_slide
from slidemil.slides.backends.openslide_reader import OpenSlideReader
from slidemil.slides.backends.plain_image import PlainImageReader

__all__ = ["DicomReader", "OpenSlideReader", "PlainImageReader", "open_slide"]
