"""Raw slide -> diagnosis, probabilities, per-tile scores, heatmap and top tiles, from a bundle alone.

The same path the pipeline takes (tissue segmentation, tiling at the bundle's physical resolution, the
bundle's encoder with its recorded weights, the MIL model), in memory and for one slide. Used by serving,
the CLI and the dashboard. Imports no Lightning.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from slidemil.bundle import ModelBundle
from slidemil.slides.errors import NoTissueError


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class SlidePrediction:
    slide_id: str
    label: str
    probabilities: dict[str, float]
    n_tiles: int
    coords: np.ndarray
    tile_scores: np.ndarray | None
    level0_px: int
    heatmap_png: bytes | None = None
    geojson: dict | None = None
    top_tiles: list[dict] = field(default_factory=list)  # rank, x, y, score, png (bytes)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-friendly view (no image bytes)."""
        return {
            "slide_id": self.slide_id,
            "label": self.label,
            "probabilities": self.probabilities,
            "n_tiles": self.n_tiles,
            "top_tiles": [{k: v for k, v in t.items() if k != "png"} for t in self.top_tiles],
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


class SlidePredictor:
    """Holds the bundle's encoder and MIL model; ``predict`` is safe to call repeatedly (not concurrently)."""

    def __init__(self, bundle: ModelBundle, *, device: str = "auto", batch_size: int = 32):
        from slidemil.encoders.registry import build_encoder

        self.bundle = bundle
        enc = bundle.encoder
        self.encoder = build_encoder(enc["name"], enc.get("weights", "random"), seed=int(enc.get("seed", 0)))
        recorded = enc.get("weights_id")
        if recorded and recorded != self.encoder.weights_id:
            raise ValueError(f"encoder weights differ from training: bundle has {recorded}, "
                             f"built {self.encoder.weights_id}")
        self.model = bundle.build_model()
        self.device = device
        self.batch_size = batch_size

    def predict(self, path: str | Path, *, slide_id: str | None = None, mpp: float | None = None,
                top_k: int = 5, heatmap: bool = True) -> SlidePrediction:
        from slidemil.evaluation.heatmap import HeatmapParams, ranked_indices, render_heatmap, with_colorbar
        from slidemil.evaluation.tile_geojson import tiles_to_geojson
        from slidemil.features.extract import TileDataset, encode_tiles
        from slidemil.slides.backends import open_slide
        from slidemil.slides.masks import rasterize_polygons
        from slidemil.slides.tiling import TilingParams, plan_tiles
        from slidemil.slides.tissue import TissueParams, segment_tissue
        from slidemil.slides.tissue_qc import contours_to_geojson

        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        tiling = TilingParams.from_dict({k: v for k, v in self.bundle.tiling.items() if k != "workers"})
        tissue = TissueParams(**self.bundle.tissue) if self.bundle.tissue else TissueParams()
        with open_slide(path, slide_id=slide_id, mpp=mpp) as reader:
            sid = reader.slide_id
            seg = segment_tissue(reader, tissue)
            tiles = plan_tiles(reader, seg, tiling)
            if len(tiles) == 0:
                raise NoTissueError(sid, "no tissue found to tile (is this an H&E slide?)")
            timings["segment_and_tile"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            dataset = TileDataset(reader.path, reader.mpp, tiles.coords, tiles.geometry,
                                  reader_factory=lambda p, m: reader)
            feats = encode_tiles(dataset, self.encoder, batch_size=self.batch_size, num_workers=0,
                                 device=self.device)
            timings["features"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            pred = self.bundle.predict_features(feats, self.model)
            scores = pred["tile_scores"]
            timings["model"] = time.perf_counter() - t2
            t3 = time.perf_counter()
            out = SlidePrediction(sid, pred["label"], pred["probabilities"], len(tiles), tiles.coords, scores,
                                  tiles.geometry.level0_px)
            if heatmap and scores is not None:
                params = HeatmapParams(**self.bundle.heatmap) if self.bundle.heatmap else HeatmapParams()
                thumb, ds = reader.thumbnail(max_side=min(params.canvas_max_side, 1024))
                result = render_heatmap(thumb, ds, tiles.coords, tiles.geometry.level0_px, scores, params,
                                        tissue_mask=rasterize_polygons(contours_to_geojson(seg, sid),
                                                                       thumb.shape[:2], ds), mask_downsample=ds,
                                        slide_dims=reader.dimensions)
                out.heatmap_png = png_bytes(with_colorbar(result.overlay_rgb, params.cmap))
                out.geojson = tiles_to_geojson(tiles.coords, tiles.geometry.level0_px, {"attention": scores}, sid)
                for rank, i in enumerate(ranked_indices(scores, top_k), start=1):
                    x, y = (int(v) for v in tiles.coords[i])
                    out.top_tiles.append({"rank": rank, "x": x, "y": y, "score": float(scores[i]),
                                          "png": png_bytes(reader.read_tile((x, y), tiles.geometry))})
            timings["heatmap"] = time.perf_counter() - t3
        timings["total"] = time.perf_counter() - t0
        out.timings = timings
        return out
