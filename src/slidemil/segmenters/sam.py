"""``sam:<vit_b|vit_l|vit_h>``: Segment Anything's automatic mask generator, once per tissue contour frame.

Defaults are the SAM-MIL paper's (methods.md section D): points_per_side 32, pred_iou_thresh 0.6,
stability_score_thresh 0.6, crop_n_layers 1, crop_n_points_downscale_factor 2, min_mask_region_area 0, frames
with a long side <= 1024 px. The checkpoint is a configured file: nothing is downloaded (pipelines run
offline), and a missing file is an error naming where to get it. The GPU is used when present.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any

from slidemil.segmenters.base import Segmenter, SlideInput, register_segmenter
from slidemil.segmenters.frames import render_frame
from slidemil.segmenters.segments import Frame, SegmentMask

#: the official checkpoints of each variant (Kirillov et al. 2023)
CHECKPOINT_URLS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}
#: keyword arguments of SamAutomaticMaskGenerator with the paper's values
GENERATOR_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.6,
    "stability_score_thresh": 0.6,
    "crop_n_layers": 1,
    "crop_n_points_downscale_factor": 2,
    "min_mask_region_area": 0,
}


class MissingCheckpoint(FileNotFoundError):
    """The configured SAM checkpoint does not exist."""


def check_checkpoint(variant: str, checkpoint: str | Path | None) -> Path:
    """The checkpoint path, or an error saying which file to download and where to configure it."""
    url = CHECKPOINT_URLS[variant]
    if not checkpoint:
        raise MissingCheckpoint(f"SAM {variant}: no checkpoint configured; download {url} and set "
                                "params.yaml segment.sam.checkpoint to its path")
    path = Path(checkpoint)
    if not path.is_file():
        raise MissingCheckpoint(f"SAM {variant}: checkpoint {path} not found; download it from {url} "
                                "(params.yaml segment.sam.checkpoint names the file; nothing is fetched "
                                "automatically)")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


@register_segmenter("sam")
class SamSegmenter(Segmenter):
    """SAM with the configured variant and checkpoint; ``generator`` overrides GENERATOR_DEFAULTS."""

    def __init__(self, variant: str | None = None, *, checkpoint: str | None = None, max_side: int = 1024,
                 device: str = "auto", generator: dict[str, Any] | None = None, model: Any = None):
        if variant not in CHECKPOINT_URLS:
            raise ValueError(f"SAM variant must be one of {sorted(CHECKPOINT_URLS)} (sam:vit_b), got {variant!r}")
        self.variant = variant
        unknown = set(generator or {}) - set(GENERATOR_DEFAULTS) - {"points_per_batch", "box_nms_thresh"}
        if unknown:
            raise ValueError(f"unknown SAM generator setting(s) {sorted(unknown)}; known: {sorted(GENERATOR_DEFAULTS)}")
        super().__init__(None, max_side=max_side, generator={**GENERATOR_DEFAULTS, **(generator or {})})
        self.device = device
        self._model = model  # an already built SAM (tests: random weights); else loaded from the checkpoint
        self.checkpoint = None if model is not None else check_checkpoint(variant, checkpoint)

    @property
    def id(self) -> str:
        return f"sam:{self.variant}"

    def fingerprint(self) -> dict[str, Any]:
        weights = "in-memory" if self.checkpoint is None else file_sha256(self.checkpoint)
        return {**super().fingerprint(), "checkpoint_sha256": weights}

    @cached_property
    def generator(self):
        import torch
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

        model = self._model
        if model is None:
            model = sam_model_registry[self.variant](checkpoint=str(self.checkpoint))
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        model.to(device).eval()
        return SamAutomaticMaskGenerator(model, output_mode="binary_mask", **self.settings["generator"])

    def masks(self, slide: SlideInput, frames: list[Frame]) -> list[SegmentMask]:
        import torch

        out = []
        for frame in frames:
            with torch.inference_mode():
                found = generate_masks(self.generator, render_frame(slide.reader, frame))
            out += [SegmentMask(frame, m["segmentation"].astype(bool)) for m in found]
        return out


def generate_masks(generator: Any, image: Any) -> list[dict]:
    """``generator.generate(image)``, with "no mask survived the thresholds" as an empty list.

    segment-anything 1.0 fails with an IndexError in its cross-crop NMS when every crop came back empty (a
    blank frame, or random weights); that is a legitimate "no regions here", not an error of the slide.
    """
    try:
        return generator.generate(image)
    except IndexError as exc:
        if "with size 0" not in str(exc):
            raise
        return []

