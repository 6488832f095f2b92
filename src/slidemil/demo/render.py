"""Render any block of level-0 pixels of a :class:`SlideScene` at a given pixel size (um/px).

Colour model: every pixel holds a hematoxylin and an eosin concentration (optical density units);
RGB = glass * exp(-(H * h_vec + E * e_vec)) (Beer-Lambert with standard H&E stain vectors), looked up
in a 256 x 256 table. Mixing stains in optical density, not in RGB, is what makes overlaps, pale
cytoplasm and dark hyperchromatic nuclei look like H&E rather than like paint.

Every value of a pixel depends only on its global position (objects in um, fields periodic in um,
noise indexed by pixel), and each block is rendered with a margin wider than any blur, so blocks
tile without seams and a block never needs its neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import shapely

from slidemil.demo.fields import CoarseGrid, noise_tables, wrap_take
from slidemil.demo.objects import (  # column indices of a nuclei array
    _A,
    _ANG,
    _B,
    _DARK,
    _EPI,
    _H2,
    _H3,
    _NUCLEOLUS,
    _P2,
    _P3,
    _X,
    _Y,
)
from slidemil.demo.raster import polygon_coverage
from slidemil.demo.scene import SEPTA_HALF_WIDTH, SlideScene

H_VEC = np.array([0.5626, 0.7201, 0.4062])  # hematoxylin OD per unit (R, G, B)
E_VEC = np.array([0.2159, 0.8012, 0.5581])  # eosin
H_MAX, E_MAX = 2.6, 2.2  # concentration at LUT index 255
GLASS_RGB = (242, 240, 244)
SHIFT = 4  # fixed-point bits for sub-pixel cv2 drawing
ONE = 1 << SHIFT


@dataclass(frozen=True)
class Palette:
    """Stain concentrations of each compartment (OD units); one palette for every label."""

    e_stroma: float = 0.52
    h_stroma: float = 0.07
    e_epi: float = 0.36
    h_epi: float = 0.16
    e_epi_tumour: float = 0.5
    h_epi_tumour: float = 0.32
    e_sheet: float = 0.22
    h_sheet: float = 0.05
    h_nucleus: float = 1.5
    e_rbc: float = 1.5
    blur_um: float = 0.45
    edge_blur_um: float = 3.0
    noise_std: float = 2.6


@dataclass(frozen=True)
class StainShift:
    """Another lab's / scanner's H&E: other stain colours (OD vectors, normalised) and strengths. The demo's
    external cohort uses it to simulate a colour-shifted site; the morphology (and so the labels) is unchanged."""

    h_vec: tuple[float, float, float] = tuple(H_VEC)
    e_vec: tuple[float, float, float] = tuple(E_VEC)
    h_scale: float = 1.0
    e_scale: float = 1.0

    @classmethod
    def from_dict(cls, d: dict) -> StainShift:
        def unit(v):
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (3,) or (v <= 0).any():
                raise ValueError(f"a stain vector is 3 positive optical densities (R, G, B), got {v.tolist()}")
            return tuple(float(x) for x in v / np.linalg.norm(v))

        return cls(unit(d.get("h_vec", H_VEC)), unit(d.get("e_vec", E_VEC)), float(d.get("h_scale", 1.0)),
                   float(d.get("e_scale", 1.0)))


@lru_cache(maxsize=4)
def stain_lut(glass: tuple[int, int, int] = GLASS_RGB, stain: StainShift | None = None) -> np.ndarray:
    """(65536, 3) uint8: RGB for index (h_q << 8) | e_q (``stain``: a shifted site's colours)."""
    h = np.arange(256) / 255.0 * H_MAX
    e = np.arange(256) / 255.0 * E_MAX
    h_vec, e_vec = (H_VEC, E_VEC) if stain is None else (np.asarray(stain.h_vec), np.asarray(stain.e_vec))
    if stain is not None:
        h, e = np.clip(h * stain.h_scale, 0, None), np.clip(e * stain.e_scale, 0, None)
    od = h[:, None, None] * h_vec + e[None, :, None] * e_vec
    rgb = np.asarray(glass, np.float64) * np.exp(-od)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(-1, 3)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) * (1.0 / (hi - lo)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class BlockRenderer:
    """Callable ``(x0, y0, w, h) -> RGB uint8 (h, w, 3)`` of a scene at ``mpp`` um/px (level-0 pixels)."""

    def __init__(self, scene: SlideScene, mpp: float, palette: Palette | None = None,
                 stain: StainShift | None = None):
        self.scene = scene
        self.mpp = float(mpp)
        self.p = palette or Palette()
        self.lut = stain_lut(GLASS_RGB, stain)
        self.noise_pos, self.noise_neg = noise_tables(scene.seed % 97, self.p.noise_std)
        self.blur_px = self.p.blur_um / self.mpp
        # wider than the blur plus the longest outline segment of a small shape (~4 um): OpenCV's
        # anti-aliasing changes a clipped segment, and that must stay outside the kept pixels
        self.margin = int(math.ceil(3 * max(self.blur_px, 0.5) + 4.0 / self.mpp)) + 2
        self._tissue_polys = scene.tissue_polygons()
        self._tumour_polys = scene.tumour_polygons()
        self._glass = np.asarray(GLASS_RGB, np.uint8)
        self._glass_table: np.ndarray | None = None
        # chromatin texture, pre-scaled to the nuclear hematoxylin multiplier
        grain = scene.fields.grain.table(self.mpp)
        self._grain = (self.p.h_nucleus * (0.8 + 0.3 * grain)).astype(np.float32)
        self._e_scale = scene.stain["e"] * 255.0 / E_MAX
        self._h_scale = scene.stain["h"] * 255.0 / H_MAX

    # ---- helpers -------------------------------------------------------------------------------------
    def _fixed(self, v_um: np.ndarray, x0: int, y0: int) -> np.ndarray:
        """um -> int32 fixed-point pixel coordinates relative to (x0, y0), for OpenCV drawing.

        Pixel j spans [j, j+1) * mpp um; OpenCV puts integer coordinates at pixel centres, hence -0.5.
        Rounding happens in global coordinates, so a shape drawn into any block lands identically.
        """
        p = np.round((np.asarray(v_um) * (1.0 / self.mpp) - 0.5) * ONE).astype(np.int64)
        p[..., 0] -= x0 * ONE
        p[..., 1] -= y0 * ONE
        return p.astype(np.int32)

    @staticmethod
    def _coverage(polys, x0: int, y0: int, h: int, w: int, px_um: float) -> np.ndarray:
        """Exact anti-aliased coverage of large polygons on a grid of ``px_um`` cells at (x0, y0)."""
        rings = []
        for poly in polys:
            for ring in [poly.exterior, *poly.interiors]:
                rings.append(np.asarray(ring.coords)[:-1] * (1.0 / px_um) - (x0, y0))
        return polygon_coverage(rings, h, w)

    def _add_noise(self, rgb: np.ndarray, x0: int, y0: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        rgb = cv2.add(rgb, wrap_take(self.noise_pos, x0, y0, w, h))
        return cv2.subtract(rgb, wrap_take(self.noise_neg, x0, y0, w, h))

    def _glass_block(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Empty glass: a slice of the precomputed noisy glass table (same pixels as the slow path)."""
        if self._glass_table is None:
            n = self.noise_pos.shape[0]
            flat = np.empty((n, n, 3), np.uint8)
            flat[:] = self._glass
            self._glass_table = self._add_noise(flat, 0, 0)
        return np.ascontiguousarray(wrap_take(self._glass_table, x0, y0, w, h))

    def _tissue_alpha(self, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
        """Soft, slightly ragged tissue mask in [0, 1]; None when the block is wholly inside tissue.

        Rasterised and blurred on a ~1 um grid aligned to global pixel multiples, then upsampled, so
        the wide edge blur costs little and stays seamless.
        """
        mpp, p = self.mpp, self.p
        reach = 4 * p.edge_blur_um + 4.0
        box = shapely.box(x0 * mpp - reach, y0 * mpp - reach, (x0 + w) * mpp + reach, (y0 + h) * mpp + reach)
        if self.scene.tissue.contains(box):
            return None
        grid = CoarseGrid.around(x0, y0, w, h, mpp, 1.0)
        texel = grid.factor * mpp
        em = int(math.ceil(3 * p.edge_blur_um / texel)) + 1
        raw = self._coverage(
            self._tissue_polys, grid.cx0 - em, grid.cy0 - em, grid.ch + 2 * em, grid.cw + 2 * em, texel
        )
        soft = cv2.GaussianBlur(raw, (0, 0), p.edge_blur_um / texel)
        soft = soft[em : em + grid.ch, em : em + grid.cw]
        rough = self.scene.fields.mottle.coarse_values(grid)
        t = soft + 0.16 * np.clip(rough, -1.8, 1.8)
        return grid.upsample(_smoothstep(t, 0.3, 0.62))  # ~1 um grid: sharp enough, 1/f^2 the work

    # ---- main ----------------------------------------------------------------------------------------
    def __call__(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        mpp, p, sc = self.mpp, self.p, self.scene
        m = self.margin
        bx, by, bw, bh = x0 - m, y0 - m, w + 2 * m, h + 2 * m
        ux0, uy0, ux1, uy1 = bx * mpp, by * mpp, (bx + bw) * mpp, (by + bh) * mpp
        reach = 4 * p.edge_blur_um + 4.0
        if not sc.tissue.intersects(shapely.box(ux0 - reach, uy0 - reach, ux1 + reach, uy1 + reach)):
            return self._glass_block(x0, y0, w, h)

        tissue = self._tissue_alpha(bx, by, bw, bh)
        obj = sc.objects_in(ux0, uy0, ux1, uy1)
        f = sc.fields

        # stroma: A + sum_k B_k * fibre_k, with the smooth weights combined on a coarse grid -------------
        grid = CoarseGrid.around(bx, by, bw, bh, mpp, 8.0)
        u, v = f.orient_u.coarse_values(grid), f.orient_v.coarse_values(grid)
        dens = 1.0 + 0.3 * f.density.coarse_values(grid)
        weights = []
        for phi in f.fibre_angles:
            wk = np.maximum(0.25 + 0.8 * (u * math.cos(2 * phi) + v * math.sin(2 * phi)), 0.0)
            weights.append(wk * wk)
        norm = (p.e_stroma * 0.27) * dens / np.maximum(sum(weights), 1e-3)
        e = grid.upsample(p.e_stroma * 0.95 * dens).copy()
        for wk, field in zip(weights, f.fibre, strict=True):
            e += grid.upsample(wk * norm) * field.fine_block(bx, by, bw, bh, mpp)
        hm = np.full((bh, bw), p.h_stroma, np.float32)

        # glands, solid sheets, lumens, vessels ---------------------------------------------------------
        stroma = None  # weight of the stroma compartment (None = 1 everywhere)
        if obj.glands:
            epi_map = np.zeros((bh, bw), np.uint8)
            lum_map = np.zeros((bh, bw), np.uint8)
            tumour_map = np.zeros((bh, bw), np.uint8) if any(g.tumour for g in obj.glands) else None
            for g in obj.glands:
                outer = [self._fixed(g.outer, bx, by)]
                cv2.fillPoly(epi_map, outer, 255, cv2.LINE_AA, SHIFT)
                if g.tumour and tumour_map is not None:
                    cv2.fillPoly(tumour_map, outer, 255, cv2.LINE_AA, SHIFT)
                clearing = int(round(255 * g.clearing))
                for lumen in g.lumens:
                    cv2.fillPoly(lum_map, [self._fixed(lumen, bx, by)], clearing, cv2.LINE_AA, SHIFT)
            epi = epi_map.astype(np.float32) * (1.0 / 255.0)
            stroma = 1.0 - epi
            mottle = f.mottle.coarse_block(bx, by, bw, bh, mpp, texel_um=1.0)
            if tumour_map is None:
                e_epi, h_epi = p.e_epi, p.h_epi
            else:  # tumour glands: denser, more amphophilic cytoplasm
                t = tumour_map.astype(np.float32) * (1.0 / 255.0)
                e_epi, h_epi = (
                    p.e_epi + (p.e_epi_tumour - p.e_epi) * t,
                    p.h_epi + (p.h_epi_tumour - p.h_epi) * t,
                )
            e = e * stroma + epi * (e_epi * (1.0 + 0.15 * mottle))
            hm += epi * (h_epi - p.h_stroma)
            clear = 1.0 - lum_map.astype(np.float32) * (1.0 / 255.0)
            e *= clear
            hm *= clear
        if sc.label == "subtype_a" and self._tumour_polys:
            tum = self._coverage(self._tumour_polys, bx, by, bh, bw, mpp)
            if tum.any():
                sep = np.abs(f.septa.coarse_block(bx, by, bw, bh, mpp, texel_um=2.0))
                sheet = tum
                sheet *= _smoothstep(sep, SEPTA_HALF_WIDTH - 0.04, SEPTA_HALF_WIDTH + 0.02)
                if stroma is not None:
                    sheet *= stroma
                mottle = f.mottle.coarse_block(bx, by, bw, bh, mpp, texel_um=1.0)
                e = e * (1.0 - sheet) + sheet * (p.e_sheet * (1.0 + 0.2 * mottle))
                hm += sheet * (p.h_sheet - p.h_stroma)
                stroma = 1.0 - sheet if stroma is None else stroma - sheet
        if obj.vessels:
            vessel_map = np.zeros((bh, bw), np.uint8)
            for ves in obj.vessels:
                cv2.fillPoly(vessel_map, [self._fixed(ves, bx, by)], 255, cv2.LINE_AA, SHIFT)
            vessel = vessel_map.astype(np.float32) * (1.0 / 255.0)
            clear = 1.0 - (vessel if stroma is None else vessel * stroma)
            e *= clear
            hm *= clear

        # nuclei -----------------------------------------------------------------------------------------
        nuc_s = np.zeros((bh, bw), np.uint8)
        nuc_e = np.zeros((bh, bw), np.uint8)
        self._draw_nuclei(obj.nuclei, nuc_s, nuc_e, bx, by, bw, bh)
        nuc = nuc_s.astype(np.float32)
        if stroma is not None:
            nuc *= np.clip(stroma, 0.0, 1.0)  # stroma nuclei do not show through glands and sheets
        nuc += nuc_e
        nuc *= 1.0 / 200.0
        hm += wrap_take(self._grain, bx, by, bw, bh) * nuc
        np.minimum(nuc, 1.0, out=nuc)
        e *= 1.0 - 0.75 * nuc
        if len(obj.rbc):
            rbc_map = np.zeros((bh, bw), np.uint8)
            for x, y, r in obj.rbc:
                c = self._fixed(np.array([x, y]), bx, by)
                cv2.circle(
                    rbc_map, (int(c[0]), int(c[1])), int(round(r / mpp * ONE)), 255, -1, cv2.LINE_AA, SHIFT
                )
            e += (p.e_rbc / 255.0) * rbc_map.astype(np.float32)

        if tissue is not None:
            e *= tissue
            hm *= tissue
        eq = cv2.convertScaleAbs(e, alpha=self._e_scale)
        hq = cv2.convertScaleAbs(hm, alpha=self._h_scale)
        if self.blur_px >= 0.3:
            eq = cv2.GaussianBlur(eq, (0, 0), self.blur_px)
            hq = cv2.GaussianBlur(hq, (0, 0), self.blur_px)
        idx = hq[m : m + h, m : m + w].astype(np.uint16)
        idx <<= 8
        idx |= eq[m : m + h, m : m + w]
        return self._add_noise(self.lut[idx], x0, y0)

    def _draw_nuclei(
        self, rows: np.ndarray, nuc_s: np.ndarray, nuc_e: np.ndarray, bx: int, by: int, bw: int, bh: int
    ) -> None:
        if len(rows) == 0:
            return
        mpp = self.mpp
        x_px, y_px = rows[:, _X] / mpp - bx, rows[:, _Y] / mpp - by
        reach = rows[:, _A] / mpp * 1.4 + 2
        vis = (x_px > -reach) & (x_px < bw + reach) & (y_px > -reach) & (y_px < bh + reach)
        rows = rows[vis]
        if len(rows) == 0:
            return
        n_vert = 16
        theta = np.linspace(0, 2 * math.pi, n_vert, endpoint=False)[None, :]
        r = (
            1.0
            + rows[:, _H2, None] * np.cos(2 * theta + rows[:, _P2, None])
            + rows[:, _H3, None] * np.cos(3 * theta + rows[:, _P3, None])
        )
        lx = rows[:, _A, None] * r * np.cos(theta)
        ly = rows[:, _B, None] * r * np.sin(theta)
        ca, sa = np.cos(rows[:, _ANG, None]), np.sin(rows[:, _ANG, None])
        vx = rows[:, _X, None] + ca * lx - sa * ly
        vy = rows[:, _Y, None] + sa * lx + ca * ly
        pts = self._fixed(np.stack([vx, vy], axis=-1), bx, by)
        values = np.clip(np.round(rows[:, _DARK] * 200), 1, 255).astype(int)
        epi = rows[:, _EPI] > 0.5
        # large nuclei are vesicular: a dark membrane rim around paler, clumped chromatin
        big = (rows[:, _B] > 3.2) & epi
        if big.any():
            shrink = np.maximum(0.0, 1.0 - 0.9 / rows[big, _B])[:, None, None]
            centre = self._fixed(rows[big][:, None, [_X, _Y]], bx, by)
            inner = centre + np.round((pts[big] - centre) * shrink).astype(np.int32)
        inner_k = np.cumsum(big) - 1
        for k in range(len(rows)):
            target = nuc_e if epi[k] else nuc_s
            cv2.fillPoly(target, [pts[k]], int(values[k]), cv2.LINE_AA, SHIFT)
            if big[k]:
                cv2.fillPoly(target, [inner[inner_k[k]]], int(values[k] * 0.78), cv2.LINE_AA, SHIFT)
        has = rows[:, _NUCLEOLUS] > 0
        if has.any():
            centres = self._fixed(rows[has][:, [_X, _Y]], bx, by)
            radii = np.round(rows[has, _NUCLEOLUS] / mpp * ONE).astype(int)
            for (cx, cy), rad in zip(centres, radii, strict=True):
                cv2.circle(nuc_e, (int(cx), int(cy)), int(rad), 255, -1, cv2.LINE_AA, SHIFT)
