"""The slide viewer's HTTP side: Deep Zoom tiles, overlay PNGs, a slide's viewer manifest and the viewer page
with its vendored OpenSeadragon, from one small threaded server per dashboard process (see ADR 0009).

Why a server of its own: Streamlit can serve files but not answer a tile request computed on the fly, and an
interactive viewer asks for dozens of tiles per zoom step. The server binds to loopback by default (params
``dashboard.viewer``), reads the project read-only, and only answers for slides that have a heatmaps folder.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from dashboard import heatmap_view as hv
from slidemil.slides.deepzoom import DeepZoomSource

STATIC = Path(__file__).resolve().parent / "static"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")  # slide ids and family names as folder names
TRUTH_RGB = (230, 30, 30)
TYPES = {".js": "text/javascript", ".html": "text/html; charset=utf-8", ".css": "text/css", ".png": "image/png",
         ".txt": "text/plain; charset=utf-8", ".map": "application/json"}


@dataclass(frozen=True)
class ViewerConfig:
    """Where the server finds what it shows (all from params.yaml, resolved against the project root)."""

    heatmaps_dir: Path
    tissue_dir: Path
    primary_family: str
    max_sources: int = 8  # slides kept open at once


class ViewerServer:
    """A ``ThreadingHTTPServer`` on ``host:port`` (0 = any free port) running in a daemon thread."""

    def __init__(self, config: ViewerConfig, host: str = "127.0.0.1", port: int = 0, public_url: str = ""):
        self.config = config
        self._sources: OrderedDict[str, tuple[DeepZoomSource, str]] = OrderedDict()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"viewer": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        bound_host, bound_port = self.httpd.server_address[:2]
        self.url = (public_url or f"http://{bound_host}:{bound_port}").rstrip("/")
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="slidemil-viewer", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for source, _ in self._sources.values():
            source.close()

    def viewer_url(self, slide_id: str, families: list[str], *, cmap: str, blur_tiles: float, layer: str = "") -> str:
        """The viewer page for one slide: its score layers from ``families``, rendered with ``cmap``."""
        query = f"slide={quote(slide_id)}&families={quote(','.join(families))}&cmap={quote(cmap)}&blur_tiles={blur_tiles:g}"
        return f"{self.url}/static/viewer/index.html?{query}" + (f"&layer={quote(layer)}" if layer else "")

    # ---- what the handler serves --------------------------------------------------------------------
    def folder(self, slide_id: str) -> Path:
        if not NAME.match(slide_id):
            raise LookupError(f"not a slide id: {slide_id!r}")
        folder = self.config.heatmaps_dir / slide_id
        if not folder.is_dir():
            raise LookupError(f"{slide_id}: no heatmaps folder {folder}")
        return folder

    def record(self, slide_id: str, family: str) -> hv.SlideRecord:
        if not NAME.match(family):
            raise LookupError(f"not a model family: {family!r}")
        path = hv.family_record_path(self.folder(slide_id), family, self.config.primary_family)
        if path is None:
            raise LookupError(f"{slide_id}: no record of {family}")
        return _parse_record(str(path), path.stat().st_mtime)

    def source(self, slide_id: str) -> tuple[DeepZoomSource, str]:
        """The slide's Deep Zoom source and what it shows: the slide file, else the stage's thumbnail."""
        with self._lock:
            if slide_id in self._sources:
                self._sources.move_to_end(slide_id)
                return self._sources[slide_id]
            folder = self.folder(slide_id)
            record = self.record(slide_id, self.config.primary_family) if hv.family_record_path(
                folder, self.config.primary_family, self.config.primary_family) else None
            entry = None
            if record is not None and record.slide_path and Path(record.slide_path).exists():
                try:
                    entry = (DeepZoomSource(record.slide_path, slide_id=slide_id), "slide")
                except Exception as e:  # noqa: BLE001 - any unreadable slide falls back to the thumbnail
                    entry = (DeepZoomSource(folder / "thumbnail.png", slide_id=slide_id),
                             f"thumbnail (the slide could not be read: {e})")
            if entry is None:
                why = "no slide path in record.json" if record is None or not record.slide_path else \
                    f"slide file not found: {record.slide_path}"
                entry = (DeepZoomSource(folder / "thumbnail.png", slide_id=slide_id), f"thumbnail ({why})")
            self._sources[slide_id] = entry
            while len(self._sources) > self.config.max_sources:
                old, _ = self._sources.popitem(last=False)[1]
                old.close()
            return entry

    def manifest(self, slide_id: str, families: list[str], cmap: str, blur_tiles: float) -> dict:
        """Everything the viewer page needs for one slide: the tile source, score layers with legends,
        contour overlays and the top tiles."""
        source, shown = self.source(slide_id)
        q = f"cmap={quote(cmap)}&blur_tiles={blur_tiles:g}"
        layers, records = [], []
        for family in families:
            try:
                rec = self.record(slide_id, family)
            except LookupError:
                continue
            records.append(rec)
            for i, layer in enumerate(rec.layers):
                layers.append({"id": f"{family}/{i}", "family": family, "model": rec.model_label, "name": layer.name,
                               "label": f"{rec.model_label} · {hv.legend_labels(layer)[0]}",
                               "url": f"/overlay/{quote(slide_id)}/{quote(family)}/{i}.png?{q}",
                               "legend": hv.legend_payload(rec, layer, cmap)})
        rec = records[0] if records else None
        folder = self.folder(slide_id)
        contours = []
        if (self.config.tissue_dir / f"{slide_id}.geojson").is_file():
            contours.append({"id": "tissue", "name": "Tissue contours", "colour": _hex(hv.CONTOUR_RGB),
                             "url": f"/overlay/{quote(slide_id)}/tissue.png"})
        if rec is not None and rec.ground_truth and (folder / rec.ground_truth).is_file():
            contours.append({"id": "truth", "name": "Ground truth (tumour)", "colour": _hex(TRUTH_RGB),
                             "url": f"/overlay/{quote(slide_id)}/truth.png"})
        tops = []
        if rec is not None and rec.primary is not None:
            px = rec.tile_sets[rec.primary.tile_set].level0_px
            tops = [{"rank": int(t["rank"]), "x": int(t["x"]), "y": int(t["y"]), "size": int(px),
                     "score": float(t["score"])} for t in rec.saved_top_tiles]
        dims = rec.slide_dims if rec is not None else source.dimensions
        return {"slide_id": slide_id, "dzi": f"/dz/{quote(slide_id)}.dzi", "shows": shown,
                "slide_width": int(dims[0]), "slide_height": int(dims[1]), "layers": layers, "contours": contours,
                "top_tiles": tops, "top_tiles_of": rec.model_label if rec is not None else "",
                "top_layer": rec.primary.name if rec is not None and rec.primary is not None else ""}

    def overlay_png(self, slide_id: str, what: str, query: dict[str, str]) -> bytes:
        folder = self.folder(slide_id)
        thumb = folder / "thumbnail.png"
        tissue_path = self.config.tissue_dir / f"{slide_id}.geojson"
        if what in ("tissue", "truth"):
            rec = self.record(slide_id, self.config.primary_family)
            path = tissue_path if what == "tissue" else folder / str(rec.ground_truth or "")
            if not path.is_file():
                raise LookupError(f"{slide_id}: no {what} contours")
            colour = hv.CONTOUR_RGB if what == "tissue" else TRUTH_RGB
            return _contour_png(str(path), path.stat().st_mtime, rec.slide_dims, colour)
        family, _, index = what.rpartition("/")
        rec, i = self.record(slide_id, family), int(index)
        if not 0 <= i < len(rec.layers):
            raise LookupError(f"{slide_id}: {family} has no layer {i}")
        rec_path = hv.family_record_path(folder, family, self.config.primary_family)
        tissue_m = tissue_path.stat().st_mtime if tissue_path.is_file() else None
        return _score_png(str(rec_path), rec_path.stat().st_mtime, i, _image_shape(str(thumb), thumb.stat().st_mtime),
                          query.get("cmap", "viridis"), float(query.get("blur_tiles", 0) or 0), str(tissue_path),
                          tissue_m)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@lru_cache(maxsize=64)
def _parse_record(path: str, mtime: float) -> hv.SlideRecord:
    return hv.SlideRecord.from_dict(json.loads(Path(path).read_text()))


@lru_cache(maxsize=64)
def _image_shape(path: str, mtime: float) -> tuple[int, int]:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise LookupError(f"unreadable image {path}")
    return int(img.shape[0]), int(img.shape[1])


def _png(rgba: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


@lru_cache(maxsize=64)
def _contour_png(path: str, mtime: float, slide_dims: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    return _png(hv.contour_rgba(json.loads(Path(path).read_text()), slide_dims, colour))


@lru_cache(maxsize=128)
def _score_png(record_path: str, record_mtime: float, index: int, shape: tuple[int, int], cmap: str,
               blur_tiles: float, tissue_path: str, tissue_mtime: float | None) -> bytes:
    """One layer's RGBA overlay, cached by the files' mtimes (a re-run stage is picked up at once)."""
    record = _parse_record(record_path, record_mtime)
    tissue = json.loads(Path(tissue_path).read_text()) if tissue_mtime is not None else None
    return _png(hv.score_rgba(shape, record, record.layers[index], cmap=cmap, blur_tiles=blur_tiles, tissue_fc=tissue))


class _Handler(BaseHTTPRequestHandler):
    viewer: ViewerServer
    server_version = "slidemil-viewer"

    def log_message(self, fmt, *args) -> None:  # quiet: Streamlit's terminal is the user's
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if path.startswith("/static/"):
                self._static(path[len("/static/"):])
            elif m := re.fullmatch(r"/dz/([^/]+)\.dzi", path):
                self._send(self.viewer.source(m[1])[0].dzi().encode(), "application/xml")
            elif m := re.fullmatch(r"/dz/([^/]+)_files/(\d+)/(\d+)_(\d+)\.jpeg", path):
                source, _ = self.viewer.source(m[1])
                self._send(source.tile(int(m[2]), int(m[3]), int(m[4])), "image/jpeg", cache=True)
            elif m := re.fullmatch(r"/api/([^/]+)\.json", path):
                families = [f for f in query.get("families", self.viewer.config.primary_family).split(",") if f]
                body = self.viewer.manifest(m[1], families, query.get("cmap", "viridis"),
                                            float(query.get("blur_tiles", 0) or 0))
                self._send(json.dumps(body).encode(), "application/json")
            elif m := re.fullmatch(r"/overlay/([^/]+)/(tissue|truth|[^/]+/\d+)(?:\.png)", path):
                self._send(self.viewer.overlay_png(m[1], m[2], query), "image/png")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"nothing at {path}")
        except (LookupError, ValueError, FileNotFoundError) as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))
        except Exception as e:  # noqa: BLE001 - one bad tile must not kill the server thread
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def _static(self, rel: str) -> None:
        target = (STATIC / rel).resolve()
        if not target.is_relative_to(STATIC) or not target.is_file():
            raise LookupError(f"no static file {rel}")
        self._send(target.read_bytes(), TYPES.get(target.suffix, "application/octet-stream"), cache=True)

    def _send(self, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
