"""The GeoJSON slidemil writes (scored tiles, tissue contours) read as QuPath's GeoJSON reader expects it.

QuPath (0.4+, ``GsonTools`` / ``PathObjectTypeAdapters``) reads a FeatureCollection of Features whose
geometry is a Polygon (or MultiPolygon) of closed rings in level-0 pixels, whose ``id`` is a UUID (any other
id is replaced, so a re-import duplicates the objects), and whose ``properties`` hold ``objectType``, an
optional ``classification`` ``{name, color: [r, g, b]}``, ``measurements`` as a flat ``{name: number}`` map
and ``metadata`` as ``{key: string}``. :func:`read_like_qupath` checks exactly that and returns the objects.
"""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest

from slidemil.evaluation.tile_geojson import EVIDENCE_PERCENTILE, OTHER_CLASS, scored_tiles_geojson
from slidemil.methods import ScoreLayer, TileSetView
from slidemil.scoring import ScoredSlide
from slidemil.slides.tissue import TissueSegmentation
from slidemil.slides.tissue_qc import contours_to_geojson
from slidemil.utils.geojson import write_geojson

QUPATH_OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tma_core"}


def read_like_qupath(text: str) -> list[dict]:
    """Parse as QuPath does and fail on anything it would drop, re-id or misread; one dict per object."""
    fc = json.loads(text)
    assert fc["type"] == "FeatureCollection" and isinstance(fc["features"], list)
    objects = []
    for feat in fc["features"]:
        assert feat["type"] == "Feature"
        assert str(uuid.UUID(feat["id"])) == feat["id"]  # a canonical UUID, kept by QuPath on import
        geom = feat["geometry"]
        assert geom["type"] in ("Polygon", "MultiPolygon")
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for rings in polys:
            for ring in rings:
                assert len(ring) >= 4 and ring[0] == ring[-1]  # closed rings
                assert all(len(pt) == 2 and all(isinstance(v, int | float) for v in pt) for pt in ring)
        props = feat["properties"]
        assert props["objectType"] in QUPATH_OBJECT_TYPES
        cls = props.get("classification")
        if cls is not None:
            assert isinstance(cls["name"], str) and cls["name"]
            assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        measurements = props.get("measurements", {})
        assert isinstance(measurements, dict)  # flat name -> number, never a list of {name, value}
        for name, value in measurements.items():
            assert isinstance(name, str) and isinstance(value, int | float) and not isinstance(value, bool)
            assert math.isfinite(value)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.get("metadata", {}).items())
        objects.append({"id": feat["id"], "type": props["objectType"], "class": (cls or {}).get("name"),
                        "measurements": measurements, "metadata": props.get("metadata", {})})
    return objects


def _scored(slide_id: str = "case_003_s0") -> ScoredSlide:
    coords = np.array([[x * 224, y * 224] for y in range(4) for x in range(5)], np.int64)
    attention = np.linspace(-7.95, 10.95, len(coords))[::-1].copy()  # raw logits, unbounded
    layer = ScoreLayer("attention", "tiles", attention, "attention", "subtype_a", "CLAM attention")
    return ScoredSlide(slide_id, {"normal": 0.1, "subtype_a": 0.7, "subtype_b": 0.2}, "subtype_a", 1, [layer],
                       {"tiles": TileSetView(coords, 224)})


def test_scored_tiles_read_as_qupath_tiles_with_readable_measurements(tmp_path):
    scored = _scored()
    path = write_geojson(tmp_path / "tiles.geojson", scored_tiles_geojson(scored))
    tiles = read_like_qupath(path.read_text())
    assert len(tiles) == 20 and {t["type"] for t in tiles} == {"tile"}
    assert len({t["id"] for t in tiles}) == 20
    assert {t["metadata"]["slide_id"] for t in tiles} == {"case_003_s0"}  # no file extension
    first = tiles[0]["measurements"]
    assert first["attention (raw)"] == pytest.approx(10.95)
    pct = [t["measurements"]["attention percentile"] for t in tiles]
    assert min(pct) == 0.0 and max(pct) == 1.0 and pct == sorted(pct, reverse=True)
    assert first["P(subtype_a)"] == pytest.approx(0.7) and first["P(normal)"] == pytest.approx(0.1)
    evidence = [t for t in tiles if t["measurements"]["attention percentile"] >= EVIDENCE_PERCENTILE]
    assert evidence and {t["class"] for t in evidence} == {"subtype_a"}  # the predicted class
    assert {t["class"] for t in tiles if t not in evidence} == {OTHER_CLASS}


def test_ids_are_stable_across_exports_and_distinct_across_slides():
    ids = [f["id"] for f in scored_tiles_geojson(_scored())["features"]]
    assert ids == [f["id"] for f in scored_tiles_geojson(_scored())["features"]]
    assert not set(ids) & {f["id"] for f in scored_tiles_geojson(_scored("case_004_s0"))["features"]}


def test_tissue_contours_read_as_qupath_annotations():
    mask = np.zeros((40, 40), bool)
    mask[5:20, 5:30] = True
    square = np.array([[80, 80], [480, 80], [480, 320], [80, 320]], np.float64)
    seg = TissueSegmentation(mask, 16.0, [[square]], (640, 640))
    text = json.dumps(contours_to_geojson(seg, "case_003_s0"), allow_nan=False)
    [tissue] = read_like_qupath(text)
    assert tissue["type"] == "annotation" and tissue["class"] == "Tissue"
    assert tissue["metadata"] == {"slide_id": "case_003_s0"}
    assert tissue["id"] == read_like_qupath(json.dumps(contours_to_geojson(seg, "case_003_s0")))[0]["id"]
