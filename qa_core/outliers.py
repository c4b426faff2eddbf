"""Atypical-attribution detection: which volumes' Attribution Energy does not fit the cohort.

Two independent criteria, each reported with its reason and its numbers:

1. **AE residual from a monotone trend on consensus.** AE is expected to *increase* with the
   consensus Likert score (the study found positive Spearman ρ in every category: better
   images carry more attribution energy), so AE is regressed on consensus with a
   non-decreasing isotonic fit (pool-adjacent-violators, :func:`scipy.optimize.isotonic_regression`).
   By default each volume's residual is taken against the trend fitted on the *other*
   volumes (leave-one-out, "deleted" residual), on AE itself, ``e = AE - trend`` (the log
   scale, ``e = log AE - log trend``, is an option). The residual is converted to a
   robust z score (Iglewicz & Hoaglin 1993)::

       z = 0.6745 * (e - median(e)) / MAD,     MAD = median(|e - median(e)|)

   and ``|z| > 3.5`` is flagged. ``0.6745 = Φ⁻¹(0.75)`` makes ``z`` a standard normal
   deviate for Gaussian residuals. Larger ``|z|`` is more atypical; positive means more AE
   than volumes of the same consensus, negative less.

2. **Influence on the cohort's Spearman ρ.** ``Δρ_i = ρ_full - ρ_without_i`` (from the
   leave-one-out subsets of the study's protocol). A volume is flagged when the robust z of
   its ``Δρ_i`` among the cohort exceeds the same cut-off *and* ``|Δρ_i|`` is at least
   ``min_abs_delta_rho`` (default 0.1: one volume alone moving ρ by a tenth). Measured on 400
   simulated outlier-free cohorts of 16 volumes (median ρ 0.79), the share of cohorts with an
   influence flag was 20% with a 0.05 floor, 9% with 0.1 and 2% with 0.15; the largest
   |Δρ_i| of a clean cohort had median 0.06 and 95th percentile 0.14. ``Δρ_i > 0``: the volume
   supports the association (removing it lowers ρ); ``Δρ_i < 0``: the volume goes against it.

**Why leave-one-out, and raw AE by default.** An in-sample isotonic fit reproduces every volume
that does not violate monotonicity exactly, so most in-sample residuals are 0, MAD shrinks and
ordinary volumes get |z| > 3.5. Measured on 300 simulated outlier-free cohorts of 16 volumes
(true quality q ~ U(1, 5); consensus = mean of 3 ratings round(q + N(0, 0.6)) clipped to 1-5;
numpy seed 0), share of cohorts with any residual flag — AE = exp(0.5 (q + N(0, 0.5)) + N(0, 0.3))·100
(multiplicative spread): in-sample/raw 48%,
in-sample/log 12%, leave-one-out/raw 40%, leave-one-out/log 5%; AE = 500 + 100 q + N(0, 60)
(additive): 18%, 21%, 3%, 6%. ``residuals="in_sample", log_ae=False`` gives the literal
DESIGN recipe. In the leave-one-out mode a gross outlier would drag the trend its neighbours
are judged against (isotonic pooling), so volumes beyond the cut-off are set aside one at a
time, most atypical first (at most a quarter of the cohort), and the median and scale come
from the retained volumes; the report names the volumes set aside. The log scale was the
default while AE was modelled as above; with the shipped model it is not: the maps of
low-scored sessions carry almost no energy (parotid AE 0.005-0.3 where 2-4 is typical), the
log turns them into residuals of robust z down to -13, and on 64 normal simulated sessions
(``benchmarks/bench_alerts.py``) log AE flagged 12 sessions (19 %), raw AE 1 (1.6 %).

**Alerts** (:func:`session_alerts`, what the product writes onto assessments): the image
checks of :mod:`qa_core.image_checks`, attribution atypical for the *prediction*
(:func:`attribution_residual_z`, no ratings needed), and the residual flags above, the two
statistical rules only when the robust z, divided by a measured tail scale
(:data:`TAIL_SCALE`) and read as a normal deviate, survives Holm across the session's
categories at :data:`ALERT_ALPHA`. The DESIGN's flags stay in every analysis; alerts are the
subset worth a QA physicist's time.

**MAD = 0.** With in-sample residuals more than half of them can be exactly 0 and MAD = 0. Then the scale
falls back to ``1.253314 × mean(|e - median(e)|)`` (Iglewicz & Hoaglin; ``1.253314 = √(π/2)``
makes it a consistent estimator of σ for Gaussian data, as ``MAD/0.6745`` is), and the
result says so in ``method`` and ``warnings``. If every value equals the median (no spread
at all), every z is 0 by definition and no volume can be flagged; this is also stated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy.optimize import isotonic_regression

from qa_core.errors import StatisticsError

__all__ = [
    "ALERT_ALPHA",
    "MAD_TO_Z",
    "MEANAD_TO_SIGMA",
    "MIN_ABS_DELTA_RHO",
    "TAIL_SCALE",
    "Z_CUTOFF",
    "OutlierFlag",
    "OutlierReport",
    "RobustZ",
    "SessionAlert",
    "attribution_alerts",
    "attribution_residual_z",
    "consensus_alerts",
    "deleted_residuals",
    "detect_outliers",
    "isotonic_fit",
    "isotonic_predict",
    "robust_z",
    "session_alerts",
]

#: Φ⁻¹(0.75): turns MAD into a standard-normal scale (Iglewicz & Hoaglin 1993).
MAD_TO_Z: Final[float] = 0.6745
#: √(π/2): turns the mean absolute deviation into a standard-normal scale (MAD = 0 fallback).
MEANAD_TO_SIGMA: Final[float] = 1.253314
#: Robust-z cut-off above which a volume is flagged (Iglewicz & Hoaglin's recommendation).
Z_CUTOFF: Final[float] = 3.5
#: Smallest |Δρ_i| that can be flagged as influential (see the module notes for its null rate).
MIN_ABS_DELTA_RHO: Final[float] = 0.1

class CategoryResultLike(Protocol):
    """What :func:`alerts_from_analysis` reads of a per-category analysis result."""

    @property
    def category(self) -> str: ...
    @property
    def sessions(self) -> tuple[str, ...]: ...
    @property
    def residual_z(self) -> tuple[float, ...]: ...
    @property
    def outliers(self) -> tuple[OutlierFlag, ...]: ...


ScaleMethod = Literal["mad", "meanad", "none"]
ResidualKind = Literal["leave_one_out", "in_sample"]
FlagKind = Literal["ae_residual", "influence"]


@dataclass(frozen=True)
class RobustZ:
    """Robust z scores of a vector.

    Attributes
    ----------
    z:
        (n,) float64, read-only. ``(v - median) / scale``; 0 where ``method == "none"``.
    median:
        Median of the values (same unit as the values).
    scale:
        The σ estimate used: ``MAD / 0.6745`` (``method="mad"``), ``1.253314 × meanAD``
        (``"meanad"``, when MAD = 0) or 0.0 (``"none"``: all values equal).
    method:
        Which scale was used, see above.
    warnings:
        Human-readable notes (the MAD = 0 fallback, no spread).
    """

    z: npt.NDArray[np.float64]
    median: float
    scale: float
    method: ScaleMethod
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutlierFlag:
    """One reason why one volume is atypical.

    Attributes
    ----------
    session:
        Session (volume) identifier.
    kind:
        ``"ae_residual"`` (AE off the isotonic trend) or ``"influence"`` (large |Δρ_i|).
    reason:
        One sentence saying what is atypical, with the numbers.
    robust_z:
        The robust z of the criterion that fired (residual z or Δρ z).
    ae, consensus, fitted, residual:
        The volume's AE, consensus (Likert 1-5), the isotonic trend at its consensus (AE
        units; by default the trend of the *other* volumes) and the residual on the analysed
        scale: ``log(ae) - log(fitted)`` by default, ``ae - fitted`` with ``log_ae=False``.
    residual_z:
        Robust z of the AE residual (whichever criterion fired).
    delta_rho:
        ``ρ_full - ρ_without_this_volume``; NaN when no influence values were given or the
        leave-one-out ρ is undefined.
    """

    session: str
    kind: FlagKind
    reason: str
    robust_z: float
    ae: float
    consensus: float
    fitted: float
    residual: float
    residual_z: float
    delta_rho: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping (NaN as ``None``)."""
        out: dict[str, object] = {}
        for key, value in self.__dict__.items():
            out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        return out


