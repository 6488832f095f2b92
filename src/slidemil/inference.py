"""Raw slide -> diagnosis, probabilities, score layers, heatmap and top tiles, from a bundle alone.

The pipeline's own functions in memory for one slide: tissue segmentation and every tile set at the bundle's
physical resolution (the tile stage's ``tile_slide``), the bundle's encoders with their recorded weights (the
features stage's ``encode_tiles``), then the one scoring path (:func:`slidemil.scoring.score_slide`:
bag -> predict -> explain) and the heatmap stage's renderer. Used by serving, the CLI and the dashboard.
Imports no Lightning.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from slidemil.bundle import ModelBundle
from slidemil.features.stain_norm import StainNormalisation
from slidemil.methods import SlideData, TileSetView
from slidemil.scoring import BundleScorer, ScoredSlide


class _CheckedTiles:
    """A tile dataset that calls ``check`` before every tile, so a cancelled prediction stops mid-encoding.

    Threads cannot be killed; the encoder reads tiles one by one in the calling thread (``num_workers=0``),
    so checking here bounds the work a timed-out or abandoned request still does to one tile.
    """

    def __init__(self, dataset, check: Callable[[], None]):
        self.dataset = dataset
        self.check = check

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        self.check()
        return self.dataset[i]


def _never() -> None:
    return None


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class SlidePrediction:
    slide_id: str
    scored: ScoredSlide
    level0_px: int
    heatmap_png: bytes | None = None
    geojson: dict | None = None
    top_tiles: list[dict] = field(default_factory=list)  # rank, x, y, score, png (bytes)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.scored.label

    @property
    def probabilities(self) -> dict[str, float]:
        return self.scored.probabilities

    @property
    def coords(self) -> np.ndarray:
        return self.scored.tile_sets["tiles"].coords

    @property
    def n_tiles(self) -> int:
        return len(self.scored.tile_sets["tiles"])

    @property
    def tile_scores(self) -> np.ndarray | None:
        """Values of the primary score layer (None when the method explains nothing)."""
        layer = self.scored.primary
        return None if layer is None else np.asarray(layer.values)

    def summary(self) -> dict:
        """JSON-friendly view (no image bytes)."""
        primary = self.scored.primary
        return {
            "slide_id": self.slide_id,
            "label": self.label,
            "probabilities": self.probabilities,
            "raw_probabilities": self.scored.raw_probabilities,
            "n_tiles": self.n_tiles,
            "score_layer": None if primary is None else {"name": primary.name, "kind": primary.kind},
            "top_tiles": [{k: v for k, v in t.items() if k != "png"} for t in self.top_tiles],
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


class SlidePredictor:
    """Holds the bundle's encoder, method and model; ``predict`` is safe to call repeatedly (not concurrently)."""

    def __init__(self, bundle: ModelBundle, *, device: str = "auto", batch_size: int = 32):
        from slidemil.encoders.registry import build_encoder

        self.bundle = bundle
        self.encoders = {}  # tile set -> encoder (one instance per distinct encoder)
        built = {}
        for tile_set, enc in bundle.spec.components.encoders.items():
            key = (enc.name, enc.weights, enc.seed)
            if key not in built:
                built[key] = build_encoder(enc.name, enc.weights, seed=enc.seed)
            if enc.weights_id and enc.weights_id != built[key].weights_id:
                raise ValueError(f"{tile_set} encoder weights differ from training: bundle has {enc.weights_id}, "
                                 f"built {built[key].weights_id}")
            self.encoders[tile_set] = built[key]
        self.scorer = BundleScorer(bundle)
        self.segmenter = self._segmenter(bundle)
        fold = bundle.metadata.get("fold")
        #: what the heatmap legend names as the model; callers that know more (a registry version) overwrite it
        self.model_label = bundle.spec.method + ("" if fold is None else f" fold {fold}")
        self.stain = StainNormalisation.from_component(bundle.spec.components.stain_fitter)
        self.device = device
        self.batch_size = batch_size

    @staticmethod
    def _segmenter(bundle: ModelBundle):
        """The bundle's segmenter when its method reads the ``segments`` layer: a new slide is segmented by the
        same segmenter and settings as the segment stage used for training (methods.md section D)."""
        from slidemil.methods import get_method
        from slidemil.segmenters.registry import build_segmenter

        if not any(spec.kind == "segments" for spec in get_method(bundle.spec.method).required_layers):
            return None
        seg = bundle.spec.components.segmenter
        if not seg or "id" not in seg:
            raise ValueError(f"the {bundle.spec.method} bundle reads tissue segments but records no segmenter "
                             f"(components.segmenter); re-export it from a pipeline run")
        kind = str(seg["id"]).partition(":")[0]
        return build_segmenter(str(seg["id"]), {kind: dict(seg.get("settings", {}))})

    @property
    def model(self):
        return self.scorer.model

    def predict(self, path: str | Path, *, slide_id: str | None = None, mpp: float | None = None,
                top_k: int = 5, heatmap: bool = True, progress: bool = False,
                check: Callable[[], None] = _never) -> SlidePrediction:
        """Tile, encode, score and explain one slide; ``progress`` shows a bar of the tiles read and encoded;
        ``check`` is called between phases and before each tile and may raise to stop the work early (serving
        cancels timed-out and abandoned requests this way)."""
        from slidemil.evaluation.heatmap import HeatmapParams, render_score_layer
        from slidemil.evaluation.tile_geojson import scored_tiles_geojson
        from slidemil.features.extract import TileDataset, encode_tiles
        from slidemil.segmenters.base import SlideInput
        from slidemil.slides.backends import open_slide
        from slidemil.slides.masks import rasterize_polygons
        from slidemil.slides.tiling import TilingParams, tile_slide
        from slidemil.slides.tissue import TissueParams
        from slidemil.slides.tissue_qc import contours_to_geojson

        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        spec = self.bundle.spec
        tiling = TilingParams.from_dict({k: v for k, v in spec.tiling.items() if k != "workers"})
        tissue = TissueParams(**spec.tissue) if spec.tissue else TissueParams()
        check()
        with open_slide(path, slide_id=slide_id, mpp=mpp) as reader:
            sid = reader.slide_id
            seg, tile_sets = tile_slide(reader, tiling, tissue)
            check()
            by_name = {t.name: t for t in tile_sets}
            tiles = by_name["tiles"]
            timings["segment_and_tile"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            views, feats = {}, {}
            transform = (None if self.stain is None else
                         self.stain.for_slide(reader, tiles.coords, tiles.geometry))  # the slide's own matrix
            for name in spec.tile_sets:
                if name not in by_name:
                    raise ValueError(f"{sid}: the model needs tile set {name!r}, which the bundle's tiling "
                                     f"does not produce")
                ts = by_name[name]
                views[name] = TileSetView(ts.coords, ts.geometry.level0_px, ts.children)
                if name in self.encoders:
                    dataset = TileDataset(reader.path, reader.mpp, ts.coords, ts.geometry,
                                          reader_factory=lambda p, m: reader, transform=transform)
                    feats[name] = encode_tiles(_CheckedTiles(dataset, check), self.encoders[name],
                                               batch_size=self.batch_size,
                                               num_workers=0, device=self.device, progress=progress,
                                               desc=f"{sid}: {name} read + encoded")
            timings["features"] = time.perf_counter() - t1
            check()
            layers = {}
            if self.segmenter is not None:
                t_seg = time.perf_counter()
                needs = feats["tiles"] if self.segmenter.needs_features else None
                layers["segments"], _ = self.segmenter.segment(SlideInput.from_tissue(
                    sid, tiles.coords, tiles.geometry.level0_px, contours_to_geojson(seg, sid), reader, needs))
                timings["segments"] = time.perf_counter() - t_seg
            t2 = time.perf_counter()
            scored = self.scorer.score(SlideData(sid, None, views, feats, layers), explain=heatmap)
            timings["model"] = time.perf_counter() - t2
            t3 = time.perf_counter()
            out = SlidePrediction(sid, scored, tiles.geometry.level0_px)
            layer = scored.primary
            if heatmap and layer is not None:
                view, geometry = views[layer.tile_set], by_name[layer.tile_set].geometry
                params = HeatmapParams(**spec.heatmap) if spec.heatmap else HeatmapParams()
                thumb, ds = reader.thumbnail(max_side=min(params.canvas_max_side, 1024))
                image = render_score_layer(thumb, ds, layer, view.coords, view.level0_px, params,
                                           tissue_mask=rasterize_polygons(contours_to_geojson(seg, sid),
                                                                          thumb.shape[:2], ds),
                                           mask_downsample=ds,
                                           slide_dims=reader.dimensions, model=self.model_label,
                                           title=f"{sid} | {spec.method} | {scored.label}: {layer.name}")
                out.heatmap_png = png_bytes(image)
                out.geojson = scored_tiles_geojson(scored, layer.tile_set)
                for t in scored.top_tiles(top_k):
                    out.top_tiles.append({**{k: t[k] for k in ("rank", "x", "y", "score")},
                                          "png": png_bytes(reader.read_tile((t["x"], t["y"]), geometry))})
            timings["heatmap"] = time.perf_counter() - t3
        timings["total"] = time.perf_counter() - t0
        out.timings = timings
        return out
