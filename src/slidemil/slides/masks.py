"""Low-resolution masks of a slide and level-0 geometry: one pixel convention for every mask in slidemil.

A mask at ``downsample`` ds has pixel (i, j) covering level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``; its
centre is level-0 ``((j + 0.5) * ds, (i + 0.5) * ds)``. Tissue masks, tumour ground truth and heatmap
canvases all follow it, and so do the two ways of crossing between masks and level-0 shapes:

- :class:`MaskCoverage` measures squares (tiles) against a mask by area, partial pixels included;
- :func:`rasterize_polygons` turns level-0 polygons into a mask by pixel centre: a pixel is in when its
  centre is inside the polygon or on its boundary (holes' rings included), within
  :data:`BOUNDARY_TOLERANCE_PX`. Boundary-inclusive because tissue contours run through the centres of
  the mask's boundary pixels, so rasterising them at their own downsample gives back their mask.
"""

from __future__ import annotations

import numpy as np

from slidemil.utils.geojson import polygons

#: A centre this close (mask px) to an edge lies on it: GeoJSON vertices carry two decimals of level-0 px.
BOUNDARY_TOLERANCE_PX = 0.01


def to_mask_px(points: np.ndarray, downsample: float) -> np.ndarray:
    """Level-0 (x, y) -> continuous mask coordinates in which pixel (i, j) has its centre at (j, i).

    This is also OpenCV's drawing convention, so ``cv2.polylines`` of the rounded result lands on the
    pixels the points fall in.
    """
    return np.asarray(points, dtype=np.float64)[..., :2] / float(downsample) - 0.5