@dataclass(frozen=True)
class OutlierReport:
    """Outlier analysis of one category.

    Attributes
    ----------
    sessions:
        Session identifiers, in input order.
    increasing:
        Direction of the isotonic fit (True: AE non-decreasing in consensus).
    residual_kind:
        ``"leave_one_out"`` or ``"in_sample"``.
    log_ae:
        Whether residuals are of log(AE) (True) or raw AE.
    fitted, residuals:
        (n,) float64, read-only: isotonic trend at each volume's consensus (AE units) and the
        residual on the analysed scale.
    residual_z:
        Robust z of the residuals.
    influence_z:
        Robust z of Δρ_i, or ``None`` when no influence values were given.
    flags:
        Every flag, ordered by session input order then kind.
    z_cutoff, min_abs_delta_rho:
        The thresholds used.
    warnings:
        Notes on the analysis (MAD fallbacks, direction disagreeing with the data).
    """

    sessions: tuple[str, ...]
    increasing: bool
    residual_kind: ResidualKind
    log_ae: bool
    fitted: npt.NDArray[np.float64]
    residuals: npt.NDArray[np.float64]
    residual_z: RobustZ
    influence_z: RobustZ | None
    flags: tuple[OutlierFlag, ...]
    z_cutoff: float
    min_abs_delta_rho: float
    warnings: tuple[str, ...] = ()

    @property
    def flagged_sessions(self) -> tuple[str, ...]:
        """Sessions with at least one flag, in input order, without repeats."""
        return tuple(dict.fromkeys(f.session for f in self.flags))


