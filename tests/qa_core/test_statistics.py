"""Tests of qa_core.statistics against hand-computed values, scipy references and the study."""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import FrozenInstanceError, replace
from typing import Any

import numpy as np
import pytest
from scipy import stats

import qa_core
from qa_core.errors import StatisticsError
from qa_core.statistics import (
    STUDY_REFERENCE,
    CategoryAnalysis,
    CohortRow,
    _bca_from_distribution,
    ae_tracking_verdict,
    analyze_category,
    analyze_table,
    benjamini_hochberg,
    holm,
    loo_spearman,
    partial_spearman,
    spearman_bootstrap_ci,
    spearman_p_from_rho,
    spearman_permutation_test,
)

# A permutation of 1..15 whose Spearman ρ against 1..15 is exactly 0.25:
# Σd² = 420, ρ = 1 - 6·420 / (15·224) = 0.25 (found by search, checked below).
STUDY_Y15 = [10, 4, 3, 15, 1, 12, 5, 2, 9, 11, 14, 6, 7, 8, 13]


def _cohort(seed: int, n: int = 16, noise: float = 0.3) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.uniform(1, 5, n)
    consensus = np.clip(np.round(q + rng.normal(0, 0.4, (3, n))), 1, 5).mean(axis=0)
    predicted = q + rng.normal(0, 0.4, n)
    ae = np.exp(0.5 * q + rng.normal(0, noise, n)) * 100
    return [f"S{i:02d}" for i in range(n)], ae, consensus, predicted


# ------------------------------------------------------------------ the study's protocol


def test_study_n15_rho_025_gives_p_037() -> None:
    x = np.arange(1, 16)
    res = stats.spearmanr(x, STUDY_Y15)
    assert res.statistic == pytest.approx(0.25, abs=1e-12)
    # The study's larynx figure: ρ = 0.25, p = 0.37 with scipy's default p on n = 15.
    assert res.pvalue == pytest.approx(0.3688, abs=1e-4)
    assert round(spearman_p_from_rho(0.25, 15), 2) == 0.37
    assert spearman_p_from_rho(0.25, 15) == pytest.approx(res.pvalue, rel=1e-12)


def test_loo_of_study_like_16_volumes_reproduces_protocol() -> None:
    # Add a 16th volume; every LOO subset is a scipy spearmanr on 15 volumes.
    x = np.arange(1, 17, dtype=float)
    y = np.array([*STUDY_Y15, 16], dtype=float)
    r = loo_spearman(x, y)
    assert r.loo_rho[15] == pytest.approx(0.25, abs=1e-12)
    assert r.loo_p[15] == pytest.approx(0.3688, abs=1e-4)
    for i in range(16):
        keep = np.arange(16) != i
        ref = stats.spearmanr(x[keep], y[keep])
        assert r.loo_rho[i] == pytest.approx(ref.statistic, abs=1e-14)
        assert r.loo_p[i] == pytest.approx(ref.pvalue, rel=1e-12)
    assert r.loo_median_rho == pytest.approx(float(np.median(r.loo_rho)))
    assert r.loo_median_p == pytest.approx(float(np.median(r.loo_p)))
    full = stats.spearmanr(x, y)
    assert (r.rho, r.p) == pytest.approx((full.statistic, full.pvalue))
    np.testing.assert_allclose(r.influence, r.rho - r.loo_rho)
    assert not r.loo_rho.flags.writeable


def test_loo_hand_computed_small() -> None:
    r = loo_spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    # Full: d = (1,1,1,1,0) -> Σd² = 4 -> ρ = 1 - 24/120 = 0.8.
    assert r.rho == pytest.approx(0.8)
    # Without volume 0: x ranks 1..4, y (1,4,3,5) ranks (1,3,2,4): Σd² = 2 -> ρ = 1 - 12/60 = 0.8.
    assert r.loo_rho[0] == pytest.approx(0.8)
    # Without volume 4: x 1..4, y (2,1,4,3): Σd² = 4 -> ρ = 1 - 24/60 = 0.6.
    assert r.loo_rho[4] == pytest.approx(0.6)
    assert r.influence[4] == pytest.approx(0.2)


