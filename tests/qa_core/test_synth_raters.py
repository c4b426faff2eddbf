"""Tests for qa_core.synth.raters: region measures (known answers), latent quality, raters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from qa_core.categories import CATEGORIES
from qa_core.consensus import weighted_consensus
from qa_core.errors import SynthesisError
from qa_core.synth.phantom import build_phantom, category_regions, sample_anatomy
from qa_core.synth.raters import (
    D_MID,
    REFERENCE_SIGMA_PX,
    consensus_scores,
    latent_quality,
    make_panel,
    measure_quality,
    rate_session,
    reference_image,
)


@pytest.fixture(scope="module")
def scene():
    ph = build_phantom(sample_anatomy(np.random.default_rng(4)), slices=16, size=64)
    ref = reference_image(ph)
    regions = category_regions(ph.labels, ph.spacing)
    return ph, ref, regions


def _measure(recon, scene):
    ph, ref, regions = scene
    return measure_quality(
        recon.astype(np.float32), ref, ph.labels, regions, pixel_mm=ph.spacing[1]
    )


def test_reference_is_blurred_truth(scene):
    ph, ref, _ = scene
    expected = ndimage.gaussian_filter(
        np.clip(ph.hu, -1000, 3071), (0, REFERENCE_SIGMA_PX, REFERENCE_SIGMA_PX), mode="nearest"
    )
    np.testing.assert_allclose(ref, expected, atol=1e-3)
    assert ref.dtype == np.float32


def test_perfect_reconstruction_scores_best(scene):
    _, ref, _ = scene
    m = _measure(ref, scene)
    assert list(m) == list(CATEGORIES)
    for q in m.values():
        assert q.error_hu == pytest.approx(0.0, abs=1e-3)
        assert q.contrast == pytest.approx(1.0, abs=1e-6)
        assert q.sharpness == pytest.approx(1.0, abs=1e-6)
        assert q.latent > 4.9


def test_white_noise_is_measured_as_error_not_contrast_or_sharpness(scene):
    _ph, ref, _regions = scene
    rng = np.random.default_rng(0)
    noisy = ref + rng.normal(0.0, 40.0, ref.shape).astype(np.float32)
    m = _measure(noisy, scene)
    # the window clips the noise on voxels near air and bone, so error <= 40 HU
    for q in m.values():
        assert 0.6 * 40.0 < q.error_hu < 1.02 * 40.0
        assert q.contrast == pytest.approx(1.0, abs=0.1)
        assert q.sharpness == pytest.approx(1.0, abs=0.15)
        assert 25.0 < q.noise_hu < 55.0


def test_blur_lowers_sharpness(scene):
    _, ref, _ = scene
    slight = _measure(ndimage.gaussian_filter(ref, (0, 0.5, 0.5)), scene)
    strong = _measure(ndimage.gaussian_filter(ref, (0, 1.5, 1.5)), scene)
    for cat in CATEGORIES:
        assert strong[cat].sharpness < slight[cat].sharpness < 1.0
        assert strong[cat].sharpness < 0.9


def test_contrast_loss_is_measured(scene):
    _, ref, _ = scene
    flat = (ref - 40.0) * 0.5 + 40.0  # half the contrast around soft tissue
    m = _measure(flat, scene)
    for cat in ("parotid", "submandibular", "larynx", "overall"):
        assert m[cat].contrast == pytest.approx(0.5, abs=0.05)


def test_quality_falls_with_noise(scene):
    _, ref, _ = scene
    rng = np.random.default_rng(1)
    lat = []
    for sigma in (10.0, 40.0, 160.0):
        m = _measure(ref + rng.normal(0, sigma, ref.shape).astype(np.float32), scene)
        lat.append([m[c].latent for c in CATEGORIES])
    lat_arr = np.array(lat)
    assert np.all(lat_arr[0] > lat_arr[1]) and np.all(lat_arr[1] > lat_arr[2])


def test_measure_quality_errors(scene):
    ph, ref, regions = scene
    with pytest.raises(SynthesisError, match="same shape"):
        measure_quality(ref[:-1], ref, ph.labels, regions, pixel_mm=1.0)
    with pytest.raises(SynthesisError, match="no region"):
        measure_quality(
            ref, ref, ph.labels, {k: v for k, v in regions.items() if k != "larynx"}, pixel_mm=1.0
        )
    empty = dict(regions, parotid=np.zeros_like(regions["parotid"]))
    with pytest.raises(SynthesisError, match="parotid"):
        measure_quality(ref, ref, ph.labels, empty, pixel_mm=1.0)
    with pytest.raises(SynthesisError, match="pixel_mm"):
        measure_quality(ref, ref, ph.labels, regions, pixel_mm=0.0)


def test_latent_quality_formula():
    for cat in CATEGORIES:
        # d = C * contrast * sharpness / error; Q(d_mid) = 3 exactly
        from qa_core.synth.raters import TASK_CONTRAST_HU

        err = TASK_CONTRAST_HU[cat] / D_MID[cat]
        d, q = latent_quality(cat, err, 1.0, 1.0)
        assert d == pytest.approx(D_MID[cat])
        assert q == pytest.approx(3.0)
        qs = [latent_quality(cat, e, 1.0, 1.0)[1] for e in (5.0, 30.0, 100.0, 400.0, 2000.0)]
        assert all(a > b for a, b in itertools.pairwise(qs))
        assert min(qs) >= 1.0 and max(qs) <= 5.0
        assert latent_quality(cat, 50.0, 0.5, 1.0)[1] < latent_quality(cat, 50.0, 1.0, 1.0)[1]
        assert latent_quality(cat, 50.0, 1.0, 0.5)[1] < latent_quality(cat, 50.0, 1.0, 1.0)[1]


def test_latent_quality_errors():
    with pytest.raises(SynthesisError, match="unknown category"):
        latent_quality("teeth", 10.0, 1.0, 1.0)
    with pytest.raises(SynthesisError, match="finite"):
        latent_quality("overall", float("nan"), 1.0, 1.0)


def test_panel_deterministic_and_valid():
    p1, p2, p3 = make_panel(3), make_panel(3), make_panel(4)
    assert p1 == p2 and p1 != p3
    assert len(p1) == 4 and [r.name for r in p1] == ["R1", "R2", "R3", "R4"]
    for r in p1:
        assert r.weight > 0 and 0.3 <= r.noise <= 0.6 and len(r.offsets) == len(CATEGORIES)
        assert set(r.to_json()["offsets"]) == set(CATEGORIES)
    assert len(make_panel(0, n_raters=7)) == 7
    with pytest.raises(SynthesisError, match="at least 3"):
        make_panel(0, n_raters=2)


def test_ratings_are_integers_1_to_5_and_track_latent():
    panel = make_panel(0)
    rng = np.random.default_rng(0)
    low, high = [], []
    for _ in range(30):
        for latent, sink in ((1.6, low), (4.4, high)):
            r = rate_session({c: latent for c in CATEGORIES}, panel, rng)
            assert set(r) == {p.name for p in panel}
            for cats in r.values():
                assert set(cats) == set(CATEGORIES)
                assert all(isinstance(v, int) and 1 <= v <= 5 for v in cats.values())
                sink.extend(cats.values())
    assert np.mean(low) < 2.2 and np.mean(high) > 3.8
    # clipping: a latent far outside the scale still gives valid scores
    r = rate_session({c: 9.0 for c in CATEGORIES}, panel, rng)
    assert all(v == 5 for cats in r.values() for v in cats.values())


def test_rate_session_errors():
    with pytest.raises(SynthesisError, match="lacks categories"):
        rate_session({"parotid": 3.0}, make_panel(0), np.random.default_rng(0))


def test_consensus_is_weighted_mean():
    panel = make_panel(1)
    ratings = rate_session({c: 3.0 for c in CATEGORIES}, panel, np.random.default_rng(2))
    weights = {r.name: r.weight for r in panel}
    cons = consensus_scores(ratings, weights)
    for c in CATEGORIES:
        expected = sum(weights[n] * ratings[n][c] for n in weights) / sum(weights.values())
        assert cons[c] == pytest.approx(expected)
        assert cons[c] == pytest.approx(
            weighted_consensus([ratings[n][c] for n in weights], [weights[n] for n in weights])
        )
    with pytest.raises(SynthesisError, match="differ"):
        consensus_scores(ratings, {"R1": 1.0})