def _vector(values: npt.ArrayLike, name: str, *, allow_nan: bool = False) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatisticsError(f"{name} must be numeric; could not convert it to float64 ({exc})") from exc
    if arr.ndim != 1:
        raise StatisticsError(f"{name} must be a 1-D vector (one value per volume); got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr)) if not allow_nan else np.flatnonzero(np.isinf(arr))
    if bad.size:
        raise StatisticsError(
            f"{name} has non-finite values (NaN or inf) at positions {bad.tolist()}; "
            "remove those volumes or fill in the values"
        )
    return arr


def _readonly(arr: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


def robust_z(values: npt.ArrayLike, *, name: str = "values") -> RobustZ:
    """Robust z scores ``0.6745 (v - median) / MAD`` with a guarded MAD = 0 fallback.

    Parameters
    ----------
    values:
        (n,) finite numbers, n >= 1 (any unit; z is unitless).
    name:
        What the values are, for error messages.

    Returns
    -------
    RobustZ
        ``method="mad"`` normally; ``"meanad"`` when MAD = 0 (scale ``1.253314 × mean|v -
        median|``); ``"none"`` with all z = 0 when every value equals the median.

    Raises
    ------
    StatisticsError
        Empty input, non-finite values, not 1-D.

    Examples
    --------
    >>> r = robust_z([1.0, 2.0, 3.0, 4.0, 100.0])
    >>> r.method, round(float(r.z[-1]), 2)
    ('mad', 65.43)
    """
    v = _vector(values, name)
    if v.size == 0:
        raise StatisticsError(f"{name} is empty; robust z needs at least one value")
    med, scale, method, notes = _robust_scale(v, name)
    z = (v - med) / scale if scale > 0 else np.zeros_like(v)
    return RobustZ(_readonly(z), med, scale, method, notes)


def _robust_scale(v: npt.NDArray[np.float64], name: str) -> tuple[float, float, ScaleMethod, tuple[str, ...]]:
    """Median and σ estimate of ``v`` (MAD, or the mean-absolute-deviation fallback)."""
    med = float(np.median(v))
    dev = v - med
    tol = 1e-12 * max(float(np.max(np.abs(v))), 1e-300)
    mad = float(np.median(np.abs(dev)))
    if mad > tol:
        return med, mad / MAD_TO_Z, "mad", ()
    mean_ad = float(np.mean(np.abs(dev)))
    if mean_ad > tol:
        scale = MEANAD_TO_SIGMA * mean_ad
        note = (
            f"MAD of {name} is 0 (at least half the values equal the median {med:.6g}); "
            f"scale is 1.253314 × mean absolute deviation from the median = {scale:.6g} instead"
        )
        return med, scale, "meanad", (note,)
    note = f"all {name} equal {med:.6g}: no spread, every robust z is 0 and nothing can be flagged"
    return med, 0.0, "none", (note,)


def isotonic_fit(
    consensus: npt.ArrayLike, ae: npt.ArrayLike, *, increasing: bool = True
) -> npt.NDArray[np.float64]:
    """Least-squares monotone fit of AE as a function of consensus.

    Volumes with the same consensus share one fitted value: AE is first averaged within each
    distinct consensus level (weights = number of volumes), then pool-adjacent-violators
    runs over the levels in increasing consensus order.

    Parameters
    ----------
    consensus:
        (n,) consensus Likert scores (1-5, may be fractional and tied).
    ae:
        (n,) Attribution Energy of the same volumes.
    increasing:
        True (default): AE non-decreasing in consensus, the study's direction.

    Returns
    -------
    numpy.ndarray
        (n,) float64 fitted AE at each volume's consensus, in input order.

    Raises
    ------
    StatisticsError
        Lengths differ, empty, or non-finite values.

    Examples
    --------
    >>> isotonic_fit([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0]).tolist()
    [1.0, 2.5, 2.5, 4.0]
    """
    c = _vector(consensus, "consensus")
    a = _vector(ae, "ae")
    if c.size != a.size:
        raise StatisticsError(f"consensus has {c.size} values but ae has {a.size}; give one of each per volume")
    if c.size == 0:
        raise StatisticsError("isotonic fit needs at least one volume; got none")
    levels, inverse, counts = np.unique(c, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=a, minlength=levels.size)
    means = sums / counts
    fit = isotonic_regression(means, weights=counts.astype(np.float64), increasing=increasing).x
    return np.asarray(fit, dtype=np.float64)[inverse]


def isotonic_predict(
    consensus: npt.ArrayLike, ae: npt.ArrayLike, at: npt.ArrayLike, *, increasing: bool = True
) -> npt.NDArray[np.float64]:
    """Fit :func:`isotonic_fit` on (consensus, ae) and evaluate the trend at new consensus values.

    Between fitted consensus levels the trend is interpolated linearly (it stays monotone);
    beyond the lowest or highest level it is held constant at the end value.

    Parameters
    ----------
    consensus, ae:
        (n,) training volumes.
    at:
        (m,) consensus values at which to evaluate the trend.
    increasing:
        Direction of the fit.

    Returns
    -------
    numpy.ndarray
        (m,) float64 trend values (unit of ``ae``).

    Raises
    ------
    StatisticsError
        As :func:`isotonic_fit`, or non-finite ``at``.

    Examples
    --------
    >>> isotonic_predict([1, 2, 3], [1.0, 2.0, 4.0], [2.5, 0.0, 9.0]).tolist()
    [3.0, 1.0, 4.0]
    """
    c = _vector(consensus, "consensus")
    fit = isotonic_fit(c, ae, increasing=increasing)
    levels, first = np.unique(c, return_index=True)
    x = _vector(at, "at")
    return np.asarray(np.interp(x, levels, fit[first]), dtype=np.float64)


def deleted_residuals(
    consensus: npt.ArrayLike, ae: npt.ArrayLike, *, increasing: bool = True
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Leave-one-out ("deleted") residuals from the isotonic trend.

    For each volume i the trend is fitted on the *other* n - 1 volumes and evaluated at
    consensus_i (:func:`isotonic_predict`); the residual is ``ae_i - trend_i``. Unlike the
    in-sample residual, a volume cannot pull the trend onto itself: an isotonic fit reproduces
    every non-violating volume exactly, so in-sample residuals are mostly 0, MAD collapses and
    ordinary volumes get large robust z (see the module notes for the measured false-flag rates).

    Parameters
    ----------
    consensus, ae:
        (n,) values, n >= 2.
    increasing:
        Direction of the fit.

    Returns
    -------
    residuals, trend
        Two (n,) float64 arrays.

    Raises
    ------
    StatisticsError
        Mismatched lengths, fewer than 2 volumes, non-finite values.
    """
    c = _vector(consensus, "consensus")
    a = _vector(ae, "ae")
    if c.size != a.size:
        raise StatisticsError(f"consensus has {c.size} values but ae has {a.size}; give one of each per volume")
    if c.size < 2:
        raise StatisticsError(f"leave-one-out residuals need at least 2 volumes; got {c.size}")
    trend = np.empty_like(a)
    keep = np.ones(a.size, dtype=bool)
    for i in range(a.size):
        keep[i] = False
        trend[i] = isotonic_predict(c[keep], a[keep], c[i : i + 1], increasing=increasing)[0]
        keep[i] = True
    return a - trend, trend


def _sequential_deleted_z(
    c: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    *,
    increasing: bool,
    z_cutoff: float,
    name: str,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], RobustZ, list[int], bool]:
    """Deleted residuals with gross outliers set aside one at a time (no swamping).

    A gross outlier pulls the isotonic trend that its neighbours' deleted residuals are taken
    from (it is pooled with them), which would make ordinary neighbours look atypical. So:
    compute every volume's residual against the trend of the other *retained* volumes, the
    median and scale from the retained volumes' residuals; if some retained volume has
    ``|z| > z_cutoff``, set the most extreme aside and repeat (at most a quarter of the volumes).
    Returns residuals, trend, the final robust z (for every volume, on the retained volumes'
    median and scale), the set-aside positions in order, and whether the cap was reached.
    """
    n = y.size
    out = np.zeros(n, dtype=bool)
    order: list[int] = []
    max_out = max(1, n // 4)
    capped = False
    while True:
        trend = np.empty(n)
        for i in range(n):
            train = ~out
            train[i] = False
            trend[i] = isotonic_predict(c[train], y[train], c[i : i + 1], increasing=increasing)[0]
        resid = y - trend
        med, scale, method, notes = _robust_scale(resid[~out], name)
        z = (resid - med) / scale if scale > 0 else np.zeros(n)
        cand = np.flatnonzero(~out & (np.abs(z) > z_cutoff))
        if cand.size == 0:
            break
        if len(order) >= max_out:
            capped = True
            break
        worst = int(cand[np.argmax(np.abs(z[cand]))])
        out[worst] = True
        order.append(worst)
    return resid, trend, RobustZ(_readonly(z), med, scale, method, notes), order, capped


def detect_outliers(
    sessions: Sequence[str],
    ae: npt.ArrayLike,
    consensus: npt.ArrayLike,
    *,
    delta_rho: npt.ArrayLike | None = None,
    rho: float | None = None,
    increasing: bool = True,
    z_cutoff: float = Z_CUTOFF,
    min_abs_delta_rho: float = MIN_ABS_DELTA_RHO,
    residuals: ResidualKind = "leave_one_out",
    log_ae: bool = False,
) -> OutlierReport:
    """Flag volumes whose AE is off the monotone trend on consensus, or that sway ρ.

    Parameters
    ----------
    sessions:
        (n,) unique session identifiers.
    ae:
        (n,) Attribution Energy (>= 0, unnormalised Grad-CAM sum).
    consensus:
        (n,) consensus Likert scores, 1-5.
    delta_rho:
        Optional (n,) influence ``Δρ_i = ρ_full - ρ_without_i``; NaN entries (undefined
        leave-one-out ρ) are never flagged and are left out of the robust scale.
    rho:
        Full-sample ρ, used only to word the influence reasons (``ρ a → b``).
    increasing:
        Direction of the isotonic fit; True is the study's (AE rises with quality).
    z_cutoff:
        ``|robust z|`` above which a volume is flagged (default 3.5).
    min_abs_delta_rho:
        Smallest ``|Δρ_i|`` that may be flagged (default 0.1).
    residuals:
        ``"leave_one_out"`` (default): each volume against the trend of the others, with
        gross outliers set aside one at a time so that they do not drag the trend of their
        neighbours (median and scale from the retained volumes); ``"in_sample"``: against the trend fitted with it (the
        literal DESIGN recipe; flags far more ordinary volumes, see the module notes).
    log_ae:
        False (default): residuals of AE itself, the DESIGN's recipe. True: residuals of
        log(AE), i.e. AE judged as a *ratio* to the trend (for AE whose spread grows with its
        level); falls back to raw AE, with a warning, when some AE is 0. With the shipped
        model the log scale is the worse choice: maps of low-scored sessions carry nearly no
        energy (AE 0.005-0.3 against 2-4 typical), their log residuals reach robust z -13,
        and on 64 normal simulated sessions it flagged 12 (19 %) against 1 (1.6 %) on the raw
        scale (``benchmarks/bench_alerts.py``).

    Returns
    -------
    OutlierReport

    Raises
    ------
    StatisticsError
        Mismatched lengths, fewer than 3 volumes, duplicate or empty sessions, non-finite AE or
        consensus, a non-positive cut-off.
    """
    ids = [str(s) for s in sessions]
    a = _vector(ae, "ae")
    c = _vector(consensus, "consensus")
    n = len(ids)
    if not (a.size == c.size == n):
        raise StatisticsError(
            f"outlier detection needs one session, AE and consensus per volume; got {n} sessions, "
            f"{a.size} AE values and {c.size} consensus values"
        )
    if n < 3:
        raise StatisticsError(f"outlier detection needs at least 3 volumes; got {n}")
    if any(not s for s in ids):
        raise StatisticsError("session identifiers must be non-empty strings")
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise StatisticsError(f"duplicate session identifiers {dupes}; each volume must appear once")
    if not (z_cutoff > 0 and math.isfinite(z_cutoff)):
        raise StatisticsError(f"z_cutoff must be a positive finite number; got {z_cutoff}")
    if not (min_abs_delta_rho >= 0 and math.isfinite(min_abs_delta_rho)):
        raise StatisticsError(f"min_abs_delta_rho must be finite and >= 0; got {min_abs_delta_rho}")

    if residuals not in ("leave_one_out", "in_sample"):
        raise StatisticsError(f"residuals must be 'leave_one_out' or 'in_sample'; got {residuals!r}")
    warnings: list[str] = []
    use_log = bool(log_ae)
    if use_log and np.any(a <= 0):
        use_log = False
        warnings.append("some AE is 0, so residuals are of raw AE, not log AE")
    y = np.log(a) if use_log else a
    scale_name = "log AE" if use_log else "AE"
    if residuals == "leave_one_out":
        resid, trend_y, rz, set_aside, capped = _sequential_deleted_z(
            c, y, increasing=increasing, z_cutoff=z_cutoff, name=f"{scale_name} residuals"
        )
        if set_aside:
            warnings.append(
                "set aside before estimating the trend and scale for the others (one at a time, most "
                f"atypical first): {', '.join(ids[i] for i in set_aside)}"
            )
        if capped:
            warnings.append(
                f"stopped setting volumes aside at {len(set_aside)} of {n} (a quarter): if more volumes "
                "look atypical, AE does not follow a monotone trend in consensus for this cohort"
            )
    else:
        trend_y = isotonic_fit(c, y, increasing=increasing)
        resid = y - trend_y
        rz = robust_z(resid, name=f"{scale_name} residuals")
    warnings.extend(rz.warnings)
    fitted = np.exp(trend_y) if use_log else trend_y
    direction = "increasing" if increasing else "decreasing"
    # Does the data agree with the assumed direction? Compare with the opposite fit's SSE.
    same = y - isotonic_fit(c, y, increasing=increasing)
    opposite = y - isotonic_fit(c, y, increasing=not increasing)
    if float(np.sum(opposite**2)) < float(np.sum(same**2)):
        warnings.append(
            f"AE fits a {'decreasing' if increasing else 'increasing'} trend in consensus better than "
            f"the assumed {direction} one; residual flags mark departures from a trend the data do not follow"
        )
    trend_of = "of the other volumes" if residuals == "leave_one_out" else "of AE on consensus"

    dr: npt.NDArray[np.float64] | None = None
    iz: RobustZ | None = None
    dz = np.full(n, np.nan)
    if delta_rho is not None:
        dr = _vector(delta_rho, "delta_rho", allow_nan=True)
        if dr.size != n:
            raise StatisticsError(f"delta_rho has {dr.size} values for {n} volumes")
        ok = np.isfinite(dr)
        if ok.sum() >= 1:
            iz = robust_z(dr[ok], name="influence Δρ")
            warnings.extend(iz.warnings)
            dz[ok] = iz.z
            iz = RobustZ(_readonly(dz), iz.median, iz.scale, iz.method, iz.warnings)
        if not ok.all():
            warnings.append(
                f"Δρ undefined for {int((~ok).sum())} volume(s) (constant leave-one-out subset); not assessed"
            )

    flags: list[OutlierFlag] = []
    for i, sid in enumerate(ids):
        d_i = float(dr[i]) if dr is not None else math.nan
        z_i = float(rz.z[i])

        def make(kind: FlagKind, reason: str, z: float, i: int = i, sid: str = sid, d_i: float = d_i) -> OutlierFlag:
            return OutlierFlag(
                session=sid,
                kind=kind,
                reason=reason,
                robust_z=z,
                ae=float(a[i]),
                consensus=float(c[i]),
                fitted=float(fitted[i]),
                residual=float(resid[i]),
                residual_z=float(rz.z[i]),
                delta_rho=d_i,
            )

        if abs(z_i) > z_cutoff:
            side = "above" if z_i > 0 else "below"
            reason = (
                f"{scale_name} {z_i:+.1f} robust-z {side} the {direction} isotonic trend {trend_of} "
                f"(AE {a[i]:.4g} vs trend {fitted[i]:.4g} at consensus {c[i]:.2f}; cut-off |z| > {z_cutoff:g})"
            )
            flags.append(make("ae_residual", reason, z_i))
        dz_i = float(dz[i])
        if dr is not None and math.isfinite(dz_i) and abs(dz_i) > z_cutoff and abs(d_i) >= min_abs_delta_rho:
            verb, role = ("lowers", "supports the association") if d_i > 0 else ("raises", "goes against the association")
            change = f"by {abs(d_i):.2f}"
            if rho is not None and math.isfinite(rho):
                change += f" (ρ {rho:.2f} → {rho - d_i:.2f})"
            reason = (
                f"removing this volume {verb} ρ {change}: it {role}; influence robust-z {dz_i:+.1f} "
                f"(cut-off |z| > {z_cutoff:g} and |Δρ| ≥ {min_abs_delta_rho:g})"
            )
            flags.append(make("influence", reason, dz_i))

    return OutlierReport(
        sessions=tuple(ids),
        increasing=increasing,
        residual_kind=residuals,
        log_ae=use_log,
        fitted=_readonly(fitted),
        residuals=_readonly(resid),
        residual_z=rz,
        influence_z=iz,
        flags=tuple(flags),
        z_cutoff=float(z_cutoff),
        min_abs_delta_rho=float(min_abs_delta_rho),
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------- alerts

#: Family-wise error per session and rule for the statistical alerts (Holm across the
#: categories of one session).
ALERT_ALPHA: Final[float] = 0.01
#: How much heavier than normal the tails of the robust z are on outlier-free cohorts: the
#: robust z is divided by this before it is read as a normal deviate. Measured with the
#: shipped model on 64 normal simulated sessions (48 slices, 256², seed 900): the 99th
#: percentile of |z| over the 320 session-categories divided by Φ⁻¹(0.995) = 2.576 (see
#: ``benchmarks/bench_alerts.py``, which prints it): 1.22 (attribution vs prediction) and
#: 1.18 (AE vs consensus, raw AE); 1.5 leaves room for the uncertainty of a 99th percentile
#: from 320 values and for cohort-to-cohort variation (with 1.0, 6 % and 5 % of those normal
#: sessions were alerted; with 1.5, none). With 1.0 the z is read as normal.
TAIL_SCALE: Final[dict[str, float]] = {"attribution_vs_prediction": 1.5, "ae_vs_consensus": 1.5}
#: Rule names of :class:`SessionAlert` besides the image checks (``image:<check>``).
AlertRule = Literal["attribution_vs_prediction", "ae_vs_consensus", "influence"]


@dataclass(frozen=True)
class SessionAlert:
    """One alert on one session: what a QA physicist is asked to look at.

    Attributes
    ----------
    session:
        Session identifier.
    category:
        The category concerned, or ``"all"`` for an image-level finding (every score of the
        session is affected).
    rule:
        ``image:<check>`` (:mod:`qa_core.image_checks`), ``attribution_vs_prediction``,
        ``ae_vs_consensus`` or ``influence``.
    reason:
        One plain sentence with the numbers.
    value:
        The rule's statistic (robust z, Δρ, or the image check's measurement).
    p_holm:
        Holm-adjusted p across the session's categories for the statistical rules; NaN for
        image checks.
    """

    session: str
    category: str
    rule: str
    reason: str
    value: float
    p_holm: float = math.nan

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping (NaN as ``None``)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()
        }


def _two_sided_p(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    from scipy.special import erfc

    return np.asarray(erfc(np.abs(z) / math.sqrt(2.0)), dtype=np.float64)


def _holm(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Holm step-down adjusted p values of one family (NaN entries are left out)."""
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[idx])))
        out[idx] = running
    return out