def test_study_reference_is_consistent_with_scipy_p_at_n15() -> None:
    assert list(STUDY_REFERENCE) == list(qa_core.CATEGORIES)
    for fig in STUDY_REFERENCE.values():
        p = spearman_p_from_rho(fig.rho, fig.n_subset)
        if fig.p_is_upper_bound:
            assert p <= fig.p, fig
            assert fig.p_text == "≤ 0.01"
        else:
            assert round(p, 2) == fig.p
    assert STUDY_REFERENCE["larynx"].rho == 0.25 and not STUDY_REFERENCE["larynx"].significant
    assert STUDY_REFERENCE["submandibular"].rho == 0.89
    with pytest.raises(TypeError):
        STUDY_REFERENCE["parotid"] = STUDY_REFERENCE["larynx"]  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        STUDY_REFERENCE["parotid"].rho = 0.0  # type: ignore[misc]


def test_lazy_export_from_package() -> None:
    assert qa_core.loo_spearman is loo_spearman


def test_loo_constant_input_is_nan_with_flag_not_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = loo_spearman([1.0, 2.0, 3.0, 4.0, 5.0], [3.0] * 5, x_name="AE", y_name="consensus")
    assert r.constant_input
    assert math.isnan(r.rho) and math.isnan(r.p) and math.isnan(r.loo_median_rho)
    assert r.n_undefined_subsets == 5
    assert any("consensus constant" in w for w in r.warnings)


def test_loo_subset_becoming_constant_is_left_out_of_median() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [1.0, 1.0, 1.0, 1.0, 2.0]
    r = loo_spearman(x, y)
    assert not r.constant_input
    assert r.n_undefined_subsets == 1 and math.isnan(r.loo_rho[4])
    assert r.loo_median_rho == pytest.approx(float(np.median(r.loo_rho[:4])))
    assert "positions [4]" in r.warnings[0]


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1, 2, 3], [1, 2, 3], "at least 4"),
        ([1, 2, 3, 4], [1, 2, 3], "consensus has 3"),
        ([1, np.nan, 3, 4], [1, 2, 3, 4], r"AE contains NaN at positions \[1\]"),
        ([1, 2, 3, 4], [1, 2, np.nan, np.nan], r"consensus contains NaN at positions \[2, 3\]"),
        ([1, 2, np.inf, 4], [1, 2, 3, 4], "infinite"),
        ([[1, 2], [3, 4]], [1, 2, 3, 4], "1-D"),
        (["a", "b", "c", "d"], [1, 2, 3, 4], "numeric"),
    ],
)
def test_loo_errors(x: object, y: object, match: str) -> None:
    with pytest.raises(StatisticsError, match=match):
        loo_spearman(x, y, x_name="AE", y_name="consensus")  # type: ignore[arg-type]


def test_spearman_p_from_rho_errors_and_edges() -> None:
    assert spearman_p_from_rho(1.0, 10) == 0.0
    assert spearman_p_from_rho(0.0, 10) == pytest.approx(1.0)
    for bad in (1.5, math.nan):
        with pytest.raises(StatisticsError, match="rho"):
            spearman_p_from_rho(bad, 10)
    with pytest.raises(StatisticsError, match="n must"):
        spearman_p_from_rho(0.5, 2)


# ------------------------------------------------------------------ permutation p


def _brute_force_p(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    obs = np.corrcoef(rx, ry)[0, 1]
    perms = np.array(list(itertools.permutations(rx)))
    null = np.array([np.corrcoef(p, ry)[0, 1] for p in perms])
    eps = 1e-12
    greater = np.mean(null >= obs - eps)
    less = np.mean(null <= obs + eps)
    return float(min(1.0, 2 * min(greater, less)))


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]),
        # Ties, as in weighted consensus: the exact null of the tied data, not the t approximation.
        ([3.1, 0.5, 2.2, 4.0, 1.7, 2.9], [3.0, 1.0, 3.0, 4.5, 1.0, 3.0]),
    ],
)
def test_permutation_exact_matches_brute_force(x: list[float], y: list[float]) -> None:
    r = spearman_permutation_test(x, y, n_resamples=999)
    assert r.exact  # 6! = 720 <= 999
    assert r.p == pytest.approx(_brute_force_p(np.array(x), np.array(y)), abs=1e-12)
    assert r.rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert r.min_attainable_p == pytest.approx(2 / 720)


