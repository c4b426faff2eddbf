"""Tests for qa_core.localisation: known answers on constructed maps and regions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qa_core.attribution import AttributionResult
from qa_core.categories import CATEGORIES
from qa_core.errors import AttributionError
from qa_core.localisation import (
    body_from_image,
    cell_coverage,
    cohort_localisation_flags,
    energy_share,
    localisation_flags,
    localise,
    pointing_game,
    region_share,
)
from qa_core.volume import Volume

N, ROWS, COLS, H, W = 3, 32, 32, 4, 4  # 8 x 8 voxels per map cell


def _result(cams: np.ndarray) -> AttributionResult:
    """An attribution result around constructed maps ``(5, N, h, w)``."""
    k, n, h, w = cams.shape
    slice_ae = cams.sum(axis=(2, 3), dtype=np.float64)
    return AttributionResult(
        scores={c: 3.0 for c in CATEGORIES},
        slice_scores=np.full((k, n), 3.0, dtype=np.float32),
        cams=cams.astype(np.float32),
        ae={c: float(slice_ae[i].sum()) for i, c in enumerate(CATEGORIES)},
        ae_per_voxel={c: float(slice_ae[i].sum()) / (n * h * w) for i, c in enumerate(CATEGORIES)},
        slice_ae=slice_ae,
        method="gradcam",
        target_layer="features.3",
        map_shape=(h, w),
        input_shape=(h * 8, w * 8),
    )


def test_cell_coverage_square_and_padded() -> None:
    region = np.zeros((1, ROWS, COLS), dtype=bool)
    region[0, :8, :8] = True  # exactly cell (0, 0)
    region[0, 8:12, 8:16] = True  # half of cell (1, 1)
    cov = cell_coverage(region, (H, W))
    want = np.zeros((1, H, W))
    want[0, 0, 0] = 1.0
    want[0, 1, 1] = 0.5
    assert np.allclose(cov, want)
    # a 24 x 32 slice is padded by 4 rows above and below to 32 x 32 (as preprocess does):
    # the top row of cells covers 8 padded rows of which 4 are image
    full = np.ones((24, 32), dtype=bool)
    cov2 = cell_coverage(full, (H, W))
    assert cov2.shape == (H, W)
    assert np.allclose(cov2[0], 0.5) and np.allclose(cov2[1:3], 1.0) and np.allclose(cov2[3], 0.5)
    # cells that do not divide the slice evenly: area weighting, total preserved
    odd = np.zeros((30, 30), dtype=bool)
    odd[3:17, 5:29] = True
    cov3 = cell_coverage(odd, (7, 7))
    assert cov3.sum() * (30 / 7) ** 2 == pytest.approx(odd.sum())


def test_energy_share_known_answers() -> None:
    region = np.zeros((N, ROWS, COLS), dtype=bool)
    region[:, 8:24, 8:24] = True  # the central 2 x 2 cells
    cov = cell_coverage(region, (H, W))
    inside = np.zeros((N, H, W))
    inside[:, 1:3, 1:3] = np.random.default_rng(1).uniform(0.5, 2.0, (N, 2, 2))
    assert energy_share(inside, cov) == pytest.approx(1.0)
    outside = np.zeros((N, H, W))
    outside[:, 0, :] = 1.0
    assert energy_share(outside, cov) == 0.0
    uniform = np.ones((N, H, W))  # equals the mean coverage = region's share of the slice
    assert energy_share(uniform, cov) == pytest.approx(region.sum() / region.size)
    assert math.isnan(energy_share(np.zeros((N, H, W)), cov))
    with pytest.raises(AttributionError, match="differ in shape"):
        energy_share(uniform[:2], cov)


def test_region_share_and_pointing_game() -> None:
    body = np.zeros((2, 10, 10), dtype=bool)
    body[:, 1:9, 1:9] = True  # 128 voxels
    region = np.zeros_like(body)
    region[0, 2:4, 2:6] = True  # 8 voxels inside the body
    region[0, 0, 0] = True  # outside the body: not counted
    assert region_share(region, body) == pytest.approx(8 / 128)
    assert math.isnan(region_share(region, np.zeros_like(body)))

    cams = np.zeros((4, 2, 2))
    cov = np.zeros((4, 2, 2))
    cov[:, 0, 0] = 1.0  # region fills cell (0, 0) on every slice ...
    cov[:, 0, 1] = 0.4  # ... and a bit of cell (0, 1)
    present = np.array([True, True, True, False])
    cams[0, 0, 0] = 5.0  # hit
    cams[1, 0, 1] = 5.0  # maximum in a cell only 40 % inside: miss
    # slice 2: all-zero map, skipped; slice 3 has no region, ignored even with a map
    cams[3, 0, 0] = 9.0
    rate, hits, used = pointing_game(cams, cov, present)
    assert (rate, hits, used) == (0.5, 1, 2)
    assert pointing_game(cams, cov, present, min_coverage=0.4)[:2] == (1.0, 2)
    assert math.isnan(pointing_game(np.zeros((4, 2, 2)), cov, present)[0])
    with pytest.raises(AttributionError, match="min_coverage"):
        pointing_game(cams, cov, present, min_coverage=0.0)


def test_body_from_image_fills_internal_air() -> None:
    hu = np.full((3, 20, 20), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:20, :20]
    disc = (yy - 10) ** 2 + (xx - 10) ** 2 <= 49
    hu[:, disc] = 40.0
    hu[:, 9:12, 9:12] = -1000.0  # airway
    hu[:, 0, 0] = 300.0  # a speck of couch: not the largest component
    body = body_from_image(Volume(hu=hu, spacing=(2.0, 1.0, 1.0)))
    assert np.array_equal(body[1], disc)


def test_localise_per_category_and_flags() -> None:
    body = np.zeros((N, ROWS, COLS), dtype=bool)
    body[:, 4:28, 4:28] = True
    parotid = np.zeros_like(body)
    parotid[:, 8:16, 8:16] = True  # cell (1, 1)
    larynx = np.zeros_like(body)
    larynx[1, 16:24, 16:24] = True  # cell (2, 2), middle slice only
    cams = np.zeros((5, N, H, W), dtype=np.float32)
    cams[0, :, 1, 1] = 2.0  # parotid map on the parotid
    cams[0, :, 0, 0] = 1.0  # ... and half as much in a corner outside the body
    cams[2, :, 0, 3] = 1.0  # larynx map elsewhere
    cams[4] = 1.0  # overall: uniform
    report = localise(_result(cams), {"parotid": parotid, "larynx": larynx}, body=body)
    assert tuple(report.categories) == ("parotid", "larynx", "overall")
    par = report.categories["parotid"]
    assert par.ae_in_region == pytest.approx(2 / 3)
    assert par.region_share == pytest.approx(64 / 576)
    assert par.ratio == pytest.approx((2 / 3) / (64 / 576))
    assert (par.pointing_hit_rate, par.pointing_hits, par.pointing_slices) == (1.0, 3, 3)
    assert par.organ_ae == pytest.approx(6.0) and par.ae == pytest.approx(9.0)
    lar = report.categories["larynx"]
    assert lar.ae_in_region == 0.0 and lar.pointing_hit_rate == 0.0 and lar.region_slices == 1
    ov = report.categories["overall"]
    assert ov.region_share == 1.0 and ov.ae_in_region == pytest.approx(576 / 1024)
    assert ov.roi_names == ("External",) and report.body_source == "External"
    d = report.to_dict()
    assert d["categories"]["larynx"]["ae_in_region"] == 0.0
    assert d["categories"]["parotid"]["pointing_hit_rate"] == 1.0

    flags = localisation_flags(report, min_share=0.5)
    assert [f.category for f in flags] == ["larynx"]
    assert "falls mostly outside the contoured larynx" in flags[0].reason
    assert "0% of the map's energy inside" in flags[0].reason
    assert [f.category for f in localisation_flags(report, min_share=0.7)] == ["parotid", "larynx", "overall"]
    assert localisation_flags(report, min_share=0.0) == []
    with pytest.raises(AttributionError, match="min_share"):
        localisation_flags(report, min_share=1.5)


def test_localise_body_from_image_and_errors() -> None:
    hu = np.full((N, ROWS, COLS), -1000.0, dtype=np.float32)
    hu[:, 4:28, 4:28] = 30.0
    volume = Volume(hu=hu, spacing=(2.0, 1.0, 1.0))
    cams = np.ones((5, N, H, W), dtype=np.float32)
    region = np.zeros((N, ROWS, COLS), dtype=bool)
    region[:, 8:16, 8:16] = True
    report = localise(_result(cams), {"mandible": region}, volume=volume)
    assert report.body_source == "image"
    assert report.categories["mandible"].region_share == pytest.approx(64 / 576)
    assert report.categories["overall"].roi_names == ("image",)
    with pytest.raises(AttributionError, match="needs the body"):
        localise(_result(cams), {"mandible": region})
    with pytest.raises(AttributionError, match="unknown categories"):
        localise(_result(cams), {"thyroid": region}, volume=volume)
    with pytest.raises(AttributionError, match="does not match"):
        localise(_result(cams), {"mandible": region[:2]}, body=region[:2])
    with pytest.raises(AttributionError, match="body mask is empty"):
        localise(_result(cams), {"mandible": region}, body=np.zeros_like(region))


# --- cohort rule -----------------------------------------------------------------------------


def _cohort(
    shares: list[float], chance: float = 0.02, cat: str = "parotid"
) -> dict[str, dict[str, tuple[float, float]]]:
    return {f"S{i:02d}": {cat: (s, chance)} for i, s in enumerate(shares)}


def test_cohort_flags_where_the_model_localises_only_the_case_that_does_not() -> None:
    # median share 0.7 >= 0.5: the absolute rule applies, only S03 (0.2) falls outside
    shares = [0.7, 0.72, 0.68, 0.2, 0.75, 0.69, 0.71, 0.66, 0.73]
    flags = cohort_localisation_flags(_cohort(shares), min_share=0.5)
    assert [(f.session, f.category, f.rule) for f in flags] == [("S03", "parotid", "mostly_outside")]
    assert flags[0].value == pytest.approx(0.2) and flags[0].region_share == 0.02
    assert "falls mostly outside the contoured parotid: 20% of the map's energy inside" in flags[0].reason
    assert "usually puts 70%" in flags[0].reason and "limit 50%" in flags[0].reason


def test_cohort_flags_where_nobody_localises_only_the_extreme_case() -> None:
    # every share below 0.5 (the absolute rule would flag all 10) but above chance (0.5%, the
    # maps do favour the organ): only the extreme S09 is flagged
    shares = [0.010, 0.012, 0.008, 0.011, 0.009, 0.010, 0.013, 0.010, 0.011, 0.0]
    cohort = _cohort(shares, chance=0.005)
    cohort["S10"] = {"parotid": (math.nan, math.nan), "larynx": (0.01, 0.01)}  # no parotid contour
    flags = cohort_localisation_flags(cohort, min_share=0.5)
    assert [(f.session, f.rule) for f in flags] == [("S09", "atypical")]
    # known answer: x = log((s + 1e-3) / (0.005 + 1e-3)); median of the 10 x, MAD
    x = np.log((np.array(shares) + 1e-3) / 0.006)
    mad = np.median(np.abs(x - np.median(x)))
    assert flags[0].value == pytest.approx(0.6745 * (x[-1] - np.median(x)) / mad)
    assert flags[0].value < -3.5
    assert "lies even further from the contoured parotid than usual for this model" in flags[0].reason
    assert "0.0% of the map's energy inside (chance level 0.5%)" in flags[0].reason
    # a map closer to the organ than usual is never an alert
    closer = _cohort([*shares[:-1], 0.4], chance=0.005)
    assert cohort_localisation_flags(closer, min_share=0.5) == []
    # maps that sit on the organ less than a uniform map would (chance 2%): no per-case alert
    assert cohort_localisation_flags(_cohort(shares, chance=0.02), min_share=0.5) == []


def test_cohort_needs_eight_sessions_with_contours() -> None:
    shares = [0.010, 0.012, 0.008, 0.011, 0.009, 0.010, 0.0]  # 7 sessions
    assert cohort_localisation_flags(_cohort(shares), min_share=0.5) == []
    seven = _cohort([0.7] * 6 + [0.1])
    seven["S07"] = {"parotid": (math.nan, 0.02)}  # all-zero map: not counted
    assert cohort_localisation_flags(seven, min_share=0.5) == []
    seven["S08"] = {"parotid": (0.7, 0.02)}  # the eighth
    assert [f.session for f in cohort_localisation_flags(seven, min_share=0.5)] == ["S06"]


def test_cohort_mad_zero_uses_the_mean_absolute_deviation() -> None:
    # 6 of 9 equal: MAD = 0; scale = 1.253314 * mean|x - median|
    shares = [0.01] * 6 + [0.012, 0.009, 0.0]
    flags = cohort_localisation_flags(_cohort(shares, chance=0.005), min_share=0.5)
    x = np.log((np.array(shares) + 1e-3) / 0.006)
    scale = 1.253314 * np.mean(np.abs(x - np.median(x)))
    z = (x - np.median(x)) / scale
    assert [f.session for f in flags] == [f"S{i:02d}" for i in np.flatnonzero(z < -3.5)] == ["S08"]
    assert flags[0].value == pytest.approx(z[-1])
    # no spread at all: nothing can be flagged
    assert cohort_localisation_flags(_cohort([0.01] * 9, chance=0.005), min_share=0.5) == []
    with pytest.raises(AttributionError, match="min_share"):
        cohort_localisation_flags(_cohort(shares), min_share=-0.1)
    with pytest.raises(AttributionError, match="z_cut"):
        cohort_localisation_flags(_cohort(shares), min_share=0.5, z_cut=0.0)
