"""Tests for qa_core.synth.phantom: anatomy, labels, HU, sampling, category regions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qa_core.categories import CATEGORIES
from qa_core.errors import SynthesisError
from qa_core.synth.phantom import (
    CATEGORY_LABELS,
    GRID_MM,
    LABELS,
    METAL_HU,
    Filling,
    build_phantom,
    category_regions,
    sample_anatomy,
    upsample_linear,
)


@pytest.fixture(scope="module")
def anatomy():
    a = sample_anatomy(np.random.default_rng(12))
    return dataclasses.replace(
        a,
        fillings=(
            Filling(upper=False, tooth=2, radius_mm=3.0),
            Filling(upper=True, tooth=11, radius_mm=3.0),
        ),
        shoulder_top=0.25,
    )


@pytest.fixture(scope="module")
def phantom(anatomy):
    return build_phantom(anatomy, slices=32, size=128)


def test_every_label_present(phantom):
    present = set(np.unique(phantom.labels).tolist())
    assert present == set(LABELS.values())


def test_geometry_and_dtypes(phantom, anatomy):
    assert phantom.hu.shape == (32, 128, 128)
    assert phantom.hu.dtype == np.float32
    assert phantom.labels.dtype == np.uint8
    assert phantom.spacing == pytest.approx((anatomy.length_mm / 32, GRID_MM / 128, GRID_MM / 128))
    assert np.allclose(phantom.zeta, (np.arange(32) + 0.5) / 32)


def test_hu_plausible_per_tissue(phantom, anatomy):
    hu, lab = phantom.hu, phantom.labels

    def median(name: str) -> float:
        return float(np.median(hu[lab == LABELS[name]]))

    assert median("background") == -1000.0
    assert median("airway") == -1000.0
    assert median("fat") == pytest.approx(anatomy.fat_hu, abs=25)
    assert median("soft_tissue") == pytest.approx(anatomy.muscle_hu, abs=20)
    assert median("parotid_left") == pytest.approx(anatomy.parotid_hu, abs=20)
    assert median("submandibular_right") == pytest.approx(anatomy.submandibular_hu, abs=20)
    assert 150 <= median("laryngeal_cartilage") <= 600
    assert median("teeth") == 2200.0
    assert np.all(hu[lab == LABELS["metal"]] == METAL_HU)
    assert median("mandible") > 300
    # mandible has a dense cortex and a softer marrow
    mand = hu[lab == LABELS["mandible"]]
    assert mand.max() == pytest.approx(anatomy.cortical_hu) and mand.min() == pytest.approx(350.0)


def test_shoulders_only_in_lowest_slices(phantom, anatomy):
    has_shoulder = (phantom.labels == LABELS["shoulder"]).any(axis=(1, 2))
    assert has_shoulder[0]
    assert not has_shoulder[phantom.zeta > anatomy.shoulder_top].any()


def test_orientation_conventions(phantom):
    """Patient right on image left (low column), anterior at the top (low row)."""
    lab = phantom.labels
    _, _, col_r = np.nonzero(lab == LABELS["parotid_right"])
    _, _, col_l = np.nonzero(lab == LABELS["parotid_left"])
    assert col_r.mean() < col_l.mean()
    _, row_mand, _ = np.nonzero(lab == LABELS["mandible"])
    _, row_canal, _ = np.nonzero(lab == LABELS["spinal_canal"])
    assert row_mand.mean() < row_canal.mean()


def test_structures_ordered_inferior_to_superior(phantom):
    def zmean(name: str) -> float:
        return float(np.nonzero(phantom.labels == LABELS[name])[0].mean())

    assert (
        zmean("thyroid")
        < zmean("larynx")
        < zmean("submandibular_left")
        < zmean("mandible")
        < zmean("parotid_left")
    )


def test_slice_count_only_changes_sampling(anatomy):
    """Slice k of a 16-slice phantom is slice 3k+1 of a 48-slice one (same zeta)."""
    p16 = build_phantom(anatomy, slices=16, size=64)
    p48 = build_phantom(anatomy, slices=48, size=64)
    np.testing.assert_array_equal(p16.labels, p48.labels[1::3])
    np.testing.assert_allclose(p16.hu, p48.hu[1::3], atol=1e-3)


def test_sample_anatomy_deterministic_and_varied():
    a1 = sample_anatomy(np.random.default_rng(5))
    a2 = sample_anatomy(np.random.default_rng(5))
    a3 = sample_anatomy(np.random.default_rng(6))
    assert a1 == a2
    assert a1 != a3
    many = [sample_anatomy(np.random.default_rng(s)) for s in range(40)]
    assert len({round(a.shoulder_top, 6) for a in many}) == 40
    assert any(a.fillings for a in many) and any(not a.fillings for a in many)
    assert a1.to_json()["fillings"] == [dataclasses.asdict(f) for f in a1.fillings]


def test_patients_differ_in_size_and_position():
    rng = np.random.default_rng(0)
    centroids, areas = [], []
    for _ in range(4):
        ph = build_phantom(sample_anatomy(rng), slices=8, size=64)
        body = ph.labels[4] > 0
        rows, cols = np.nonzero(body)
        centroids.append((rows.mean(), cols.mean()))
        areas.append(body.sum())
    assert np.ptp(areas) > 0.03 * np.mean(areas)
    assert np.ptp(np.array(centroids), axis=0).max() > 0.5


def test_sample_anatomy_needs_generator():
    with pytest.raises(SynthesisError, match="numpy Generator"):
        sample_anatomy(3)  # type: ignore[arg-type]


def test_upsample_linear_known_answer_and_errors():
    a = np.array([[0.0, 10.0]], dtype=np.float32)
    np.testing.assert_allclose(upsample_linear(a, 4, axis=1), [[0.0, 2.5, 7.5, 10.0]])
    with pytest.raises(SynthesisError, match=">= 2 input samples"):
        upsample_linear(np.zeros((3, 1), np.float32), 4, axis=1)


def test_build_phantom_rejects_bad_sampling(anatomy):
    with pytest.raises(SynthesisError, match="slices >= 1"):
        build_phantom(anatomy, slices=0, size=64)
    with pytest.raises(SynthesisError, match="size >= 16"):
        build_phantom(anatomy, slices=8, size=8)


def test_category_regions_cover_organ_plus_margin(phantom):
    regions = category_regions(phantom.labels, phantom.spacing, margin_mm=10.0)
    assert list(regions) == list(CATEGORIES)
    body = phantom.labels > 0
    for cat, region in regions.items():
        assert region.shape == phantom.labels.shape and region.dtype == bool
        assert not (region & ~body).any()
        organ = np.isin(phantom.labels, CATEGORY_LABELS[cat])
        assert (organ & body <= region).all()
        if cat != "overall":
            assert region.sum() > 1.5 * organ.sum()  # surroundings included
    assert regions["overall"].sum() == body.sum()
    # a larger margin gives a larger region, zero margin gives the organ itself
    wide = category_regions(phantom.labels, phantom.spacing, margin_mm=20.0)
    assert wide["larynx"].sum() > regions["larynx"].sum()
    tight = category_regions(phantom.labels, phantom.spacing, margin_mm=0.0)
    np.testing.assert_array_equal(
        tight["larynx"], np.isin(phantom.labels, CATEGORY_LABELS["larynx"])
    )


def test_category_regions_errors(phantom):
    with pytest.raises(SynthesisError, match="3-D"):
        category_regions(phantom.labels[0], phantom.spacing)
    with pytest.raises(SynthesisError, match="spacing"):
        category_regions(phantom.labels, (0.0, 1.0, 1.0))
    with pytest.raises(SynthesisError, match="margin_mm"):
        category_regions(phantom.labels, phantom.spacing, margin_mm=-1.0)


def test_absent_organ_gives_empty_region(phantom):
    top = phantom.labels[-2:]
    regions = category_regions(top, phantom.spacing)
    assert not regions["larynx"].any()