def test_permutation_monte_carlo_close_to_exact_and_seeded() -> None:
    x = np.array([0.3, 1.2, 0.8, 2.5, 1.9, 2.2, 3.1, 0.1])
    y = np.array([1, 2, 2, 4, 3, 3, 5, 2], dtype=float)
    exact = spearman_permutation_test(x, y, n_resamples=40320)
    assert exact.exact
    a = spearman_permutation_test(x, y, n_resamples=4999, seed=7)
    b = spearman_permutation_test(x, y, n_resamples=4999, seed=7)
    assert not a.exact and a.p == b.p
    assert a.p == pytest.approx(exact.p, abs=0.015)
    assert a.p >= 1 / 5000


def test_permutation_constant_and_errors() -> None:
    r = spearman_permutation_test([1, 2, 3, 4], [2, 2, 2, 2], n_resamples=99)
    assert math.isnan(r.p) and r.warnings
    with pytest.raises(StatisticsError, match="n_resamples"):
        spearman_permutation_test([1, 2, 3, 4], [1, 2, 4, 3], n_resamples=0)
    with pytest.raises(StatisticsError, match="seed"):
        spearman_permutation_test([1, 2, 3, 4], [1, 2, 4, 3], seed=-1)
    with pytest.raises(StatisticsError, match="alternative"):
        spearman_permutation_test([1, 2, 3, 4], [1, 2, 4, 3], alternative="bigger")  # type: ignore[arg-type]
    with pytest.raises(StatisticsError, match="NaN"):
        spearman_permutation_test([1, 2, 3, np.nan], [1, 2, 4, 3])


# ------------------------------------------------------------------ bootstrap CI


def test_bootstrap_matches_scipy_reference_statistic() -> None:
    _, ae, consensus, _ = _cohort(3, n=12)
    ours = spearman_bootstrap_ci(ae, consensus, n_resamples=999, seed=11)
    ref = stats.bootstrap(
        (ae, consensus),
        lambda a, b: stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=999,
        method="BCa",
        rng=np.random.default_rng(11),
    )
    assert ours.method == "BCa" and ours.n_degenerate == 0
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.low < stats.spearmanr(ae, consensus).statistic < ours.high


def test_bca_formula_matches_scipy_on_its_distribution() -> None:
    _, ae, consensus, _ = _cohort(5, n=10)
    res = stats.bootstrap(
        (ae, consensus), lambda a, b: stats.spearmanr(a, b).statistic, paired=True,
        vectorized=False, n_resamples=499, method="BCa", rng=np.random.default_rng(2),
    )
    jack = np.array([stats.spearmanr(np.delete(ae, i), np.delete(consensus, i)).statistic for i in range(10)])
    theta = stats.spearmanr(ae, consensus).statistic
    low, high, _ = _bca_from_distribution(theta, res.bootstrap_distribution, jack, 0.95)
    assert (low, high) == pytest.approx((res.confidence_interval.low, res.confidence_interval.high), abs=1e-12)


def test_bootstrap_degenerate_resamples_are_counted_and_excluded() -> None:
    # 12 of 16 consensus values tie: ~ (12/16)^16 ≈ 1% of resamples have constant consensus.
    rng = np.random.default_rng(0)
    ae = rng.uniform(1, 10, 16)
    consensus = np.array([3.0] * 12 + [4.0, 4.5, 5.0, 2.0])
    r = spearman_bootstrap_ci(ae, consensus, n_resamples=1999, seed=1)
    assert r.n_degenerate > 0
    assert r.method == "BCa (non-degenerate resamples)"
    assert math.isfinite(r.low) and math.isfinite(r.high) and r.low <= r.high
    assert "left out" in r.warnings[0]


def test_bootstrap_perfectly_monotone_collapses_to_point() -> None:
    x = np.arange(1.0, 9.0)
    r = spearman_bootstrap_ci(x, x**2, n_resamples=499, seed=0)
    assert (r.low, r.high) == (1.0, 1.0)
    assert r.method == "degenerate" and any("collapses" in w for w in r.warnings)


