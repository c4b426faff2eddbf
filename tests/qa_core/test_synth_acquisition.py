"""Tests for the projector, FBP and the acquisition model (qa_core.synth.projector/acquisition).

Known answers: a uniform disk reconstructs to its attenuation; the projector and the back
projector are adjoint; a view subset equals the matching rows of the full projection.
Degradation tests: worse acquisition gives lower latent quality and lower mean ratings in
the affected category, on average over seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qa_core.categories import CATEGORIES
from qa_core.errors import SynthesisError
from qa_core.synth.acquisition import (
    MU_WATER,
    SETTING_RANGES,
    VIEW_CHOICES,
    AcquisitionSettings,
    acquire,
    hu_to_mu,
    mu_to_hu,
    sample_settings,
)
from qa_core.synth.cohort import simulate_session
from qa_core.synth.phantom import Filling, build_phantom, sample_anatomy
from qa_core.synth.projector import (
    FILTER_WINDOWS,
    ParallelBeamProjector,
    detector_bins,
    filter_length,
    ramp_filter,
)

SIZE, SLICES, SEEDS = 64, 16, range(4)


def _disk(n: int, px: float, radius_mm: float, mu: float) -> np.ndarray:
    c = (np.arange(n) - (n - 1) / 2) * px
    return (mu * ((c[None, :] ** 2 + c[:, None] ** 2) <= radius_mm**2)).astype(np.float32)


# --------------------------------------------------------------------------- projector


@pytest.mark.parametrize("window", FILTER_WINDOWS)
def test_fbp_reconstructs_uniform_disk(window):
    n, px = 96, 2.0
    proj = ParallelBeamProjector(n, px, 180)
    img = np.stack([_disk(n, px, 60.0, 0.02), _disk(n, px, 30.0, 0.04)])
    rec = proj.fbp(proj.forward(img), window=window)
    c = (np.arange(n) - (n - 1) / 2) * px
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    inner = r2 < 40.0**2
    assert rec[0][inner].mean() == pytest.approx(0.02, rel=0.01)
    assert rec[1][r2 < 20.0**2].mean() == pytest.approx(0.04, rel=0.01)
    assert np.abs(rec[0][r2 > 75.0**2]).mean() < 5e-4
    assert rec[0][inner].std() < 0.02 * 0.02  # < 20 HU of structured error


def test_forward_line_integral_of_disk():
    n, px = 96, 2.0
    proj = ParallelBeamProjector(n, px, 90)
    p = proj.forward(_disk(n, px, 60.0, 0.02)[None])
    # central ray through a disk of radius 60 mm: 120 mm x 0.02 /mm = 2.4 at every angle
    centre = p[:, proj.n_det // 2 - 1 : proj.n_det // 2 + 1, 0].mean(axis=1)
    np.testing.assert_allclose(centre, 2.4, rtol=0.03)


def test_projector_adjoint():
    n, px = 32, 1.5
    proj = ParallelBeamProjector(n, px, 45)
    rng = np.random.default_rng(0)
    x = rng.random((3, n, n)).astype(np.float32)
    y = rng.random((45, proj.n_det, 3)).astype(np.float32)
    lhs = float(np.sum(proj.forward(x).astype(np.float64) * y))
    rhs = float(np.sum(x.astype(np.float64) * proj.back(y))) * px
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_view_subset_matches_full_projection():
    n = 48
    proj = ParallelBeamProjector(n, 2.0, 60)
    x = np.random.default_rng(1).random((2, n, n)).astype(np.float32)
    full = proj.forward(x)
    views = np.arange(0, 60, 4)
    np.testing.assert_allclose(proj.forward(x, views), full[views], rtol=1e-5, atol=1e-5)
    assert proj.back(full[views], views).shape == (2, n, n)


def test_projector_errors():
    with pytest.raises(SynthesisError, match="8-1024"):
        ParallelBeamProjector(4, 1.0, 90)
    with pytest.raises(SynthesisError, match="pixel size"):
        ParallelBeamProjector(32, 0.0, 90)
    with pytest.raises(SynthesisError, match="view count"):
        ParallelBeamProjector(32, 1.0, 2)
    proj = ParallelBeamProjector(32, 1.0, 30)
    with pytest.raises(SynthesisError, match="image stack"):
        proj.forward(np.zeros((2, 16, 16), np.float32))
    with pytest.raises(SynthesisError, match="sorted unique"):
        proj.forward(np.zeros((1, 32, 32), np.float32), [3, 1])
    with pytest.raises(SynthesisError, match="sinogram shape"):
        proj.back(np.zeros((29, proj.n_det, 1), np.float32))
    with pytest.raises(SynthesisError, match="unknown FBP window"):
        ramp_filter(64, 1.0, "cosine")  # type: ignore[arg-type]


def test_detector_covers_diagonal():
    for n in (64, 128, 256):
        assert detector_bins(n) >= n * np.sqrt(2) and detector_bins(n) % 2 == 0
    with pytest.raises(SynthesisError, match="grid size"):
        detector_bins(0)


def test_filter_length_is_fast_and_long_enough():
    for n in (10, 93, 366):
        length = filter_length(n)
        assert length >= 2 * n and length % 2 == 0
    with pytest.raises(SynthesisError, match="detector"):
        filter_length(0)


# --------------------------------------------------------------------------- units, settings


def test_hu_mu_round_trip():
    hu = np.array([-1000.0, -100.0, 0.0, 50.0, 1500.0], dtype=np.float32)
    mu = hu_to_mu(hu)
    assert mu[2] == pytest.approx(MU_WATER) and mu[0] == 0.0
    np.testing.assert_allclose(mu_to_hu(mu), hu, atol=1e-2)
    assert hu_to_mu(np.array([-3000.0]))[0] == 0.0  # below air clamps to air


def test_settings_validation():
    with pytest.raises(SynthesisError, match="n_views"):
        AcquisitionSettings(n_views=100)
    with pytest.raises(SynthesisError, match="dose"):
        AcquisitionSettings(dose=-1.0)
    with pytest.raises(SynthesisError, match="fov_radius_mm"):
        AcquisitionSettings(fov_radius_mm=500.0)
    with pytest.raises(SynthesisError, match="scatter"):
        AcquisitionSettings(scatter=float("nan"))


def test_sample_settings_needs_generator():
    with pytest.raises(SynthesisError, match="numpy Generator"):
        sample_settings(None)  # type: ignore[arg-type]


def test_acquire_rejects_non_square_phantom(small_phantom):
    bad = dataclasses.replace(small_phantom, hu=small_phantom.hu[:, :, :32])
    with pytest.raises(SynthesisError, match="square slices"):
        acquire(bad, AcquisitionSettings(), np.random.default_rng(0))


def test_sample_settings_deterministic_and_in_range():
    s = [sample_settings(np.random.default_rng(i)) for i in range(60)]
    assert sample_settings(np.random.default_rng(3)) == s[3]
    assert {x.n_views for x in s} <= set(VIEW_CHOICES)
    assert len({x.n_views for x in s}) >= 4
    assert min(x.dose for x in s) >= 4e3 and max(x.dose for x in s) <= 2e5
    assert any(x.motion_mm > 0 for x in s) and any(x.motion_mm == 0 for x in s)
    assert any(x.swallow_mm > 0 for x in s) and any(x.scatter == 0 for x in s)
    assert set(s[0].to_json()) >= set(SETTING_RANGES)


# --------------------------------------------------------------------------- acquire


@pytest.fixture(scope="module")
def small_phantom():
    return build_phantom(sample_anatomy(np.random.default_rng(2)), slices=SLICES, size=SIZE)


def test_acquire_output_contract(small_phantom):
    s = AcquisitionSettings(n_views=80, dose=2e4, fov_radius_mm=120.0)
    hu, fov, diag = acquire(small_phantom, s, np.random.default_rng(0))
    assert hu.shape == small_phantom.hu.shape and hu.dtype == np.float32
    assert hu.min() >= -1024.0 and hu.max() <= 3071.0
    assert np.all(hu[:, ~fov] == -1000.0)
    c = (np.arange(SIZE) - (SIZE - 1) / 2) * (280.0 / SIZE)
    assert np.array_equal(fov, (c[None] ** 2 + c[:, None] ** 2) <= 120.0**2)
    assert set(diag) == {"scatter_to_primary", "min_counts", "n_motion_views", "n_swallow_views"}
    again, _, _ = acquire(small_phantom, s, np.random.default_rng(0))
    np.testing.assert_array_equal(hu, again)


def test_noise_grows_as_dose_falls(small_phantom):
    soft = (small_phantom.labels == 1) & (np.abs(small_phantom.hu - 50) < 30)
    errs = []
    for dose in (1e5, 1e4, 1e3):
        hu, _, _ = acquire(small_phantom, AcquisitionSettings(dose=dose), np.random.default_rng(0))
        errs.append(float(np.std((hu - small_phantom.hu)[soft])))
    assert errs[0] < errs[1] < errs[2]


def test_scatter_gives_cupping(small_phantom):
    clean, _, _ = acquire(small_phantom, AcquisitionSettings(dose=1e6), np.random.default_rng(0))
    sc, _, diag = acquire(
        small_phantom, AcquisitionSettings(dose=1e6, scatter=0.7), np.random.default_rng(0)
    )
    assert diag["scatter_to_primary"] > 0.15
    soft = (small_phantom.labels == 1) & (np.abs(small_phantom.hu - 50) < 30)
    assert float(np.mean(sc[soft])) < float(np.mean(clean[soft])) - 30.0  # HU drop (cupping)


# --------------------------------------------------------------------------- worse -> lower


GOOD = AcquisitionSettings(n_views=120, dose=3e4, z_blur_mm=0.5)


def _clean_anatomy(seed: int):
    a = sample_anatomy(np.random.default_rng([seed, 99]))
    return dataclasses.replace(a, fillings=(), shoulder_top=0.08)


def _run(seed: int, settings: AcquisitionSettings, anatomy=None):
    a = anatomy if anatomy is not None else _clean_anatomy(seed)
    return simulate_session(seed, 1, slices=SLICES, size=SIZE, anatomy=a, settings=settings)


def _mean_latent_and_rating(sessions, cat):
    lat = np.mean([s.latent[cat] for s in sessions])
    rat = np.mean([np.mean([s.ratings[r][cat] for r in s.ratings]) for s in sessions])
    return lat, rat


@pytest.fixture(scope="module")
def good_sessions():
    return [_run(seed, GOOD) for seed in SEEDS]


WORSE = {
    "dose": (dataclasses.replace(GOOD, dose=1.5e3), None, CATEGORIES),
    "views": (dataclasses.replace(GOOD, n_views=40), None, ("overall",)),
    "scatter": (dataclasses.replace(GOOD, scatter=0.7), None, CATEGORIES),
    "motion": (
        dataclasses.replace(GOOD, motion_mm=5.0, motion_deg=2.0, motion_fraction=0.4),
        None,
        ("overall",),
    ),
    "swallow": (
        dataclasses.replace(GOOD, swallow_mm=10.0, swallow_fraction=0.3),
        None,
        ("larynx",),
    ),
    "shoulders": (
        GOOD,
        lambda a: dataclasses.replace(a, shoulder_top=0.34, shoulder_scale=1.15),
        ("larynx",),
    ),
    "metal": (
        GOOD,
        lambda a: dataclasses.replace(
            a, fillings=tuple(Filling(u, t, 3.0) for u in (False, True) for t in (1, 3, 10, 12))
        ),
        ("mandible",),
    ),
}


@pytest.mark.parametrize("name", list(WORSE))
def test_worse_acquisition_lowers_quality_and_ratings(name, good_sessions):
    settings, modify, affected = WORSE[name]
    worse = []
    for seed in SEEDS:
        a = _clean_anatomy(seed)
        worse.append(_run(seed, settings, modify(a) if modify else a))
    for cat in affected:
        lat_g, rat_g = _mean_latent_and_rating(good_sessions, cat)
        lat_w, rat_w = _mean_latent_and_rating(worse, cat)
        assert lat_w < lat_g - 0.25, f"{name}: latent {cat} {lat_w:.2f} vs good {lat_g:.2f}"
        assert rat_w < rat_g, f"{name}: mean rating {cat} {rat_w:.2f} vs good {rat_g:.2f}"


def test_shoulders_and_metal_are_regional():
    """Shoulders hurt the larynx more than the parotid; metal hurts the mandible more than the larynx."""
    drop_sh = {c: 0.0 for c in CATEGORIES}
    drop_me = {c: 0.0 for c in CATEGORIES}
    for seed in SEEDS:
        a = _clean_anatomy(seed)
        base = _run(seed, GOOD, a)
        sh = _run(seed, GOOD, dataclasses.replace(a, shoulder_top=0.34, shoulder_scale=1.15))
        me = _run(
            seed,
            GOOD,
            dataclasses.replace(a, fillings=(Filling(False, 2, 3.0), Filling(True, 11, 3.0))),
        )
        for c in CATEGORIES:
            drop_sh[c] += base.latent[c] - sh.latent[c]
            drop_me[c] += base.latent[c] - me.latent[c]
    assert drop_sh["larynx"] > drop_sh["parotid"] + 0.5
    assert drop_me["mandible"] > drop_me["larynx"] + 0.5


def test_dose_is_monotonic_on_average():
    means = []
    for dose in (1e5, 1e4, 2e3):
        s = [_run(seed, dataclasses.replace(GOOD, dose=dose)) for seed in SEEDS]
        means.append([np.mean([x.latent[c] for x in s]) for c in CATEGORIES])
    m = np.array(means)
    assert np.all(m[0] > m[1]) and np.all(m[1] > m[2])
