"""The built-in demo dataset: procedural H&E slides (pyramidal Aperio ``.svs``) with tumour ground truth.

Each slide is a :class:`~slidemil.demo.scene.SlideScene` (tissue, tumour regions, cells,
all in micrometres) rendered at the slide's pixel size by
:class:`~slidemil.demo.render.BlockRenderer` and streamed to disk by
:func:`~slidemil.demo.svs_writer.write_aperio_svs`. Labels differ by morphology only:

- ``normal``: stroma, fibroblasts, lymphocytes, vessels and normal glands (so glands != tumour);
- ``subtype_a``: plus 1-3 regions of solid sheets of large, pleomorphic, hyperchromatic nuclei;
- ``subtype_b``: plus 1-3 regions of crowded irregular / cribriform glands.

Ground truth beside each slide: ``<id>_tumour.geojson`` (level-0 pixel polygons, QuPath style) and
``<id>_tumour_mask.png`` (0/255 at ``mask_downsample``), both from the same polygons.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from shapely.geometry import Polygon

from slidemil.demo.raster import fill_rings
from slidemil.demo.render import BlockRenderer, StainShift
from slidemil.demo.scene import LABELS, SlideScene
from slidemil.demo.svs_writer import write_aperio_svs
from slidemil.utils.atomic import atomic_path, write_png_atomic, write_text_atomic

MANIFEST_COLUMNS = [
    "slide_id",
    "case_id",
    "path",
    "label",
    "tumour_fraction",
    "tumour_geojson",
    "tumour_mask",
    "mask_downsample",
    "mpp_written",
]
TUMOUR_FRACTION_RANGE = (0.02, 0.20)


@dataclass(frozen=True)
class SyntheticSlideSpec:
    """Everything that determines one synthetic slide; the same spec always gives the same pixels."""

    slide_id: str
    case_id: str
    label: str
    width_px: int
    height_px: int
    mpp: float
    seed: int
    tumour_fraction: float = 0.0  # target tumour area / tissue area (0 for normal)
    tissue_coverage: float | None = None  # target tissue area / glass area; None draws U(0.4, 0.6)
    n_tissue_pieces: int | None = None  # None draws 1-3
    mask_downsample: int = 16
    jpeg_quality: int = 90
    stain: StainShift | None = None  # another site's H&E colours (the external demo cohort)

    @property
    def width_um(self) -> float:
        return self.width_px * self.mpp

    @property
    def height_um(self) -> float:
        return self.height_px * self.mpp

    def scene(self) -> SlideScene:
        """The slide's scene (cheap: geometry only; objects are generated while rendering)."""
        return SlideScene(
            self.width_um,
            self.height_um,
            self.label,
            self.seed,
            tumour_fraction=self.tumour_fraction if self.label != "normal" else 0.0,
            tissue_coverage=self.tissue_coverage,
            n_tissue_pieces=self.n_tissue_pieces,
        )

    def at_mpp(self, mpp: float) -> SyntheticSlideSpec:
        """The same scene written at another pixel size (same physical size, seed and targets)."""
        return replace(
            self,
            mpp=mpp,
            width_px=round(self.width_um / mpp),
            height_px=round(self.height_um / mpp),
        )


def slide_paths(spec: SyntheticSlideSpec, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "slide": out / f"{spec.slide_id}.svs",
        "tumour_geojson": out / f"{spec.slide_id}_tumour.geojson",
        "tumour_mask": out / f"{spec.slide_id}_tumour_mask.png",
    }


def generate_slide(
    spec: SyntheticSlideSpec, out_dir: str | Path, *, overwrite: bool = False, maxworkers: int = 1
) -> dict[str, Path]:
    """Write one slide and its ground truth into ``out_dir``; skip the slide if it already exists.

    Ground truth is written first and the ``.svs`` last (each atomically), so an existing ``.svs``
    means the slide is complete.
    """
    return _generate(spec, out_dir, overwrite=overwrite, maxworkers=maxworkers)[0]