def test_bootstrap_errors() -> None:
    with pytest.raises(StatisticsError, match="confidence_level"):
        spearman_bootstrap_ci([1, 2, 3, 4], [1, 3, 2, 4], confidence_level=1.5)
    with pytest.raises(StatisticsError, match="n_resamples"):
        spearman_bootstrap_ci([1, 2, 3, 4], [1, 3, 2, 4], n_resamples=-5)
    with pytest.raises(StatisticsError, match="at least 4"):
        spearman_bootstrap_ci([1, 2, 3], [1, 3, 2])
    r = spearman_bootstrap_ci([1, 2, 3, 4], [1, 1, 1, 1], n_resamples=99)
    assert math.isnan(r.low) and r.method == "degenerate"


# ------------------------------------------------------------------ multiplicity


def test_holm_known_values() -> None:
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm")
    np.testing.assert_allclose(holm([0.01, 0.02, 0.03, 0.04, 0.05]), [0.05, 0.08, 0.09, 0.09, 0.09])
    # Unsorted input; by hand: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.04·1, 0.06) = 0.06.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    out = holm([0.01, np.nan, 0.04])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])


def test_bh_known_values() -> None:
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "BH") is 0.05 everywhere.
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.02, 0.03, 0.04, 0.05]), [0.05] * 5)
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03, 0.005]), [0.02, 0.04, 0.04, 0.02])
    out = benjamini_hochberg([np.nan, 0.02])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.02)


@pytest.mark.parametrize("fn", [holm, benjamini_hochberg])
@pytest.mark.parametrize(("bad", "match"), [([], "empty"), ([0.1, 1.2], r"\[0, 1\]"), ([[0.1]], "1-D"), (["x"], "numeric")])
def test_multiplicity_errors(fn: object, bad: object, match: str) -> None:
    with pytest.raises(StatisticsError, match=match):
        fn(bad)  # type: ignore[operator]


# ------------------------------------------------------------------ partial Spearman


def test_partial_matches_closed_form_on_ranks() -> None:
    _, ae, consensus, predicted = _cohort(8)
    r = partial_spearman(ae, consensus, predicted)
    rxy = stats.spearmanr(ae, consensus).statistic
    rxz = stats.spearmanr(ae, predicted).statistic
    ryz = stats.spearmanr(consensus, predicted).statistic
    closed = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert r.rho == pytest.approx(closed, abs=1e-12)
    t = closed * math.sqrt(13 / (1 - closed**2))
    assert r.p == pytest.approx(2 * stats.t.sf(abs(t), 13), rel=1e-10)
    assert r.df == 13 and r.rho_xz == pytest.approx(rxz)


def test_partial_hand_example() -> None:
    # Ranks: x = (1,2,3,4,5), y = (2,1,4,3,5), z = (1,2,3,4,5) = x: x is explained by z -> undefined.
    r = partial_spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [10, 20, 30, 40, 50], x_name="AE", z_name="predicted")
    assert math.isnan(r.rho) and math.isnan(r.p)
    assert "AE is constant or a perfect monotone function of predicted" in r.warnings[0]
    # z constant: nothing partialled out, partial ρ = ρ(x, y) = 0.8.
    r2 = partial_spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [7, 7, 7, 7, 7])
    assert r2.rho == pytest.approx(0.8) and "constant" in r2.warnings[0]


def test_partial_errors() -> None:
    with pytest.raises(StatisticsError, match="has 3 values"):
        partial_spearman([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3], z_name="predicted")
    with pytest.raises(StatisticsError, match="predicted contains NaN"):
        partial_spearman([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, np.nan, 3], z_name="predicted")


# ------------------------------------------------------------------ one category, a table


