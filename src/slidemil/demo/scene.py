"""The scene of a synthetic H&E slide, described in micrometres and independent of any pixel size.

A scene is tissue geometry (1-3 smooth random blobs on glass, 0-3 tumour regions clipped to the
tissue) plus objects (nuclei, glands, vessels, red cells) generated lazily per square cell of a grid,
each cell from its own seeded generator. Any window of the slide can therefore be rendered on its own,
and the same window always gets the same objects, whatever block or resolution asks for it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from slidemil.demo.fields import PeriodicField, bandpass, fibres, gaussian_lowpass
from slidemil.demo.objects import (
    MAX_OBJECT_REACH_UM,
    Gland,
    ObjectSet,
    cribriform_nest,
    irregular_gland,
    nuclei_rows,
)
from slidemil.demo.shapes import (
    blob,
    inset,
    make_tissue,
    make_tumour,
    polygon_area,
    polygons_of,
    radial_shape,
    resample_contour,
)

LABELS = ("normal", "subtype_a", "subtype_b")
SEPTA_HALF_WIDTH = 0.13  # |septa field| below this is stroma inside solid tumour
TUMOUR_B_CELL_UM = 62.0


# ---- fields shared by all slides with the same texture seed ------------------------------------------
@dataclass(frozen=True)
class SceneFields:
    """The random fields of a scene (textures, orientation, zones); all periodic, in um."""

    fibre: tuple[PeriodicField, ...]
    fibre_angles: tuple[float, ...]
    orient_u: PeriodicField
    orient_v: PeriodicField
    density: PeriodicField
    zone: PeriodicField
    septa: PeriodicField
    mottle: PeriodicField
    grain: PeriodicField


@lru_cache(maxsize=4)
def scene_fields(texture_seed: int) -> SceneFields:
    """Fields are costly to build (FFTs), so a few texture seeds are shared across slides (and cached)."""

    def fs(i: int) -> tuple[int, int]:
        return (texture_seed, 0xF1E1D, i)

    angles = (0.0, math.pi / 3, 2 * math.pi / 3)
    periods = (256.0, 224.0, 288.0)
    fib = tuple(
        PeriodicField(fs(i), p, fibres(a, spacing_um=2.2, length_um=22.0), max_freq=0.9)
        for i, (a, p) in enumerate(zip(angles, periods, strict=True))
    )
    low = 1.0 / math.pi
    return SceneFields(
        fibre=fib,
        fibre_angles=angles,
        orient_u=PeriodicField(fs(10), 2048.0, gaussian_lowpass(180.0), max_freq=3.5 * low / 180.0),
        orient_v=PeriodicField(fs(11), 2048.0, gaussian_lowpass(180.0), max_freq=3.5 * low / 180.0),
        density=PeriodicField(fs(12), 2048.0, gaussian_lowpass(90.0), max_freq=3.5 * low / 90.0),
        zone=PeriodicField(fs(13), 4096.0, gaussian_lowpass(350.0), max_freq=3.5 * low / 350.0),
        septa=PeriodicField(fs(14), 2048.0, gaussian_lowpass(70.0), max_freq=3.5 * low / 70.0),
        mottle=PeriodicField(fs(15), 256.0, gaussian_lowpass(4.0), max_freq=3.5 * low / 4.0),
        grain=PeriodicField(fs(16), 128.0, bandpass(1.6, 0.6), max_freq=1.0),
    )


# ---- the scene -----------------------------------------------------------------------------------------
class CellGrid:
    """Objects generated per square cell of ``cell_um``; a small LRU cache keeps recently used cells."""

    def __init__(
        self,
        cell_um: float,
        generate: Callable[[int, int, np.random.Generator], ObjectSet],
        seed: int,
        stream: int,
        cache_size: int = 4096,
    ):
        self.cell_um = float(cell_um)
        self._generate = generate
        self._seed = seed
        self._stream = stream
        self._cache: OrderedDict[tuple[int, int], ObjectSet] = OrderedDict()
        self._cache_size = cache_size

    def cell(self, i: int, j: int) -> ObjectSet:
        key = (i, j)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        rng = np.random.default_rng((self._seed, self._stream, i + (1 << 20), j + (1 << 20)))
        obj = self._generate(i, j, rng)
        self._cache[key] = obj
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return obj

    def window(self, x0: float, y0: float, x1: float, y1: float) -> list[ObjectSet]:
        c = self.cell_um
        r = MAX_OBJECT_REACH_UM
        i0, i1 = math.floor((x0 - r) / c), math.floor((x1 + r) / c)
        j0, j1 = math.floor((y0 - r) / c), math.floor((y1 + r) / c)
        return [self.cell(i, j) for j in range(j0, j1 + 1) for i in range(i0, i1 + 1)]


class SlideScene:
    """Geometry and objects of one synthetic slide (all lengths in um)."""

    def __init__(
        self,
        width_um: float,
        height_um: float,
        label: str,
        seed: int,
        tumour_fraction: float = 0.0,
        tissue_coverage: float | None = None,
        n_tissue_pieces: int | None = None,
    ):
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
        self.width_um, self.height_um = float(width_um), float(height_um)
        self.label, self.seed = label, int(seed)
        rng = np.random.default_rng((self.seed, 0x5CE4E))
        coverage = float(rng.uniform(0.4, 0.6)) if tissue_coverage is None else float(tissue_coverage)
        n_pieces = (
            int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])) if n_tissue_pieces is None else n_tissue_pieces
        )
        self.tissue: BaseGeometry = make_tissue(rng, self.width_um, self.height_um, coverage, n_pieces)
        if label == "normal" or tumour_fraction <= 0:
            self.tumour: BaseGeometry = Polygon()
        else:
            self.tumour = make_tumour(rng, self.tissue, float(tumour_fraction))
        self.fields = scene_fields(self.seed % 4)
        self.stain = {  # per-slide stain strength jitter (a realistic nuisance, equal for all labels)
            "h": float(rng.uniform(0.9, 1.1)),
            "e": float(rng.uniform(0.88, 1.12)),
        }
        self.tissue_inner = self.tissue.buffer(-55.0)
        self.tumour_halo = self.tumour.buffer(60.0) if not self.tumour.is_empty else Polygon()
        for g in (self.tissue, self.tumour, self.tissue_inner, self.tumour_halo):
            shapely.prepare(g)
        self.grids = [
            CellGrid(100.0, self._stroma_cell, self.seed, 1),
            CellGrid(130.0, self._normal_gland_cell, self.seed, 2),
        ]
        if label == "subtype_a" and not self.tumour.is_empty:
            self.grids.append(CellGrid(78.0, self._tumour_a_cell, self.seed, 3))
        if label == "subtype_b" and not self.tumour.is_empty:
            self.grids.append(CellGrid(TUMOUR_B_CELL_UM, self._tumour_b_cell, self.seed, 4))

    # ---- summary ---------------------------------------------------------------------------------------
    @property
    def tissue_area_um2(self) -> float:
        return float(self.tissue.area)

    @property
    def tumour_fraction(self) -> float:
        """Tumour area / tissue area of the ground truth."""
        return float(self.tumour.area / self.tissue.area) if self.tissue.area > 0 else 0.0

    def tumour_polygons(self) -> list[Polygon]:
        return polygons_of(self.tumour)

    def tissue_polygons(self) -> list[Polygon]:
        return polygons_of(self.tissue)

    def objects_in(self, x0: float, y0: float, x1: float, y1: float) -> ObjectSet:
        return ObjectSet.concat([o for g in self.grids for o in g.window(x0, y0, x1, y1)])

    def septa_level(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """|septa field|: small values are the fibrous septa between solid tumour nests."""
        return np.abs(self.fields.septa.at(x, y))

    def orientation(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Local fibre direction (radians), the same field that weights the fibre textures."""
        u = self.fields.orient_u.at(x, y)
        v = self.fields.orient_v.at(x, y)
        return 0.5 * np.arctan2(v, u)

    # ---- cell generators -------------------------------------------------------------------------------
    def _cell_box(self, i: int, j: int, c: float) -> Polygon:
        return shapely.box(i * c, j * c, (i + 1) * c, (j + 1) * c)

    def _stroma_cell(self, i: int, j: int, rng: np.random.Generator) -> ObjectSet:
        c = 100.0
        if not self.tissue.intersects(self._cell_box(i, j, c)):
            return ObjectSet()
        parts: list[np.ndarray] = []
        # fibroblasts: sparse, small, elongated along the local fibre direction
        n = rng.poisson(c * c / 420.0)
        x, y = rng.uniform(i * c, (i + 1) * c, n), rng.uniform(j * c, (j + 1) * c, n)
        keep = shapely.contains_xy(self.tissue, x, y)
        x, y = x[keep], y[keep]
        n = len(x)
        ang = self.orientation(x, y) + rng.normal(0, 0.25, n)
        parts.append(
            nuclei_rows(
                x,
                y,
                rng.uniform(4.5, 7.5, n),
                rng.uniform(1.0, 1.5, n),
                ang,
                rng.uniform(0.75, 0.95, n),
                rng,
                irregular=0.05,
                epi=False,
            )
        )
        # lymphocytes: small, round, very dark
        n = rng.poisson(c * c / 2600.0)
        x, y = rng.uniform(i * c, (i + 1) * c, n), rng.uniform(j * c, (j + 1) * c, n)
        keep = shapely.contains_xy(self.tissue, x, y)
        x, y = x[keep], y[keep]
        n = len(x)
        r = rng.uniform(2.4, 3.2, n)
        parts.append(
            nuclei_rows(
                x,
                y,
                r * 1.05,
                r,
                rng.uniform(0, math.pi, n),
                rng.uniform(1.0, 1.15, n),
                rng,
                irregular=0.04,
                epi=False,
            )
        )
        vessels: list[np.ndarray] = []
        rbc = np.zeros((0, 3))
        if rng.random() < 0.3:
            vx, vy = rng.uniform(i * c + 20, (i + 1) * c - 20), rng.uniform(j * c + 20, (j + 1) * c - 20)
            if shapely.contains_xy(self.tissue_inner, vx, vy) and not (
                not self.tumour_halo.is_empty and shapely.contains_xy(self.tumour_halo, vx, vy)
            ):
                va = rng.uniform(5.0, 16.0)
                lumen = blob(
                    vx,
                    vy,
                    va,
                    radial_shape(rng, 4, 0.08),
                    aspect=rng.uniform(1.0, 3.0),
                    angle=rng.uniform(0, math.pi),
                    n_vertices=32,
                )
                vessels.append(lumen)
                pts, tangent = resample_contour(lumen, 14.0, rng)
                m = len(pts)
                parts.append(
                    nuclei_rows(
                        pts[:, 0],
                        pts[:, 1],
                        rng.uniform(4.0, 6.0, m),
                        rng.uniform(1.0, 1.4, m),
                        tangent,
                        rng.uniform(0.75, 0.9, m),
                        rng,
                        irregular=0.03,
                        epi=False,
                    )
                )
                area = polygon_area(lumen)
                k = rng.poisson(area * rng.uniform(0.0, 0.7) / (math.pi * 3.6**2))
                if k:
                    rx = rng.uniform(lumen[:, 0].min(), lumen[:, 0].max(), 4 * k)
                    ry = rng.uniform(lumen[:, 1].min(), lumen[:, 1].max(), 4 * k)
                    inside = shapely.contains_xy(Polygon(lumen).buffer(-2.5), rx, ry)
                    rx, ry = rx[inside][:k], ry[inside][:k]
                    rbc = np.stack([rx, ry, rng.uniform(3.3, 3.8, len(rx))], axis=1)
        return ObjectSet(nuclei=np.concatenate(parts), vessels=vessels, rbc=rbc)

    def _normal_gland_cell(self, i: int, j: int, rng: np.random.Generator) -> ObjectSet:
        """Normal glands in glandular zones: round lumen, one layer of small regular basal nuclei."""
        c = 130.0
        cx, cy = (i + 0.5) * c, (j + 0.5) * c
        if self.fields.zone.at(cx, cy) < -0.1 or rng.random() > 0.85:
            return ObjectSet()
        radius = rng.uniform(24.0, 40.0)
        slack = max(0.0, c / 2 - radius * 1.15 - 6.0)
        gx, gy = cx + rng.uniform(-slack, slack), cy + rng.uniform(-slack, slack)
        if not shapely.contains_xy(self.tissue_inner, gx, gy):
            return ObjectSet()
        if not self.tumour_halo.is_empty and shapely.contains_xy(self.tumour_halo, gx, gy):
            return ObjectSet()
        outer = blob(
            gx,
            gy,
            radius,
            radial_shape(rng, 5, 0.06),
            aspect=rng.uniform(1.0, 1.4),
            angle=rng.uniform(0, math.pi),
            n_vertices=96,
        )
        lumen = inset(outer, (gx, gy), rng.uniform(13.0, 17.0))
        pts, tangent = resample_contour(
            inset(outer, (gx, gy), rng.uniform(3.4, 4.0)), rng.uniform(5.6, 6.6), rng
        )
        m = len(pts)
        jit = rng.normal(0, 0.3, (m, 2))
        nuc = nuclei_rows(
            pts[:, 0] + jit[:, 0],
            pts[:, 1] + jit[:, 1],
            rng.uniform(3.3, 4.0, m),
            rng.uniform(2.2, 2.6, m),
            tangent + math.pi / 2,
            rng.uniform(0.62, 0.75, m),
            rng,
            irregular=0.03,
            epi=True,
        )
        gland = Gland(outer, [lumen], tumour=False, clearing=float(rng.uniform(0.8, 1.0)))
        return ObjectSet(nuclei=nuc, glands=[gland])

    def _tumour_a_cell(self, i: int, j: int, rng: np.random.Generator) -> ObjectSet:
        """Solid sheet: densely packed, large, round, pleomorphic, hyperchromatic nuclei."""
        c, step = 78.0, 13.0
        if not self.tumour.intersects(self._cell_box(i, j, c)):
            return ObjectSet()
        k = int(round(c / step))
        gx, gy = np.meshgrid((np.arange(k) + 0.5) * step + i * c, (np.arange(k) + 0.5) * step + j * c)
        x = gx.ravel() + rng.uniform(-3.0, 3.0, k * k)
        y = gy.ravel() + rng.uniform(-3.0, 3.0, k * k)
        keep = shapely.contains_xy(self.tumour, x, y) & (self.septa_level(x, y) > SEPTA_HALF_WIDTH)
        keep &= rng.random(k * k) > 0.06
        x, y = x[keep], y[keep]
        n = len(x)
        d = np.clip(np.exp(rng.normal(math.log(10.5), 0.24, n)), 6.5, 18.0)
        asp = np.sqrt(rng.uniform(1.0, 1.45, n))
        nucleolus = np.where(rng.random(n) < 0.45, rng.uniform(0.7, 1.2, n), 0.0)
        nuc = nuclei_rows(
            x,
            y,
            d / 2 * asp,
            d / 2 / asp,
            rng.uniform(0, math.pi, n),
            rng.uniform(0.8, 1.1, n),
            rng,
            irregular=0.12,
            epi=True,
            nucleolus=nucleolus,
        )
        return ObjectSet(nuclei=nuc)

    def _tumour_b_cell(self, i: int, j: int, rng: np.random.Generator) -> ObjectSet:
        """Crowded irregular glands or cribriform nests: medium elongated nuclei stacked around lumens."""
        c = TUMOUR_B_CELL_UM
        if not self.tumour.intersects(self._cell_box(i, j, c)):
            return ObjectSet()
        cribriform = rng.random() < 0.3
        radius = rng.uniform(23.0, 27.0) if cribriform else rng.uniform(19.0, 27.0)
        slack = max(0.0, c / 2 - 3.0 - radius * 1.1)
        gx = (i + 0.5) * c + rng.uniform(-slack, slack)
        gy = (j + 0.5) * c + rng.uniform(-slack, slack)
        if not shapely.contains_xy(self.tumour, gx, gy):
            return ObjectSet()
        if cribriform:
            return cribriform_nest(gx, gy, radius, rng)
        return irregular_gland(gx, gy, radius, rng)