def attribution_residual_z(
    sessions: Sequence[str], ae: npt.ArrayLike, predicted: npt.ArrayLike, *, z_cutoff: float = Z_CUTOFF
) -> RobustZ:
    """Robust z of log AE around its trend on the *predicted* score (no ratings needed).

    With a global-average-pool head, AE largely restates the prediction, so a session whose AE
    is far from that of sessions with the same predicted score has a map unlike the cohort's:
    the attribution is atypical given what the model says. The trend is a Theil-Sen line of
    AE on the prediction (median of pairwise slopes: a single odd session cannot pull it,
    breakdown 29 %; a line because the pre-ReLU map sums to ``y - b``), the residual
    ``e = AE - trend`` and the robust z ``0.6745 (e - median e) / MAD`` (:func:`robust_z`).
    Measured on the shipped model's 64 normal simulated sessions (``benchmarks/bench_alerts.py``):
    a leave-one-out isotonic fit held flat beyond the end sessions gave the extreme-scored
    sessions |z| up to 4.7, and log AE (near-zero maps of low-scored sessions) up to 5.8;
    this line on raw AE gives at most 3.5.

    Raises
    ------
    StatisticsError
        Fewer than 3 sessions, mismatched lengths, non-finite values, AE < 0.
    """
    ids = [str(s) for s in sessions]
    a = _vector(ae, "ae")
    x = _vector(predicted, "predicted")
    if not (a.size == x.size == len(ids)):
        raise StatisticsError(
            f"attribution residuals need one AE and one prediction per session; got {len(ids)} sessions, "
            f"{a.size} AE values and {x.size} predictions"
        )
    if a.size < 3:
        raise StatisticsError(f"attribution residuals need at least 3 sessions; got {a.size}")
    if np.any(a < 0):
        bad = [ids[i] for i in np.flatnonzero(a < 0)]
        raise StatisticsError(f"AE must be >= 0 (a sum of ReLU'd maps); not so for sessions {bad}")
    from scipy.stats import theilslopes

    y = a
    if float(np.ptp(x)) == 0.0:
        trend = np.full_like(y, float(np.median(y)))
    else:
        fit = theilslopes(y, x)
        trend = fit.intercept + fit.slope * x
    return robust_z(y - trend, name="AE residuals from the trend on the prediction")


