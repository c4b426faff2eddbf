"""Tests of qa_core.image_checks on constructed volumes with known answers, and on simulated anomalies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qa_core.image_checks import (
    CHECK_NAMES,
    ImageCheckError,
    check_body_part,
    check_field_of_view,
    check_head_feet,
    check_hu_calibration,
    check_image,
    check_left_right,
    check_metal,
    check_motion,
    measure_image,
)
from qa_core.volume import Volume

N, SIZE, PX, DZ = 12, 80, 3.5, 5.0  # 280 mm grid, 60 mm tall


def _coords() -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(SIZE) - (SIZE - 1) / 2.0) * PX
    return c[None, :], c[:, None]


def _head(
    *, fov_mm: float = 120.0, half_w: float = 70.0, offset_x: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Air inside a circular field of view (padding -1000 outside), a soft-tissue ellipse,
    dense bone in the upper slices and a little cervical bone at the bottom."""
    rng = np.random.default_rng(seed)
    x, y = _coords()
    hu = -1000.0 + rng.normal(0.0, 15.0, (N, SIZE, SIZE))
    body = ((x - offset_x) / half_w) ** 2 + (y / 90.0) ** 2 <= 1.0
    hu[:, body] = 40.0 + rng.normal(0.0, 15.0, (N, int(body.sum())))
    # a small asymmetric nose-like bump so that left and right differ
    bump = ((x - offset_x - 30.0) / 12.0) ** 2 + ((y + 88.0) / 12.0) ** 2 <= 1.0
    hu[:, bump] = 40.0
    bone = ((x - offset_x) / 35.0) ** 2 + ((y + 40.0) / 12.0) ** 2 <= 1.0
    hu[8:10, bone] = 1600.0
    spine = ((x - offset_x) / 8.0) ** 2 + ((y - 50.0) / 8.0) ** 2 <= 1.0
    hu[:, spine] = 700.0
    fov = x**2 + y**2 <= fov_mm**2
    hu[:, ~fov] = -1000.0
    return hu.astype(np.float32)


def _vol(hu: np.ndarray) -> Volume:
    return Volume(hu=np.asarray(hu, dtype=np.float32), spacing=(DZ, PX, PX))


def test_normal_constructed_head_passes_every_check() -> None:
    hu = _head(offset_x=10.0)
    report = check_image(_vol(hu), reference_body=hu > -400)
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report.flagged == () and report.reasons == ()
    assert all(c.assessed for c in report.checks)
    d = report.to_dict()
    assert d["flagged"] == [] and set(d["checks"]) == set(CHECK_NAMES)  # type: ignore[arg-type]


def test_measurements_find_the_padding_and_the_field_of_view() -> None:
    m = measure_image(_vol(_head(fov_mm=120.0)))
    assert m.padding_hu == -1000.0
    assert m.fov_radius_mm == pytest.approx(120.0, abs=PX)
    no_pad = measure_image(_vol(_head(fov_mm=400.0)))  # corners are noisy air: no padding
    assert math.isnan(no_pad.padding_hu) and no_pad.fov.all()


def test_hu_calibration_offset_is_flagged_with_the_numbers() -> None:
    hu = _head()
    ok = check_hu_calibration(measure_image(_vol(hu)))
    assert ok.assessed and not ok.flagged
    assert ok.details["air_hu"] == pytest.approx(-1000.0, abs=5)
    assert ok.details["soft_tissue_hu"] == pytest.approx(40.0, abs=5)
    bad = check_hu_calibration(measure_image(_vol(np.clip(hu + 200.0, -1024, 3071))))
    assert bad.flagged
    assert "air around the patient reads -800 HU" in bad.reason
    assert "soft tissue reads 240 HU" in bad.reason
    low = check_hu_calibration(measure_image(_vol(np.clip(hu * 0.9 - 150.0, -1024, 3071))))
    # a negative offset pushes the air to the floor of the 12-bit range
    assert low.flagged and "air around the patient reads -1024 HU instead of -1000 ± 20" in low.reason
    assert low.details["soft_tissue_hu"] == pytest.approx(0.9 * 40 - 150, abs=5)


def test_head_feet_flip_is_flagged() -> None:
    hu = _head()
    ok = check_head_feet(measure_image(_vol(hu)))
    assert ok.value == pytest.approx(0.75, abs=0.05) and not ok.flagged
    flipped = check_head_feet(measure_image(_vol(hu[::-1])))
    assert flipped.flagged and flipped.value < 0.45 and "head-feet flip" in flipped.reason
    no_bone = _head()
    no_bone[no_bone > 1000] = 40.0
    assert not check_head_feet(measure_image(_vol(no_bone))).assessed


