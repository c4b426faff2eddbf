"""Tests of qa_core.outliers: isotonic trend, robust z (MAD = 0 guarded), flags with reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qa_core.errors import StatisticsError
from qa_core.outliers import (
    ALERT_ALPHA,
    MEANAD_TO_SIGMA,
    attribution_residual_z,
    deleted_residuals,
    detect_outliers,
    isotonic_fit,
    isotonic_predict,
    robust_z,
    session_alerts,
)


def test_isotonic_fit_known_values() -> None:
    assert isotonic_fit([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0]).tolist() == [1.0, 2.5, 2.5, 4.0]
    # Unsorted input keeps input order.
    assert isotonic_fit([4, 2, 3, 1], [4.0, 3.0, 2.0, 1.0]).tolist() == [4.0, 2.5, 2.5, 1.0]
    # Tied consensus: level means 2 (weight 2) and 0 violate, pooled to (2·2 + 0)/3 = 4/3.
    np.testing.assert_allclose(isotonic_fit([1, 1, 2], [3.0, 1.0, 0.0]), [4 / 3] * 3)
    # Decreasing direction.
    assert isotonic_fit([1, 2, 3], [3.0, 1.0, 2.0], increasing=False).tolist() == [3.0, 1.5, 1.5]


def test_isotonic_predict_interpolates_and_holds_ends() -> None:
    assert isotonic_predict([1, 2, 3], [1.0, 2.0, 4.0], [2.5, 0.0, 9.0, 2.0]).tolist() == [
        3.0,
        1.0,
        4.0,
        2.0,
    ]


def test_deleted_residuals_hand_computed() -> None:
    # i=0: others (2,5),(3,3) pool to 4 -> held at c=1 -> 1-4 = -3.
    # i=1: others (1,1),(3,3) -> interpolated 2 at c=2 -> 5-2 = 3.
    # i=2: others (1,1),(2,5) -> held 5 at c=3 -> 3-5 = -2.
    e, trend = deleted_residuals([1, 2, 3], [1.0, 5.0, 3.0])
    assert e.tolist() == [-3.0, 3.0, -2.0]
    assert trend.tolist() == [4.0, 2.0, 5.0]


def test_robust_z_known_values() -> None:
    r = robust_z([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, MAD = median(2,1,0,1,97) = 1 -> z = 0.6745·97 = 65.4265.
    assert r.method == "mad" and r.median == 3.0
    assert r.z[-1] == pytest.approx(0.6745 * 97)
    assert r.z[0] == pytest.approx(-0.6745 * 2)
    assert not r.z.flags.writeable


def test_robust_z_mad_zero_falls_back_to_mean_absolute_deviation() -> None:
    r = robust_z([5.0, 5.0, 5.0, 5.0, 6.0, 9.0], name="residuals")
    # median 5, |dev| = (0,0,0,0,1,4): MAD = 0, meanAD = 5/6, scale = 1.253314·5/6.
    assert r.method == "meanad"
    assert r.scale == pytest.approx(MEANAD_TO_SIGMA * 5 / 6)
    assert r.z[-1] == pytest.approx(4 / (1.253314 * 5 / 6))  # 3.83 > 3.5
    assert r.z[0] == 0.0
    assert "MAD of residuals is 0" in r.warnings[0]


def test_robust_z_no_spread_gives_zero_and_says_so() -> None:
    r = robust_z([2.0, 2.0, 2.0])
    assert r.method == "none" and r.z.tolist() == [0.0, 0.0, 0.0] and r.scale == 0.0
    assert "nothing can be flagged" in r.warnings[0]


@pytest.mark.parametrize(
    ("bad", "match"), [([], "empty"), ([1.0, np.nan], "non-finite"), ([[1.0]], "1-D")]
)
def test_robust_z_errors(bad: object, match: str) -> None:
    with pytest.raises(StatisticsError, match=match):
        robust_z(bad)  # type: ignore[arg-type]


def test_isotonic_errors() -> None:
    with pytest.raises(StatisticsError, match="consensus has 2 values but ae has 3"):
        isotonic_fit([1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(StatisticsError, match="at least one"):
        isotonic_fit([], [])
    with pytest.raises(StatisticsError, match="non-finite"):
        isotonic_predict([1, 2], [1.0, 2.0], [np.nan])
    with pytest.raises(StatisticsError, match="at least 2"):
        deleted_residuals([1], [1.0])


def _clean(n: int = 16, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    consensus = np.sort(rng.uniform(1, 5, n)).round(2)
    ae = np.exp(0.5 * consensus + rng.normal(0, 0.05, n)) * 100
    return [f"S{i:02d}" for i in range(n)], ae, consensus


def test_planted_high_ae_is_flagged_with_reason() -> None:
    sessions, ae, consensus = _clean()
    ae[3] *= 6.0  # a low-quality volume with far too much attribution energy
    rep = detect_outliers(sessions, ae, consensus, log_ae=True)
    flags = [f for f in rep.flags if f.kind == "ae_residual"]
    assert [f.session for f in flags] == ["S03"]
    f = flags[0]
    assert f.robust_z > 3.5 and f.residual_z == f.robust_z
    assert f.reason.startswith(
        f"log AE +{f.robust_z:.1f} robust-z above the increasing isotonic trend of the other volumes"
    )
    assert f"AE {ae[3]:.4g}" in f.reason and f"consensus {consensus[3]:.2f}" in f.reason
    assert math.isnan(f.delta_rho)
    assert rep.residual_kind == "leave_one_out" and rep.log_ae
    assert f.to_dict()["delta_rho"] is None
    assert rep.flagged_sessions == ("S03",)


def test_clean_monotone_cohort_has_no_flags() -> None:
    sessions, ae, consensus = _clean(seed=1)
    assert detect_outliers(sessions, ae, consensus, log_ae=True).flags == ()


def test_raw_scale_is_the_default_and_flags_a_planted_additive_outlier() -> None:
    rng = np.random.default_rng(4)
    consensus = np.round(rng.uniform(1, 5, 20), 1)
    ae = 0.5 + consensus + rng.permutation(np.linspace(-0.2, 0.2, 20))
    ae[7] += 3.0
    rep = detect_outliers([f"S{i}" for i in range(20)], ae, consensus)
    assert not rep.log_ae
    assert [f.session for f in rep.flags] == ["S7"]
    assert rep.flags[0].reason.startswith("AE +")
    np.testing.assert_allclose(rep.residuals[7], ae[7] - rep.fitted[7])


def test_influence_flag_from_delta_rho() -> None:
    sessions, ae, consensus = _clean()
    delta = np.full(16, 0.01)
    delta[5] = -0.3
    rep = detect_outliers(sessions, ae, consensus, delta_rho=delta, rho=0.6)
    infl = [f for f in rep.flags if f.kind == "influence"]
    assert [f.session for f in infl] == ["S05"]
    assert "raises ρ by 0.30 (ρ 0.60 → 0.90): it goes against the association" in infl[0].reason
    assert infl[0].delta_rho == -0.3
    # Below the |Δρ| floor nothing is flagged even with a huge robust z.
    small = np.full(16, 0.001)
    small[5] = 0.05
    assert not [
        f
        for f in detect_outliers(sessions, ae, consensus, delta_rho=small).flags
        if f.kind == "influence"
    ]
    # NaN Δρ (undefined LOO subset) is skipped and reported.
    with_nan = delta.copy()
    with_nan[0] = np.nan
    rep2 = detect_outliers(sessions, ae, consensus, delta_rho=with_nan)
    assert any("Δρ undefined for 1 volume" in w for w in rep2.warnings)


def test_in_sample_raw_recipe_and_its_mad_zero_case() -> None:
    # Monotone except one volume: in-sample isotonic residuals are 0 for most volumes -> MAD = 0.
    sessions = [f"S{i}" for i in range(8)]
    consensus = np.arange(1.0, 5.0, 0.5)
    ae = np.array([10.0, 20, 30, 40, 50, 60, 70, 80])
    ae[2] = 45.0  # violates: pooled with its neighbour(s)
    rep = detect_outliers(sessions, ae, consensus, residuals="in_sample", log_ae=False)
    np.testing.assert_allclose(rep.residuals, ae - isotonic_fit(consensus, ae))
    assert rep.residual_z.method == "meanad"
    assert any("MAD of AE residuals is 0" in w for w in rep.warnings)
    # Its two pooled volumes sit at +/- 7.5 from their trend 37.5: z = ±7.5 / (1.2533·15/8) = ±3.19.
    assert max(abs(rep.residual_z.z)) == pytest.approx(7.5 / (MEANAD_TO_SIGMA * 15 / 8))
    assert rep.flags == ()


def test_zero_ae_falls_back_to_raw_scale_and_direction_warning() -> None:
    sessions = [f"S{i}" for i in range(6)]
    rep = detect_outliers(sessions, [5.0, 4, 3, 2, 1, 0], [1, 2, 3, 4, 5, 6], log_ae=True)
    assert not rep.log_ae
    assert any("raw AE" in w for w in rep.warnings)
    assert any("decreasing trend in consensus better" in w for w in rep.warnings)


def test_detect_outliers_errors() -> None:
    s, ae, c = _clean(n=5)
    with pytest.raises(StatisticsError, match="4 sessions, 5 AE values"):
        detect_outliers(s[:4], ae, c)
    with pytest.raises(StatisticsError, match="at least 3"):
        detect_outliers(s[:2], ae[:2], c[:2])
    with pytest.raises(StatisticsError, match="duplicate session"):
        detect_outliers(["a", "a", "b", "c", "d"], ae, c)
    with pytest.raises(StatisticsError, match="non-empty"):
        detect_outliers(["", "a", "b", "c", "d"], ae, c)
    with pytest.raises(StatisticsError, match="z_cutoff"):
        detect_outliers(s, ae, c, z_cutoff=0)
    with pytest.raises(StatisticsError, match="min_abs_delta_rho"):
        detect_outliers(s, ae, c, min_abs_delta_rho=-1)
    with pytest.raises(StatisticsError, match="residuals must be"):
        detect_outliers(s, ae, c, residuals="jackknife")  # type: ignore[arg-type]
    with pytest.raises(StatisticsError, match="delta_rho has 2 values for 5"):
        detect_outliers(s, ae, c, delta_rho=[0.1, 0.2])
    with pytest.raises(StatisticsError, match="ae has non-finite"):
        detect_outliers(s, np.where(np.arange(5) == 1, np.nan, ae), c)


# --------------------------------------------------------------------------- default alerts


def _cohort(
    n: int = 24, seed: int = 0
) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """AE = 1 + pred with bounded noise (|robust z| <= 1.35); consensus = prediction + noise."""
    from qa_core.categories import CATEGORIES

    rng = np.random.default_rng(seed)
    ids = [f"S{i:02d}" for i in range(n)]
    pred = {c: rng.uniform(1.5, 4.5, n) for c in CATEGORIES}
    ae = {c: 1.0 + pred[c] + rng.permutation(np.linspace(-0.08, 0.08, n)) for c in CATEGORIES}
    cons = {c: np.clip(np.round(pred[c] + rng.normal(0, 0.2, n), 1), 1, 5) for c in CATEGORIES}
    return ids, ae, pred, cons


def test_holm_known_values() -> None:
    from qa_core.outliers import _holm

    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    np.testing.assert_allclose(_holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    out = _holm(np.array([0.2, np.nan, 0.01]))
    assert math.isnan(out[1]) and out[2] == pytest.approx(0.02) and out[0] == pytest.approx(0.2)


def test_attribution_residual_z_finds_the_odd_map() -> None:
    ids, ae, pred, _ = _cohort()
    a = ae["parotid"].copy()
    a[5] *= 8.0  # eight times the energy of sessions with the same prediction
    z = attribution_residual_z(ids, a, pred["parotid"]).z
    assert z[5] > 20 and np.max(np.abs(np.delete(z, 5))) < 4.5
    with pytest.raises(StatisticsError, match="AE must be >= 0"):
        attribution_residual_z(ids, -np.ones(len(ids)), pred["parotid"])
    with pytest.raises(StatisticsError, match="one AE and one prediction"):
        attribution_residual_z(ids, a[:3], pred["parotid"])


def test_session_alerts_clean_cohort_raises_nothing() -> None:
    ids, ae, pred, _ = _cohort()
    assert session_alerts(ids, ae, pred) == ()


def test_session_alerts_name_the_session_category_and_rule() -> None:
    ids, ae, pred, cons = _cohort()
    ae["larynx"][3] /= 10.0
    alerts = session_alerts(ids, ae, pred)
    assert [(a.session, a.category, a.rule) for a in alerts] == [
        ("S03", "larynx", "attribution_vs_prediction")
    ]
    a = alerts[0]
    assert a.value < -20 and a.p_holm < ALERT_ALPHA
    assert "less attribution energy than other sessions with the same predicted score" in a.reason
    assert a.to_dict()["session"] == "S03"
    # with the consensus the same session is also off its trend on the ratings
    rules = {x.rule for x in session_alerts(ids, ae, pred, consensus=cons) if x.session == "S03"}
    assert rules == {"attribution_vs_prediction", "ae_vs_consensus"}


def test_session_alerts_carry_image_checks_for_every_category() -> None:
    from qa_core.image_checks import ImageCheck, ImageCheckReport

    ids, ae, pred, _ = _cohort()
    bad = ImageCheckReport(
        (
            ImageCheck("metal", True, True, 9.0, "cm3", "> 4 cm3", reason="9.0 cm³ of metal"),
            ImageCheck("motion", True, False, -960.0, "HU", "> -850 HU"),
        )
    )
    alerts = session_alerts(ids, ae, pred, image_checks={"S07": bad})
    assert [(a.session, a.category, a.rule, a.reason) for a in alerts] == [
        ("S07", "all", "image:metal", "9.0 cm³ of metal")
    ]


def test_consensus_alerts_apply_holm_on_the_tail_scaled_z() -> None:
    from qa_core.outliers import OutlierFlag, consensus_alerts

    ids = ["A", "B", "C", "D"]
    zs = {"parotid": [5.0, 0.1, -0.3, 0.2], "larynx": [0.5, 0.0, 0.1, -0.2]}
    flag = OutlierFlag("A", "ae_residual", "r", 5.0, 10.0, 3.0, 5.0, 0.7, 5.0, math.nan)
    flags = {"parotid": (flag,)}
    # z 5 read as normal: p 5.7e-7, Holm over 2 categories 1.1e-6 < 0.01
    got = consensus_alerts(ids, zs, flags, tail_scale=1.0)
    assert [(a.session, a.category, a.rule) for a in got] == [("A", "parotid", "ae_vs_consensus")]
    assert got[0].p_holm == pytest.approx(2 * 5.733e-7, rel=1e-3)
    # with tails twice as heavy: z/2 = 2.5, p 0.0124, Holm 0.025 > 0.01: the DESIGN flag stays a flag
    assert consensus_alerts(ids, zs, flags, tail_scale=2.0) == []
    with pytest.raises(StatisticsError, match="tail_scale"):
        consensus_alerts(ids, zs, flags, tail_scale=0.0)


def test_alerts_from_analysis_matches_session_alerts() -> None:
    from qa_core.outliers import alerts_from_analysis
    from qa_core.statistics import analyze_table

    ids, ae, pred, cons = _cohort(n=16, seed=3)
    ae["mandible"][2] *= 12.0
    rows = [
        {
            "session": s,
            "category": c,
            "ae": float(ae[c][i]),
            "consensus": float(cons[c][i]),
            "predicted": float(pred[c][i]),
        }
        for i, s in enumerate(ids)
        for c in ae
    ]
    analysis = analyze_table(rows, n_resamples=200, seed=0)
    got = alerts_from_analysis(
        analysis.results,
        {s: {c: float(pred[c][i]) for c in pred} for i, s in enumerate(ids)},
        {s: {c: float(ae[c][i]) for c in ae} for i, s in enumerate(ids)},
    )
    want = session_alerts(ids, ae, pred, consensus=cons)
    assert [(a.session, a.category, a.rule) for a in got] == [
        (a.session, a.category, a.rule) for a in want
    ]
    assert ("S02", "mandible", "attribution_vs_prediction") in [
        (a.session, a.category, a.rule) for a in got
    ]


def test_session_alerts_errors() -> None:
    ids, ae, pred, _ = _cohort(n=6)
    with pytest.raises(StatisticsError, match="at least 4 sessions"):
        session_alerts(ids[:3], {"parotid": ae["parotid"][:3]}, {"parotid": pred["parotid"][:3]})
    with pytest.raises(StatisticsError, match="duplicate"):
        session_alerts([*ids[:5], ids[0]], ae, pred)
    with pytest.raises(StatisticsError, match="alpha"):
        session_alerts(ids, ae, pred, alpha=1.5)
