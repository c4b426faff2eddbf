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
from qa_core.outliers import SessionAlert, session_alerts
from qa_core.statistics import CohortAnalysis, analyze_table

__all__ = [
    "AE_DEFINITIONS",
    "LocalisationSummary",
    "ModelAgreement",
    "ValidationReport",
    "summarise_localisation",
    "validate_cohort",
]

#: What ``ae`` means in the analysed table: ``study`` (Σ L over every map cell, the study's
#: definition and the default) or ``organ`` (Σ L·r, restricted to the contoured organ; needs an
#: RTSTRUCT per session; ``overall`` uses the body).
AE_DEFINITIONS: tuple[str, ...] = ("study", "organ")


@dataclass(frozen=True)
class LocalisationSummary:
    """Localisation of one category's maps over the sessions with contours.

    Attributes
    ----------
    category:
        Category name.
    n:
        Sessions with a region for this category.
    ae_in_region_median, ae_in_region_q1, ae_in_region_q3:
        Median and quartiles of the energy share inside the organ (0-1, higher is better).
    region_share_median:
        Median chance level (the organ's share of the body).
    ratio_median:
        Median of ``ae_in_region / region_share`` (1 = chance).
    pointing_hit_rate:
        Pooled pointing-game hit rate: hits over all counted slices of all sessions.
    n_flagged:
        Sessions whose map falls mostly outside the organ by the absolute rule (share below
        ``min_share``, :func:`~qa_core.localisation.localisation_flags`): a description of
        the model, not the alert count.
    verdict:
        One sentence in words.
    n_alerted:
        Sessions alerted by the cohort rule (:func:`~qa_core.localisation.cohort_localisation_flags`,
        rows whose ``localisation_flag`` is not empty): what the product flags.
    """

    category: str
    n: int
    ae_in_region_median: float
    ae_in_region_q1: float
    ae_in_region_q3: float
    region_share_median: float
    ratio_median: float
    pointing_hit_rate: float
    n_flagged: int
    verdict: str
    n_alerted: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = None if isinstance(v, float) and math.isnan(v) else v
        return out


