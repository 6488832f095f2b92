"""Errors raised while opening or reading slides.

Every error names the slide, so a message in a log of hundreds of slides points at the culprit.
"""

from __future__ import annotations


class SlideError(Exception):
    """A slide cannot be used; the message names the slide and the reason."""

    def __init__(self, slide: str, problem: str):
        self.slide = str(slide)
        self.problem = problem
        super().__init__(f"{self.slide}: {problem}")


class MissingMppError(SlideError):
    """The slide has no microns-per-pixel metadata and none was supplied."""

    def __init__(self, slide: str):
        super().__init__(
            slide,
            "no microns-per-pixel (mpp) in the slide metadata; supply one in the manifest column 'mpp' "
            "or the config default `slides.default_mpp`",
        )


class UnsupportedFormatError(SlideError):
    """No backend can open this file."""


class NoTissueError(SlideError):
    """Tissue segmentation found nothing to tile."""