def attribution_alerts(
    sessions: Sequence[str],
    ae: dict[str, npt.ArrayLike],
    predicted: dict[str, npt.ArrayLike],
    *,
    alpha: float = ALERT_ALPHA,
    z_cutoff: float = Z_CUTOFF,
    tail_scale: float | None = None,
) -> list[SessionAlert]:
    """``attribution_vs_prediction`` alerts: AE atypical for the predicted score (no ratings).

    Per category the robust z of :func:`attribution_residual_z`, divided by ``tail_scale``
    (default :data:`TAIL_SCALE`) and read as a normal deviate, two-sided p, Holm across the
    session's categories; alert where the adjusted p < ``alpha``. Categories with fewer than
    4 sessions are skipped.
    """
    scale = TAIL_SCALE["attribution_vs_prediction"] if tail_scale is None else float(tail_scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise StatisticsError(f"tail_scale must be a positive finite number; got {tail_scale!r}")
    ids = [str(s) for s in sessions]
    n = len(ids)
    cats = [c for c in ae if c in predicted]
    z = np.full((n, len(cats)), np.nan)
    for j, cat in enumerate(cats):
        a = _vector(ae[cat], f"{cat} AE")
        if n < 4 or a.size != n or np.any(a < 0):
            continue
        z[:, j] = attribution_residual_z(ids, a, predicted[cat], z_cutoff=z_cutoff).z
    adj = np.vstack([_holm(row) for row in _two_sided_p(z / scale)]) if n else z
    out: list[SessionAlert] = []
    for i, sid in enumerate(ids):
        for j, cat in enumerate(cats):
            if np.isfinite(adj[i, j]) and adj[i, j] < alpha:
                zi = float(z[i, j])
                pred = float(np.asarray(predicted[cat], dtype=np.float64)[i])
                out.append(
                    SessionAlert(
                        sid,
                        cat,
                        "attribution_vs_prediction",
                        f"{cat}: the Grad-CAM map holds {'more' if zi > 0 else 'less'} attribution energy "
                        f"than other sessions with the same predicted score {pred:.2f} (robust z {zi:+.1f}, "
                        f"Holm p {adj[i, j]:.2g} over {len(cats)} categories): the model looked at this "
                        "image unlike the others, open its overlay",
                        zi,
                        float(adj[i, j]),
                    )
                )
    return out


def consensus_alerts(
    sessions: Sequence[str],
    residual_z: dict[str, npt.ArrayLike],
    flags: dict[str, Sequence[OutlierFlag]],
    *,
    alpha: float = ALERT_ALPHA,
    tail_scale: float | None = None,
) -> list[SessionAlert]:
    """Alerts from the DESIGN's flags (:func:`detect_outliers`) after a Holm step per session.

    ``residual_z``: category -> (n,) robust z of the AE-on-consensus residual of ``sessions``
    (NaN where a session is not analysed); ``flags``: category -> that category's flags. An
    ``ae_residual`` flag (|z| > 3.5) becomes an ``ae_vs_consensus`` alert only when the
    two-sided normal p of ``z / tail_scale`` (default :data:`TAIL_SCALE`), Holm-adjusted
    across the session's categories, is below ``alpha``; ``influence`` flags pass unchanged.
    """
    scale = TAIL_SCALE["ae_vs_consensus"] if tail_scale is None else float(tail_scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise StatisticsError(f"tail_scale must be a positive finite number; got {tail_scale!r}")
    ids = [str(s) for s in sessions]
    pos = {s: i for i, s in enumerate(ids)}
    cats = list(residual_z)
    z = np.full((len(ids), len(cats)), np.nan)
    for j, cat in enumerate(cats):
        col = np.asarray(residual_z[cat], dtype=np.float64)
        if col.shape != (len(ids),):
            raise StatisticsError(f"{cat}: residual z has {col.size} values for {len(ids)} sessions")
        z[:, j] = col
    adj = np.vstack([_holm(row) for row in _two_sided_p(z / scale)]) if ids else z
    out: list[SessionAlert] = []
    for j, cat in enumerate(cats):
        for flag in flags.get(cat, ()):
            i = pos.get(flag.session)
            if i is None:
                continue
            if flag.kind == "ae_residual" and np.isfinite(adj[i, j]) and adj[i, j] < alpha:
                out.append(
                    SessionAlert(
                        flag.session,
                        cat,
                        "ae_vs_consensus",
                        f"{cat}: attribution energy does not fit the radiologists' consensus "
                        f"{flag.consensus:.2f} (AE {flag.ae:.4g} vs {flag.fitted:.4g} for sessions rated "
                        f"alike, robust z {flag.residual_z:+.1f}, Holm p {adj[i, j]:.2g} over "
                        f"{len(cats)} categories)",
                        flag.residual_z,
                        float(adj[i, j]),
                    )
                )
            elif flag.kind == "influence":
                out.append(SessionAlert(flag.session, cat, "influence", f"{cat}: {flag.reason}", flag.delta_rho))
    return out


def _ordered(ids: Sequence[str], alerts: Sequence[SessionAlert]) -> tuple[SessionAlert, ...]:
    order = {s: i for i, s in enumerate(ids)}
    rank = {"attribution_vs_prediction": 1, "ae_vs_consensus": 2, "influence": 3}
    return tuple(
        sorted(alerts, key=lambda a: (order.get(a.session, len(order)), rank.get(a.rule, 0)))
    )


def session_alerts(
    sessions: Sequence[str],
    ae: dict[str, npt.ArrayLike],
    predicted: dict[str, npt.ArrayLike],
    *,
    consensus: dict[str, npt.ArrayLike] | None = None,
    image_checks: dict[str, object] | None = None,
    alpha: float = ALERT_ALPHA,
    z_cutoff: float = Z_CUTOFF,
    min_abs_delta_rho: float = MIN_ABS_DELTA_RHO,
) -> tuple[SessionAlert, ...]:
    """The default alerts of a cohort: few, and each one worth reading.

    Rules, in the order they are reported for a session:

    1. **Image checks** (``image:<check>``, category ``all``): every flagged check of
       :func:`qa_core.image_checks.check_image` (``image_checks`` maps a session to its
       :class:`~qa_core.image_checks.ImageCheckReport`). Independent of the cohort and the
       ratings; limits outside the normal range.
    2. **Attribution atypical for the prediction** (``attribution_vs_prediction``,
       :func:`attribution_alerts`): no ratings needed.
    3. **AE off its trend on the consensus** (``ae_vs_consensus``, needs ``consensus``): the
       DESIGN's outlier (:func:`detect_outliers`, |z| > ``z_cutoff`` = 3.5) *and* a Holm step
       across the session's categories at ``alpha`` (:func:`consensus_alerts`).
    4. **Influence** (``influence``, needs ``consensus``): the DESIGN's |Δρ_i| rule, unchanged.

    Why the Holm step on a tail-scaled z: a session is tested in five categories, so the
    chance of a false alert per session is about five times that of one test, and the
    residuals' tails are heavier than normal (:data:`TAIL_SCALE`). With log AE and the 3.5
    cut-off alone, 12 of 64 normal simulated sessions (19 %) were flagged; with these
    defaults none of them raises a statistical alert, and every injected anomaly is caught
    by an image check (``benchmarks/bench_alerts.py``).

    Parameters
    ----------
    sessions:
        (n,) unique session identifiers, n >= 4.
    ae, predicted:
        Category -> (n,) AE and predicted score of the sessions.
    consensus:
        Optional category -> (n,) consensus ratings; enables rules 3 and 4.
    image_checks:
        Optional session -> :class:`~qa_core.image_checks.ImageCheckReport`.
    alpha, z_cutoff, min_abs_delta_rho:
        See above.

    Returns
    -------
    tuple of SessionAlert
        Ordered by session (input order), then rule.

    Raises
    ------
    StatisticsError
        Fewer than 4 sessions, duplicates, mismatched lengths, non-finite values, a bad
        ``alpha``.
    """
    from qa_core.image_checks import ImageCheckReport

    ids = [str(s) for s in sessions]
    n = len(ids)
    if n < 4:
        raise StatisticsError(f"alerts need at least 4 sessions; got {n}")
    if len(set(ids)) != n:
        dupes = sorted({s for s in ids if ids.count(s) > 1})
        raise StatisticsError(f"duplicate session identifiers {dupes}; each session must appear once")
    if not (0 < alpha < 1):
        raise StatisticsError(f"alpha must lie strictly between 0 and 1; got {alpha!r}")
    alerts: list[SessionAlert] = []
    for sid in ids:
        report = (image_checks or {}).get(sid)
        if isinstance(report, ImageCheckReport):
            alerts.extend(
                SessionAlert(sid, "all", f"image:{c.name}", c.reason, c.value) for c in report.flagged
            )
    alerts.extend(attribution_alerts(ids, ae, predicted, alpha=alpha, z_cutoff=z_cutoff))
    if consensus is not None:
        from qa_core.statistics import loo_spearman

        zs: dict[str, npt.ArrayLike] = {}
        flags: dict[str, Sequence[OutlierFlag]] = {}
        for cat in ae:
            if cat not in consensus:
                continue
            loo = loo_spearman(ae[cat], consensus[cat])
            rep = detect_outliers(
                ids,
                ae[cat],
                consensus[cat],
                delta_rho=loo.influence,
                rho=loo.rho,
                z_cutoff=z_cutoff,
                min_abs_delta_rho=min_abs_delta_rho,
            )
            zs[cat] = rep.residual_z.z
            flags[cat] = rep.flags
        alerts.extend(consensus_alerts(ids, zs, flags, alpha=alpha))
    return _ordered(ids, alerts)


def alerts_from_analysis(
    results: Sequence[CategoryResultLike],
    predicted: dict[str, dict[str, float]],
    ae: dict[str, dict[str, float]],
    *,
    alpha: float = ALERT_ALPHA,
) -> tuple[SessionAlert, ...]:
    """The default statistical alerts of a cohort analysed by :func:`qa_core.statistics.analyze_table`.

    Parameters
    ----------
    results:
        The analysis' per-category results (``category``, ``sessions``, ``residual_z`` and
        ``outliers``, as :class:`qa_core.statistics.CategoryAnalysis` has them).
    predicted, ae:
        Session -> category -> predicted score and AE (from the assessments); sessions with a
        non-finite or non-positive value in a category are left out of that category's
        ``attribution_vs_prediction`` rule.
    alpha:
        Holm level (see :func:`session_alerts`).

    Returns
    -------
    tuple of SessionAlert
        ``attribution_vs_prediction``, ``ae_vs_consensus`` and ``influence`` alerts (image
        checks are recorded at scoring time).
    """
    ids = list(dict.fromkeys([*(s for r in results for s in r.sessions), *predicted]))
    zs: dict[str, npt.ArrayLike] = {}
    flags: dict[str, Sequence[OutlierFlag]] = {}
    for r in results:
        col = np.full(len(ids), np.nan)
        where = {s: i for i, s in enumerate(ids)}
        for s, z in zip(r.sessions, r.residual_z, strict=True):
            col[where[s]] = z
        zs[r.category] = col
        flags[r.category] = tuple(r.outliers)
    alerts = consensus_alerts(ids, zs, flags, alpha=alpha)
    cats = list(dict.fromkeys(c for row in predicted.values() for c in row))
    keep_all = [
        s
        for s in predicted
        if all(
            math.isfinite(predicted[s].get(c, math.nan)) and ae.get(s, {}).get(c, math.nan) >= 0
            for c in cats
        )
    ]
    if len(keep_all) >= 4:
        alerts.extend(
            attribution_alerts(
                keep_all,
                {c: [ae[s][c] for s in keep_all] for c in cats},
                {c: [predicted[s][c] for s in keep_all] for c in cats},
                alpha=alpha,
            )
        )
    return _ordered(ids, alerts)