def summarise_localisation(rows: list[dict[str, Any]], min_share: float) -> tuple[LocalisationSummary, ...]:
    """Per-category summary of the localisation columns of validation rows.

    ``rows`` carry ``category``, ``ae_in_region``, ``region_share``, ``pointing_hits`` and
    ``pointing_slices`` (rows without ``ae_in_region`` are skipped).
    """
    out = []
    for cat in CATEGORIES:
        sel = [r for r in rows if r["category"] == cat and r.get("ae_in_region") is not None]
        if not sel:
            continue
        share = np.array([r["ae_in_region"] for r in sel], dtype=np.float64)
        chance = np.array([r["region_share"] for r in sel], dtype=np.float64)
        ratio = np.where(chance > 0, share / np.where(chance > 0, chance, 1.0), np.nan)
        hits = sum(int(r.get("pointing_hits") or 0) for r in sel)
        slices = sum(int(r.get("pointing_slices") or 0) for r in sel)
        hit_rate = hits / slices if slices else math.nan
        flagged = int(np.sum(share < min_share))
        alerted = sum(1 for r in sel if r.get("localisation_flag"))
        med, q1, q3 = (float(np.nanpercentile(share, q)) for q in (50, 25, 75))
        med_ratio = float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else math.nan
        organ = "the body" if cat == "overall" else f"the contoured {cat}"
        if cat == "overall":  # region = body: chance is 1, the share itself is the finding
            where = f"puts {1 - med:.0%} of its energy outside the patient (median)"
        elif med_ratio != med_ratio:
            where = "cannot be compared with chance (no region voxels in the body)"
        elif med_ratio >= 2:
            where = f"lies on {organ} well above chance ({med_ratio:.1f}x)"
        elif med_ratio > 1:
            where = f"lies on {organ} slightly above chance ({med_ratio:.1f}x)"
        else:
            where = f"does not lie on {organ} (at or below chance, {med_ratio:.1f}x)"
        verdict = (
            f"the map {where}: median {med:.1%} of its energy inside (chance {float(np.nanmedian(chance)):.1%}); "
            f"its maximum lies in the organ on {hit_rate:.0%} of the organ's slices; "
            f"{flagged} of {len(sel)} sessions have maps mostly outside (< {min_share:.0%}); "
            f"{alerted} alerted as unusual for this model"
        )
        out.append(
            LocalisationSummary(
                category=cat,
                n=len(sel),
                ae_in_region_median=med,
                ae_in_region_q1=q1,
                ae_in_region_q3=q3,
                region_share_median=float(np.nanmedian(chance)),
                ratio_median=med_ratio,
                pointing_hit_rate=hit_rate,
                n_flagged=flagged,
                verdict=verdict,
                n_alerted=alerted,
            )
        )
    return tuple(out)


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
    localisation:
        Per category, how much of the maps lies on the contoured organ (sessions whose folder
        holds an RTSTRUCT referencing their series); empty without contours.
    alerts:
        The default alerts (:func:`qa_core.outliers.session_alerts`: image checks with the
        RTSTRUCT's ``External`` as the left-right reference where there is one, attribution
        atypical for the prediction, and the DESIGN's rules after a Holm step per session),
        plus the cohort localisation rule (rule ``localisation``:
        :func:`qa_core.localisation.cohort_localisation_flags`), as the product writes them.
    """

    model: tuple[ModelAgreement, ...]
    analysis: CohortAnalysis
    rows: tuple[dict[str, Any], ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    localisation: tuple[LocalisationSummary, ...] = ()
    alerts: tuple[SessionAlert, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: per category ``model`` agreement and ``ae`` analysis (NaN → None)."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        analysed = self.analysis.to_dict()
        loc = {s.category: s.to_dict() for s in self.localisation}
        return {
            "categories": {
                m.category: {
                    "model": {"n": m.n, "rho": clean(m.rho), "p": clean(m.p), "mae": clean(m.mae)},
                    "ae": analysed.get(m.category),
                    **({"localisation": loc[m.category]} if m.category in loc else {}),
                }
                for m in self.model
            },
            "rows": list(self.rows),
            "provenance": self.provenance,
            "alerts": [a.to_dict() for a in self.alerts],
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
    ae_definition: str = "study",
    localisation: bool = True,
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
    ae_definition:
        ``study`` (default: AE = Σ L over all map cells, exactly the study's) or ``organ``
        (AE = Σ L·r, restricted to the contoured organ; every session needs an RTSTRUCT).
    localisation:
        Look for an RTSTRUCT referencing each session's series in its folder and report how
        much of the maps lies on the organs (rows gain ``ae_in_region``, ``region_share``,
        ``pointing_hit_rate``, ``organ_ae``).

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
    from qa_core.image_checks import check_image
    from qa_core.localisation import cohort_localisation_flags, localise_rtstruct
    from qa_core.rtstruct import find_rtstructs
    from qa_core.settings import get_settings
    from qa_core.training import read_rated_cohort

    if ae_definition not in AE_DEFINITIONS:
        raise StatisticsError(
            f"ae_definition must be one of {', '.join(AE_DEFINITIONS)}; got {ae_definition!r}"
        )
    min_share = get_settings().localisation_min_share
    t0 = time.perf_counter()
    entries, description = read_rated_cohort(cohort_dir)
    if len(entries) < 4:
        raise StatisticsError(
            f"cohort {cohort_dir} has {len(entries)} session(s); validation needs at least 4 "
            "(the study used 16)"
        )
    rows: list[dict[str, Any]] = []
    image_checks: dict[str, object] = {}
    for entry in entries:
        volume = load_series(entry.dicom_dir)
        result = attribute_volume(model, volume, method=method, batch_size=batch_size)
        loc = None
        organ_masks = None
        if localisation or ae_definition == "organ":
            found = find_rtstructs(entry.dicom_dir.parent, series_uid=volume.series_uid)
            if found:
                loc, organ_masks = localise_rtstruct(result, volume, found[0].path)
            elif ae_definition == "organ":
                raise StatisticsError(
                    f"session {entry.label}: no RTSTRUCT referencing series {volume.series_uid} in "
                    f"{entry.dicom_dir.parent}; ae_definition='organ' needs contours for every session"
                )
        image_checks[entry.label] = check_image(
            volume, reference_body=None if organ_masks is None else organ_masks.body
        )
        for cat in CATEGORIES:
            row: dict[str, Any] = {
                "session": entry.label,
                "category": cat,
                "ae": float(result.ae[cat]),
                "consensus": float(entry.consensus[cat]),
                "predicted": float(result.scores[cat]),
            }
            cl = loc.categories.get(cat) if loc is not None else None
            if cl is not None:
                row.update(
                    ae_study=float(result.ae[cat]),
                    organ_ae=cl.organ_ae,
                    ae_in_region=None if math.isnan(cl.ae_in_region) else cl.ae_in_region,
                    region_share=cl.region_share,
                    pointing_hit_rate=None if math.isnan(cl.pointing_hit_rate) else cl.pointing_hit_rate,
                    pointing_hits=cl.pointing_hits,
                    pointing_slices=cl.pointing_slices,
                    localisation_flag="",  # the cohort rule, filled in below
                )
                if ae_definition == "organ":
                    row["ae"] = cl.organ_ae
            elif ae_definition == "organ":
                raise StatisticsError(
                    f"session {entry.label}: no {cat} ROI in its RTSTRUCT; ae_definition='organ' "
                    "needs every category's organ (map other ROI names with CBCTQA_ROI_ALIASES)"
                )
            rows.append(row)
        if on_session is not None:
            on_session(entry.label)
    shares = {
        (r["session"], r["category"]): r for r in rows if r.get("ae_in_region") is not None
    }
    loc_flags = cohort_localisation_flags(
        {
            e.label: {c: (r["ae_in_region"], r["region_share"]) for (s, c), r in shares.items() if s == e.label}
            for e in entries
        },
        min_share=min_share,
    )
    for lf in loc_flags:
        shares[(lf.session, lf.category)]["localisation_flag"] = lf.reason
    agreement = tuple(
        _agreement(
            cat,
            [r["predicted"] for r in rows if r["category"] == cat],
            [r["consensus"] for r in rows if r["category"] == cat],
        )
        for cat in CATEGORIES
    )
    analysis = analyze_table(rows, n_resamples=n_resamples, seed=seed)
    labels = [e.label for e in entries]
    by = {(r["session"], r["category"]): r for r in rows}
    alerts = session_alerts(
        labels,
        {c: [by[(s, c)]["ae"] for s in labels] for c in CATEGORIES},
        {c: [by[(s, c)]["predicted"] for s in labels] for c in CATEGORIES},
        consensus={c: [by[(s, c)]["consensus"] for s in labels] for c in CATEGORIES},
        image_checks=image_checks,
    )
    if loc_flags:  # what write_outlier_flags adds, in session order after each session's others
        order = {label: i for i, label in enumerate(labels)}
        extra = [
            SessionAlert(lf.session, lf.category, "localisation", f"{lf.category}: {lf.reason}", lf.value)
            for lf in loc_flags
        ]
        alerts = tuple(
            sorted((*alerts, *extra), key=lambda a: order.get(a.session, len(order)))
        )
    card: dict[str, Any] = getattr(model, "card", None) or {}
    provenance = {
        "cohort": str(cohort_dir),
        "cohort_description": description,
        "n_sessions": len(entries),
        "model_sha256": card.get("sha256"),
        "model_name": (card.get("architecture") or {}).get("name"),
        "method": method,
        "ae_definition": ae_definition,
        "localisation_min_share": min_share,
        "n_resamples": n_resamples,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return ValidationReport(
        agreement, analysis, tuple(rows), provenance, summarise_localisation(rows, min_share), alerts
    )
