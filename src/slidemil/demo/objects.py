"""Objects drawn on a slide (nuclei, glands, vessels, red cells) and the tumour-gland builders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import Polygon

from slidemil.demo.shapes import blob, inset, radial_shape, resample_contour

# columns of a nuclei array (one row per nucleus; lengths in um, angle in radians)
NUC_COLS = ("x", "y", "a", "b", "angle", "dark", "h2", "p2", "h3", "p3", "epi", "nucleolus")
N_NUC = len(NUC_COLS)
_X, _Y, _A, _B, _ANG, _DARK, _H2, _P2, _H3, _P3, _EPI, _NUCLEOLUS = range(N_NUC)

#: the largest distance an object reaches from the point that decides which cell it belongs to
MAX_OBJECT_REACH_UM = 70.0


@dataclass
class Gland:
    """An epithelial structure: an outer outline and zero or more lumens (vertices in um)."""

    outer: np.ndarray
    lumens: list[np.ndarray]
    tumour: bool
    clearing: float = 1.0  # 1 = empty lumen; less leaves faint secretion


@dataclass
class ObjectSet:
    """Everything drawn inside one window: nuclei rows, glands, vessel lumens and red blood cells."""

    nuclei: np.ndarray = field(default_factory=lambda: np.zeros((0, N_NUC)))
    glands: list[Gland] = field(default_factory=list)
    vessels: list[np.ndarray] = field(default_factory=list)
    rbc: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # x, y, r

    @staticmethod
    def concat(parts: list[ObjectSet]) -> ObjectSet:
        if not parts:
            return ObjectSet()
        return ObjectSet(
            nuclei=np.concatenate([p.nuclei for p in parts]),
            glands=[g for p in parts for g in p.glands],
            vessels=[v for p in parts for v in p.vessels],
            rbc=np.concatenate([p.rbc for p in parts]),
        )


def nuclei_rows(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
    dark: np.ndarray,
    rng: np.random.Generator,
    *,
    irregular: float,
    epi: bool,
    nucleolus: np.ndarray | None = None,
) -> np.ndarray:
    n = len(x)
    rows = np.zeros((n, N_NUC))
    rows[:, _X], rows[:, _Y], rows[:, _A], rows[:, _B] = x, y, a, b
    rows[:, _ANG], rows[:, _DARK] = angle, dark
    rows[:, _H2] = rng.uniform(0, irregular, n)
    rows[:, _P2] = rng.uniform(0, 2 * math.pi, n)
    rows[:, _H3] = rng.uniform(0, irregular * 0.8, n)
    rows[:, _P3] = rng.uniform(0, 2 * math.pi, n)
    rows[:, _EPI] = 1.0 if epi else 0.0
    if nucleolus is not None:
        rows[:, _NUCLEOLUS] = nucleolus
    return rows


def irregular_gland(gx: float, gy: float, radius: float, rng: np.random.Generator) -> ObjectSet:
    outer = blob(
        gx,
        gy,
        radius,
        radial_shape(rng, 6, 0.35),
        aspect=rng.uniform(1.0, 1.8),
        angle=rng.uniform(0, math.pi),
        n_vertices=96,
    )
    thickness = rng.uniform(12.0, 15.0)
    theta = np.linspace(0, 2 * math.pi, len(outer), endpoint=False)
    wobble = (
        1.0 + 0.25 * np.cos(3 * theta + rng.uniform(0, 6.3)) + 0.15 * np.cos(5 * theta + rng.uniform(0, 6.3))
    )
    lumen = inset(outer, (gx, gy), thickness * wobble)
    # one crowded row of elongated nuclei, alternately displaced up and down (pseudostratified)
    contour = inset(outer, (gx, gy), 0.4 * thickness * wobble)
    pts, tangent = resample_contour(contour, rng.uniform(6.0, 6.8), rng)
    m = len(pts)
    normal = tangent + math.pi / 2
    lift = np.where(np.arange(m) % 2 == 0, 1.7, -1.7) + rng.normal(0, 0.4, m)
    x = pts[:, 0] + lift * np.cos(normal)
    y = pts[:, 1] + lift * np.sin(normal)
    rows = [
        nuclei_rows(
            x,
            y,
            rng.uniform(4.6, 5.8, m),
            rng.uniform(1.9, 2.3, m),
            normal + rng.normal(0, 0.15, m),
            rng.uniform(0.9, 1.1, m),
            rng,
            irregular=0.05,
            epi=True,
        )
    ]
    return ObjectSet(nuclei=np.concatenate(rows), glands=[Gland(outer, [lumen], tumour=True)])


def cribriform_nest(gx: float, gy: float, radius: float, rng: np.random.Generator) -> ObjectSet:
    outer = blob(
        gx,
        gy,
        radius,
        radial_shape(rng, 5, 0.12),
        aspect=rng.uniform(1.0, 1.3),
        angle=rng.uniform(0, math.pi),
        n_vertices=96,
    )
    lumens: list[tuple[float, float, float]] = []
    for _ in range(60):
        if len(lumens) >= rng.integers(3, 7):
            break
        r = rng.uniform(3.0, 6.5)
        rho = math.sqrt(rng.uniform()) * (radius * 0.72 - r)
        phi = rng.uniform(0, 2 * math.pi)
        lx, ly = gx + rho * math.cos(phi), gy + rho * math.sin(phi)
        if all(math.hypot(lx - ox, ly - oy) > r + orr + 7.0 for ox, oy, orr in lumens):
            lumens.append((lx, ly, r))
    lumen_polys = [blob(lx, ly, r, radial_shape(rng, 4, 0.1), n_vertices=24) for lx, ly, r in lumens]
    step = 5.6
    k = int(2 * radius / step) + 2
    grid = (np.arange(k) - (k - 1) / 2) * step
    x = (gx + grid[None, :] + np.zeros((k, 1))).ravel() + rng.uniform(-1.5, 1.5, k * k)
    y = (gy + grid[:, None] + np.zeros((1, k))).ravel() + rng.uniform(-1.5, 1.5, k * k)
    keep = shapely.contains_xy(Polygon(outer).buffer(-3.0), x, y)
    x, y = x[keep], y[keep]
    ang = rng.uniform(0, math.pi, len(x))
    if lumens:
        lc = np.asarray(lumens)
        dist = np.hypot(x[:, None] - lc[None, :, 0], y[:, None] - lc[None, :, 1]) - lc[None, :, 2]
        nearest = np.argmin(dist, axis=1)
        dmin = dist[np.arange(len(x)), nearest]
        ok = dmin > 2.5
        near = dmin < 11.0
        radial = np.arctan2(y - lc[nearest, 1], x - lc[nearest, 0])
        ang = np.where(near, radial, ang)
        x, y, ang = x[ok], y[ok], ang[ok]
    n = len(x)
    nuc = nuclei_rows(
        x,
        y,
        rng.uniform(4.0, 5.2, n),
        rng.uniform(2.0, 2.5, n),
        ang + rng.normal(0, 0.2, n),
        rng.uniform(0.8, 1.0, n),
        rng,
        irregular=0.06,
        epi=True,
    )
    return ObjectSet(nuclei=nuc, glands=[Gland(outer, lumen_polys, tumour=True)])
