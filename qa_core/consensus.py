"""Consensus of several raters' Likert scores."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qa_core.errors import StatisticsError

__all__ = ["weighted_consensus"]


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
