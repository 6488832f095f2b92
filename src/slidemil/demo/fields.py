"""Seeded, periodic, band-limited random fields defined in micrometres (textures of the demo slides).

Why band-limited Fourier fields: one set of random Fourier coefficients defines a continuous function
of physical position, so the same field can be sampled exactly at any pixel size (0.25 or 0.5 um/px)
and any block of pixels gives the same values as any other block covering the same place. That keeps
slides rendered block by block free of seams and makes one scene look the same at every resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np

#: spectrum(fx, fy) -> amplitude, frequencies in cycles per micrometre
Spectrum = Callable[[np.ndarray, np.ndarray], np.ndarray]


def gaussian_lowpass(scale_um: float) -> Spectrum:
    """Isotropic smooth field whose features are about ``scale_um`` wide."""
    f0 = 1.0 / (2.0 * math.pi * scale_um / 2.0)

    def spectrum(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * (fx**2 + fy**2) / f0**2)

    return spectrum


def bandpass(period_um: float, rel_width: float = 0.5) -> Spectrum:
    """Isotropic blobs of about ``period_um`` (grain, chromatin)."""
    fc = 1.0 / period_um

    def spectrum(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        f = np.hypot(fx, fy)
        return np.exp(-0.5 * ((f - fc) / (rel_width * fc)) ** 2)

    return spectrum


def fibres(angle_rad: float, spacing_um: float, length_um: float) -> Spectrum:
    """Streaks along ``angle_rad``: ~``length_um`` correlation along the fibre, ~``spacing_um`` across."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    f_across = 1.0 / (math.pi * spacing_um)
    f_along = 1.0 / (math.pi * length_um)

    def spectrum(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        fu = fx * c + fy * s  # along the fibre
        fv = -fx * s + fy * c  # across the fibre
        return np.exp(-0.5 * (fu / f_along) ** 2 - 0.5 * (fv / f_across) ** 2)

    return spectrum


class PeriodicField:
    """A zero-mean, unit-variance random field, periodic with ``period_um``, band-limited to ``max_freq``.

    ``table(texel_um)`` samples it on a regular grid (cached); :meth:`fine_block` / :meth:`coarse_block`
    give the values under a block of level-0 pixels; :meth:`at` evaluates single points (used for
    object-level decisions, which must not depend on the pixel size).
    """

    def __init__(self, seed: int | tuple[int, ...], period_um: float, spectrum: Spectrum, max_freq: float):
        self.period_um = float(period_um)
        k_max = max(1, math.ceil(max_freq * period_um))
        k = np.arange(-k_max, k_max + 1)
        fx = k[None, :] / period_um
        fy = k[:, None] / period_um
        amp = spectrum(fx, fy)
        amp[k_max, k_max] = 0.0  # zero mean
        rng = np.random.default_rng(seed)
        coef = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
        power = 0.5 * float(np.sum(np.abs(coef) ** 2))
        self._coef = coef / math.sqrt(power) if power > 0 else coef
        self._k = k
        self._tables: dict[float, np.ndarray] = {}

    def table(self, texel_um: float) -> np.ndarray:
        """Field sampled at the centres of texels ``(n + 0.5) * texel`` (float32, N x N, periodic)."""
        key = round(float(texel_um), 9)
        if key not in self._tables:
            self._tables[key] = self._make_table(key)
        return self._tables[key]

    def texels(self, texel_um: float) -> int:
        return max(4, round(self.period_um / texel_um))

    def _make_table(self, texel_um: float) -> np.ndarray:
        n = self.texels(texel_um)
        real_texel = self.period_um / n
        keep = np.abs(self._k) < n / 2  # drop frequencies above this grid's Nyquist
        k = self._k[keep]
        coef = self._coef[np.ix_(keep, keep)]
        # phase shift by half a texel so that sample n sits at (n + 0.5) * texel
        shift = np.exp(2j * math.pi * k * 0.5 * real_texel / self.period_um)
        coef = coef * shift[:, None] * shift[None, :]
        spec = np.zeros((n, n), np.complex128)
        idx = np.mod(k, n)
        spec[np.ix_(idx, idx)] = coef
        return np.fft.ifft2(spec, norm="forward").real.astype(np.float32)

    def fine_block(self, x0: int, y0: int, w: int, h: int, mpp: float) -> np.ndarray:
        """Values at the centres of level-0 pixels [x0, x0+w) x [y0, y0+h) of a slide at ``mpp``."""
        tab = self.table(mpp)
        return wrap_take(tab, x0, y0, w, h)

    def coarse_block(self, x0: int, y0: int, w: int, h: int, mpp: float, texel_um: float) -> np.ndarray:
        """Smooth field sampled on a coarse grid (``texel_um``, a whole number of pixels) and upsampled.

        Upsampling a grid aligned to global pixel multiples gives the same value for a pixel whatever
        block it is rendered in.
        """
        grid = CoarseGrid.around(x0, y0, w, h, mpp, texel_um)
        return grid.upsample(self.coarse_values(grid))

    def coarse_values(self, grid: CoarseGrid) -> np.ndarray:
        """The field at the coarse texels of ``grid`` (to combine cheaply before upsampling)."""
        return wrap_take(self.table(grid.factor * grid.mpp), grid.cx0, grid.cy0, grid.cw, grid.ch)

    def at(self, x_um: np.ndarray, y_um: np.ndarray, texel_um: float = 4.0) -> np.ndarray:
        """Bilinear point evaluation on the ``texel_um`` grid (independent of any slide's pixel size)."""
        tab = self.table(texel_um)
        n = tab.shape[0]
        t = self.period_um / n
        sx = np.asarray(x_um, np.float64) / t - 0.5
        sy = np.asarray(y_um, np.float64) / t - 0.5
        ix, iy = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
        fx, fy = sx - ix, sy - iy
        ix0, iy0, ix1, iy1 = ix % n, iy % n, (ix + 1) % n, (iy + 1) % n
        top = tab[iy0, ix0] * (1 - fx) + tab[iy0, ix1] * fx
        bottom = tab[iy1, ix0] * (1 - fx) + tab[iy1, ix1] * fx
        return top * (1 - fy) + bottom * fy


class CoarseGrid:
    """Texels of ``factor`` x ``factor`` level-0 pixels covering a block (plus one texel of margin).

    The grid is aligned to multiples of ``factor`` in global pixel coordinates, so bilinear upsampling
    gives every pixel the same value whichever block it belongs to.
    """

    def __init__(self, x0: int, y0: int, w: int, h: int, mpp: float, factor: int):
        self.x0, self.y0, self.w, self.h, self.mpp, self.factor = x0, y0, w, h, mpp, factor
        self.cx0, self.cy0 = x0 // factor - 1, y0 // factor - 1
        self.cw = (x0 + w) // factor + 2 - self.cx0
        self.ch = (y0 + h) // factor + 2 - self.cy0

    @classmethod
    def around(cls, x0: int, y0: int, w: int, h: int, mpp: float, texel_um: float) -> CoarseGrid:
        return cls(x0, y0, w, h, mpp, max(1, round(texel_um / mpp)))

    def upsample(self, coarse: np.ndarray) -> np.ndarray:
        f = self.factor
        if f == 1:
            return coarse[1 : 1 + self.h, 1 : 1 + self.w]
        ox, oy = self.x0 - self.cx0 * f, self.y0 - self.cy0 * f
        # only the texels the block needs, then one resize
        tx0, ty0 = max(0, ox // f - 1), max(0, oy // f - 1)
        tx1 = min(self.cw, (ox + self.w) // f + 2)
        ty1 = min(self.ch, (oy + self.h) // f + 2)
        part = np.ascontiguousarray(coarse[ty0:ty1, tx0:tx1])
        fine = cv2.resize(part, ((tx1 - tx0) * f, (ty1 - ty0) * f), interpolation=cv2.INTER_LINEAR)
        ox -= tx0 * f
        oy -= ty0 * f
        return fine[oy : oy + self.h, ox : ox + self.w]


def wrap_take(table: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """``table[y0:y0+h, x0:x0+w]`` with periodic wrap-around, built from contiguous slices."""
    n_y, n_x = table.shape[:2]
    sx, sy = x0 % n_x, y0 % n_y
    if sx + w <= n_x and sy + h <= n_y:
        return table[sy : sy + h, sx : sx + w]
    out = np.empty((h, w) + table.shape[2:], table.dtype)
    y = 0
    while y < h:
        ty = (sy + y) % n_y
        hh = min(h - y, n_y - ty)
        x = 0
        while x < w:
            tx = (sx + x) % n_x
            ww = min(w - x, n_x - tx)
            out[y : y + hh, x : x + ww] = table[ty : ty + hh, tx : tx + ww]
            x += ww
        y += hh
    return out


@lru_cache(maxsize=8)
def noise_tables(seed: int, std: float, size: int = 509) -> tuple[np.ndarray, np.ndarray]:
    """Pixel noise as (positive part, negative part), uint8 (size, size, 3), with a prime period.

    Indexed by global pixel position, so noise is as seamless as the rest and costs one slice per
    block; two unsigned halves let OpenCV add it with saturation in two fast passes.
    """
    rng = np.random.default_rng((seed, 0x0015E))
    noise = np.round(rng.standard_normal((size, size, 3)) * std)
    return np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)