def test_analyze_category_fields_and_verdict_tracks() -> None:
    sessions, ae, consensus, _ = _cohort(1, noise=0.1)
    a = analyze_category("parotid", sessions, ae, consensus, n_resamples=499, seed=0)
    loo = loo_spearman(ae, consensus)
    assert a.n == 16 and a.rho == pytest.approx(loo.rho) and a.loo_median_p == pytest.approx(loo.loo_median_p)
    assert a.partial_rho is None and a.rho_ae_pred is None and a.ae_beyond_prediction is None
    assert a.ci_low < a.rho < a.ci_high
    assert a.p_holm == a.perm_p and a.family_size == 1
    assert a.verdict_code == "tracks" and a.ae_tracks_consensus
    assert a.verdict.startswith("parotid: AE tracks consensus")
    assert ae_tracking_verdict(a) == a.verdict
    assert a.study is STUDY_REFERENCE["parotid"]
    d = a.to_dict()
    assert set(d["influence"]) == set(sessions)
    assert d["partial_rho"] is None


def test_analyze_category_is_seed_reproducible() -> None:
    sessions, ae, consensus, predicted = _cohort(2)
    a = analyze_category("larynx", sessions, ae, consensus, predicted, n_resamples=199, seed=4)
    b = analyze_category("larynx", sessions, ae, consensus, predicted, n_resamples=199, seed=4)
    c = analyze_category("larynx", sessions, ae, consensus, predicted, n_resamples=199, seed=5)
    assert a == b
    assert (a.perm_p, a.ci_low) != (c.perm_p, c.ci_low)


def test_verdicts_for_each_reason() -> None:
    sessions, ae, consensus, _ = _cohort(1, noise=0.1)
    neg = analyze_category("mandible", sessions, ae, 6 - consensus, n_resamples=199)
    assert neg.verdict_code == "not_positive" and not neg.ae_tracks_consensus
    few = analyze_category("larynx", sessions[:4], ae[:4], consensus[:4], n_resamples=199)
    assert few.verdict_code == "too_few_volumes" and "n=4" in few.verdict
    const = analyze_category("larynx", sessions, ae, np.full(16, 3.0), n_resamples=199)
    assert const.verdict_code == "undefined" and math.isnan(const.rho)
    # Consensus equals the prediction: AE cannot add anything beyond it.
    via = analyze_category("overall", sessions, ae, consensus, consensus, n_resamples=199)
    assert via.verdict_code == "tracks_via_prediction" and via.ae_tracks_consensus
    assert via.ae_beyond_prediction is False and "restates the predicted score" in via.verdict
    base = analyze_category("parotid", sessions, ae, consensus, n_resamples=199)
    ns = replace(base, perm_p=0.2, p_holm=0.4)
    assert ae_tracking_verdict(ns).startswith("parotid: AE is not shown to track consensus")
    assert "not significant" in ae_tracking_verdict(ns)
    spans = replace(base, p_holm=0.01, ci_low=-0.1)
    assert "does not exclude 0" in ae_tracking_verdict(spans)


def test_ae_tracking_verdict_error() -> None:
    with pytest.raises(StatisticsError, match="CategoryAnalysis"):
        ae_tracking_verdict({"rho": 0.5})  # type: ignore[arg-type]


def test_analyze_category_errors() -> None:
    s, ae, c, _ = _cohort(0, n=6)
    with pytest.raises(StatisticsError, match="AE must be >= 0"):
        analyze_category("larynx", s, -ae, c)
    with pytest.raises(StatisticsError, match=r"consensus must lie in \[1, 5\]"):
        analyze_category("larynx", s, ae, c + 5)
    with pytest.raises(StatisticsError, match="5 sessions for 6"):
        analyze_category("larynx", s[:5], ae, c)
    with pytest.raises(StatisticsError, match="alpha"):
        analyze_category("larynx", s, ae, c, alpha=2.0)
    with pytest.raises(StatisticsError, match="seed"):
        analyze_category("larynx", s, ae, c, seed=-3)


def _rows(seed: int = 0) -> list[CohortRow]:
    rows = []
    for k, cat in enumerate(qa_core.CATEGORIES):
        s, ae, c, p = _cohort(seed + k)
        rows += [CohortRow(s[i], cat, float(ae[i]), float(c[i]), float(p[i])) for i in range(16)]
    return rows


