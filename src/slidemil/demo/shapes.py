"""Smooth random shapes in micrometres: star-shaped blobs, tissue pieces on glass, tumour regions.

Shapes are radial functions r(theta) = 1 + sum of a few random harmonics, so outlines are smooth and
irregular like tissue sections; sizes are solved for (tissue coverage, tumour fraction) rather than
drawn blindly, so the ground truth hits its targets.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry


def radial_shape(rng: np.random.Generator, n_harm: int, rough: float, decay: float = 1.2) -> np.ndarray:
    """Random harmonics (amplitude, phase) of a star-shaped outline r(theta) = 1 + sum a_k cos(k theta + p_k)."""
    k = np.arange(2, n_harm + 1)
    amps = rough * rng.standard_normal(len(k)) / k**decay
    phases = rng.uniform(0, 2 * math.pi, len(k))
    return np.stack([k, amps, phases], axis=1)


def radial_r(theta: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    r = np.ones_like(theta)
    for k, a, p in harmonics:
        r += a * np.cos(k * theta + p)
    return np.maximum(r, 0.3)


def blob(
    cx: float,
    cy: float,
    radius: float,
    harmonics: np.ndarray,
    aspect: float = 1.0,
    angle: float = 0.0,
    n_vertices: int = 128,
) -> np.ndarray:
    """Vertices (n, 2) of a smooth star-shaped blob in um."""
    theta = np.linspace(0, 2 * math.pi, n_vertices, endpoint=False)
    r = radial_r(theta, harmonics) * radius
    sx, sy = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    x, y = r * np.cos(theta) * sx, r * np.sin(theta) * sy
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def polygon_area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def inset(v: np.ndarray, centre: tuple[float, float], depth: np.ndarray | float) -> np.ndarray:
    """Move the vertices of a star-shaped outline towards its centre by ``depth`` um."""
    d = v - np.asarray(centre)
    r = np.hypot(d[:, 0], d[:, 1])
    scale = np.maximum(r - depth, 0.15 * r) / np.maximum(r, 1e-9)
    return np.asarray(centre) + d * scale[:, None]


def resample_contour(
    v: np.ndarray, spacing: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``spacing`` um along a closed contour (random phase) and the outward normal angle there."""
    closed = np.vstack([v, v[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    n = max(3, int(total / spacing))
    s = (np.arange(n) + rng.uniform()) * (total / n)
    x = np.interp(s, cum, closed[:, 0])
    y = np.interp(s, cum, closed[:, 1])
    eps = 0.5
    x2 = np.interp((s + eps) % total, cum, closed[:, 0])
    y2 = np.interp((s + eps) % total, cum, closed[:, 1])
    tangent = np.arctan2(y2 - y, x2 - x)
    return np.stack([x, y], axis=1), tangent


def make_tissue(
    rng: np.random.Generator, width: float, height: float, coverage: float, n_pieces: int
) -> BaseGeometry:
    """1-3 non-touching smooth blobs inside the glass, covering about ``coverage`` of it."""
    target = coverage * width * height
    if coverage > 0.62:
        return _large_piece(rng, width, height, target)
    margin = 0.02 * min(width, height) + 10.0
    gap = 0.015 * min(width, height) + 15.0
    shares = np.sort(rng.dirichlet([4.0] * n_pieces))[::-1] if n_pieces > 1 else np.array([1.0])
    # candidate positions are tested on a coarse occupancy raster (cheap), pieces kept as polygons
    cell = min(width, height) / 200.0
    pad = int(math.ceil(gap / cell)) + 2
    grid_shape = (int(math.ceil(height / cell)) + 2 * pad + 2, int(math.ceil(width / cell)) + 2 * pad + 2)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pad + 1, 2 * pad + 1))
    scale = 1.0
    for _ in range(80):
        placed: list[Polygon] = []
        occupied = np.zeros(grid_shape, np.uint8)
        for share in shares:
            for attempt in range(120):
                if attempt % 15 == 0:  # a fresh shape now and then: some fit where others do not
                    unit = blob(
                        0,
                        0,
                        1.0,
                        radial_shape(rng, 8, 0.4),
                        aspect=rng.uniform(1.0, 1.5),
                        angle=rng.uniform(0, math.pi),
                        n_vertices=256,
                    )
                    unit *= math.sqrt(share * target * scale / polygon_area(unit))
                    lo = np.array([margin, margin]) - unit.min(axis=0)
                    hi = np.array([width - margin, height - margin]) - unit.max(axis=0)
                    local = (unit - unit.min(axis=0)) / cell + pad
                    size = np.ceil(local.max(axis=0)).astype(int) + pad + 1
                    body = np.zeros((size[1], size[0]), np.uint8)
                    cv2.fillPoly(body, [np.round(local).astype(np.int32)], 1)
                    halo = cv2.dilate(body, kernel)
                if np.any(hi < lo):
                    continue
                offset = rng.uniform(lo, hi)
                gx, gy = np.floor((offset + unit.min(axis=0)) / cell).astype(int) + 1
                window = occupied[gy : gy + halo.shape[0], gx : gx + halo.shape[1]]
                if window.shape == halo.shape and not (window & halo).any():
                    window |= body
                    placed.append(Polygon(unit + offset).buffer(0))
                    break
            else:
                break
        if len(placed) == len(shares):
            return shapely.union_all(placed)
        scale *= 0.96
    raise RuntimeError("could not place tissue pieces; the glass is too small")


def _large_piece(rng: np.random.Generator, width: float, height: float, target: float) -> BaseGeometry:
    """One big blob running off the scanned area (as on real WSIs), clipped to it, of area ``target``."""
    unit = blob(
        0.5 * width, 0.5 * height, 1.0, radial_shape(rng, 8, 0.35), aspect=width / height, n_vertices=512
    )
    centre = np.array([0.5 * width, 0.5 * height])
    frame = shapely.box(0.0, 0.0, width, height)
    lo, hi = 0.0, 4.0 * max(width, height)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        piece = Polygon((unit - centre) * mid + centre).buffer(0).intersection(frame)
        lo, hi = (mid, hi) if piece.area < target else (lo, mid)
    return onlypolygons_of(Polygon((unit - centre) * hi + centre).buffer(0).intersection(frame))


def make_tumour(
    rng: np.random.Generator, tissue: BaseGeometry, fraction: float, min_region_um2: float = 15000.0
) -> BaseGeometry:
    """1-3 smooth blobs clipped to the tissue whose union covers ``fraction`` of the tissue area."""
    total = fraction * tissue.area
    n_regions = int(min(rng.integers(1, 4), max(1, total // min_region_um2)))
    shares = rng.dirichlet([3.0] * n_regions) if n_regions > 1 else np.array([1.0])
    core = tissue.buffer(-30.0)
    if core.is_empty:
        core = tissue
    minx, miny, maxx, maxy = core.bounds
    union: BaseGeometry = Polygon()
    cumulative = 0.0
    for share in shares:
        cumulative += share * total
        while True:
            cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            if core.contains(shapely.Point(cx, cy)):
                break
        unit = blob(
            0,
            0,
            1.0,
            radial_shape(rng, 7, 0.4),
            aspect=rng.uniform(1.0, 1.8),
            angle=rng.uniform(0, math.pi),
            n_vertices=192,
        )
        unit_area = polygon_area(unit)

        def area_at(
            s: float, unit: np.ndarray = unit, cx: float = cx, cy: float = cy, union: BaseGeometry = union
        ) -> float:
            return union.union(Polygon(unit * s + (cx, cy)).buffer(0).intersection(tissue)).area

        lo, hi = 0.0, 4.0 * math.sqrt(cumulative / unit_area)
        if area_at(hi) <= cumulative:
            lo = hi
        else:
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                if area_at(mid) < cumulative:
                    lo = mid
                else:
                    hi = mid
                if hi - lo < 1e-4 * hi:
                    break
        s = 0.5 * (lo + hi)
        union = union.union(Polygon(unit * s + (cx, cy)).buffer(0).intersection(tissue))
    return onlypolygons_of(union)


def onlypolygons_of(geom: BaseGeometry) -> BaseGeometry:
    polys = [p for p in polygons_of(geom) if p.area > 1.0]
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def polygons_of(geom: BaseGeometry) -> list[Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in polygons_of(g)]
    return []
