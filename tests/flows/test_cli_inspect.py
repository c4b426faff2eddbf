"""``cbctqa inspect``: output for a good series, exit code 2 and one line for each bad input."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from flows.cli import main
from qa_core.dicom_writer import write_series

SPACING = (2.0, 0.8, 0.6)


def _series(folder: Path, n: int = 5, seed: str = "cli") -> list[Path]:
    hu = np.linspace(-1000.0, 1000.0, n * 6 * 5, dtype=np.float32).reshape(n, 6, 5)
    return write_series(hu, SPACING, folder, uid_seed=seed, origin=(1.0, 2.0, 3.0))


def _edit(path: Path, **attrs: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def test_inspect_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _series(tmp_path)
    (tmp_path / "Thumbs.db").write_bytes(bytes(64))
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert f"* {uid}" in out
    assert "shape (slices, rows, cols): (5, 6, 5)" in out
    assert "spacing (z, y, x) mm:       (2.0, 0.8, 0.6)" in out
    assert "origin (x, y, z) mm:        (1.0, 2.0, 3.0)" in out
    assert "HU min / median / max:      -1000.0 / 0.0 / 1000.0" in out
    assert "Thumbs.db" in out  # the ignored junk file is reported as a warning


def test_inspect_json_sorted_keys_and_series_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _series(tmp_path / "a", seed="a")
    _series(tmp_path / "b", n=3, seed="b")
    uid = str(pydicom.dcmread(a[0]).SeriesInstanceUID)
    assert main(["inspect", str(tmp_path), "--series", uid, "--json"]) == 0
    text = capsys.readouterr().out
    info = json.loads(text)
    assert text.strip() == json.dumps(info, sort_keys=True)
    assert info["selected"] == uid and info["shape"] == [5, 6, 5]
    assert sorted(s["n_files"] for s in info["series"]) == [3, 5]
    assert info["spacing_mm"] == list(SPACING)
    assert info["hu"] == {"max": 1000.0, "median": 0.0, "min": -1000.0}
    assert "files" not in info["provenance"]


def _empty(d: Path) -> None:
    d.mkdir()


def _junk(d: Path) -> None:
    d.mkdir()
    (d / "a.txt").write_text("hello")


def _two_series(d: Path) -> None:
    _series(d / "a", seed="a")
    _series(d / "b", seed="b")


def _missing(d: Path) -> None:
    _series(d)[2].unlink()


def _truncated(d: Path) -> None:
    p = _series(d)[1]
    p.write_bytes(p.read_bytes()[:-10])


def _oblique(d: Path) -> None:
    for p in _series(d):
        _edit(p, ImageOrientationPatient=[1, 0, 0, 0, 0.94, 0.34])


def _duplicate(d: Path) -> None:
    p = _series(d)[1]
    shutil.copy(p, d / "dup.dcm")
    _edit(d / "dup.dcm", SOPInstanceUID=generate_uid(entropy_srcs=["dup"]))


def _not_ct(d: Path) -> None:
    for p in _series(d):
        _edit(p, Modality="MR")


def _bad_zip(d: Path) -> None:
    d.mkdir()
    (d / "x.zip").write_bytes(b"PK\x03\x04garbage")


@pytest.mark.parametrize(
    ("make", "target", "needle"),
    [
        (_empty, "", "holds no files"),
        (_junk, "", "no DICOM file"),
        (_two_series, "", "--series"),
        (_missing, "", "missing"),
        (_truncated, "", "truncated"),
        (_oblique, "", "oblique"),
        (_duplicate, "", "dup.dcm"),
        (_not_ct, "", "no CT series"),
        (_bad_zip, "x.zip", "zip"),
        (lambda d: None, "", "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], None],
    target: str,
    needle: str,
) -> None:
    d = tmp_path / "input"
    make(d)
    code = main(["inspect", str(d / target) if target else str(d)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cbctqa inspect: error: ") and needle in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_inspect_reads_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _series(tmp_path / "s")
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        for p in paths:
            zf.write(p, p.name)
    assert main(["inspect", str(tmp_path / "s.zip"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [5, 6, 5]
