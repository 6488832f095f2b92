"""Tile many slides: one process per slide, skip what is done, keep going past a bad slide.

Per slide the outputs are the tissue GeoJSON, the QC thumbnail and the tile file (the slide's tile sets, see
:mod:`slidemil.store.tile_sets`). The tile file is written last and carries a resume key (settings, the
slide's identity and the tiling code's version), so a slide counts as done only when all three exist and were
made by the same settings and code from the same slide file; an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from slidemil.slides.backends import open_slide
from slidemil.slides.errors import SlideError
from slidemil.slides.tiling import TilingParams, slide_attrs, tile_slide
from slidemil.slides.tissue import TissueParams
from slidemil.slides.tissue_qc import contours_to_geojson, draw_qc
from slidemil.store import versions
from slidemil.store.layers import is_current, read_layer_attrs, rewrite_attrs
from slidemil.store.tile_sets import KIND as TILES_KIND
from slidemil.store.tile_sets import write_tile_sets
from slidemil.utils.atomic import remove_stale_temps, write_png_atomic
from slidemil.utils.geojson import write_geojson
from slidemil.utils.hashing import config_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideJob:
    """One slide to tile; ``mpp`` overrides the file's metadata (manifest column or config default)."""

    slide_id: str
    path: str
    mpp: float | None = None
    default_mpp: float | None = None
    tissue_overrides: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TileOutputs:
    tiles_dir: Path
    tissue_dir: Path
    qc_dir: Path

    def paths(self, slide_id: str) -> tuple[Path, Path, Path]:
        return (
            self.tiles_dir / f"{slide_id}.h5",
            self.tissue_dir / f"{slide_id}.geojson",
            self.qc_dir / f"{slide_id}.png",
        )

    def make(self) -> None:
        for d in (self.tiles_dir, self.tissue_dir, self.qc_dir):
            d.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(d)


@dataclass
class SlideResult:
    slide_id: str
    status: str  # "done" | "skipped" | "failed"
    n_tiles: int = 0
    seconds: float = 0.0
    tissue_fraction: float = 0.0
    error: str = ""


def resume_key(job: SlideJob, tiling: TilingParams, tissue: TissueParams) -> str:
    """Settings + slide identity (id, size, content edges; not its path) + the tiling code's version."""
    return config_hash(
        tiling,
        tissue,
        job.slide_id,
        versions.slide_fingerprint(job.path),
        job.mpp,
        job.default_mpp,
        versions.tile_code_version(),
    )


def tile_one(job: SlideJob, tiling: TilingParams, tissue: TissueParams, outputs: TileOutputs) -> SlideResult:
    """Segment, plan and write one slide. Errors come back as a failed result naming the slide."""
    start = time.perf_counter()
    h5_path, geojson_path, qc_path = outputs.paths(job.slide_id)
    try:
        params = tissue.with_overrides(dict(job.tissue_overrides)) if job.tissue_overrides else tissue
        key = resume_key(job, tiling, params)
        if is_current(h5_path, key, TILES_KIND) and geojson_path.exists() and qc_path.exists():
            if read_layer_attrs(h5_path, TILES_KIND).get("slide_path") != str(job.path):
                rewrite_attrs(h5_path, TILES_KIND, {"slide_path": str(job.path)})  # moved clone: same slide
            return SlideResult(job.slide_id, "skipped")
        with open_slide(job.path, slide_id=job.slide_id, mpp=job.mpp) as reader:
            reader.use_fallback_mpp(job.default_mpp)
            seg, tile_sets = tile_slide(reader, tiling, params)
            tiles = tile_sets[0]
            thumb, thumb_ds = reader.thumbnail(max_side=1024)
            attrs = slide_attrs(reader, seg)
        write_geojson(geojson_path, contours_to_geojson(seg, job.slide_id))
        write_png_atomic(qc_path, draw_qc(thumb, thumb_ds, seg, tiles.coords, tiles.geometry.level0_px))
        write_tile_sets(h5_path, tile_sets, attrs=attrs, resume_key=key)
        return SlideResult(job.slide_id, "done", len(tiles), time.perf_counter() - start, seg.tissue_fraction)
    except SlideError as exc:
        return SlideResult(job.slide_id, "failed", seconds=time.perf_counter() - start, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
        log.exception("tiling %s failed", job.slide_id)
        return SlideResult(
            job.slide_id,
            "failed",
            seconds=time.perf_counter() - start,
            error=f"{job.slide_id}: {type(exc).__name__}: {exc}",
        )


def tile_slides(
    jobs: list[SlideJob],
    tiling: TilingParams,
    tissue: TissueParams,
    outputs: TileOutputs,
    *,
    workers: int = 1,
    progress: bool = True,
) -> list[SlideResult]:
    """Tile every job, ``workers`` slides at a time; results keep the jobs' order."""
    outputs.make()
    results: dict[str, SlideResult] = {}
    bar = tqdm(total=len(jobs), desc="tiling", unit="slide", disable=not progress)
    if workers <= 1:
        for job in jobs:
            results[job.slide_id] = _report(tile_one(job, tiling, tissue, outputs), bar)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(tile_one, job, tiling, tissue, outputs): job for job in jobs}
            for fut in as_completed(futures):
                res = fut.result()
                results[res.slide_id] = _report(res, bar)
    bar.close()
    return [results[j.slide_id] for j in jobs]


def _report(res: SlideResult, bar: tqdm) -> SlideResult:
    bar.update(1)
    bar.set_postfix_str(f"{res.slide_id}: {res.status}" + (f" ({res.n_tiles} tiles)" if res.n_tiles else ""))
    if res.status == "failed":
        tqdm.write(f"FAILED {res.error}")
    return res