def test_left_right_needs_a_reference_and_sees_the_mirror() -> None:
    hu = _head(offset_x=8.0)
    ref = hu > -400
    m = measure_image(_vol(hu))
    same = check_left_right(m, ref)
    assert same.assessed and not same.flagged and same.details["dice"] > 0.99
    mirrored = check_left_right(measure_image(_vol(hu[:, :, ::-1])), ref)
    assert mirrored.flagged and "left and right appear swapped" in mirrored.reason
    assert mirrored.details["dice_mirrored"] > 0.99 > mirrored.details["dice"]
    assert not check_left_right(m, None).assessed
    with pytest.raises(ImageCheckError, match="reference body mask has shape"):
        check_left_right(m, ref[:, :10])


def test_small_field_of_view_is_flagged() -> None:
    ok = check_field_of_view(measure_image(_vol(_head(fov_mm=125.0))))
    assert not ok.flagged
    small = check_field_of_view(measure_image(_vol(_head(fov_mm=60.0))))
    assert small.flagged and "field of view is only" in small.reason
    assert small.value == pytest.approx(60.0, abs=PX)


def test_metal_volume() -> None:
    hu = _head()
    x, y = _coords()
    filling = (x / 8.0) ** 2 + ((y + 40.0) / 8.0) ** 2 <= 1.0  # 200 mm² per slice
    one = hu.copy()
    one[8, filling] = 3071.0
    few = check_metal(measure_image(_vol(one)))
    assert few.value == pytest.approx(float(filling.sum()) * PX**2 * DZ / 1000, rel=1e-6)
    assert not few.flagged
    many = hu.copy()
    many[1:11, filling] = 3071.0  # 10 slices x 1 cm3
    heavy = check_metal(measure_image(_vol(many)))
    assert heavy.flagged and "cm³ of metal" in heavy.reason


def test_trunk_is_not_a_head_and_neck() -> None:
    hu = _head(half_w=200.0, fov_mm=125.0)
    res = check_body_part(measure_image(_vol(hu)))
    assert res.flagged and "trunk" in res.reason and res.value == 1.0
    # the checks that assume a head and neck are then not assessed
    report = check_image(_vol(hu))
    assert [c.name for c in report.flagged] == ["body_part"]
    assert not report.get("hu_calibration").assessed  # type: ignore[union-attr]
    lungs = _head()
    x, y = _coords()
    for side in (-1.0, 1.0):
        lungs[:, ((x - side * 35.0) / 25.0) ** 2 + (y / 60.0) ** 2 <= 1.0] = -850.0
    air = check_body_part(measure_image(_vol(lungs)))
    assert air.flagged and "air fills" in air.reason


def test_motion_ghost_outside_the_body() -> None:
    hu = _head()
    still = check_motion(measure_image(_vol(hu)))
    assert still.assessed and not still.flagged and still.value < -950
    x, y = _coords()
    ghost = ((x - 12.0) / 70.0) ** 2 + ((y - 9.0) / 90.0) ** 2 <= 1.0
    outside = (x / 70.0) ** 2 + (y / 90.0) ** 2 > 1.0
    moved = hu.copy()
    moved[:, ghost & outside] = -600.0
    res = check_motion(measure_image(_vol(moved)))
    assert res.flagged and "moved" in res.reason


def test_too_small_volume_is_refused() -> None:
    with pytest.raises(ImageCheckError, match="at least 4 slices"):
        measure_image(Volume(hu=np.zeros((2, 64, 64), np.float32), spacing=(1.0, 1.0, 1.0)))


@pytest.mark.slow
def test_each_simulated_anomaly_fires_its_own_check() -> None:
    """Low-resolution simulated sessions (96 px, 16 slices): a normal session passes, and every
    injected anomaly is caught by the check made for it."""
    from qa_core.synth import simulate_session
    from qa_core.synth.anomalies import ANOMALY_KINDS

    expected = {
        "flip_hf": "head_feet",
        "flip_lr": "left_right",
        "truncated_fov": "field_of_view",
        "body_part": "body_part",
        "metal": "metal",
        "motion": "motion",
        "hu_calibration": "hu_calibration",
    }
    assert set(expected) == set(ANOMALY_KINDS)
    for kind in (None, *ANOMALY_KINDS):
        sim = simulate_session(7, 1, slices=16, size=96, anomaly=kind)
        report = check_image(Volume(hu=sim.hu, spacing=sim.spacing), reference_body=sim.labels > 0)
        fired = [c.name for c in report.flagged]
        assert fired == ([] if kind is None else [expected[kind]]), (kind, fired)
