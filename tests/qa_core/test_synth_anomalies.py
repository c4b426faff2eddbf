"""Tests of qa_core.synth.anomalies: each injected anomaly does what it says, seeded, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qa_core.errors import SynthesisError
from qa_core.synth import generate_cohort, read_cohort, simulate_session
from qa_core.synth.acquisition import AcquisitionSettings
from qa_core.synth.anomalies import (
    ANOMALY_KINDS,
    ANOMALY_STAGES,
    check_anomaly_kinds,
    choose_anomaly,
    flip_head_feet,
    flip_left_right,
    heavy_metal,
    miscalibrate_hu,
    other_body_part,
    severe_motion,
    truncate_fov,
)
from qa_core.synth.phantom import LABELS, PatientAnatomy, build_phantom


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_kinds_and_stages_agree() -> None:
    assert set(ANOMALY_STAGES) == set(ANOMALY_KINDS)
    assert set(ANOMALY_STAGES.values()) <= {"anatomy", "phantom", "settings", "image"}


def test_check_anomaly_kinds_validates_and_deduplicates() -> None:
    assert check_anomaly_kinds(["metal", " flip_hf", "metal", ""]) == ("metal", "flip_hf")
    with pytest.raises(SynthesisError, match=r"unknown anomaly 'flip'.*flip_hf"):
        check_anomaly_kinds(["flip"])


def test_choose_anomaly_fraction_and_round_robin() -> None:
    kinds = ["flip_hf", "metal", "motion"]
    assert [choose_anomaly(_rng(i), i, kinds, 1.0) for i in range(1, 7)] == kinds * 2
    assert all(choose_anomaly(_rng(i), i, kinds, 0.0) is None for i in range(1, 20))
    assert choose_anomaly(_rng(0), 1, [], 0.0) is None
    picks = [choose_anomaly(_rng(i), i, kinds, 0.25) for i in range(1, 401)]
    share = sum(p is not None for p in picks) / 400
    assert 0.18 < share < 0.32
    # the same generator state gives the same choice
    assert choose_anomaly(_rng(5), 5, kinds, 0.5) == choose_anomaly(_rng(5), 5, kinds, 0.5)
    with pytest.raises(SynthesisError, match=r"\[0, 1\]"):
        choose_anomaly(_rng(0), 1, kinds, 1.5)
    with pytest.raises(SynthesisError, match="at least one anomaly kind"):
        choose_anomaly(_rng(0), 1, [], 0.5)


def test_image_stage_faults() -> None:
    hu = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    flipped, info = flip_head_feet(hu, _rng())
    assert np.array_equal(flipped, hu[::-1]) and info == {"axis": "z"}
    mirrored, _ = flip_left_right(hu, _rng())
    assert np.array_equal(mirrored[:, :, 0], hu[:, :, -1])
    with pytest.raises(SynthesisError, match="shape"):
        flip_head_feet(hu[0], _rng())


def test_miscalibrate_hu_is_the_recorded_linear_map_clipped() -> None:
    hu = np.array([[[-1000.0, 0.0], [40.0, 1000.0]]] * 2, dtype=np.float32)
    out, p = miscalibrate_hu(hu, _rng(3))
    assert 0.85 <= p["slope"] <= 1.15 and 150 <= abs(p["intercept_hu"]) <= 300
    expected = np.clip(hu * p["slope"] + p["intercept_hu"], -1024, 3071)
    np.testing.assert_allclose(out, expected, atol=0.05)
    assert out.dtype == np.float32


def test_settings_and_anatomy_faults_stay_in_their_documented_ranges() -> None:
    base = AcquisitionSettings()
    for seed in range(20):
        s, p = truncate_fov(base, _rng(seed))
        assert 55 <= s.fov_radius_mm <= 85 and p["fov_radius_mm"] == pytest.approx(s.fov_radius_mm, abs=1e-3)
        m, q = severe_motion(base, _rng(seed))
        assert 8 <= m.motion_mm <= 15 and 3 <= abs(m.motion_deg) <= 6 and 0.35 <= m.motion_fraction <= 0.5
        assert q["motion_mm"] == pytest.approx(m.motion_mm, abs=1e-3)
        a, r = heavy_metal(PatientAnatomy(missing_teeth=(1, 2)), _rng(seed))
        assert 16 <= len(a.fillings) <= 28 and a.missing_teeth == ()
        assert all(3.5 <= f.radius_mm <= 4.5 for f in a.fillings) and r["n_fillings"] == len(a.fillings)
        assert len({(f.upper, f.tooth) for f in a.fillings}) == len(a.fillings)


def test_other_body_part_is_a_trunk_on_the_same_grid() -> None:
    ph = build_phantom(PatientAnatomy(), slices=6, size=64)
    parts = set()
    for seed in range(6):
        out, p = other_body_part(ph, _rng(seed))
        parts.add(p["body_part"])
        assert out.hu.shape == ph.hu.shape and out.spacing == ph.spacing
        body = out.labels > 0
        width_mm = body[3].any(axis=0).sum() * ph.spacing[2]
        assert width_mm > 270  # wider than any head-and-neck field of view's usable width
        if p["body_part"] == "thorax":
            assert (out.labels == LABELS["airway"]).sum() / body.sum() > 0.2  # lungs
        assert not np.isin(out.labels, [LABELS["parotid_left"], LABELS["mandible"]]).any()
    assert parts == {"thorax", "pelvis"}


def test_simulate_session_records_the_anomaly_and_keeps_ratings_of_image_faults() -> None:
    normal = simulate_session(4, 2, slices=8, size=64)
    assert normal.anomaly is None and normal.truth_json()["anomaly"] is None
    flipped = simulate_session(4, 2, slices=8, size=64, anomaly="flip_hf")
    assert flipped.anomaly is not None and flipped.anomaly.kind == "flip_hf"
    assert flipped.truth_json()["anomaly"] == {"kind": "flip_hf", "stage": "image", "params": {"axis": "z"}}
    np.testing.assert_array_equal(flipped.hu, normal.hu[::-1])
    assert flipped.ratings == normal.ratings and np.array_equal(flipped.labels, normal.labels)
    fov = simulate_session(4, 2, slices=8, size=64, anomaly="truncated_fov")
    assert fov.settings.fov_radius_mm == pytest.approx(fov.anomaly.params["fov_radius_mm"], abs=1e-3)  # type: ignore[union-attr]
    # outside the truncated field of view the scanner writes -1000
    assert fov.hu[:, 32, 1] == pytest.approx(-1000.0)
    with pytest.raises(SynthesisError, match="unknown anomaly"):
        simulate_session(4, 2, slices=8, size=64, anomaly="upside_down")


def test_generate_cohort_with_anomalies_writes_truth_and_refuses_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "c"
    kinds = ["flip_lr", "hu_calibration"]
    cohort = generate_cohort(
        out, n_sessions=3, slices=8, size=64, seed=2, progress=False,
        anomalies=kinds, anomaly_fraction=1.0,
    )  # fmt: skip
    got = [s.anomaly["kind"] if s.anomaly else None for s in cohort.sessions]
    assert got == ["flip_lr", "hu_calibration", "flip_lr"]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["SIM2_002"]["anomaly"]["stage"] == "image"
    header = json.loads((out / "cohort.json").read_text())
    assert header["anomalies"] == kinds and header["anomaly_fraction"] == 1.0
    assert read_cohort(out).sessions[0].anomaly == cohort.sessions[0].anomaly
    with pytest.raises(SynthesisError, match="anomalies"):
        generate_cohort(out, n_sessions=3, slices=8, size=64, seed=2, progress=False)
    with pytest.raises(SynthesisError, match="needs at least one anomaly kind"):
        generate_cohort(tmp_path / "d", n_sessions=1, slices=8, size=64, anomaly_fraction=0.5)


def test_cli_synth_anomalies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    args = ["synth", "--sessions", "2", "--slices", "8", "--size", "64", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a"), "--anomalies", "metal", "--anomaly-rate", "1"]) == 0
    assert "injected anomalies (truth.json 'anomaly'): 2 of 2 sessions: metal 2" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--anomalies", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown anomaly 'bogus'" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--out", str(tmp_path / "c"), "--anomaly-fraction", "0.5"]) == 2
    assert "--anomalies" in capsys.readouterr().err
