"""Consensus of several raters' Likert scores.

:func:`weighted_consensus` is the study's consensus of one cell (weighted mean of the raters'
scores); :func:`consensus_from_ratings` applies it to a whole table of individual ratings
(session, rater, category, score[, weight]) with configurable rater weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
from qa_core.errors import StatisticsError

__all__ = [
    "ConsensusTable",
    "ConsensusValue",
    "RatingRow",
    "consensus_from_ratings",
    "parse_rater_weights",
    "parse_rating_rows",
    "weighted_consensus",
]


def weighted_consensus(scores: npt.ArrayLike, weights: npt.ArrayLike) -> float:
    """Weighted mean of raters' scores (the study's consensus).

    Parameters
    ----------
    scores:
        One Likert score (1-5) per rater.
    weights:
        One non-negative weight per rater (e.g. experience); at least one must be > 0.

    Returns
    -------
    float
        ``sum(w_r * s_r) / sum(w_r)``, on the 1-5 scale.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if s.size == 0 or s.shape != w.shape:
        raise StatisticsError(
            f"consensus needs one weight per score; got {s.size} scores and {w.size} weights"
        )
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise StatisticsError(f"rater weights must be finite, >= 0 and not all 0; got {w.tolist()}")
    return float(np.dot(s, w) / w.sum())


# --------------------------------------------------------------------------------------------
# Consensus from a table of individual ratings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingRow:
    """One radiologist's Likert score of one category of one session.

    Attributes
    ----------
    session:
        Session identifier.
    rater:
        Rater identifier (e.g. initials or XNAT user name).
    category:
        Contract category name (:data:`qa_core.categories.CATEGORIES`).
    score:
        Integer Likert score, 1-5 (5 = best).
    weight:
        The rater's weight as recorded on this row (e.g. years of experience), or ``None``
        for the default 1.0. A rater's rows must agree on it.
    origin:
        Where the row came from, for error messages (e.g. ``"ratings.csv line 4"``).
    """

    session: str
    rater: str
    category: str
    score: float
    weight: float | None = None
    origin: str = ""


