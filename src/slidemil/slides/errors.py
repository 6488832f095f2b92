"""Errors raised while opening or reading slides.

Every error names the slide, so a message in a log of hundreds of slides points at the culprit. ``kind`` is a
short machine-readable name of the problem (serving maps it to an HTTP status and an error code).
"""

from __future__ import annotations


class SlideError(Exception):
    """A slide cannot be used; the message names the slide and the reason."""

    kind = "unreadable"

    def __init__(self, slide: str, problem: str):
        self.slide = str(slide)
        self.problem = problem
        super().__init__(f"{self.slide}: {problem}")


class MissingMppError(SlideError):
    """The slide has no microns-per-pixel metadata and none was supplied.

    The default text names the pipeline's remedies; entry points with another remedy (``--mpp`` on the CLI,
    a form field in serving) pass their own ``remedy``.
    """

    kind = "no_mpp"
    PIPELINE_REMEDY = "supply one in the manifest column 'mpp' or the config default `slides.default_mpp`"

    def __init__(self, slide: str, remedy: str = PIPELINE_REMEDY, note: str | None = None):
        self.note = note
        super().__init__(
            slide, f"no microns-per-pixel (mpp) in the slide metadata{f' ({note})' if note else ''}; {remedy}"
        )


class SlideFileMissingError(SlideError):
    """The path names no file."""

    kind = "missing"


class TruncatedSlideError(SlideError):
    """The file ends before its own structure says it should: an incomplete copy, download or upload."""

    kind = "truncated"


class CorruptSlideError(SlideError):
    """The file's structure is damaged, or its content is not the format its name says."""

    kind = "corrupt"


class UnsupportedFormatError(SlideError):
    """No backend can open this file."""

    kind = "unsupported"


class NoTissueError(SlideError):
    """Tissue segmentation found nothing to tile."""

    kind = "no_tissue"
