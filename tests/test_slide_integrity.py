"""Damaged slide files are classified once, in `open_slide`, as truncated, corrupt or unsupported.

Every entry point goes through `open_slide`, so these tests hold for the pipeline, the CLI and serving alike
(test_validation and test_serving check the messages arrive there).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidemil.cli import main as cli_main
from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide
from slidemil.slides.backends import open_slide
from slidemil.slides.errors import (
    CorruptSlideError,
    SlideError,
    TruncatedSlideError,
    UnsupportedFormatError,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_svs(tmp_path_factory) -> Path:
    spec = SyntheticSlideSpec("demo", "c1", "normal", 1200, 900, 0.5, seed=1)
    return generate_slide(spec, tmp_path_factory.mktemp("integrity"))["slide"]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _looping_tiff() -> bytes:
    """A one-page TIFF whose next-directory pointer points back at its own directory."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.getvalue())
    first = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[first : first + 2], "little")
    next_at = first + 2 + 12 * count
    data[next_at : next_at + 4] = first.to_bytes(4, "little")
    return bytes(data)


def _cases(demo: bytes, rng: np.random.Generator) -> list[tuple[str, bytes, type[SlideError], str]]:
    """(file name, content, error class, words the message must hold)."""
    return [
        ("empty.svs", b"", TruncatedSlideError, "is empty (0 bytes)"),
        ("short.svs", b"II*\x00\x07", TruncatedSlideError, "5 bytes, shorter than the 8-byte TIFF header"),
        ("two.tif", b"II", TruncatedSlideError, "shorter than the 8-byte TIFF header"),
        ("bigtiff.tif", b"II+\x00\x08\x00\x00\x00", TruncatedSlideError, "shorter than the 16-byte TIFF header"),
        ("header_only.svs", demo[:8], TruncatedSlideError, "image directory 1 starts at byte 8"),
        ("half.svs", demo[: len(demo) // 2], TruncatedSlideError, "the file was cut short"),
        ("minus_100_bytes.svs", demo[:-100], TruncatedSlideError, "stores data up to byte"),
        ("random.svs", rng.bytes(5000), UnsupportedFormatError, "does not start with a TIFF header"),
        ("random.ndpi", rng.bytes(64), UnsupportedFormatError, "does not start with a TIFF header"),
        ("random.png", rng.bytes(300), UnsupportedFormatError, "is not a PNG file"),
        ("cut.png", _png()[:-20], TruncatedSlideError, "without its IEND chunk"),
        ("cut.jpg", _jpeg()[:-40], TruncatedSlideError, "without its end-of-image marker"),
        ("tiny.dcm", b"\x00" * 100, TruncatedSlideError, "shorter than the 132-byte DICOM preamble"),
        ("nomarker.dcm", rng.bytes(400), UnsupportedFormatError, "no DICOM 'DICM' marker"),
        ("loop.tif", _looping_tiff(), CorruptSlideError, "directory chain of loop.tif loops"),
        ("random.xyz", rng.bytes(300), UnsupportedFormatError, "no backend recognises random.xyz"),
    ]


def test_damaged_files_get_one_classified_error(tmp_path, demo_svs):
    demo = demo_svs.read_bytes()
    for name, content, cls, needle in _cases(demo, np.random.default_rng(0)):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(SlideError) as err:
            open_slide(path).close()
        assert type(err.value) is cls, (name, err.value)
        assert needle in str(err.value) and name in str(err.value), (name, err.value)
        assert str(tmp_path) not in err.value.problem, "messages name files, not server folders"


def test_every_prefix_of_a_slide_is_truncated(tmp_path, demo_svs, slides_dir):
    """Cut anywhere (an interrupted copy), a pyramidal slide is refused as truncated, never read as a smaller image."""
    rng = np.random.default_rng(1)
    for source in (demo_svs, slides_dir / "CMU-1-Small-Region.svs"):  # tifffile layout; Aperio's (IFDs last)
        data = source.read_bytes()
        for n in sorted(rng.integers(1, len(data), 25)):
            path = tmp_path / f"cut_{n}.svs"
            path.write_bytes(data[:n])
            with pytest.raises(TruncatedSlideError):
                open_slide(path)
            path.unlink()


def test_intact_files_still_open(tmp_path, demo_svs, slides_dir):
    with open_slide(demo_svs) as r:
        assert r.level_count >= 2 and r.mpp == pytest.approx(0.5)
    for name, content in (("ok.png", _png()), ("ok.jpg", _jpeg())):
        (tmp_path / name).write_bytes(content)
        with open_slide(tmp_path / name, mpp=0.5) as r:
            assert r.dimensions == (60, 40)
    with open_slide(slides_dir / "small_HE_dicom.dcm", mpp=0.5) as r:
        assert r.dimensions == (3236, 2638)


def test_truncated_dicom_is_truncated_not_a_decoder_traceback(tmp_path, slides_dir):
    data = (slides_dir / "small_HE_dicom.dcm").read_bytes()
    for n in (200, len(data) // 2, len(data) - 8):
        path = tmp_path / f"cut_{n}.dcm"
        path.write_bytes(data[:n])
        with pytest.raises(TruncatedSlideError, match=f"cut_{n}.dcm"):
            open_slide(path)


def test_dicom_without_pixel_spacing_says_why_and_how(slides_dir, capsys):
    """The shared DICOM has no PixelSpacing and a 15 x 15 mm placeholder volume on a non-square matrix."""
    path = slides_dir / "small_HE_dicom.dcm"
    assert cli_main(["info", str(path)]) == 0
    err = capsys.readouterr().err
    assert "15 x 15 mm over 3236 x 2638 px gives 4.635 x 5.686 um/px" in err and "--mpp" in err


def test_cli_info_prints_a_reason_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "t.svs"
    path.write_bytes(b"II*\x00\x07")
    assert cli_main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: t: t.svs is 5 bytes") and "Traceback" not in err


def _predict_in_subprocess(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    script = (
        "import sys; from slidemil.cli import main; rc = main(sys.argv[1:]); "
        "print('model code loaded:', 'torch' in sys.modules); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, "predict", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, time.perf_counter() - t0


def test_predict_refuses_a_bad_slide_before_loading_the_model(tmp_path, slides_dir):
    empty = tmp_path / "empty.svs"
    empty.touch()
    proc, seconds = _predict_in_subprocess([str(empty), "--project", str(tmp_path)])
    assert proc.returncode == 2 and "empty.svs is empty (0 bytes)" in proc.stderr, proc.stderr
    assert "model code loaded: False" in proc.stdout and seconds < 5  # ~0.15 s on an idle laptop
    proc, _ = _predict_in_subprocess([str(slides_dir / "small_HE_dicom.dcm"), "--project", str(tmp_path)])
    assert proc.returncode == 2 and "pass it with --mpp" in proc.stderr and "manifest" not in proc.stderr
    assert "model code loaded: False" in proc.stdout