def test_analyze_table_multiplicity_across_categories() -> None:
    res = analyze_table(_rows(), n_resamples=299, seed=2)
    assert res.categories == qa_core.CATEGORIES
    perm = [r.perm_p for r in res.results]
    np.testing.assert_allclose([r.p_holm for r in res.results], holm(perm))
    np.testing.assert_allclose([r.p_bh for r in res.results], benjamini_hochberg(perm))
    part = [r.partial_p for r in res.results]
    np.testing.assert_allclose([r.partial_p_holm for r in res.results], holm(part))  # type: ignore[arg-type]
    assert all(r.family_size == 5 for r in res.results)
    # Seeds are per category: a category analysed alone gives the same permutation p.
    alone = analyze_table([r for r in _rows() if r.category == "larynx"], n_resamples=299, seed=2)
    assert alone["larynx"].perm_p == res["larynx"].perm_p
    d = res.to_dict()
    assert set(d) == {*qa_core.CATEGORIES, "provenance"}
    assert d["provenance"]["seed"] == 2 and d["provenance"]["n_resamples"] == 299
    assert len(d["provenance"]["input_sha256"]) == 64
    with pytest.raises(KeyError, match="no analysis"):
        res["nose"]


def test_analyze_table_accepts_mappings_and_names_bad_rows() -> None:
    good = [dict(session=r.session, category=r.category, ae=r.ae, consensus=r.consensus) for r in _rows()[:16]]
    assert isinstance(analyze_table(good, n_resamples=99)["parotid"], CategoryAnalysis)
    bad_cat = [*good, {"session": "X", "category": "nose", "ae": 1, "consensus": 3, "origin": "t.csv line 18"}]
    with pytest.raises(StatisticsError, match=r"t\.csv line 18: unknown category 'nose'"):
        analyze_table(bad_cat, n_resamples=99)
    dup = [*good, dict(good[0])]
    with pytest.raises(StatisticsError, match=r"row 17: session 'S00' appears twice.*also row 1"):
        analyze_table(dup, n_resamples=99)
    partial = [dict(g, predicted=3.0) if i else g for i, g in enumerate(good)]
    with pytest.raises(StatisticsError, match="'predicted' is given for some rows"):
        analyze_table(partial, n_resamples=99)
    with pytest.raises(StatisticsError, match="no rows"):
        analyze_table([], n_resamples=99)
    with pytest.raises(StatisticsError, match="row 2, column 'ae': expected a number"):
        analyze_table([good[0], dict(good[1], ae="lots")], n_resamples=99)
    with pytest.raises(StatisticsError, match="column 'consensus': value nan is not finite"):
        analyze_table([dict(good[0], consensus=float("nan"))], n_resamples=99)
    with pytest.raises(StatisticsError, match=r"category 'parotid'.*at least 4"):
        analyze_table(good[:3], n_resamples=99)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (["S9", "parotid", 1.0, 2.0], r"^row 17: expected a CohortRow or a mapping; got list$"),
        ("S9,parotid,1,2", r"^row 17: expected a CohortRow or a mapping; got str$"),
        (None, r"^row 17: expected a CohortRow or a mapping; got NoneType$"),
        ({"session": "S9", "ae": 1.0}, r"^row 17: missing field\(s\) \['category', 'consensus'\]"),
        ({"session": "S9", "category": "parotid", "ae": None, "consensus": 2.0},
         r"^row 17: 'ae' and 'consensus' must have values$"),
        ({"session": None, "category": "parotid", "ae": 1.0, "consensus": 2.0},
         r"^row 17: empty session identifier$"),
        ({"session": "  ", "category": "parotid", "ae": 1.0, "consensus": 2.0, "origin": "r.csv line 9"},
         r"^r\.csv line 9: empty session identifier$"),
        ({"session": "S9", "category": None, "ae": 1.0, "consensus": 2.0}, r"unknown category 'None'"),
        ({"session": "S9", "category": "Parotid", "ae": 1.0, "consensus": 2.0},
         r"unknown category 'Parotid'; expected one of parotid, "),
        ({"session": "S9", "category": "parotid", "ae": True, "consensus": 2.0},
         r"^row 17, column 'ae': expected a number, got True$"),
        ({"session": "S9", "category": "parotid", "ae": [1.0], "consensus": 2.0},
         r"^row 17, column 'ae': expected a number, got \[1\.0\]$"),
        ({"session": "S9", "category": "parotid", "ae": "", "consensus": 2.0},
         r"^row 17, column 'ae': expected a number, got ''$"),
        ({"session": "S9", "category": "parotid", "ae": "1e400", "consensus": 2.0},
         r"^row 17, column 'ae': value inf is not finite$"),
        ({"session": "S9", "category": "parotid", "ae": 1.0, "consensus": 2.0, "predicted": "x"},
         r"^row 17, column 'predicted': expected a number, got 'x'$"),
        ({"session": "S9", "category": "parotid", "ae": 1.0, "consensus": 9.0},
         r"consensus must lie in \[1, 5\].*\['S9'\]"),
    ],
)
def test_analyze_table_refuses_malformed_rows(row: Any, match: str) -> None:
    """A malformed row fails the whole analysis with one line naming the row and the fix."""
    good = [dict(session=r.session, category=r.category, ae=r.ae, consensus=r.consensus)
            for r in _rows()[:16]]  # fmt: skip
    with pytest.raises(StatisticsError, match=match) as info:
        analyze_table([*good, row], n_resamples=99)
    assert len(str(info.value).splitlines()) == 1
    assert analyze_table(good, n_resamples=99)["parotid"].n == 16  # the good rows alone analyse