class MaskCoverage:
    """Fraction of level-0 squares inside a boolean mask, exact by area.

    The summed-area table of a piecewise-constant image is bilinear inside each pixel, so interpolating it
    at fractional corners integrates partial pixels exactly. Parts of a square beyond the mask count as
    outside. Built once per mask; each query is O(number of squares).
    """

    def __init__(self, mask: np.ndarray, downsample: float):
        m = np.asarray(mask, dtype=bool)
        if m.ndim != 2:
            raise ValueError(f"mask must be 2-D, got shape {m.shape}")
        if downsample <= 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        self.shape = m.shape
        self.downsample = float(downsample)
        self._table = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.float64)
        self._table[1:, 1:] = m.astype(np.float64).cumsum(0).cumsum(1)

    def squares(self, xs: np.ndarray, ys: np.ndarray, side_level0: float) -> np.ndarray:
        """Fraction (0..1) of each square (top-left level-0 ``xs, ys``, side ``side_level0``) in the mask."""
        xs = np.asarray(xs, dtype=np.float64).ravel()
        ys = np.asarray(ys, dtype=np.float64).ravel()
        if xs.shape != ys.shape:
            raise ValueError(f"xs and ys differ in length: {xs.shape} vs {ys.shape}")
        if side_level0 <= 0:
            raise ValueError(f"side_level0 must be positive, got {side_level0}")
        side = side_level0 / self.downsample
        x0, y0 = xs / self.downsample, ys / self.downsample
        x1, y1 = x0 + side, y0 + side
        inside = self._area(x1, y1) - self._area(x0, y1) - self._area(x1, y0) + self._area(x0, y0)
        return np.clip(inside / (side * side), 0.0, 1.0)

    def _area(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Mask area (mask px) over [0, x) x [0, y) for fractional x, y, clipped to the mask."""
        t = self._table
        h, w = self.shape
        x = np.clip(x, 0.0, w)
        y = np.clip(y, 0.0, h)
        ix = np.minimum(np.floor(x).astype(np.intp), max(w - 1, 0))
        iy = np.minimum(np.floor(y).astype(np.intp), max(h - 1, 0))
        fx, fy = x - ix, y - iy
        a, b = t[iy, ix], t[iy, ix + 1]
        c, d = t[iy + 1, ix], t[iy + 1, ix + 1]
        return a + fx * (b - a) + fy * (c - a) + fx * fy * (d - b - c + a)


def rasterize_polygons(feature_collection: dict, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Polygon / MultiPolygon features (level-0 px) -> bool mask of ``shape`` (h, w) at ``downsample``.

    Holes are cleared, separate polygons are united (a piece lying in another piece's hole stays in).
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), bool)
    for rings in polygons(feature_collection):
        edges = _edges([to_mask_px(np.asarray(r, dtype=np.float64).reshape(-1, 2), downsample) for r in rings])
        if len(edges):
            _fill_interior(mask, edges)
            _mark_boundary(mask, edges)
    return mask


def _edges(rings: list[np.ndarray]) -> np.ndarray:
    """(n, 4) array of u1, v1, u2, v2 for every edge of every ring (rings closed here if they are not)."""
    out = [np.concatenate([r, np.roll(r, -1, axis=0)], axis=1) for r in rings if len(r) >= 2]
    return np.concatenate(out) if out else np.zeros((0, 4))


def _set_spans(mask: np.ndarray, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray | None) -> None:
    """Set pixels from per-row column marks: even-odd between toggles (``stops`` None) or each [start, stop).

    Only the band of rows touched is allocated, so many small polygons on a large mask stay cheap.
    """
    if not rows.size:
        return
    w = mask.shape[1]
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    marks = np.zeros((r1 - r0, w + 1), np.int32)
    np.add.at(marks, (rows - r0, np.clip(starts, 0, w)), 1)
    if stops is not None:
        np.add.at(marks, (rows - r0, np.clip(stops, 0, w)), -1)
    run = np.cumsum(marks, axis=1)[:, :w]
    mask[r0:r1] |= (run & 1).astype(bool) if stops is None else run > 0


def _expand(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edge index, row) for every row ``first[e] .. first[e] + count[e] - 1`` of every edge e."""
    count = np.maximum(count, 0).astype(np.intp)
    edge = np.repeat(np.arange(len(first)), count)
    offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return edge, first[edge].astype(np.intp) + offset


def _fill_interior(mask: np.ndarray, e: np.ndarray) -> None:
    """Centres inside by the even-odd rule, scanning each row centre (half-open: ties go to the boundary)."""
    h = mask.shape[0]
    u1, v1, u2, v2 = e.T
    lo, hi = np.minimum(v1, v2), np.maximum(v1, v2)
    first = np.clip(np.ceil(lo), 0, h)
    edge, row = _expand(first, np.clip(np.ceil(hi), 0, h) - first)  # rows with lo <= row < hi
    u = u1[edge] + (row - v1[edge]) * (u2 - u1)[edge] / (v2 - v1)[edge]
    _set_spans(mask, row, np.ceil(u).astype(np.intp), None)


def _mark_boundary(mask: np.ndarray, e: np.ndarray) -> None:
    """Centres within the tolerance of an edge: per row, the columns the edge passes near that row."""
    h, tol = mask.shape[0], BOUNDARY_TOLERANCE_PX
    u1, v1, u2, v2 = e.T
    lo, hi = np.minimum(v1, v2), np.maximum(v1, v2)
    first = np.clip(np.ceil(lo - tol), 0, h)
    edge, row = _expand(first, np.clip(np.floor(hi + tol) + 1, 0, h) - first)
    du, dv = (u2 - u1)[edge], (v2 - v1)[edge]
    a = np.maximum(lo[edge], row - tol) - v1[edge]  # the edge's part within the row's band, as v - v1
    b = np.minimum(hi[edge], row + tol) - v1[edge]
    flat = dv == 0
    ua = np.where(flat, np.minimum(u1, u2)[edge], u1[edge] + a * du / np.where(flat, 1.0, dv))
    ub = np.where(flat, np.maximum(u1, u2)[edge], u1[edge] + b * du / np.where(flat, 1.0, dv))
    start = np.ceil(np.minimum(ua, ub) - tol).astype(np.intp)
    stop = np.floor(np.maximum(ua, ub) + tol).astype(np.intp) + 1
    keep = stop > start
    _set_spans(mask, row[keep], start[keep], stop[keep])


__all__ = ["BOUNDARY_TOLERANCE_PX", "MaskCoverage", "rasterize_polygons", "to_mask_px"]
