"""Does Attribution Energy track the radiologists' consensus? The study's statistics, and better.

The study (``DESIGN.md``, "The study") reports, per category, the Spearman rank correlation ρ
between AE and consensus Likert score over 16 test volumes, summarised over the 16
leave-one-out (LOO) subsets of 15 volumes as the *median ρ* and the *median p*, where p is
scipy's default :func:`scipy.stats.spearmanr` p value (Student t with n - 2 df). That protocol
is reproduced exactly by :func:`loo_spearman`. The median LOO p is kept for reproduction only:
it is not the p value of any test and is not calibrated, so this module also reports

* a **permutation p** (:func:`spearman_permutation_test`): exact under exchangeability and
  valid with ties, which weighted consensus scores have in abundance (the t approximation is
  not exact for small n or heavy ties);
* a paired **BCa bootstrap CI** for ρ (:func:`spearman_bootstrap_ci`);
* **Holm** (family-wise error) and **Benjamini-Hochberg** (false discovery rate) adjustments of
  the permutation p across the categories analysed together (:func:`holm`, :func:`benjamini_hochberg`);
* each volume's **influence** ``Δρ_i = ρ_full - ρ_without_i``;
* the **partial Spearman** correlation of AE with consensus given the model's predicted score,
  and ρ(AE, prediction) (:func:`partial_spearman`). With a global-average-pool + linear head the
  pre-ReLU Grad-CAM map sums to ``y_k - b_k``, so AE partly restates the prediction; the partial
  correlation says whether AE carries information about consensus beyond it.

:func:`analyze_category` and :func:`analyze_table` put it all together with the outlier flags
of :mod:`qa_core.outliers` and a verdict in words (:func:`ae_tracking_verdict`). Direction:
a larger ρ means AE tracks consensus better; the product's hypothesis is ρ > 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings as _warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import scipy
from scipy import stats
from scipy.special import ndtr, ndtri

from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
from qa_core.errors import StatisticsError
from qa_core.outliers import (
    MIN_ABS_DELTA_RHO,
    Z_CUTOFF,
    OutlierFlag,
    OutlierReport,
    detect_outliers,
)

__all__ = [
    "DEFAULT_N_RESAMPLES",
    "MIN_VOLUMES",
    "STUDY_REFERENCE",
    "BootstrapInterval",
    "CategoryAnalysis",
    "CohortAnalysis",
    "CohortRow",
    "LooSpearmanResult",
    "PartialSpearmanResult",
    "PermutationResult",
    "StudyFigure",
    "ae_tracking_verdict",
    "analyze_category",
    "analyze_table",
    "benjamini_hochberg",
    "holm",
    "loo_spearman",
    "partial_spearman",
    "spearman_bootstrap_ci",
    "spearman_p_from_rho",
    "spearman_permutation_test",
]

#: Fewest volumes any function here accepts (LOO subsets of 3; partial correlation df = 1).
MIN_VOLUMES: Final[int] = 4
#: Default number of permutations and of bootstrap resamples.
DEFAULT_N_RESAMPLES: Final[int] = 9999

Alternative = Literal["two-sided", "greater", "less"]


# --------------------------------------------------------------------------------------------
# The study's figures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFigure:
    """One category's published result (median over the 16 leave-one-out subsets of 15 volumes).

    Attributes
    ----------
    category:
        Contract category name.
    rho:
        Median LOO Spearman ρ between AE and consensus, as published (two decimals).
    p:
        Median LOO p as published; when ``p_is_upper_bound`` the study only gave ``p ≤ p``.
    p_is_upper_bound:
        True for the figures published as "p ≤ 0.01".
    n, n_subset:
        Test volumes (16) and volumes per LOO subset (15).
    """

    category: str
    rho: float
    p: float
    p_is_upper_bound: bool
    n: int = 16
    n_subset: int = 15

    @property
    def p_text(self) -> str:
        """The p value as the study wrote it (``"≤ 0.01"`` or ``"0.37"``)."""
        return f"≤ {self.p:.2f}" if self.p_is_upper_bound else f"{self.p:.2f}"

    @property
    def significant(self) -> bool:
        """Whether the study called the association significant (p < 0.05)."""
        return self.p < 0.05

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping."""
        return {
            "category": self.category,
            "rho": self.rho,
            "p": self.p,
            "p_is_upper_bound": self.p_is_upper_bound,
            "p_text": self.p_text,
            "n": self.n,
            "n_subset": self.n_subset,
        }


#: The study's published figures per category (reference rows in every report).
STUDY_REFERENCE: Final[Mapping[str, StudyFigure]] = MappingProxyType(
    {
        "parotid": StudyFigure("parotid", 0.71, 0.01, True),
        "submandibular": StudyFigure("submandibular", 0.89, 0.01, True),
        "larynx": StudyFigure("larynx", 0.25, 0.37, False),
        "mandible": StudyFigure("mandible", 0.70, 0.01, True),
        "overall": StudyFigure("overall", 0.67, 0.01, True),
    }
)


# --------------------------------------------------------------------------------------------
# Input checks and small helpers
# --------------------------------------------------------------------------------------------


