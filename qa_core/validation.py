"""Validate a model and its Attribution Energy on a rated cohort with known consensus.

For every session of a cohort (simulated, or a user's own with ``ratings.csv``), the series is
loaded exactly as scoring loads it, the five scores are predicted and attributed in one
batched Grad-CAM pass, and the volume-level table (session, category, AE, consensus,
predicted) is analysed with :func:`qa_core.statistics.analyze_table`. The report answers two
questions per category, in words as well as numbers:

* **Does the model predict the consensus?** Spearman ρ of the volume-mean prediction with the
  consensus (higher is better) and the MAE in Likert points (lower is better).
* **Does AE track the consensus?** The study's statistics and the better ones, with the
  verdict of :func:`qa_core.statistics.ae_tracking_verdict`, which says why not when it does
  not (too few volumes, interval spanning 0, negative, or only through the prediction).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from torch import nn

from qa_core.categories import CATEGORIES
from qa_core.errors import StatisticsError
from qa_core.statistics import CohortAnalysis, analyze_table

__all__ = ["ModelAgreement", "ValidationReport", "validate_cohort"]


@dataclass(frozen=True)
class ModelAgreement:
    """Volume-level agreement of the model's prediction with the consensus in one category.

    Attributes
    ----------
    category:
        Category name.
    n:
        Volumes compared.
    rho, p:
        scipy ``spearmanr`` of the volume-mean prediction vs the consensus (NaN if constant).
    mae:
        Mean absolute error in Likert points (lower is better).
    """

    category: str
    n: int
    rho: float
    p: float
    mae: float


@dataclass(frozen=True)
class ValidationReport:
    """The model's agreement and the AE analysis on one cohort.

    Attributes
    ----------
    model:
        One :class:`ModelAgreement` per category, contract order.
    analysis:
        AE vs consensus per category (:class:`qa_core.statistics.CohortAnalysis`).
    rows:
        The analysed table: dicts with session, category, ae, consensus, predicted.
    provenance:
        Cohort folder and description, model card fields, method, timing.
    """

    model: tuple[ModelAgreement, ...]
    analysis: CohortAnalysis
    rows: tuple[dict[str, Any], ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: per category ``model`` agreement and ``ae`` analysis (NaN → None)."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        analysed = self.analysis.to_dict()
        return {
            "categories": {
                m.category: {
                    "model": {"n": m.n, "rho": clean(m.rho), "p": clean(m.p), "mae": clean(m.mae)},
                    "ae": analysed.get(m.category),
                }
                for m in self.model
            },
            "rows": list(self.rows),
            "provenance": self.provenance,
        }


def _agreement(category: str, predicted: list[float], consensus: list[float]) -> ModelAgreement:
    pred = np.asarray(predicted, dtype=np.float64)
    cons = np.asarray(consensus, dtype=np.float64)
    mae = float(np.mean(np.abs(pred - cons))) if pred.size else math.nan
    if pred.size < 3 or np.ptp(pred) == 0 or np.ptp(cons) == 0:
        return ModelAgreement(category, int(pred.size), math.nan, math.nan, mae)
    res = stats.spearmanr(pred, cons)
    return ModelAgreement(category, int(pred.size), float(res.statistic), float(res.pvalue), mae)


def validate_cohort(
    model: nn.Module,
    cohort_dir: str | Path,
    *,
    method: str = "gradcam",
    batch_size: int = 32,
    n_resamples: int = 9999,
    seed: int = 0,
    on_session: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Score and attribute every session of a rated cohort and analyse AE against consensus.

    Parameters
    ----------
    model:
        A quality model with ``target_layer``, ``preprocess`` and a ``card``
        (:func:`qa_core.model.load_model`).
    cohort_dir:
        A cohort folder: ``sessions/<label>/DICOM`` plus ``truth.json`` (simulated) or
        ``ratings.csv`` (``session,rater,category,score,weight``).
    method, batch_size:
        CAM method and slices per batch (see :func:`qa_core.attribution.attribute_volume`).
    n_resamples, seed:
        Permutation and bootstrap resamples, and their seed.
    on_session:
        Called with each session label after it is attributed (progress).

    Raises
    ------
    TrainingError
        The cohort folder or its ratings are missing or malformed (names the file).
    StatisticsError
        Fewer than 4 volumes.
    DicomError
        A session's series cannot be loaded (names the file and the fix).
    """
    from qa_core.attribution import attribute_volume
    from qa_core.dicom_series import load_series
    from qa_core.training import read_rated_cohort

    t0 = time.perf_counter()
    entries, description = read_rated_cohort(cohort_dir)
    if len(entries) < 4:
        raise StatisticsError(
            f"cohort {cohort_dir} has {len(entries)} session(s); validation needs at least 4 "
            "(the study used 16)"
        )
    rows: list[dict[str, Any]] = []
    for entry in entries:
        volume = load_series(entry.dicom_dir)
        result = attribute_volume(model, volume, method=method, batch_size=batch_size)
        for cat in CATEGORIES:
            rows.append(
                {
                    "session": entry.label,
                    "category": cat,
                    "ae": float(result.ae[cat]),
                    "consensus": float(entry.consensus[cat]),
                    "predicted": float(result.scores[cat]),
                }
            )
        if on_session is not None:
            on_session(entry.label)
    agreement = tuple(
        _agreement(
            cat,
            [r["predicted"] for r in rows if r["category"] == cat],
            [r["consensus"] for r in rows if r["category"] == cat],
        )
        for cat in CATEGORIES
    )
    analysis = analyze_table(rows, n_resamples=n_resamples, seed=seed)
    card: dict[str, Any] = getattr(model, "card", None) or {}
    provenance = {
        "cohort": str(cohort_dir),
        "cohort_description": description,
        "n_sessions": len(entries),
        "model_sha256": card.get("sha256"),
        "model_name": (card.get("architecture") or {}).get("name"),
        "method": method,
        "n_resamples": n_resamples,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return ValidationReport(agreement, analysis, tuple(rows), provenance)
