"""Scoring records failed image checks on the assessment, and cohort monitoring keeps them."""

from __future__ import annotations

import numpy as np
import pytest

from flows.scoring import IMAGE_CHECK_PREFIX, assessment_record, image_checks_of
from qa_core.attribution import attribute_volume
from qa_core.image_checks import ImageCheck, ImageCheckReport
from qa_core.model import load_model
from qa_core.synth import simulate_session
from qa_core.volume import Volume


@pytest.fixture(scope="module")
def scored() -> tuple[object, Volume, object]:
    model = load_model()
    sim = simulate_session(7, 1, slices=16, size=96, anomaly="flip_hf")
    volume = Volume(hu=sim.hu, spacing=sim.spacing, series_uid="1.2.3")
    return model, volume, attribute_volume(model, volume, batch_size=16)


@pytest.mark.slow
def test_failed_image_check_is_one_alert_on_overall_with_its_reason(scored) -> None:  # type: ignore[no-untyped-def]
    model, volume, result = scored
    checks = image_checks_of(volume, "S1")
    assert checks is not None and [c.name for c in checks.flagged] == ["head_feet"]
    rec = assessment_record(
        result, volume, scan_id="1", model=model, duration_s=1.0, image_checks=checks
    )
    overall = rec.categories["overall"]
    assert overall.outlier is True
    assert overall.outlier_reason.startswith(
        f"{IMAGE_CHECK_PREFIX} the teeth and mandible lie in the lower part"
    )
    assert "; " not in overall.outlier_reason  # one reason; write_outlier_flags splits on "; "
    # the organ categories are not flagged a second time for the same image problem
    for cat, res in rec.categories.items():
        if cat != "overall":
            assert res.outlier is None and res.outlier_reason == "", cat


@pytest.mark.slow
def test_passed_image_checks_leave_the_outlier_flag_unknown(scored) -> None:  # type: ignore[no-untyped-def]
    model, volume, result = scored
    ok = ImageCheckReport((ImageCheck("metal", True, False, 0.5, "cm3", "> 6 cm3"),))
    rec = assessment_record(
        result, volume, scan_id="1", model=model, duration_s=1.0, image_checks=ok
    )
    assert all(c.outlier is None and c.outlier_reason == "" for c in rec.categories.values())
    assert image_checks_of(Volume(hu=np.zeros((2, 8, 8), np.float32), spacing=(1, 1, 1))) is None


@pytest.mark.slow
def test_cli_score_reports_failed_image_checks(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from flows.cli import main
    from qa_core.dicom_writer import write_series

    sim = simulate_session(7, 1, slices=16, size=96, anomaly="flip_hf")
    write_series(sim.hu, sim.spacing, tmp_path / "dcm")
    out = tmp_path / "r.json"
    assert main(["score", str(tmp_path / "dcm"), "--json", str(out), "--batch-size", "16"]) == 0
    assert "image check: the teeth and mandible lie in the lower part" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["image_checks"]["flagged"] == ["head_feet"]
    assert doc["image_checks"]["checks"]["left_right"]["assessed"] is False  # no RTSTRUCT given