def _vector(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatisticsError(f"{name} must be numeric; could not convert it to float64 ({exc})") from exc
    if arr.ndim != 1:
        raise StatisticsError(f"{name} must be a 1-D vector (one value per volume); got shape {arr.shape}")
    nan = np.flatnonzero(np.isnan(arr))
    if nan.size:
        raise StatisticsError(
            f"{name} contains NaN at positions {nan.tolist()}; drop those volumes or supply the "
            "missing values (Spearman ρ is not defined with missing data)"
        )
    inf = np.flatnonzero(np.isinf(arr))
    if inf.size:
        raise StatisticsError(f"{name} contains infinite values at positions {inf.tolist()}; check the input")
    return arr


def _pair(
    x: npt.ArrayLike, y: npt.ArrayLike, x_name: str, y_name: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    xa = _vector(x, x_name)
    ya = _vector(y, y_name)
    if xa.size != ya.size:
        raise StatisticsError(
            f"{x_name} has {xa.size} values but {y_name} has {ya.size}; give one of each per volume"
        )
    if xa.size < MIN_VOLUMES:
        raise StatisticsError(
            f"need at least {MIN_VOLUMES} volumes for Spearman statistics; got {xa.size} "
            f"({x_name} vs {y_name})"
        )
    return xa, ya


def _readonly(arr: npt.ArrayLike) -> npt.NDArray[np.float64]:
    out = np.array(arr, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


def _is_constant(a: npt.NDArray[np.float64]) -> bool:
    return bool(a.size == 0 or np.all(a == a[0]))


def _spearman(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[float, float]:
    """scipy's default Spearman ρ and p; (NaN, NaN) for constant input instead of a warning."""
    if _is_constant(x) or _is_constant(y):
        return math.nan, math.nan
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def _pearson_last_axis(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pearson r along the last axis (broadcasting); NaN where either side has no spread."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = np.sum(a * b, axis=-1)
    den = np.sqrt(np.sum(a * a, axis=-1) * np.sum(b * b, axis=-1))
    out = np.full(np.shape(num), np.nan)
    # Centred ranks of n >= 2 non-constant values have a sum of squares >= 0.5; 1e-9 only
    # catches rounding residue of a constant vector.
    ok = den > 1e-9
    np.divide(num, den, out=out, where=ok)
    return np.clip(out, -1.0, 1.0)


def _spearman_last_axis(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Spearman ρ along the last axis: Pearson r of mid-ranks (exact with ties)."""
    return _pearson_last_axis(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise StatisticsError(f"seed must be a non-negative integer or a numpy Generator; got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_n_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise StatisticsError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    return int(n_resamples)


def _check_level(confidence_level: float) -> float:
    if not (isinstance(confidence_level, float | int) and 0.0 < float(confidence_level) < 1.0):
        raise StatisticsError(f"confidence_level must lie strictly between 0 and 1; got {confidence_level!r}")
    return float(confidence_level)


def spearman_p_from_rho(rho: float, n: int) -> float:
    """scipy's default two-sided Spearman p for a given ρ and n (Student t, n - 2 df).

    ``t = ρ √((n - 2) / (1 - ρ²))``, ``p = 2 · P(T_{n-2} > |t|)``. This is what
    :func:`scipy.stats.spearmanr` returns and what the study's p values are.

    Parameters
    ----------
    rho:
        Spearman ρ in [-1, 1].
    n:
        Number of volumes (>= 3).

    Returns
    -------
    float
        Two-sided p in [0, 1] (0 for |ρ| = 1).

    Raises
    ------
    StatisticsError
        ρ outside [-1, 1] or not finite, n < 3.

    Examples
    --------
    >>> round(spearman_p_from_rho(0.25, 15), 2)   # the study's larynx figure
    0.37
    """
    if not (isinstance(rho, float | int) and math.isfinite(rho) and -1.0 <= rho <= 1.0):
        raise StatisticsError(f"rho must be a finite number in [-1, 1]; got {rho!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise StatisticsError(f"n must be an integer >= 3 for a Spearman p value; got {n!r}")
    if abs(rho) == 1.0:
        return 0.0
    df = n - 2
    t = rho * math.sqrt(df / (1.0 - rho * rho))
    return float(2.0 * stats.t.sf(abs(t), df))


# --------------------------------------------------------------------------------------------
# The study's protocol
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LooSpearmanResult:
    """Spearman ρ of x vs y, full sample and over the leave-one-out subsets (the study's protocol).

    Attributes
    ----------
    n:
        Number of volumes.
    rho, p:
        Full-sample Spearman ρ and scipy's default two-sided p (t with n - 2 df).
    loo_median_rho, loo_median_p:
        Median of ρ and of p over the n subsets that each leave one volume out (n - 1 volumes
        each): the study's reported figures. Subsets where ρ is undefined (constant after
        removing one volume) are left out of the median and counted in ``n_undefined_subsets``.
    loo_rho, loo_p:
        (n,) float64, read-only: ρ and p of the subset without volume i (NaN if undefined).
    influence:
        (n,) float64, read-only: ``Δρ_i = rho - loo_rho[i]``; > 0 means volume i supports the
        association.
    constant_input:
        True when x or y is constant: ρ is undefined and every figure is NaN.
    n_undefined_subsets:
        How many LOO subsets had an undefined ρ.
    warnings:
        What was undefined and why.
    """

    n: int
    rho: float
    p: float
    loo_median_rho: float
    loo_median_p: float
    loo_rho: npt.NDArray[np.float64]
    loo_p: npt.NDArray[np.float64]
    influence: npt.NDArray[np.float64]
    constant_input: bool
    n_undefined_subsets: int
    warnings: tuple[str, ...] = ()


def loo_spearman(
    x: npt.ArrayLike, y: npt.ArrayLike, *, x_name: str = "x", y_name: str = "y"
) -> LooSpearmanResult:
    """Reproduce the study's protocol: Spearman ρ over every leave-one-out subset, median ρ and p.

    For each i, volume i is dropped and :func:`scipy.stats.spearmanr` (default settings: mid-
    ranks for ties, two-sided p from Student t with n - 3 df for the n - 1 remaining volumes)
    is run on the rest; the medians over the n subsets are the study's figures. The full-sample
    ρ and p are returned too.

    Parameters
    ----------
    x, y:
        (n,) paired values, n >= 4; typically x = AE (unnormalised Grad-CAM sum) and
        y = consensus Likert score (1-5). No NaN or inf.
    x_name, y_name:
        Names used in error messages and warnings.

    Returns
    -------
    LooSpearmanResult
        With ``constant_input=True`` and NaN figures (not an exception) when x or y is constant.

    Raises
    ------
    StatisticsError
        Fewer than 4 volumes, lengths differ, NaN or inf (positions named), not 1-D.

    Examples
    --------
    >>> r = loo_spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    >>> round(r.rho, 2), r.n
    (0.8, 5)
    """
    xa, ya = _pair(x, y, x_name, y_name)
    n = xa.size
    notes: list[str] = []
    rho, p = _spearman(xa, ya)
    constant = math.isnan(rho)
    if constant:
        which = [nm for nm, a in ((x_name, xa), (y_name, ya)) if _is_constant(a)]
        notes.append(
            f"{' and '.join(which)} constant (all values equal): Spearman ρ is undefined, "
            "every figure is NaN"
        )
    loo_rho = np.empty(n)
    loo_p = np.empty(n)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        keep[i] = False
        loo_rho[i], loo_p[i] = _spearman(xa[keep], ya[keep])
        keep[i] = True
    undefined = int(np.isnan(loo_rho).sum())
    if undefined == n:
        med_rho = med_p = math.nan
    else:
        med_rho = float(np.nanmedian(loo_rho))
        med_p = float(np.nanmedian(loo_p))
    if undefined and not constant:
        idx = np.flatnonzero(np.isnan(loo_rho)).tolist()
        notes.append(
            f"ρ undefined on {undefined} of {n} leave-one-out subsets (leaving out positions {idx} "
            "makes a variable constant); medians are over the remaining subsets"
        )
    return LooSpearmanResult(
        n=n,
        rho=rho,
        p=p,
        loo_median_rho=med_rho,
        loo_median_p=med_p,
        loo_rho=_readonly(loo_rho),
        loo_p=_readonly(loo_p),
        influence=_readonly(rho - loo_rho),
        constant_input=constant,
        n_undefined_subsets=undefined,
        warnings=tuple(notes),
    )


# --------------------------------------------------------------------------------------------
# Permutation p and bootstrap CI
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PermutationResult:
    """Permutation test of Spearman ρ (pairings permuted; valid with ties).

    Attributes
    ----------
    rho:
        Observed Spearman ρ.
    p:
        Permutation p. Exact (enumerating all n! pairings) when ``exact``; otherwise Monte
        Carlo with ``n_resamples`` random pairings, computed as ``(k + 1) / (n_resamples + 1)``
        per tail (never 0, valid at any level).
    exact:
        Whether every permutation was enumerated.
    n_resamples:
        Random permutations drawn (ignored when exact).
    alternative:
        ``"two-sided"`` (default: twice the smaller tail), ``"greater"`` or ``"less"``.
    min_attainable_p:
        The smallest p this test could give with these n and n_resamples.
    warnings:
        Why p is NaN, if it is.
    """

    rho: float
    p: float
    exact: bool
    n_resamples: int
    alternative: Alternative
    min_attainable_p: float
    warnings: tuple[str, ...] = ()


def spearman_permutation_test(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int | np.random.Generator = 0,
    alternative: Alternative = "two-sided",
    x_name: str = "x",
    y_name: str = "y",
) -> PermutationResult:
    """Permutation p value of Spearman ρ with :func:`scipy.stats.permutation_test`.

    The y ranks stay fixed while the pairing with the x mid-ranks is permuted
    (``permutation_type="pairings"``), so ties are handled exactly: the null distribution is
    that of the tied data, not the t approximation. Vectorised over permutations.

    Parameters
    ----------
    x, y:
        (n,) paired values, n >= 4, finite.
    n_resamples:
        Random permutations; when ``n! <= n_resamples`` every permutation is enumerated and
        the p value is exact (n <= 7 with the default 9,999).
    seed:
        Seed (non-negative int) or a :class:`numpy.random.Generator`.
    alternative:
        ``"two-sided"``, ``"greater"`` (ρ > 0, the product's hypothesis) or ``"less"``.
    x_name, y_name:
        Names used in error messages.

    Returns
    -------
    PermutationResult
        p is NaN with a warning when x or y is constant.

    Raises
    ------
    StatisticsError
        Bad inputs (see :func:`loo_spearman`), bad ``n_resamples``, seed or alternative.
    """
    xa, ya = _pair(x, y, x_name, y_name)
    n_resamples = _check_n_resamples(n_resamples)
    if alternative not in ("two-sided", "greater", "less"):
        raise StatisticsError(f"alternative must be 'two-sided', 'greater' or 'less'; got {alternative!r}")
    rng = _rng(seed)
    n = xa.size
    exact = math.factorial(n) <= n_resamples
    tail = (1.0 / math.factorial(n)) if exact else 1.0 / (n_resamples + 1)
    min_p = min(1.0, (2.0 if alternative == "two-sided" else 1.0) * tail)
    if _is_constant(xa) or _is_constant(ya):
        return PermutationResult(
            math.nan, math.nan, exact, n_resamples, alternative, min_p,
            (f"{x_name} or {y_name} is constant: ρ and its permutation p are undefined",),
        )
    rx = stats.rankdata(xa)
    ry = stats.rankdata(ya)

    def statistic(rx_perm: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
        return _pearson_last_axis(np.moveaxis(rx_perm, axis, -1), ry)

    res = stats.permutation_test(
        (rx,),
        statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alternative,
        rng=rng,
    )
    return PermutationResult(
        rho=float(res.statistic),
        p=float(min(1.0, res.pvalue)),
        exact=exact,
        n_resamples=n_resamples,
        alternative=alternative,
        min_attainable_p=min_p,
    )


@dataclass(frozen=True)
class BootstrapInterval:
    """Paired BCa bootstrap confidence interval of Spearman ρ.

    Attributes
    ----------
    low, high:
        Interval bounds (NaN only when it cannot be formed; see ``warnings``).
    confidence_level:
        E.g. 0.95.
    n_resamples:
        Bootstrap resamples drawn (pairs resampled with replacement).
    n_degenerate:
        Resamples in which x or y was constant (ρ undefined). They are left out and the BCa
        interval is formed from the others (conditional on a defined ρ); counted here.
    method:
        ``"BCa"`` (scipy's), ``"BCa (non-degenerate resamples)"`` (same formulas on the defined
        resamples) or ``"degenerate"`` (every defined resample gave the same ρ: the interval
        collapses to that point).
    warnings:
        Notes on degenerate resamples or a collapsed interval.
    """

    low: float
    high: float
    confidence_level: float
    n_resamples: int
    n_degenerate: int
    method: str
    warnings: tuple[str, ...] = ()


def _bca_from_distribution(
    theta_hat: float,
    theta_b: npt.NDArray[np.float64],
    theta_jack: npt.NDArray[np.float64],
    confidence_level: float,
) -> tuple[float, float, float]:
    """BCa bounds from a bootstrap distribution and jackknife values (Efron & Tibshirani 14.3).

    Same formulas as :func:`scipy.stats.bootstrap` (bias from the ``"mean"`` percentile of
    the observed value, acceleration from the jackknife skewness, linear quantiles).
    Returns ``(low, high, acceleration)``.
    """
    alpha = (1.0 - confidence_level) / 2.0
    b = theta_b.size
    pct = (np.count_nonzero(theta_b < theta_hat) + np.count_nonzero(theta_b <= theta_hat)) / (2.0 * b)
    z0 = float(ndtri(pct))
    d = theta_jack.mean() - theta_jack
    den = float(np.sum(d**2)) ** 1.5
    a_hat = float(np.sum(d**3)) / (6.0 * den) if den > 0 else 0.0
    z_lo, z_hi = float(ndtri(alpha)), float(ndtri(1.0 - alpha))
    a1 = float(ndtr(z0 + (z0 + z_lo) / (1.0 - a_hat * (z0 + z_lo))))
    a2 = float(ndtr(z0 + (z0 + z_hi) / (1.0 - a_hat * (z0 + z_hi))))
    if not (math.isfinite(a1) and math.isfinite(a2)):
        return math.nan, math.nan, a_hat
    low, high = np.quantile(theta_b, [a1, a2])
    return float(low), float(high), a_hat


def spearman_bootstrap_ci(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence_level: float = 0.95,
    seed: int | np.random.Generator = 0,
    x_name: str = "x",
    y_name: str = "y",
) -> BootstrapInterval:
    """Paired BCa bootstrap CI of Spearman ρ (:func:`scipy.stats.bootstrap`, ``method="BCa"``).

    Volumes (x, y pairs) are resampled with replacement and ρ is recomputed from the mid-ranks
    of each resample (vectorised). A resample in which x or y is constant has no ρ; such
    *degenerate* resamples are common with tied consensus scores and small n. If any occur,
    the BCa interval is formed from the defined resamples with scipy's formulas (the interval
    is then conditional on ρ being defined), and the count is reported. If every defined
    resample gives the same ρ (e.g. a perfectly monotone sample, ρ = 1 in every resample), the
    interval is that point, with a warning.

    Parameters
    ----------
    x, y:
        (n,) paired values, n >= 4, finite.
    n_resamples:
        Bootstrap resamples (default 9,999).
    confidence_level:
        In (0, 1); default 0.95.
    seed:
        Seed (non-negative int) or a :class:`numpy.random.Generator`.
    x_name, y_name:
        Names used in error messages.

    Returns
    -------
    BootstrapInterval

    Raises
    ------
    StatisticsError
        Bad inputs (see :func:`loo_spearman`), bad ``n_resamples``, level or seed.
    """
    xa, ya = _pair(x, y, x_name, y_name)
    n_resamples = _check_n_resamples(n_resamples)
    level = _check_level(confidence_level)
    rng = _rng(seed)
    if _is_constant(xa) or _is_constant(ya):
        return BootstrapInterval(
            math.nan, math.nan, level, n_resamples, n_resamples, "degenerate",
            (f"{x_name} or {y_name} is constant: ρ is undefined, no interval",),
        )

    def statistic(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
        return _spearman_last_axis(np.moveaxis(xs, axis, -1), np.moveaxis(ys, axis, -1))

    with _warnings.catch_warnings():
        # Degenerate distributions are handled below, explicitly.
        _warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        _warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            (xa, ya),
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=level,
            method="BCa",
            rng=rng,
        )
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    finite = dist[np.isfinite(dist)]
    n_deg = int(dist.size - finite.size)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    notes: list[str] = []
    if n_deg == 0 and math.isfinite(low) and math.isfinite(high):
        return BootstrapInterval(low, high, level, n_resamples, 0, "BCa")
    theta_hat = float(statistic(xa, ya))
    if n_deg:
        notes.append(
            f"{n_deg} of {n_resamples} bootstrap resamples had a constant {x_name} or {y_name} "
            "(ρ undefined) and were left out; the BCa interval is conditional on a defined ρ"
        )
    if finite.size == 0:
        notes.append("no bootstrap resample had a defined ρ; no interval")
        return BootstrapInterval(math.nan, math.nan, level, n_resamples, n_deg, "degenerate", tuple(notes))
    if np.all(finite == finite[0]):
        notes.append(f"every defined bootstrap resample gave ρ = {finite[0]:.4g}; the interval collapses to that point")
        v = float(finite[0])
        return BootstrapInterval(v, v, level, n_resamples, n_deg, "degenerate", tuple(notes))
    keep = np.ones(xa.size, dtype=bool)
    jack_vals = []
    for i in range(xa.size):
        keep[i] = False
        jack_vals.append(float(statistic(xa[keep], ya[keep])))
        keep[i] = True
    jv = np.asarray(jack_vals)
    if not np.isfinite(jv).all():
        notes.append("some jackknife subsets have an undefined ρ; acceleration uses the defined ones")
        jv = jv[np.isfinite(jv)]
    low, high, _ = _bca_from_distribution(theta_hat, finite, jv, level)
    return BootstrapInterval(low, high, level, n_resamples, n_deg, "BCa (non-degenerate resamples)", tuple(notes))


# --------------------------------------------------------------------------------------------
# Multiplicity
# --------------------------------------------------------------------------------------------


def _pvector(pvalues: npt.ArrayLike) -> npt.NDArray[np.float64]:
    p = _as_float_array(pvalues, "p values")
    bad = np.flatnonzero(np.isfinite(p) & ((p < 0) | (p > 1)))
    if bad.size or np.isinf(p).any():
        raise StatisticsError(f"p values must lie in [0, 1]; out of range at positions {bad.tolist()}")
    return p


def _as_float_array(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatisticsError(f"{name} must be numeric ({exc})") from exc
    if arr.ndim != 1:
        raise StatisticsError(f"{name} must be a 1-D vector; got shape {arr.shape}")
    if arr.size == 0:
        raise StatisticsError(f"{name} is empty; give at least one value")
    return arr


def holm(pvalues: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Holm (1979) step-down adjusted p values (family-wise error control).

    With the m finite p values sorted ascending, ``p̃_(i) = max_{j<=i} min(1, (m - j + 1) p_(j))``.
    NaN entries (undefined tests) are not part of the family and stay NaN.

    Parameters
    ----------
    pvalues:
        (m,) p values in [0, 1], NaN allowed.

    Returns
    -------
    numpy.ndarray
        (m,) float64 adjusted p values, input order.

    Raises
    ------
    StatisticsError
        Empty, not 1-D, or a value outside [0, 1].

    Examples
    --------
    >>> holm([0.01, 0.02, 0.03, 0.04, 0.05]).round(2).tolist()   # R: p.adjust(..., "holm")
    [0.05, 0.08, 0.09, 0.09, 0.09]
    """
    p = _pvector(pvalues)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def benjamini_hochberg(pvalues: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Benjamini-Hochberg (1995) adjusted p values (false-discovery-rate control).

    Computed by :func:`scipy.stats.false_discovery_control` (``method="bh"``) over the finite
    p values; NaN entries are not part of the family and stay NaN.

    Parameters
    ----------
    pvalues:
        (m,) p values in [0, 1], NaN allowed.

    Returns
    -------
    numpy.ndarray
        (m,) float64 adjusted p values, input order.

    Raises
    ------
    StatisticsError
        Empty, not 1-D, or a value outside [0, 1].

    Examples
    --------
    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
    [0.02, 0.04, 0.04, 0.02]
    """
    p = _pvector(pvalues)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


# --------------------------------------------------------------------------------------------
# Partial Spearman given the prediction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialSpearmanResult:
    """Partial Spearman correlation of x and y given z.

    Attributes
    ----------
    rho:
        Pearson r between the residuals of rank(x) and rank(y) after linear regression on
        rank(z) (with intercept). Equals ``(r_xy - r_xz r_yz) / √((1 - r_xz²)(1 - r_yz²))``
        on the ranks.
    p:
        Two-sided p from Student t with ``df = n - 3``: ``t = ρ √(df / (1 - ρ²))``.
    df:
        n - 3.
    n:
        Volumes.
    rho_xy, rho_xz, rho_yz:
        The plain Spearman correlations (e.g. ρ(AE, consensus), ρ(AE, prediction),
        ρ(consensus, prediction)).
    p_xz:
        scipy's default p of ``rho_xz``.
    warnings:
        Why ``rho`` is NaN (x or y fully explained by z, or constant), or that z is constant.
    """

    rho: float
    p: float
    df: int
    n: int
    rho_xy: float
    rho_xz: float
    rho_yz: float
    p_xz: float
    warnings: tuple[str, ...] = ()


def partial_spearman(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    z: npt.ArrayLike,
    *,
    x_name: str = "x",
    y_name: str = "y",
    z_name: str = "z",
) -> PartialSpearmanResult:
    """Partial Spearman ρ of x with y given z (rank-transform, residualise, correlate).

    Use with x = AE, y = consensus, z = predicted score: a significant positive partial ρ
    means AE tracks consensus beyond what the model's prediction already says. Ranks are
    mid-ranks (ties averaged).

    Parameters
    ----------
    x, y, z:
        (n,) paired values, n >= 4, finite.
    x_name, y_name, z_name:
        Names used in error messages and warnings.

    Returns
    -------
    PartialSpearmanResult
        ``rho``/``p`` NaN with a warning when undefined (x or y constant, or a perfect
        monotone function of z).

    Raises
    ------
    StatisticsError
        Fewer than 4 volumes, lengths differ, NaN or inf.
    """
    xa, ya = _pair(x, y, x_name, y_name)
    za = _vector(z, z_name)
    if za.size != xa.size:
        raise StatisticsError(f"{z_name} has {za.size} values but {x_name} has {xa.size}; give one per volume")
    n = xa.size
    df = n - 3
    rho_xy, _ = _spearman(xa, ya)
    rho_xz, p_xz = _spearman(xa, za)
    rho_yz, _ = _spearman(ya, za)
    notes: list[str] = []
    rx, ry, rz = (stats.rankdata(a) for a in (xa, ya, za))
    design = np.column_stack([np.ones(n), rz])

    def residual(r: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        coef, *_ = np.linalg.lstsq(design, r, rcond=None)
        return np.asarray(r - design @ coef, dtype=np.float64)

    ex, ey = residual(rx), residual(ry)
    if _is_constant(za):
        notes.append(f"{z_name} is constant: nothing to partial out, partial ρ equals ρ({x_name}, {y_name})")
    scale = float(n * n)
    undefined = []
    for nm, e in ((x_name, ex), (y_name, ey)):
        if float(np.sqrt(np.sum(e * e))) <= 1e-9 * scale:
            undefined.append(nm)
    if undefined:
        notes.append(
            f"{' and '.join(undefined)} {'is' if len(undefined) == 1 else 'are'} constant or a perfect "
            f"monotone function of {z_name}: nothing is left after partialling out {z_name}, "
            "the partial correlation is undefined"
        )
        return PartialSpearmanResult(math.nan, math.nan, df, n, rho_xy, rho_xz, rho_yz, p_xz, tuple(notes))
    r = float(np.clip(np.dot(ex, ey) / math.sqrt(float(np.dot(ex, ex)) * float(np.dot(ey, ey))), -1.0, 1.0))
    if abs(r) >= 1.0:
        p = 0.0
    else:
        t = r * math.sqrt(df / (1.0 - r * r))
        p = float(2.0 * stats.t.sf(abs(t), df))
    return PartialSpearmanResult(r, p, df, n, rho_xy, rho_xz, rho_yz, p_xz, tuple(notes))


# --------------------------------------------------------------------------------------------
# One category, and a whole cohort table
# --------------------------------------------------------------------------------------------

VerdictCode = Literal[
    "undefined",
    "too_few_volumes",
    "not_positive",
    "not_significant",
    "ci_spans_zero",
    "tracks",
    "tracks_via_prediction",
]


@dataclass(frozen=True)
class CategoryAnalysis:
    """Everything the product reports about AE vs consensus for one category.

    ρ values are Spearman rank correlations (unitless, -1..1; larger = AE tracks consensus
    better); p values are two-sided.

    Attributes
    ----------
    category:
        Contract category name.
    n:
        Volumes.
    sessions:
        Session identifiers, input order (the order of the per-volume tuples).
    rho, p:
        Full-sample Spearman ρ(AE, consensus) and scipy's default p.
    loo_median_rho, loo_median_p:
        The study's figures: medians over the leave-one-out subsets (reproduction only; the
        median p is not a calibrated p value).
    loo_rho:
        (n,) ρ without each volume.
    influence:
        (n,) ``Δρ_i = rho - loo_rho[i]``.
    perm_p, perm_exact, n_resamples:
        Two-sided permutation p of ρ (valid with ties), whether it enumerated every
        permutation, permutations/bootstrap resamples used.
    ci_low, ci_high, ci_level, ci_method, n_degenerate_resamples:
        Paired BCa bootstrap interval of ρ (see :class:`BootstrapInterval`).
    p_holm, p_bh:
        ``perm_p`` adjusted across the categories analysed together (Holm; Benjamini-Hochberg).
        For a category analysed alone they equal ``perm_p``.
    family_size:
        Number of categories in the multiplicity family.
    partial_rho, partial_p, partial_p_holm:
        Partial Spearman ρ(AE, consensus | prediction), its t-test p (n - 3 df) and that p
        Holm-adjusted across the family; ``None`` without predictions.
    rho_ae_pred, p_ae_pred:
        Spearman ρ(AE, prediction) and its p: how much AE restates the prediction; ``None``
        without predictions.
    outliers:
        The outlier flags (:class:`qa_core.outliers.OutlierFlag`).
    residual_z:
        (n,) robust z of AE around the isotonic trend on consensus.
    verdict_code, verdict:
        Whether AE tracks consensus, in a code and in words (:func:`ae_tracking_verdict`).
    ae_tracks_consensus:
        True when ρ > 0, Holm-adjusted permutation p < alpha and the CI excludes 0.
    ae_beyond_prediction:
        With predictions: whether the partial ρ given the prediction is positive and
        significant (Holm across the family); ``None`` without predictions.
    alpha:
        Significance level used by the verdict.
    study:
        The study's published figure for this category (``None`` for unknown categories).
    warnings:
        Every note raised on the way (constant input, degenerate resamples, MAD = 0, ...).
    """

    category: str
    n: int
    sessions: tuple[str, ...]
    rho: float
    p: float
    loo_median_rho: float
    loo_median_p: float
    loo_rho: tuple[float, ...]
    influence: tuple[float, ...]
    perm_p: float
    perm_exact: bool
    perm_min_p: float
    n_resamples: int
    ci_low: float
    ci_high: float
    ci_level: float
    ci_method: str
    n_degenerate_resamples: int
    p_holm: float
    p_bh: float
    family_size: int
    partial_rho: float | None
    partial_p: float | None
    partial_p_holm: float | None
    rho_ae_pred: float | None
    p_ae_pred: float | None
    outliers: tuple[OutlierFlag, ...]
    residual_z: tuple[float, ...]
    verdict_code: VerdictCode
    verdict: str
    ae_tracks_consensus: bool
    ae_beyond_prediction: bool | None
    alpha: float
    study: StudyFigure | None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping: NaN as ``None``, per-volume values keyed by session."""
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if key == "outliers":
                out[key] = [f.to_dict() for f in value]
            elif key == "study":
                out[key] = None if value is None else value.to_dict()
            elif key in ("loo_rho", "influence", "residual_z"):
                out[key] = {s: _json_float(v) for s, v in zip(self.sessions, value, strict=True)}
            elif isinstance(value, tuple):
                out[key] = [_json_float(v) if isinstance(v, float) else v for v in value]
            else:
                out[key] = _json_float(value) if isinstance(value, float) else value
        return out


def _json_float(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    if v is None:
        return "n/a"
    if not math.isfinite(v):
        return "undefined"
    return format(v, spec)


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "undefined"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _verdict(a: CategoryAnalysis) -> tuple[VerdictCode, str, bool, bool | None]:
    alpha = a.alpha
    m = a.family_size
    fam = f"Holm across {m} categories" if m > 1 else "single category, no multiplicity correction"
    beyond: bool | None = None
    if a.partial_rho is not None and a.partial_p_holm is not None:
        beyond = bool(
            math.isfinite(a.partial_rho) and a.partial_rho > 0 and math.isfinite(a.partial_p_holm)
            and a.partial_p_holm < alpha
        )
    if not math.isfinite(a.rho):
        return "undefined", (
            f"{a.category}: cannot say whether AE tracks consensus — ρ is undefined because AE or "
            "consensus is constant across the volumes"
        ), False, beyond
    if a.perm_min_p * m >= alpha:
        return "too_few_volumes", (
            f"{a.category}: too few volumes to show that AE tracks consensus — with n={a.n} the "
            f"smallest attainable permutation p is {_fmt_p(a.perm_min_p)}, which cannot fall below "
            f"α={alpha:g} after {fam} (observed ρ={a.rho:.2f})"
        ), False, beyond
    if a.rho <= 0:
        return "not_positive", (
            f"{a.category}: AE does not track consensus — ρ={a.rho:.2f} is not positive (AE should rise "
            f"with image quality); permutation p={_fmt_p(a.perm_p)}"
        ), False, beyond
    if not (math.isfinite(a.p_holm) and a.p_holm < alpha):
        return "not_significant", (
            f"{a.category}: AE is not shown to track consensus — ρ={a.rho:.2f} is positive but not "
            f"significant: permutation p={_fmt_p(a.perm_p)}, adjusted p={_fmt_p(a.p_holm)} ({fam}), "
            f"α={alpha:g}, n={a.n}"
        ), False, beyond
    if not (math.isfinite(a.ci_low) and a.ci_low > 0):
        return "ci_spans_zero", (
            f"{a.category}: AE is not shown to track consensus — ρ={a.rho:.2f} is significant "
            f"(adjusted p={_fmt_p(a.p_holm)}) but its {a.ci_level:.0%} BCa interval "
            f"[{_fmt(a.ci_low)}, {_fmt(a.ci_high)}] does not exclude 0"
        ), False, beyond
    base = (
        f"{a.category}: AE tracks consensus — ρ={a.rho:.2f}, adjusted p={_fmt_p(a.p_holm)} ({fam}), "
        f"{a.ci_level:.0%} BCa CI [{a.ci_low:.2f}, {a.ci_high:.2f}], n={a.n}"
    )
    if beyond is False:
        return "tracks_via_prediction", (
            base + f"; but not beyond the model's prediction: partial ρ given prediction = "
            f"{_fmt(a.partial_rho)} (adjusted p={_fmt_p(a.partial_p_holm or math.nan)}), "
            f"ρ(AE, prediction) = {_fmt(a.rho_ae_pred)} — AE largely restates the predicted score"
        ), True, beyond
    if beyond is True:
        base += (
            f"; also beyond the prediction: partial ρ = {_fmt(a.partial_rho)} "
            f"(adjusted p={_fmt_p(a.partial_p_holm or math.nan)})"
        )
    return "tracks", base, True, beyond


def ae_tracking_verdict(result: CategoryAnalysis) -> str:
    """Say in words whether AE tracks consensus for one category, or why not.

    Rules, first match wins (α = ``result.alpha``, m = ``result.family_size``):

    1. ρ undefined (constant AE or consensus).
    2. Too few volumes: the smallest attainable permutation p times m is >= α.
    3. ρ <= 0: AE does not rise with quality.
    4. Holm-adjusted permutation p >= α: not significant.
    5. BCa CI does not exclude 0.
    6. Otherwise AE tracks consensus; with predictions, the verdict adds whether it does so
       beyond the prediction (partial ρ positive and Holm-significant) or largely restates it.

    Parameters
    ----------
    result:
        A :class:`CategoryAnalysis`.

    Returns
    -------
    str
        One sentence with the numbers.

    Raises
    ------
    StatisticsError
        ``result`` is not a :class:`CategoryAnalysis`.
    """
    if not isinstance(result, CategoryAnalysis):
        raise StatisticsError(
            f"ae_tracking_verdict needs a CategoryAnalysis (from analyze_category); got {type(result).__name__}"
        )
    return _verdict(result)[1]


def _with_verdict(a: CategoryAnalysis) -> CategoryAnalysis:
    code, text, tracks, beyond = _verdict(a)
    return replace(a, verdict_code=code, verdict=text, ae_tracks_consensus=tracks, ae_beyond_prediction=beyond)


def _category_seed(seed: int, category: str, stream: int) -> np.random.Generator:
    """Independent, reproducible stream per (seed, category, purpose)."""
    key = CATEGORIES.index(category) if category in CATEGORIES else int.from_bytes(
        hashlib.sha256(category.encode()).digest()[:4], "big"
    )
    return np.random.default_rng([seed, key, stream])


def analyze_category(
    category: str,
    sessions: Sequence[str],
    ae: npt.ArrayLike,
    consensus: npt.ArrayLike,
    predicted: npt.ArrayLike | None = None,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = 0,
    confidence_level: float = 0.95,
    alpha: float = 0.05,
    z_cutoff: float = Z_CUTOFF,
    min_abs_delta_rho: float = MIN_ABS_DELTA_RHO,
) -> CategoryAnalysis:
    """All statistics of AE vs consensus for one category (a family of one for multiplicity).

    Parameters
    ----------
    category:
        Category name (one of :data:`qa_core.categories.CATEGORIES` for a study reference).
    sessions:
        (n,) unique session identifiers.
    ae:
        (n,) Attribution Energy (>= 0, unnormalised Grad-CAM sum; AE per voxel works too).
    consensus:
        (n,) consensus Likert scores in [1, 5].
    predicted:
        Optional (n,) predicted Likert scores of the model; enables the partial correlation.
    n_resamples:
        Permutations and bootstrap resamples (default 9,999).
    seed:
        Non-negative int; each category draws from its own stream ``(seed, category, purpose)``.
    confidence_level:
        Of the BCa interval.
    alpha:
        Significance level of the verdict.
    z_cutoff, min_abs_delta_rho:
        Outlier thresholds (see :mod:`qa_core.outliers`).

    Returns
    -------
    CategoryAnalysis

    Raises
    ------
    StatisticsError
        Fewer than 4 volumes, mismatched lengths, NaN/inf, negative AE, consensus outside
        1-5, duplicate sessions, bad parameters.
    """
    ids = tuple(str(s) for s in sessions)
    xa, ya = _pair(ae, consensus, f"{category} AE", f"{category} consensus")
    if len(ids) != xa.size:
        raise StatisticsError(f"{category}: {len(ids)} sessions for {xa.size} AE values; give one session per volume")
    neg = np.flatnonzero(xa < 0)
    if neg.size:
        raise StatisticsError(
            f"{category}: AE must be >= 0 (a sum of ReLU'd Grad-CAM values); negative for sessions "
            f"{[ids[i] for i in neg]}"
        )
    out_of_range = np.flatnonzero((ya < LIKERT_MIN) | (ya > LIKERT_MAX))
    if out_of_range.size:
        raise StatisticsError(
            f"{category}: consensus must lie in [{LIKERT_MIN}, {LIKERT_MAX}] (Likert); out of range for "
            f"sessions {[ids[i] for i in out_of_range]}"
        )
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise StatisticsError(f"alpha must lie strictly between 0 and 1; got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise StatisticsError(f"seed must be a non-negative integer; got {seed!r}")
    notes: list[str] = []
    loo = loo_spearman(xa, ya, x_name=f"{category} AE", y_name=f"{category} consensus")
    notes.extend(loo.warnings)
    perm = spearman_permutation_test(
        xa, ya, n_resamples=n_resamples, seed=_category_seed(seed, category, 0),
        x_name=f"{category} AE", y_name=f"{category} consensus",
    )
    ci = spearman_bootstrap_ci(
        xa, ya, n_resamples=n_resamples, confidence_level=confidence_level,
        seed=_category_seed(seed, category, 1), x_name=f"{category} AE", y_name=f"{category} consensus",
    )
    notes.extend(ci.warnings)
    partial_rho = partial_p = rho_ae_pred = p_ae_pred = None
    if predicted is not None:
        part = partial_spearman(
            xa, ya, predicted, x_name=f"{category} AE", y_name=f"{category} consensus",
            z_name=f"{category} predicted",
        )
        notes.extend(part.warnings)
        partial_rho, partial_p = part.rho, part.p
        rho_ae_pred, p_ae_pred = part.rho_xz, part.p_xz
    report: OutlierReport = detect_outliers(
        ids, xa, ya, delta_rho=loo.influence, rho=loo.rho, z_cutoff=z_cutoff,
        min_abs_delta_rho=min_abs_delta_rho,
    )
    notes.extend(report.warnings)
    result = CategoryAnalysis(
        category=category,
        n=loo.n,
        sessions=ids,
        rho=loo.rho,
        p=loo.p,
        loo_median_rho=loo.loo_median_rho,
        loo_median_p=loo.loo_median_p,
        loo_rho=tuple(float(v) for v in loo.loo_rho),
        influence=tuple(float(v) for v in loo.influence),
        perm_p=perm.p,
        perm_exact=perm.exact,
        perm_min_p=perm.min_attainable_p,
        n_resamples=perm.n_resamples,
        ci_low=ci.low,
        ci_high=ci.high,
        ci_level=ci.confidence_level,
        ci_method=ci.method,
        n_degenerate_resamples=ci.n_degenerate,
        p_holm=perm.p,
        p_bh=perm.p,
        family_size=1,
        partial_rho=partial_rho,
        partial_p=partial_p,
        partial_p_holm=partial_p,
        rho_ae_pred=rho_ae_pred,
        p_ae_pred=p_ae_pred,
        outliers=report.flags,
        residual_z=tuple(float(v) for v in report.residual_z.z),
        verdict_code="undefined",
        verdict="",
        ae_tracks_consensus=False,
        ae_beyond_prediction=None,
        alpha=float(alpha),
        study=STUDY_REFERENCE.get(category),
        warnings=tuple(dict.fromkeys(notes)),
    )
    return _with_verdict(result)


@dataclass(frozen=True)
class CohortRow:
    """One row of a cohort table: one volume in one category.

    Attributes
    ----------
    session:
        Session identifier.
    category:
        Contract category name.
    ae:
        Attribution Energy (>= 0).
    consensus:
        Consensus Likert score in [1, 5].
    predicted:
        Model's predicted Likert score, or ``None``.
    origin:
        Where the row came from, for error messages (e.g. ``"table.csv line 7"``).
    """

    session: str
    category: str
    ae: float
    consensus: float
    predicted: float | None = None
    origin: str = ""


@dataclass(frozen=True)
class CohortAnalysis:
    """Statistics for every category of a cohort table, with multiplicity across categories.

    Attributes
    ----------
    results:
        One :class:`CategoryAnalysis` per category, contract order first, others after.
    provenance:
        Package, scipy and numpy versions, input sha256 (of the canonical rows), seed,
        n_resamples, confidence level, alpha, thresholds, the multiplicity method.
    skipped:
        ``(category, reason)`` for categories left out with ``skip_small=True``; they are not
        part of the multiplicity family.
    """

    results: tuple[CategoryAnalysis, ...]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names, in report order."""
        return tuple(r.category for r in self.results)

    def __getitem__(self, category: str) -> CategoryAnalysis:
        for r in self.results:
            if r.category == category:
                return r
        raise KeyError(f"no analysis for category {category!r}; analysed: {list(self.categories)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping: one key per category name plus ``"provenance"`` (and ``"skipped"``,
        ``{category: reason}``, when categories were skipped)."""
        out: dict[str, Any] = {r.category: r.to_dict() for r in self.results}
        out["provenance"] = dict(self.provenance)
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        return out


def _row_from(obj: CohortRow | Mapping[str, Any], index: int) -> CohortRow:
    if isinstance(obj, CohortRow):
        return obj
    if not isinstance(obj, Mapping):
        raise StatisticsError(f"row {index}: expected a CohortRow or a mapping; got {type(obj).__name__}")
    missing = [k for k in ("session", "category", "ae", "consensus") if k not in obj]
    if missing:
        raise StatisticsError(f"row {index}: missing field(s) {missing}; need session, category, ae, consensus")
    where = str(obj.get("origin") or f"row {index}")
    vals: dict[str, float | None] = {}
    for key in ("ae", "consensus", "predicted"):
        raw = obj.get(key)
        if raw is None or (key == "predicted" and raw == ""):
            vals[key] = None
            continue
        if isinstance(raw, bool):  # float(True) is 1.0: a flag in a number column is a mistake
            raise StatisticsError(f"{where}, column '{key}': expected a number, got {raw!r}")
        try:
            vals[key] = float(raw)
        except (TypeError, ValueError) as exc:
            raise StatisticsError(f"{where}, column '{key}': expected a number, got {raw!r}") from exc
    if vals["ae"] is None or vals["consensus"] is None:
        raise StatisticsError(f"{where}: 'ae' and 'consensus' must have values")
    session = obj["session"]
    if session is None or not str(session).strip():
        raise StatisticsError(f"{where}: empty session identifier")
    return CohortRow(
        session=str(session),
        category=str(obj["category"]),
        ae=vals["ae"],
        consensus=vals["consensus"],
        predicted=vals["predicted"],
        origin=str(obj.get("origin") or ""),
    )


def _input_sha256(rows: Sequence[CohortRow]) -> str:
    canon = [[r.session, r.category, r.ae, r.consensus, r.predicted] for r in rows]
    canon.sort(key=lambda r: (str(r[1]), str(r[0])))
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def analyze_table(
    rows: Iterable[CohortRow | Mapping[str, Any]],
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = 0,
    confidence_level: float = 0.95,
    alpha: float = 0.05,
    z_cutoff: float = Z_CUTOFF,
    min_abs_delta_rho: float = MIN_ABS_DELTA_RHO,
    skip_small: bool = False,
) -> CohortAnalysis:
    """Analyse a cohort table (rows of session, category, ae, consensus[, predicted]).

    Each category is analysed with :func:`analyze_category`; the permutation p values (and the
    partial-correlation p values) are then adjusted across the categories present (Holm and
    Benjamini-Hochberg) and each verdict is re-derived from the adjusted values.

    Parameters
    ----------
    rows:
        :class:`CohortRow` objects or mappings with keys ``session``, ``category``, ``ae``,
        ``consensus`` and optionally ``predicted`` and ``origin``. In a category, either every
        row has ``predicted`` or none has.
    n_resamples, seed, confidence_level, alpha, z_cutoff, min_abs_delta_rho:
        As in :func:`analyze_category`.
    skip_small:
        False (default): a category with fewer than :data:`MIN_VOLUMES` volumes is an error.
        True: such categories are listed in ``CohortAnalysis.skipped`` instead (useful while a
        monitored cohort is still growing); it is still an error if every category is skipped.

    Returns
    -------
    CohortAnalysis

    Raises
    ------
    StatisticsError
        Empty table, unknown category, duplicate (session, category), non-finite values,
        predicted given for only some rows of a category, or any error of
        :func:`analyze_category` (the message names the category).
    """
    parsed = [_row_from(r, i) for i, r in enumerate(rows, start=1)]
    if not parsed:
        raise StatisticsError("the cohort table has no rows; need session, category, ae, consensus per volume")
    seen: dict[tuple[str, str], str] = {}
    by_cat: dict[str, list[CohortRow]] = {}
    for i, r in enumerate(parsed, start=1):
        where = r.origin or f"row {i}"
        if r.category not in CATEGORIES:
            raise StatisticsError(
                f"{where}: unknown category {r.category!r}; expected one of {', '.join(CATEGORIES)}"
            )
        if not r.session:
            raise StatisticsError(f"{where}: empty session identifier")
        for key in ("ae", "consensus", "predicted"):
            v = getattr(r, key)
            if v is not None and not math.isfinite(v):
                raise StatisticsError(f"{where}, column '{key}': value {v!r} is not finite")
        key2 = (r.session, r.category)
        if key2 in seen:
            raise StatisticsError(
                f"{where}: session {r.session!r} appears twice in category {r.category!r} "
                f"(also {seen[key2]}); keep one row per session and category"
            )
        seen[key2] = where
        by_cat.setdefault(r.category, []).append(r)
    results: list[CategoryAnalysis] = []
    skipped: list[tuple[str, str]] = []
    for cat in [c for c in CATEGORIES if c in by_cat]:
        crow = by_cat[cat]
        if skip_small and len(crow) < MIN_VOLUMES:
            skipped.append((cat, f"{len(crow)} volume(s); at least {MIN_VOLUMES} are needed"))
            continue
        has_pred = [r.predicted is not None for r in crow]
        if any(has_pred) and not all(has_pred):
            missing = [r.origin or r.session for r, h in zip(crow, has_pred, strict=True) if not h]
            raise StatisticsError(
                f"category {cat!r}: 'predicted' is given for some rows but missing for {missing}; "
                "give it for every row of the category or for none"
            )
        pred = [float(r.predicted) for r in crow if r.predicted is not None] if all(has_pred) else None
        try:
            results.append(
                analyze_category(
                    cat,
                    [r.session for r in crow],
                    [r.ae for r in crow],
                    [r.consensus for r in crow],
                    pred,
                    n_resamples=n_resamples,
                    seed=seed,
                    confidence_level=confidence_level,
                    alpha=alpha,
                    z_cutoff=z_cutoff,
                    min_abs_delta_rho=min_abs_delta_rho,
                )
            )
        except StatisticsError as exc:
            raise StatisticsError(f"category {cat!r}: {exc}") from exc
    if not results:
        raise StatisticsError(
            "no category has enough volumes to analyse: "
            + "; ".join(f"{c}: {why}" for c, why in skipped)
        )
    perm = np.array([r.perm_p for r in results])
    p_holm = holm(perm)
    p_bh = benjamini_hochberg(perm)
    part = np.array([math.nan if r.partial_p is None else r.partial_p for r in results])
    part_holm = holm(part)
    m = len(results)
    final = []
    for i, res in enumerate(results):
        final.append(
            _with_verdict(
                replace(
                    res,
                    p_holm=float(p_holm[i]),
                    p_bh=float(p_bh[i]),
                    family_size=m,
                    partial_p_holm=None if res.partial_p is None else float(part_holm[i]),
                )
            )
        )
    provenance = {
        "package": "cbctqa",
        "package_version": _package_version(),
        "scipy_version": scipy.__version__,
        "numpy_version": np.__version__,
        "input_sha256": _input_sha256(parsed),
        "input_sha256_of": "canonical JSON of the rows [session, category, ae, consensus, predicted], sorted",
        "n_rows": len(parsed),
        "seed": int(seed),
        "n_resamples": int(n_resamples),
        "confidence_level": float(confidence_level),
        "alpha": float(alpha),
        "z_cutoff": float(z_cutoff),
        "min_abs_delta_rho": float(min_abs_delta_rho),
        "multiplicity": "Holm and Benjamini-Hochberg on the permutation p across the categories analysed",
        "ci_method": "paired BCa bootstrap (scipy.stats.bootstrap)",
        "permutation": "scipy.stats.permutation_test, pairings, two-sided",
        "study_protocol": "scipy.stats.spearmanr on each leave-one-out subset; median rho and median p",
    }
    return CohortAnalysis(results=tuple(final), provenance=MappingProxyType(provenance), skipped=tuple(skipped))


def _package_version() -> str:
    from qa_core import __version__

    return __version__