@dataclass(frozen=True)
class ConsensusValue:
    """Consensus of one (session, category).

    Attributes
    ----------
    session, category:
        The cell.
    consensus:
        Weighted mean Likert score, 1-5 (may be fractional).
    raters:
        Raters who scored this cell, sorted.
    scores:
        Their scores, same order.
    weights:
        The weights applied, same order.
    """

    session: str
    category: str
    consensus: float
    raters: tuple[str, ...]
    scores: tuple[float, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class ConsensusTable:
    """Consensus per (session, category) computed from individual ratings.

    Attributes
    ----------
    values:
        One :class:`ConsensusValue` per cell, sorted by category (contract order) then session.
    rater_weights:
        ``(rater, weight)`` pairs actually used, sorted by rater.
    weight_sources:
        ``(rater, source)`` with source ``"override"``, ``"row"`` or ``"default"``.
    """

    values: tuple[ConsensusValue, ...]
    rater_weights: tuple[tuple[str, float], ...]
    weight_sources: tuple[tuple[str, str], ...]

    def get(self, session: str, category: str) -> float:
        """Consensus of one cell; ``KeyError`` naming the cell when nobody rated it."""
        for v in self.values:
            if v.session == session and v.category == category:
                return v.consensus
        raise KeyError(f"no ratings for session {session!r}, category {category!r}")

    def as_dict(self) -> dict[tuple[str, str], float]:
        """``{(session, category): consensus}``."""
        return {(v.session, v.category): v.consensus for v in self.values}


def _rating_row(obj: RatingRow | Mapping[str, Any], index: int) -> RatingRow:
    if isinstance(obj, RatingRow):
        row = obj
    elif isinstance(obj, Mapping):
        where = str(obj.get("origin") or f"rating row {index}")
        missing = [k for k in ("session", "rater", "category", "score") if obj.get(k) in (None, "")]
        if missing:
            raise StatisticsError(f"{where}: missing {missing}; each rating needs session, rater, category, score")
        weight: float | None = None
        try:
            score = float(obj["score"])
        except (TypeError, ValueError) as exc:
            raise StatisticsError(f"{where}, column 'score': expected a number 1-5, got {obj['score']!r}") from exc
        raw_w = obj.get("weight")
        if raw_w not in (None, ""):
            try:
                weight = float(raw_w)
            except (TypeError, ValueError) as exc:
                raise StatisticsError(f"{where}, column 'weight': expected a number >= 0, got {raw_w!r}") from exc
        row = RatingRow(
            session=str(obj["session"]).strip(),
            rater=str(obj["rater"]).strip(),
            category=str(obj["category"]).strip(),
            score=score,
            weight=weight,
            origin=str(obj.get("origin") or ""),
        )
    else:
        raise StatisticsError(f"rating row {index}: expected a RatingRow or a mapping; got {type(obj).__name__}")
    where = row.origin or f"rating row {index}"
    ident = f"{where} (session {row.session!r}, rater {row.rater!r}, category {row.category!r})"
    if not row.session or not row.rater:
        raise StatisticsError(f"{ident}: session and rater must be non-empty")
    if row.category not in CATEGORIES:
        raise StatisticsError(f"{ident}: unknown category; expected one of {', '.join(CATEGORIES)}")
    s = row.score
    if not (math.isfinite(s) and LIKERT_MIN <= s <= LIKERT_MAX and float(s).is_integer()):
        raise StatisticsError(
            f"{ident}: score {s!r} is not a Likert rating; expected an integer from {LIKERT_MIN} to {LIKERT_MAX}"
        )
    if row.weight is not None and not (math.isfinite(row.weight) and row.weight >= 0):
        raise StatisticsError(f"{ident}: weight {row.weight!r} must be a finite number >= 0")
    return row


def parse_rating_rows(rows: Iterable[RatingRow | Mapping[str, Any]]) -> list[RatingRow]:
    """Validate rating rows and return them as :class:`RatingRow` objects.

    Parameters
    ----------
    rows:
        :class:`RatingRow` objects or mappings with ``session``, ``rater``, ``category``,
        ``score`` and optionally ``weight`` and ``origin``.

    Returns
    -------
    list[RatingRow]

    Raises
    ------
    StatisticsError
        A missing field, an unknown category, a score that is not an integer 1-5, a negative
        or non-finite weight; the message names the row (its ``origin`` or its 1-based index).
    """
    return [_rating_row(r, i) for i, r in enumerate(rows, start=1)]


def parse_rater_weights(text: str) -> dict[str, float]:
    """Parse ``"alice=2,bob=1.5"`` into ``{"alice": 2.0, "bob": 1.5}``.

    Parameters
    ----------
    text:
        Comma-separated ``rater=weight`` pairs; weights finite and >= 0.

    Returns
    -------
    dict[str, float]

    Raises
    ------
    StatisticsError
        Empty text, a pair without ``=``, an empty rater, a repeated rater, a bad weight.

    Examples
    --------
    >>> parse_rater_weights("alice=2, bob=1.5")
    {'alice': 2.0, 'bob': 1.5}
    """
    out: dict[str, float] = {}
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise StatisticsError("rater weights are empty; expected rater=weight pairs, e.g. 'alice=2,bob=1'")
    for part in parts:
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise StatisticsError(f"rater weight {part!r} is not of the form rater=weight (e.g. 'alice=2')")
        try:
            w = float(value)
        except ValueError as exc:
            raise StatisticsError(f"rater weight {part!r}: {value.strip()!r} is not a number") from exc
        if not (math.isfinite(w) and w >= 0):
            raise StatisticsError(f"rater weight {part!r}: weight must be finite and >= 0")
        if name in out:
            raise StatisticsError(f"rater {name!r} is given a weight twice in {text!r}")
        out[name] = w
    return out


def consensus_from_ratings(
    rows: Iterable[RatingRow | Mapping[str, Any]],
    *,
    rater_weights: Mapping[str, float] | None = None,
) -> ConsensusTable:
    """Consensus Likert score per (session, category) from individual ratings.

    Each cell's consensus is :func:`weighted_consensus` of the scores of the raters who rated
    it. A rater's weight is, in order of precedence: ``rater_weights[rater]`` (override), the
    ``weight`` recorded on the rater's rows (which must all agree), else 1.0. A weight of 0
    excludes the rater; a cell whose raters all weigh 0 is an error.

    Parameters
    ----------
    rows:
        :class:`RatingRow` objects or mappings with ``session``, ``rater``, ``category``,
        ``score`` and optionally ``weight`` and ``origin``. Scores are integers 1-5.
    rater_weights:
        Optional overrides ``{rater: weight}``; every named rater must appear in ``rows``.

    Returns
    -------
    ConsensusTable

    Raises
    ------
    StatisticsError
        No rows; a score outside 1-5 or not an integer, an unknown category, a missing field
        (the offending row named); the same rater rating a cell twice; conflicting row weights
        for one rater; an override for a rater without ratings; a cell with all weights 0.

    Examples
    --------
    >>> t = consensus_from_ratings(
    ...     [{"session": "S1", "rater": "a", "category": "larynx", "score": 4},
    ...      {"session": "S1", "rater": "b", "category": "larynx", "score": 2}],
    ...     rater_weights={"a": 3.0})
    >>> t.get("S1", "larynx")
    3.5
    """
    parsed = parse_rating_rows(rows)
    if not parsed:
        raise StatisticsError("no ratings given; need rows of session, rater, category, score")
    row_weight: dict[str, tuple[float, str]] = {}
    cells: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}
    for i, r in enumerate(parsed, start=1):
        where = r.origin or f"rating row {i}"
        if r.weight is not None:
            prev = row_weight.get(r.rater)
            if prev is not None and prev[0] != r.weight:
                raise StatisticsError(
                    f"{where}: rater {r.rater!r} has weight {r.weight:g} here but {prev[0]:g} at {prev[1]}; "
                    "give one weight per rater (or override it with rater_weights / --weights)"
                )
            row_weight.setdefault(r.rater, (r.weight, where))
        cell = cells.setdefault((r.session, r.category), {})
        if r.rater in cell:
            raise StatisticsError(
                f"{where}: rater {r.rater!r} rated session {r.session!r}, category {r.category!r} twice "
                f"(also {cell[r.rater][1]}); keep one rating per rater and cell"
            )
        cell[r.rater] = (r.score, where)
    raters = sorted({r.rater for r in parsed})
    overrides = dict(rater_weights or {})
    unknown = sorted(set(overrides) - set(raters))
    if unknown:
        raise StatisticsError(
            f"rater weights name rater(s) {unknown} who have no ratings; raters present: {', '.join(raters)}"
        )
    weights: dict[str, float] = {}
    sources: dict[str, str] = {}
    for name in raters:
        if name in overrides:
            w = float(overrides[name])
            if not (math.isfinite(w) and w >= 0):
                raise StatisticsError(f"rater weight for {name!r} must be finite and >= 0; got {w!r}")
            weights[name], sources[name] = w, "override"
        elif name in row_weight:
            weights[name], sources[name] = row_weight[name][0], "row"
        else:
            weights[name], sources[name] = 1.0, "default"
    values = []
    order = {c: i for i, c in enumerate(CATEGORIES)}
    for (session, category), cell in sorted(cells.items(), key=lambda kv: (order[kv[0][1]], kv[0][0])):
        names = sorted(cell)
        sc = [cell[n][0] for n in names]
        ws = [weights[n] for n in names]
        try:
            value = weighted_consensus(sc, ws)
        except StatisticsError as exc:
            raise StatisticsError(
                f"session {session!r}, category {category!r}: raters {names} all have weight 0; "
                "give at least one of them a positive weight"
            ) from exc
        values.append(ConsensusValue(session, category, value, tuple(names), tuple(sc), tuple(ws)))
    return ConsensusTable(
        values=tuple(values),
        rater_weights=tuple((n, weights[n]) for n in raters),
        weight_sources=tuple((n, sources[n]) for n in raters),
    )
