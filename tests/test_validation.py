"""Manifest validation (Great Expectations suite) on real slides and deliberately broken rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from slidemil.data.manifest import read_manifest
from slidemil.data.validation import validate_manifest, write_report

CLASSES = ["benign", "tumour"]


def _write_manifest(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture()
def real_slides(tmp_path: Path, slides_dir: Path) -> Path:
    """Symlinks to the real slides beside the manifest (paths in the CSV are relative)."""
    d = tmp_path / "slides"
    d.mkdir()
    for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"):
        (d / name).symlink_to(slides_dir / name)
    (d / "notes.svs").write_text("this is not a slide\n")
    return d


def test_good_manifest_passes(tmp_path, real_slides):
    path = _write_manifest(
        tmp_path,
        [
            {
                "slide_id": "cmu",
                "case_id": "p1",
                "path": "slides/CMU-1-Small-Region.svs",
                "label": "benign",
                "mpp": "",
            },
            {
                "slide_id": "tcga",
                "case_id": "p2",
                "path": "slides/TCGA-CR-7395-01A-01-TS1.svs",
                "label": "tumour",
                "mpp": 0.25,
            },
        ],
    )
    report = validate_manifest(read_manifest(path), CLASSES)
    assert report.success, report.summary()
    assert report.bad_rows.empty
    assert len(report.expectations) >= 9


def test_bad_manifest_names_every_bad_row(tmp_path, real_slides):
    path = _write_manifest(
        tmp_path,
        [
            {"slide_id": "cmu", "case_id": "p1", "path": "slides/CMU-1-Small-Region.svs", "label": "benign"},
            {"slide_id": "cmu", "case_id": "p2", "path": "slides/CMU-1-Small-Region.svs", "label": "benign"},
            {
                "slide_id": "odd_label",
                "case_id": "p3",
                "path": "slides/CMU-1-Small-Region.svs",
                "label": "cancer",
            },
            {"slide_id": "missing", "case_id": "p4", "path": "slides/nope.svs", "label": "tumour"},
            {"slide_id": "unreadable", "case_id": "p5", "path": "slides/notes.svs", "label": "tumour"},
            {
                "slide_id": "no_mpp",
                "case_id": "p6",
                "path": "slides/TCGA-CR-7395-01A-01-TS1.svs",
                "label": "tumour",
            },
            {
                "slide_id": "no_case",
                "case_id": "",
                "path": "slides/CMU-1-Small-Region.svs",
                "label": "tumour",
            },
        ],
    )
    report = validate_manifest(read_manifest(path), CLASSES)
    assert not report.success
    reasons = dict(zip(report.bad_rows["row"], report.bad_rows["reasons"], strict=True))
    # spreadsheet row numbers: header is line 1, first data row is 2
    assert "duplicate slide_id" in reasons[2] and "duplicate slide_id" in reasons[3]
    assert "label not in the declared classes" in reasons[4]
    assert "file does not exist" in reasons[5]
    assert "cannot be opened" in reasons[6] and "notes.svs" in reasons[6]
    assert "no mpp" in reasons[7]
    assert "empty case_id" in reasons[8]
    assert set(reasons) == {2, 3, 4, 5, 6, 7, 8}
    summary = report.summary()
    for sid in ("odd_label", "missing", "unreadable", "no_mpp"):
        assert sid in summary

    write_report(report, tmp_path / "r.json", tmp_path / "r.html")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["success"] is False and len(saved["bad_rows"]) == 7
    assert "unreadable" in (tmp_path / "r.html").read_text()


def test_default_mpp_makes_mpp_known(tmp_path, real_slides):
    path = _write_manifest(
        tmp_path,
        [
            {
                "slide_id": "tcga",
                "case_id": "p1",
                "path": "slides/TCGA-CR-7395-01A-01-TS1.svs",
                "label": "tumour",
            },
        ],
    )
    assert not validate_manifest(read_manifest(path), CLASSES).success
    assert validate_manifest(read_manifest(path), CLASSES, default_mpp=0.25).success


def test_missing_required_column(tmp_path, real_slides):
    path = _write_manifest(
        tmp_path, [{"slide_id": "a", "path": "slides/CMU-1-Small-Region.svs", "label": "benign"}]
    )
    report = validate_manifest(read_manifest(path), CLASSES)
    assert not report.success and report.missing_columns == ["case_id"]
    assert "case_id" in report.summary()


def test_paths_resolve_relative_to_manifest(tmp_path, slides_dir):
    sub = tmp_path / "project" / "tables"
    sub.mkdir(parents=True)
    shutil.copy(slides_dir / "CMU-1-Small-Region.svs", tmp_path / "project" / "cmu.svs")
    path = _write_manifest(
        sub, [{"slide_id": "cmu", "case_id": "p", "path": "../cmu.svs", "label": "benign"}]
    )
    df = read_manifest(path)
    assert Path(df.at[0, "abs_path"]) == (tmp_path / "project" / "cmu.svs").resolve()
    assert validate_manifest(df, CLASSES).success


def test_written_manifest_resolves_to_the_same_files(tmp_path, slides_dir):
    from slidemil.data.manifest import write_manifest

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m_mask.png").write_bytes(b"x")
    src = _write_manifest(
        tmp_path / "a",
        [
            {
                "slide_id": "cmu",
                "case_id": "p",
                "label": "benign",
                "path": str(slides_dir / "CMU-1-Small-Region.svs"),
                "tumour_mask": "m_mask.png",
            }
        ],
    )
    df = read_manifest(src)
    write_manifest(df, tmp_path / "b" / "c" / "validated.csv")
    again = read_manifest(tmp_path / "b" / "c" / "validated.csv")
    assert again.at[0, "abs_path"] == df.at[0, "abs_path"]
    assert again.at[0, "abs_tumour_mask"] == str((tmp_path / "a" / "m_mask.png").resolve())
    assert "abs_path" not in pd.read_csv(tmp_path / "b" / "c" / "validated.csv").columns


def test_header_only_manifest_fails_with_a_clear_reason(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("slide_id,case_id,path,label\n")
    report = validate_manifest(read_manifest(path), CLASSES)
    assert not report.success and report.n_rows == 0
    assert "manifest has no slides" in report.summary()
    assert report.to_dict()["problems"] == ["manifest has no slides (a header but no rows)"]


@pytest.mark.parametrize(("content", "needle"), [(b"", "is empty"), (b"\n\n  \n", "is empty")])
def test_empty_manifest_file_is_a_readable_error(tmp_path, content, needle):
    from slidemil.data.manifest import ManifestError

    path = tmp_path / "manifest.csv"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=needle) as err:
        read_manifest(path)
    assert str(path) in str(err.value) and "slide_id,case_id,path,label" in str(err.value)


def test_damaged_slides_are_named_with_their_problem(tmp_path, real_slides):
    """A truncated SVS is reported as truncated (not as a plain image without mpp), a fake one as corrupt."""
    cmu = (real_slides / "CMU-1-Small-Region.svs").read_bytes()
    (real_slides / "half.svs").write_bytes(cmu[: len(cmu) // 2])
    (real_slides / "short.svs").write_bytes(b"II*\x00\x07")
    rows = [
        {"slide_id": "half", "case_id": "c1", "path": "slides/half.svs", "label": "benign"},
        {"slide_id": "short", "case_id": "c2", "path": "slides/short.svs", "label": "benign"},
        {"slide_id": "fake", "case_id": "c3", "path": "slides/notes.svs", "label": "benign"},
    ]
    report = validate_manifest(read_manifest(_write_manifest(tmp_path, rows)), CLASSES)
    reasons = dict(zip(report.bad_rows["slide_id"], report.bad_rows["reasons"], strict=True))
    assert "half.svs is 969,477 bytes but its image directory 1 starts at byte 1,275,950" in reasons["half"]
    assert "short.svs is 5 bytes, shorter than the 8-byte TIFF header" in reasons["short"]
    assert "notes.svs is named .svs, a TIFF-based format, but does not start with a TIFF header" in reasons["fake"]
    assert not any("mpp" in r for r in reasons.values())
