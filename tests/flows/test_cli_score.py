"""``cbctqa score``: table, JSON report with provenance, overlays, exit code 2 on bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from flows.cli import main
from qa_core.attribution import attribute_volume
from qa_core.categories import CATEGORIES
from qa_core.dicom_series import load_series
from qa_core.dicom_writer import write_series
from qa_core.model import DEFAULT_MODEL_PATH, load_model, sha256_file

SPACING = (2.5, 0.9, 0.9)


def _head(n: int = 4, rows: int = 40, cols: int = 48) -> np.ndarray:
    """A water ellipse with a bone rim in air, plus seeded noise (HU)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
    r = (xx / 0.8) ** 2 + (yy / 0.9) ** 2
    base = np.where(r < 1.0, 30.0, -1000.0) + np.where((r > 0.8) & (r < 1.0), 900.0, 0.0)
    return (base[None] + rng.normal(0.0, 30.0, (n, rows, cols))).astype(np.float32)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("series")
    return folder, write_series(_head(), SPACING, folder, uid_seed="score")


def test_score_table_json_and_overlays(
    series: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, files = series
    out_json = tmp_path / "r" / "report.json"
    assert (
        main(
            [
                "score",
                str(folder),
                "--json",
                str(out_json),
                "--overlays",
                str(tmp_path / "ov"),
                "--top-k",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert f"series {uid}: 4 slices of 40 x 48" in out
    for cat in CATEGORIES:
        assert cat in out
    text = out_json.read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=2) + "\n"  # sorted keys

    # Known answer: the same numbers as the library on the same series and model.
    volume = load_series(folder)
    ref = attribute_volume(load_model(device="cpu"), volume, batch_size=16)
    assert list(doc["categories"]) == sorted(CATEGORIES)
    for k, cat in enumerate(CATEGORIES):
        row = doc["categories"][cat]
        assert row["score"] == pytest.approx(ref.scores[cat], rel=1e-6)
        assert row["ae"] == pytest.approx(ref.ae[cat], rel=1e-6)
        assert row["ae_per_voxel"] == pytest.approx(ref.ae[cat] / (4 * 16 * 16), rel=1e-6)
        assert 1.0 < row["score"] < 5.0
        assert len(doc["slice_scores"][cat]) == 4 == len(doc["slice_ae"][cat])
        assert doc["slice_ae"][cat] == pytest.approx(ref.slice_ae[k].tolist(), rel=1e-6)
        assert f"{cat:14s} {row['score']:6.2f}" in out

    prov = doc["provenance"]
    assert prov["input"]["series_uid"] == uid
    manual = hashlib.sha256()
    for f in sorted(files):
        manual.update(f.read_bytes())
    assert prov["input"]["files_sha256"] == manual.hexdigest()
    assert prov["input"]["files_sha256_scope"] == "files"
    assert prov["model"]["sha256"] == sha256_file(DEFAULT_MODEL_PATH)
    assert prov["attribution"]["method"] == "gradcam" == doc["method"]
    assert prov["settings"] == {
        "batch_size": 32,
        "device": "cpu",
        "method": "gradcam",
        "series": None,
        "top_k": 2,
    }
    assert prov["package_version"] == "0.1.0"
    assert doc["map_shape"] == [16, 16] and doc["upsample_factor"] == 64.0

    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == 2 * len(CATEGORIES) == len(doc["overlays"])
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_score_method_option_and_env_default(
    series: tuple[Path, list[Path]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    folder, _ = series
    monkeypatch.setenv("CBCTQA_CAM_METHOD", "layercam")
    out_json = tmp_path / "s.json"
    assert (
        main(
            ["score", str(folder), "--json", str(out_json), "--batch-size", "3", "--device", "cpu"]
        )
        == 0
    )
    doc = json.loads(out_json.read_text())
    assert doc["method"] == "layercam"
    assert doc["provenance"]["settings"]["batch_size"] == 3
    assert (
        main(
            [
                "score",
                str(folder),
                "--method",
                "hirescam",
                "--json",
                str(out_json),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads(out_json.read_text())["method"] == "hirescam"
    assert "hirescam" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "scorecam"], "unknown CAM method 'scorecam'"),
        (["--model", "/nonexistent/model.pt"], "model.pt not found"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--series", "1.2.3.999"], "1.2.3.999"),
    ],
)
def test_score_bad_options_exit_2_one_line(
    series: tuple[Path, list[Path]],
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _ = series
    assert main(["score", str(folder), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbctqa score: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_score_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a DICOM file\n")
    assert main(["score", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbctqa score: error: ") and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["score", str(empty)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
