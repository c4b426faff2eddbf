"""``cbctqa score PATH --rtstruct RS.dcm``: localisation per category, flags, bad RTSTRUCT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from qa_core.attribution import attribute_volume
from qa_core.categories import CATEGORIES
from qa_core.dicom_series import load_series
from qa_core.dicom_writer import write_series
from qa_core.localisation import localise
from qa_core.model import load_model
from qa_core.rtstruct import read_rtstruct
from qa_core.synth.rtstruct_writer import write_rtstruct

SPACING = (2.5, 1.0, 1.0)
SHAPE = (4, 48, 48)


def _ellipse(c: tuple[float, float], r: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    m = ((yy - c[0]) / r[0]) ** 2 + ((xx - c[1]) / r[1]) ** 2 <= 1.0
    return np.broadcast_to(m, SHAPE).copy()


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rtscore")
    body = _ellipse((24, 24), (20, 18))
    rng = np.random.default_rng(3)
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, SHAPE)
    files = write_series(hu.astype(np.float32), SPACING, root / "ct", uid_seed="rtscore")
    rois = {
        "External": body,
        "Parotid_L": _ellipse((26, 34), (5, 4)),
        "Parotid_R": _ellipse((26, 14), (5, 4)),
        "Larynx": _ellipse((14, 24), (4, 4)),
    }
    rs = write_rtstruct(files, rois, root / "RS.dcm", uid_seed="rtscore")
    other = write_series(hu.astype(np.float32), SPACING, root / "other", uid_seed="other")
    rs_other = write_rtstruct(other, rois, root / "RS_other.dcm", uid_seed="other")
    return {"ct": root / "ct", "rs": rs, "rs_other": rs_other}


def test_score_with_rtstruct_adds_localisation(
    case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "report.json"
    argv = ["score", str(case["ct"]), "--rtstruct", str(case["rs"]), "--json", str(out_json)]
    assert main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "in organ" in out and "pointing" in out
    doc = json.loads(out_json.read_text())
    # the same numbers computed directly from the library
    volume = load_series(case["ct"])
    result = attribute_volume(load_model(device="cpu"), volume)
    masks = read_rtstruct(case["rs"], volume, aliases={})
    want = localise(result, masks.masks, body=masks.body)
    for cat in CATEGORIES:
        row = doc["categories"][cat]
        assert {"ae_in_region", "region_share", "pointing_hit_rate"} <= set(row)
        if cat in want.categories:
            loc = want.categories[cat]
            assert row["ae_in_region"] == pytest.approx(loc.ae_in_region, rel=1e-4, abs=1e-9)
            assert row["region_share"] == pytest.approx(loc.region_share)
            assert 0.0 <= row["ae_in_region"] <= 1.0
        else:  # no Bone_Mandible or submandibular ROI in this structure set
            assert row["ae_in_region"] is None and row["region_share"] is None
    assert doc["categories"]["overall"]["region_share"] == 1.0
    loc = doc["localisation"]
    assert loc["body_source"] == "External"
    assert loc["masks"]["roi_names"]["parotid"] == ["Parotid_L", "Parotid_R"]
    for flag in loc["flags"]:
        assert flag["category"] in CATEGORIES and "outside" in flag["reason"]
        assert f"outlier: {flag['category']}: " in out
    assert doc["provenance"]["settings"]["rtstruct"] == str(case["rs"])


def test_score_with_rtstruct_of_another_series_exits_2(
    case: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["score", str(case["ct"]), "--rtstruct", str(case["rs_other"]), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "references series" in err and "(3006,0014)" in err and "RS_other.dcm" in err
