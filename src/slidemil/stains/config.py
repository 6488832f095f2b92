"""Settings of the stain fit, with the CLASS-M / Macenko defaults (params.yaml ``stains.fit``)."""

from __future__ import annotations

from dataclasses import dataclass

from slidemil.utils.config import StrictConfig

CHANNEL_CUT = "channel"
RADIAL_CUT = "radial"


@dataclass
class StainConfig(StrictConfig):
    """How a slide's stain matrix is fitted.

    ``transparent_cut`` decides which pixels count as stained tissue. ``radial`` (the default, the CLASS-M
    authors' cut) fits the eigen plane on every sampled pixel and drops those within ``beta`` of the origin in
    that plane. ``channel`` (classic Macenko) keeps a pixel only when its OD exceeds ``beta`` in *every*
    channel. With I0 = 255 the channel cut needs every channel below 181, which pale eosin and weakly
    blue-absorbing tissue fail: on ``torchstain_source.png`` it keeps 53 of 2,500 samples and its vectors
    move by up to 0.49 when the sampling grid shifts by a few pixels; the radial cut keeps 1,761 and moves
    by 0.007 (methods.md section C, "Adaptive stain separation").
    """

    sample_step: int = 10  # every sample_step-th pixel in x and y of each tissue tile
    beta: float = 0.15  # OD below which a pixel is treated as transparent (see transparent_cut)
    transparent_cut: str = RADIAL_CUT
    alpha_percentile: float = 1.0  # stain directions = the alpha-th and (100 - alpha)-th percentile angles
    max_percentile: float = 99.0  # per-slide stain maxima = this percentile of each concentration on tissue
    min_pixels: int = 1000  # fewer sampled tissue pixels than this -> the reference matrix (with a warning)
    min_angle_deg: float = 2.0  # fitted H and E closer than this are indistinguishable -> the reference
    max_tiles: int = 0  # tiles read per slide, evenly spread over the tile set; 0 = every tile

    def __post_init__(self) -> None:
        if self.sample_step < 1:
            raise ValueError(f"stains: sample_step must be >= 1, got {self.sample_step}")
        if self.transparent_cut not in (CHANNEL_CUT, RADIAL_CUT):
            raise ValueError(f"stains: transparent_cut must be {CHANNEL_CUT!r} or {RADIAL_CUT!r}, "
                             f"got {self.transparent_cut!r}")
        if not 0.0 <= self.alpha_percentile < 50.0:
            raise ValueError(f"stains: alpha_percentile must be in [0, 50), got {self.alpha_percentile}")
        if not 0.0 < self.max_percentile <= 100.0:
            raise ValueError(f"stains: max_percentile must be in (0, 100], got {self.max_percentile}")
        if self.min_pixels < 2 or self.max_tiles < 0 or self.beta < 0:
            raise ValueError("stains: min_pixels must be >= 2, max_tiles >= 0 and beta >= 0")