def test_analyze_table_skip_small() -> None:
    rows = [r for r in _rows() if r.category != "larynx"] + [r for r in _rows() if r.category == "larynx"][:3]
    res = analyze_table(rows, n_resamples=99, skip_small=True)
    assert "larynx" not in res.categories and res.skipped == (("larynx", "3 volume(s); at least 4 are needed"),)
    assert all(r.family_size == 4 for r in res.results)
    assert res.to_dict()["skipped"] == {"larynx": "3 volume(s); at least 4 are needed"}
    with pytest.raises(StatisticsError, match="no category has enough volumes"):
        analyze_table(rows[-3:], n_resamples=99, skip_small=True)


def test_default_resamples_run_in_seconds() -> None:
    rows = _rows(10)
    t0 = time.perf_counter()
    res = analyze_table(rows)  # 9,999 permutations and 9,999 bootstrap resamples, 5 × 16
    elapsed = time.perf_counter() - t0
    assert res.results[0].n_resamples == 9999
    assert elapsed < 15.0, f"analysis took {elapsed:.1f} s"


def test_permutation_p_is_valid_with_heavy_ties() -> None:
    # Under independence, P(p <= 0.05) must not exceed 0.05 (up to Monte Carlo error), even with
    # consensus taking only three values; scipy's t-based p is not guaranteed to.
    rng = np.random.default_rng(123)
    ps = []
    for _ in range(200):
        ae = rng.lognormal(size=10)
        consensus = rng.choice([2.0, 3.0, 3.0, 3.0, 4.0], size=10)
        if np.all(consensus == consensus[0]):
            continue
        ps.append(spearman_permutation_test(ae, consensus, n_resamples=199, seed=rng).p)
    rate = float(np.mean(np.array(ps) <= 0.05))
    assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / len(ps)), rate


def test_known_truth_verdicts() -> None:
    rng = np.random.default_rng(2024)
    rows = []
    for cat in qa_core.CATEGORIES:
        q = rng.uniform(1, 5, 16)
        consensus = np.clip(np.round(q + rng.normal(0, 0.4, (3, 16))), 1, 5).mean(axis=0)
        # Larynx AE carries no information about quality; the others rise with it.
        ae = rng.lognormal(5, 0.5, 16) if cat == "larynx" else np.exp(0.6 * q + rng.normal(0, 0.25, 16)) * 50
        rows += [CohortRow(f"S{i}", cat, float(ae[i]), float(consensus[i])) for i in range(16)]
    res = analyze_table(rows, n_resamples=999, seed=0)
    for r in res.results:
        if r.category == "larynx":
            assert not r.ae_tracks_consensus and r.verdict_code in {"not_significant", "not_positive", "ci_spans_zero"}
        else:
            assert r.ae_tracks_consensus and r.verdict_code == "tracks", r.verdict
