"""Inter-rater agreement of the radiologists' Likert ratings, per category.

Two coefficients, because they answer different questions:

* **ICC(2,1)** (Shrout & Fleiss 1979, case 2; McGraw & Wong 1996 "ICC(A,1)"): two-way
  random effects, *absolute agreement*, single rater. Raters are a random sample of
  possible raters and systematic rater offsets (one rater always one point harsher) count
  as disagreement::

      ICC(2,1) = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)

  with MSR, MSC, MSE the sessions (rows), raters (columns) and residual mean squares of the
  n × k two-way ANOVA without replication. Needs complete data: sessions not rated by every
  rater are left out (listwise) and counted. The CI is McGraw & Wong's (1996, Table 7,
  case 2A) with Satterthwaite's degrees of freedom, as in R ``psych::ICC`` and ``pingouin``.
  It treats the 1-5 scores as interval data.

* **Krippendorff's α** (Krippendorff 2004, 2011), default *ordinal* metric: respects that Likert
  scores are ordered but not equally spaced, and allows missing ratings (any rater may skip any
  session). ``α = 1 - D_o / D_e`` from the coincidence matrix of pairable values. Units rated
  by fewer than 2 raters are not pairable and are left out.

Both range up to 1 (perfect agreement; higher is better); 0 is chance-level agreement and
negative values are worse than chance. Commonly read (Koo & Li 2016 for ICC; Krippendorff
2004 for α): ICC < 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good, > 0.9 excellent; α >= 0.8
reliable, 0.667-0.8 tentative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from qa_core.categories import CATEGORIES
from qa_core.consensus import RatingRow, parse_rating_rows
from qa_core.errors import StatisticsError

__all__ = [
    "CategoryAgreement",
    "IccResult",
    "KrippendorffResult",
    "agreement_by_category",
    "icc2_1",
    "krippendorff_alpha",
    "ratings_matrix",
]

Level = Literal["nominal", "ordinal", "interval", "ratio"]


@dataclass(frozen=True)
class IccResult:
    """ICC(2,1): two-way random effects, absolute agreement, single rater.

    Attributes
    ----------
    icc:
        The coefficient (unitless, <= 1; higher is better).
    ci_low, ci_high, confidence_level:
        McGraw & Wong (1996) interval; NaN when it cannot be formed (see ``warnings``).
    f, df1, df2, p:
        F test of ICC = 0: ``F = MSR / MSE`` with ``(n - 1, (n - 1)(k - 1))`` df, one-sided p.
    n_targets, n_raters:
        Sessions used (complete rows) and raters.
    n_dropped:
        Sessions left out because some rater did not rate them.
    ms_rows, ms_cols, ms_error:
        ANOVA mean squares (Likert points squared).
    warnings:
        Notes (dropped sessions, no between-session variance).
    """

    icc: float
    ci_low: float
    ci_high: float
    confidence_level: float
    f: float
    df1: int
    df2: int
    p: float
    n_targets: int
    n_raters: int
    n_dropped: int
    ms_rows: float
    ms_cols: float
    ms_error: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class KrippendorffResult:
    """Krippendorff's α.

    Attributes
    ----------
    alpha:
        ``1 - D_o / D_e`` (<= 1; higher is better). NaN when D_e = 0 (a single value was
        used throughout: agreement is perfect but α is undefined), with a warning.
    level:
        Metric: ``"nominal"``, ``"ordinal"``, ``"interval"`` or ``"ratio"``.
    n_units:
        Pairable units (rated by >= 2 raters).
    n_values:
        Pairable values (ratings in those units).
    observed_disagreement, expected_disagreement:
        D_o and D_e.
    warnings:
        Notes (unpairable units left out, α undefined).
    """

    alpha: float
    level: Level
    n_units: int
    n_values: int
    observed_disagreement: float
    expected_disagreement: float
    warnings: tuple[str, ...] = ()


def _matrix(ratings: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    try:
        m = np.asarray(ratings, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatisticsError(f"{name} must be a numeric (sessions × raters) matrix ({exc})") from exc
    if m.ndim != 2:
        raise StatisticsError(f"{name} must be 2-D, sessions × raters; got shape {m.shape}")
    if np.isinf(m).any():
        raise StatisticsError(f"{name} has infinite values; use NaN for a missing rating")
    return m


def icc2_1(ratings: npt.ArrayLike, *, confidence_level: float = 0.95) -> IccResult:
    """ICC(2,1) of a sessions × raters matrix (Shrout & Fleiss 1979, case 2, single rater).

    Parameters
    ----------
    ratings:
        (n_sessions, n_raters) float scores; NaN marks a missing rating. Sessions with any
        NaN are left out (listwise) and counted in ``n_dropped``.
    confidence_level:
        Of the McGraw & Wong interval, in (0, 1).

    Returns
    -------
    IccResult

    Raises
    ------
    StatisticsError
        Not 2-D, inf values, fewer than 2 raters, fewer than 2 complete sessions, no variation
        at all, or a bad confidence level.

    Examples
    --------
    Shrout & Fleiss (1979), Table 2 (6 targets, 4 judges), ICC(2,1) = 0.29:

    >>> sf = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    >>> round(icc2_1(sf).icc, 2)
    0.29
    """
    m = _matrix(ratings, "ratings")
    if not (isinstance(confidence_level, float | int) and 0 < confidence_level < 1):
        raise StatisticsError(f"confidence_level must lie strictly between 0 and 1; got {confidence_level!r}")
    if m.shape[1] < 2:
        raise StatisticsError(f"ICC needs at least 2 raters; got {m.shape[1]}")
    complete = ~np.isnan(m).any(axis=1)
    dropped = int((~complete).sum())
    x = m[complete]
    n, k = x.shape
    notes: list[str] = []
    if dropped:
        notes.append(f"{dropped} session(s) not rated by every rater were left out (ICC needs complete data)")
    if n < 2:
        raise StatisticsError(
            f"ICC needs at least 2 sessions rated by all {k} raters; got {n} ({dropped} incomplete)"
        )
    grand = x.mean()
    ss_total = float(np.sum((x - grand) ** 2))
    if ss_total == 0:
        raise StatisticsError("every rating is identical: ICC is undefined (no variance to apportion)")
    ss_rows = float(k * np.sum((x.mean(axis=1) - grand) ** 2))
    ss_cols = float(n * np.sum((x.mean(axis=0) - grand) ** 2))
    ss_err = ss_total - ss_rows - ss_cols
    df_r, df_c, df_e = n - 1, k - 1, (n - 1) * (k - 1)
    msr, msc, mse = ss_rows / df_r, ss_cols / df_c, max(ss_err, 0.0) / df_e
    icc = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    if mse > 0:
        f = msr / mse
        p = float(stats.f.sf(f, df_r, df_e))
    else:
        f, p = math.inf, 0.0
    alpha = 1.0 - float(confidence_level)
    low = high = math.nan
    if mse > 0 and 0 < icc < 1:
        a = k * icc / (n * (1 - icc))
        b = 1 + k * icc * (n - 1) / (n * (1 - icc))
        v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1)))
        fu = float(stats.f.ppf(1 - alpha / 2, n - 1, v))
        fl = float(stats.f.ppf(1 - alpha / 2, v, n - 1))
        low = n * (msr - fu * mse) / (fu * (k * msc + (k * n - k - n) * mse) + n * msr)
        high = n * (fl * msr - mse) / (k * msc + (k * n - k - n) * mse + n * fl * msr)
    else:
        notes.append(
            "no McGraw & Wong interval: it needs 0 < ICC < 1 and residual variance > 0 "
            f"(ICC = {icc:.3g}, MSE = {mse:.3g})"
        )
    return IccResult(
        icc=float(icc), ci_low=float(low), ci_high=float(high), confidence_level=float(confidence_level),
        f=float(f), df1=df_r, df2=df_e, p=p, n_targets=n, n_raters=k, n_dropped=dropped,
        ms_rows=msr, ms_cols=msc, ms_error=mse, warnings=tuple(notes),
    )


def krippendorff_alpha(ratings: npt.ArrayLike, *, level: Level = "ordinal") -> KrippendorffResult:
    """Krippendorff's α of a sessions × raters matrix with missing ratings (NaN).

    Coincidence matrix ``o_ck = Σ_u Σ_{i≠j} [v_ui = c][v_uj = k] / (m_u - 1)`` over units with
    ``m_u >= 2`` ratings; ``n_c = Σ_k o_ck``, ``n = Σ_c n_c``;
    ``α = 1 - (n - 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck``. Metrics δ²: nominal ``[c ≠ k]``;
    ordinal ``(Σ_{g=c..k} n_g - (n_c + n_k)/2)²``; interval ``(c - k)²``; ratio
    ``((c - k)/(c + k))²`` (Krippendorff 2011).

    Parameters
    ----------
    ratings:
        (n_units, n_raters) values; NaN = not rated. Note: units are rows (Krippendorff's
        papers print raters as rows; transpose such tables).
    level:
        Metric, default ``"ordinal"`` (Likert).

    Returns
    -------
    KrippendorffResult

    Raises
    ------
    StatisticsError
        Not 2-D, inf, unknown level, no unit rated by 2 or more raters, negative values with the
        ratio metric.

    Examples
    --------
    Krippendorff (2011), 12 units × 4 observers with missing data, ordinal α = 0.815:

    >>> n = float("nan")
    >>> data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
    ...         [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    >>> round(krippendorff_alpha(np.array(data).T, level="ordinal").alpha, 3)
    0.815
    """
    m = _matrix(ratings, "ratings")
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise StatisticsError(f"level must be nominal, ordinal, interval or ratio; got {level!r}")
    counts_per_unit = (~np.isnan(m)).sum(axis=1)
    pairable = counts_per_unit >= 2
    notes: list[str] = []
    skipped = int(((counts_per_unit == 1)).sum())
    if skipped:
        notes.append(f"{skipped} unit(s) rated by only one rater are not pairable and were left out")
    x = m[pairable]
    if x.shape[0] == 0:
        raise StatisticsError("Krippendorff's α needs at least one unit rated by 2 or more raters; none is")
    values = np.unique(x[~np.isnan(x)])
    if level == "ratio" and (values < 0).any():
        raise StatisticsError("the ratio metric needs non-negative values")
    idx = {float(v): i for i, v in enumerate(values)}
    nv = values.size
    unit_counts = np.zeros((x.shape[0], nv))
    for u, row in enumerate(x):
        for v in row[~np.isnan(row)]:
            unit_counts[u, idx[float(v)]] += 1
    mu = unit_counts.sum(axis=1)
    o = np.einsum("uc,uk->ck", unit_counts / (mu - 1)[:, None], unit_counts)
    o -= np.diag((unit_counts / (mu - 1)[:, None]).sum(axis=0))
    n_c = o.sum(axis=1)
    n_tot = float(n_c.sum())
    c, k = np.meshgrid(values, values, indexing="ij")
    if level == "nominal":
        d2 = (c != k).astype(np.float64)
    elif level == "interval":
        d2 = (c - k) ** 2
    elif level == "ratio":
        with np.errstate(invalid="ignore", divide="ignore"):
            d2 = np.where(c + k == 0, 0.0, ((c - k) / (c + k)) ** 2)
    else:
        cum = np.cumsum(n_c)
        ci, ki = np.meshgrid(np.arange(nv), np.arange(nv), indexing="ij")
        lo, hi = np.minimum(ci, ki), np.maximum(ci, ki)
        between = cum[hi] - np.where(lo > 0, cum[lo - 1], 0.0)
        d2 = (between - (n_c[ci] + n_c[ki]) / 2.0) ** 2
    d_o = float(np.sum(o * d2)) / n_tot
    d_e = float(np.sum(np.outer(n_c, n_c) * d2)) / (n_tot * (n_tot - 1))
    if d_e == 0:
        notes.append(
            f"every pairable rating has the same value ({values[0]:g}): no expected disagreement, α undefined"
        )
        alpha = math.nan
    else:
        alpha = 1.0 - d_o / d_e
    return KrippendorffResult(
        alpha=float(alpha), level=level, n_units=int(x.shape[0]), n_values=round(n_tot),
        observed_disagreement=d_o, expected_disagreement=d_e, warnings=tuple(notes),
    )


def ratings_matrix(
    rows: Iterable[RatingRow | Mapping[str, Any]], category: str
) -> tuple[tuple[str, ...], tuple[str, ...], npt.NDArray[np.float64]]:
    """Sessions × raters score matrix of one category (NaN = not rated).

    Parameters
    ----------
    rows:
        Rating rows (see :func:`qa_core.consensus.consensus_from_ratings`); validated the same way.
    category:
        Contract category name.

    Returns
    -------
    sessions, raters, matrix
        Sorted session and rater identifiers and a (n_sessions, n_raters) float64 matrix.

    Raises
    ------
    StatisticsError
        Unknown category, invalid rows, a rater rating a cell twice, no ratings in the category.
    """
    if category not in CATEGORIES:
        raise StatisticsError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    parsed = parse_rating_rows(rows)
    mine = [r for r in parsed if r.category == category]
    if not mine:
        raise StatisticsError(f"no ratings for category {category!r}")
    sessions = tuple(sorted({r.session for r in mine}))
    raters = tuple(sorted({r.rater for r in mine}))
    si = {s: i for i, s in enumerate(sessions)}
    ri = {r: i for i, r in enumerate(raters)}
    mat = np.full((len(sessions), len(raters)), np.nan)
    for r in mine:
        if not np.isnan(mat[si[r.session], ri[r.rater]]):
            raise StatisticsError(
                f"{r.origin or 'a rating row'}: rater {r.rater!r} rated session {r.session!r}, "
                f"category {category!r} twice"
            )
        mat[si[r.session], ri[r.rater]] = r.score
    return sessions, raters, mat


@dataclass(frozen=True)
class CategoryAgreement:
    """Inter-rater agreement of one category.

    Attributes
    ----------
    category:
        Contract category name.
    n_sessions, n_raters:
        Sessions with any rating, and raters.
    icc:
        ICC(2,1), or ``None`` when it cannot be computed (reason in ``warnings``).
    alpha:
        Krippendorff's ordinal α, or ``None`` when it cannot be computed (reason in ``warnings``).
    warnings:
        Notes and reasons.
    """

    category: str
    n_sessions: int
    n_raters: int
    icc: IccResult | None
    alpha: KrippendorffResult | None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN as ``None``)."""

        def fl(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {
            "category": self.category,
            "n_sessions": self.n_sessions,
            "n_raters": self.n_raters,
            "icc2_1": None if self.icc is None else fl(self.icc.icc),
            "icc_ci_low": None if self.icc is None else fl(self.icc.ci_low),
            "icc_ci_high": None if self.icc is None else fl(self.icc.ci_high),
            "icc_n_sessions_used": None if self.icc is None else self.icc.n_targets,
            "krippendorff_alpha_ordinal": None if self.alpha is None else fl(self.alpha.alpha),
            "warnings": list(self.warnings),
        }


def agreement_by_category(
    rows: Iterable[RatingRow | Mapping[str, Any]],
    *,
    categories: Sequence[str] | None = None,
    confidence_level: float = 0.95,
) -> dict[str, CategoryAgreement]:
    """ICC(2,1) and ordinal Krippendorff's α for every category present in the ratings.

    Parameters
    ----------
    rows:
        Rating rows (see :func:`qa_core.consensus.consensus_from_ratings`).
    categories:
        Restrict to these categories (default: those present, contract order).
    confidence_level:
        Of the ICC interval.

    Returns
    -------
    dict[str, CategoryAgreement]
        Keyed by category, contract order. A coefficient that cannot be computed for a category
        (e.g. a single rater) is ``None`` with the reason in ``warnings``; this never raises
        for one bad category.

    Raises
    ------
    StatisticsError
        Invalid rows (offending row named), no ratings, an unknown requested category.
    """
    parsed = parse_rating_rows(rows)
    if not parsed:
        raise StatisticsError("no ratings given; need rows of session, rater, category, score")
    present = [c for c in CATEGORIES if any(r.category == c for r in parsed)]
    wanted = list(categories) if categories is not None else present
    for c in wanted:
        if c not in CATEGORIES:
            raise StatisticsError(f"unknown category {c!r}; expected one of {', '.join(CATEGORIES)}")
    out: dict[str, CategoryAgreement] = {}
    for c in wanted:
        sessions, raters, mat = ratings_matrix(parsed, c)
        notes: list[str] = []
        icc: IccResult | None = None
        alpha: KrippendorffResult | None = None
        try:
            icc = icc2_1(mat, confidence_level=confidence_level)
            notes.extend(icc.warnings)
        except StatisticsError as exc:
            notes.append(f"ICC(2,1) not computed: {exc}")
        try:
            alpha = krippendorff_alpha(mat, level="ordinal")
            notes.extend(alpha.warnings)
        except StatisticsError as exc:
            notes.append(f"Krippendorff's α not computed: {exc}")
        out[c] = CategoryAgreement(c, len(sessions), len(raters), icc, alpha, tuple(notes))
    return out