def _generate(
    spec: SyntheticSlideSpec, out_dir: str | Path, *, overwrite: bool = False, maxworkers: int = 1
) -> tuple[dict[str, Path], SlideScene]:
    if spec.label not in LABELS:
        raise ValueError(f"{spec.slide_id}: unknown label {spec.label!r}; expected one of {LABELS}")
    paths = slide_paths(spec, out_dir)
    paths["slide"].parent.mkdir(parents=True, exist_ok=True)
    scene = spec.scene()
    if overwrite or not paths["tumour_geojson"].exists():
        write_text_atomic(paths["tumour_geojson"], json.dumps(tumour_geojson(scene, spec.mpp)))
    if overwrite or not paths["tumour_mask"].exists():
        write_png_atomic(paths["tumour_mask"], tumour_mask(scene, spec))
    if overwrite or not paths["slide"].exists():
        write_aperio_svs(
            paths["slide"],
            BlockRenderer(scene, spec.mpp, stain=spec.stain),
            spec.width_px,
            spec.height_px,
            mpp=spec.mpp,
            quality=spec.jpeg_quality,
            maxworkers=maxworkers,
        )
    return paths, scene


def render_region(spec: SyntheticSlideSpec, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Level-0 pixels of a region exactly as written to the slide (before JPEG), for checks and previews."""
    return BlockRenderer(spec.scene(), spec.mpp)(x, y, w, h)


# ---- ground truth ------------------------------------------------------------------------------------------
def tumour_geojson(scene: SlideScene, mpp: float) -> dict:
    """FeatureCollection of tumour Polygons in level-0 pixel coordinates (empty for normal slides)."""
    features = []
    for poly in scene.tumour_polygons():
        rings = [poly.exterior] + list(poly.interiors)
        coords = [[[round(x / mpp, 2), round(y / mpp, 2)] for x, y in ring.coords] for ring in rings]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "subtype": scene.label,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def tumour_mask(scene: SlideScene, spec: SyntheticSlideSpec) -> np.ndarray:
    """uint8 0/255 mask, one pixel per ``mask_downsample`` level-0 pixels.

    A mask pixel is tumour when its centre lies inside a tumour polygon (even-odd rule, so holes
    work), the convention of common polygon rasterisers, so the mask and the GeoJSON agree.
    """
    ds = spec.mask_downsample
    shape = (math.ceil(spec.height_px / ds), math.ceil(spec.width_px / ds))
    rings = []
    for poly in scene.tumour_polygons():
        for ring in [poly.exterior, *poly.interiors]:
            rings.append(np.asarray(ring.coords) / (spec.mpp * ds))  # um -> mask pixel units
    return (fill_rings(rings, shape) * 255).astype(np.uint8)


def geojson_polygons(geojson: dict) -> list[Polygon]:
    """Shapely polygons (level-0 pixels) from a tumour GeoJSON written by :func:`tumour_geojson`."""
    out = []
    for feat in geojson.get("features", []):
        rings = feat["geometry"]["coordinates"]
        out.append(Polygon(rings[0], rings[1:]))
    return out


# ---- datasets ------------------------------------------------------------------------------------------------
def demo_specs(
    *,
    n_cases: int = 16,
    slides_per_case: int = 3,
    classes: tuple[str, ...] = LABELS,
    width_um: float = 1500.0,
    height_um: float = 1200.0,
    mpp_choices: tuple[float, ...] = (0.5, 0.25),
    seed: int = 0,
    mask_downsample: int = 16,
    tumour_fraction_range: tuple[float, float] = TUMOUR_FRACTION_RANGE,
    stain: StainShift | None = None,
    case_prefix: str = "case",
) -> list[SyntheticSlideSpec]:
    """Specs of the demo dataset: cases with balanced labels, several slides each, mixed pixel sizes
    (``stain`` and ``case_prefix``: a second, colour-shifted site with its own patient ids)."""
    unknown = set(classes) - set(LABELS)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}; the generator knows {LABELS}")
    rng = np.random.default_rng((seed, 0xDA7A5E7))
    labels = [classes[i % len(classes)] for i in range(n_cases)]
    labels = [labels[i] for i in rng.permutation(n_cases)]
    specs = []
    for ci, label in enumerate(labels):
        case_id = f"{case_prefix}_{ci:03d}"
        for si in range(slides_per_case):
            mpp = float(mpp_choices[int(rng.integers(len(mpp_choices)))])
            fraction = float(rng.uniform(*tumour_fraction_range)) if label != "normal" else 0.0
            specs.append(
                SyntheticSlideSpec(
                    slide_id=f"{case_id}_s{si}",
                    case_id=case_id,
                    label=label,
                    width_px=round(width_um / mpp),
                    height_px=round(height_um / mpp),
                    mpp=mpp,
                    seed=int(rng.integers(2**31)),
                    tumour_fraction=fraction,
                    mask_downsample=mask_downsample,
                    stain=stain,
                )
            )
    return specs


def generate_demo_dataset(
    out_dir: str | Path,
    *,
    n_cases: int = 16,
    slides_per_case: int = 3,
    classes: tuple[str, ...] = LABELS,
    width_um: float = 1500.0,
    height_um: float = 1200.0,
    mpp_choices: tuple[float, ...] = (0.5, 0.25),
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    mask_downsample: int = 16,
    tumour_fraction_range: tuple[float, float] = TUMOUR_FRACTION_RANGE,
    stain: StainShift | None = None,
    case_prefix: str = "case",
) -> pd.DataFrame:
    """Write ``out_dir/slides/*`` and ``out_dir/manifest.csv``; returns the manifest.

    Cases (``case_000``...) get balanced labels and ``slides_per_case`` slides each; every slide's
    pixel size is drawn from ``mpp_choices`` and its target tumour fraction from U(*tumour_fraction_range) (default 0.02-0.20). The
    manifest's ``tumour_fraction`` is the achieved ground-truth value (tumour area / tissue area).
    Resumable: slides whose ``.svs`` exists are not rendered again. Paths in the manifest are
    relative to ``out_dir``. ``workers`` > 1 renders slides in that many processes.
    """
    out = Path(out_dir)
    slides_dir = out / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    specs = demo_specs(
        n_cases=n_cases,
        slides_per_case=slides_per_case,
        classes=classes,
        width_um=width_um,
        height_um=height_um,
        mpp_choices=mpp_choices,
        seed=seed,
        mask_downsample=mask_downsample,
        tumour_fraction_range=tuple(tumour_fraction_range),
        stain=stain,
        case_prefix=case_prefix,
    )
    rows: dict[str, dict] = {}
    bar = _progress(len(specs), progress)
    if workers <= 1:
        for spec in specs:
            rows[spec.slide_id] = _generate_row(spec, str(out))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            futures = [pool.submit(_generate_row, spec, str(out)) for spec in specs]
            for fut in as_completed(futures):
                row = fut.result()
                rows[row["slide_id"]] = row
                bar.update(1)
    bar.close()
    manifest = pd.DataFrame([rows[s.slide_id] for s in specs], columns=MANIFEST_COLUMNS)
    with atomic_path(out / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    return manifest


def generate_large_slide(
    path: str | Path,
    width_px: int = 50000,
    height_px: int = 50000,
    mpp: float = 0.25,
    seed: int = 0,
    *,
    label: str = "subtype_b",
    tumour_fraction: float = 0.1,
    tissue_coverage: float = 0.75,
    maxworkers: int = 1,
) -> dict[str, Path]:
    """A big, mostly-tissue slide for benchmarks, streamed with bounded memory; ground truth beside it.

    ``path`` is the ``.svs`` to write (skipped if it exists); tissue runs off the scanned area, as on
    real slides, so nearly every tile has work in it.
    """
    path = Path(path)
    if path.suffix != ".svs":
        raise ValueError(f"{path}: the large slide is written as Aperio .svs; give a path ending in .svs")
    spec = SyntheticSlideSpec(
        slide_id=path.stem,
        case_id=path.stem,
        label=label,
        width_px=width_px,
        height_px=height_px,
        mpp=mpp,
        seed=seed,
        tumour_fraction=tumour_fraction if label != "normal" else 0.0,
        tissue_coverage=tissue_coverage,
        n_tissue_pieces=1,
    )
    return generate_slide(spec, path.parent, maxworkers=maxworkers)


# ---- helpers --------------------------------------------------------------------------------------------------
def _generate_row(spec: SyntheticSlideSpec, out_dir: str) -> dict:
    out = Path(out_dir)
    paths, scene = _generate(spec, out / "slides")
    return {
        "slide_id": spec.slide_id,
        "case_id": spec.case_id,
        "path": paths["slide"].relative_to(out).as_posix(),
        "label": spec.label,
        "tumour_fraction": round(scene.tumour_fraction, 6),
        "tumour_geojson": paths["tumour_geojson"].relative_to(out).as_posix(),
        "tumour_mask": paths["tumour_mask"].relative_to(out).as_posix(),
        "mask_downsample": spec.mask_downsample,
        "mpp_written": spec.mpp,
    }


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only contend


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="synthesising slides", unit="slide", disable=not enabled)
