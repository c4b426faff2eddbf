"""Score XNAT sessions and write the results back: the work the Prefect flows wrap.

One session: choose its CBCT scan, download it and load it with ``load_series``, predict the
five Likert scores and attribute them in one batched Grad-CAM pass, write the products
(overlay PNGs, slice-level AE CSV, compressed raw maps) and write one
``cbctqa:qaAssessmentData`` through the gateway, idempotently. A failure of one session is
recorded on that session (status ``failed`` with the reason) and never stops the others.

Cohort monitoring: read every assessment and rating of a project in bulk, form the
consensus, run the study's statistics and the better ones, and write each category's
outlier flag and reason back onto the assessments.

Everything here is plain Python (no Prefect import), so tasks stay thin wrappers and the
logic is tested without an orchestration server.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qa_core import __version__
from qa_core.categories import CATEGORIES
from qa_core.errors import CbctQaError
from qa_core.logs import redact

if TYPE_CHECKING:
    from torch import nn

    from qa_core.attribution import AttributionResult
    from qa_core.image_checks import ImageCheckReport
    from qa_core.localisation import LocalisationReport
    from qa_core.rtstruct import OrganMasks
    from qa_core.statistics import CohortAnalysis
    from qa_core.volume import Volume
    from xnat_plugin.gateway import (
        AssessmentRecord,
        RatingRecord,
        SessionRef,
        StoredAssessment,
        XnatGateway,
    )

__all__ = [
    "ScoreOutcome",
    "analyze_project",
    "assessment_record",
    "cohort_rows",
    "is_transient",
    "model_version",
    "record_failure",
    "score_scan",
    "score_session",
    "score_sessions",
    "session_localisation",
    "write_outlier_flags",
    "write_products",
]

logger = logging.getLogger(__name__)

#: Prefix of the outlier reasons written at scoring time by the image checks (kept by
#: :func:`write_outlier_flags`, which rewrites the cohort's statistical flags).
IMAGE_CHECK_PREFIX = "image check:"

#: Prefix of the outlier reasons of the cohort localisation rule
#: (:func:`qa_core.localisation.cohort_localisation_flags`: a category's map falls outside its
#: contoured organ for this model), recomputed by :func:`write_outlier_flags` on every call.
LOCALISATION_PREFIX = "localisation:"

#: Resource labels of an assessment's products.
OVERLAYS, AE_SLICES, MAPS = "OVERLAYS", "AE_SLICES", "MAPS"


@dataclass(frozen=True)
class ScoreOutcome:
    """What happened to one session.

    Attributes
    ----------
    session_label, session_id:
        The session scored.
    status:
        ``complete`` or ``failed``.
    assessor_id:
        Accession ID of the assessment written (``None`` if even the failure could not be
        recorded in XNAT).
    scan_id:
        The scan scored (``""`` when none could be chosen).
    error:
        One-line reason when ``failed`` (credentials redacted), else ``""``.
    duration_s:
        Wall-clock seconds spent on the session.
    scores, ae:
        Category → predicted Likert score and Attribution Energy (empty when failed).
    """

    session_label: str
    session_id: str
    status: str
    assessor_id: str | None
    scan_id: str
    error: str
    duration_s: float
    scores: dict[str, float]
    ae: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: ``select``, ``download``, ``load``, ``attribute``, ``products``,
    ``upload`` (stages not reached are absent)."""
    transient: bool = False
    """``True`` when a failure came from transient trouble (XNAT 5xx, dropped connection,
    timeout) rather than from the data."""


def is_transient(exc: BaseException) -> bool:
    """``True`` for XNAT 5xx, dropped connections and timeouts (worth another attempt)."""
    from xnat_plugin.gateway import XnatConnectionError, XnatServerError

    return isinstance(exc, XnatConnectionError | XnatServerError | TimeoutError | ConnectionError)


def model_version(model: nn.Module) -> str:
    """The model version written into labels: the card's ``version``, else ``sha-<12 hex>``.

    Raises
    ------
    CbctQaError
        When the model carries no card with a version or sha256 (labels must be stable).
    """
    card: dict[str, Any] = getattr(model, "card", None) or {}
    version = card.get("version")
    if isinstance(version, str) and version:
        return version
    sha = card.get("sha256")
    if isinstance(sha, str) and len(sha) >= 12:
        return f"sha-{sha[:12]}"
    raise CbctQaError(
        "the model has no card version or sha256, so assessments could not be labelled "
        "reproducibly; load it with qa_core.load_model(path) next to its .card.json"
    )


def write_products(
    volume: Volume,
    result: AttributionResult,
    out_dir: Path,
    *,
    top_k: int = 3,
    organs: OrganMasks | None = None,
) -> dict[str, list[Path]]:
    """Write an assessment's products into ``out_dir`` and return them by resource label.

    ``OVERLAYS``: PNGs of the top-``top_k`` AE slices per category. ``AE_SLICES``:
    ``slice_ae.csv`` with one row per slice (index 0 most inferior, its z in mm from the
    first slice, then per category the predicted score and the slice's AE). ``MAPS``:
    ``cams.npz`` with the raw maps ``cams`` (K, N, h, w) float32, ``categories``, ``method``
    and ``target_layer`` (compressed). With ``organs`` (the session's RTSTRUCT masks), the
    overlays draw each category's contoured organ (``contours`` of
    :func:`qa_core.overlays.write_overlays`).
    """
    from qa_core.overlays import write_overlays

    out_dir.mkdir(parents=True, exist_ok=True)
    contours = None
    if organs is not None:  # each category's organ over its maps (overall: the body)
        contours = {
            **organs.masks,
            **({"overall": organs.body} if organs.body is not None else {}),
        }
    overlays = write_overlays(
        volume, result, out_dir / "overlays", top_k=top_k, contours=contours
    )
    cats = result.categories
    csv_path = out_dir / "slice_ae.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["slice", "z_mm", *[f"{c}_score" for c in cats], *[f"{c}_ae" for c in cats]]
        )
        dz = float(volume.spacing[0])
        for s in range(result.n_slices):
            writer.writerow(
                [s, f"{s * dz:.3f}"]
                + [f"{result.slice_scores[k, s]:.6g}" for k in range(len(cats))]
                + [f"{result.slice_ae[k, s]:.6g}" for k in range(len(cats))]
            )
    maps_path = out_dir / "cams.npz"
    np.savez_compressed(
        maps_path,
        cams=np.asarray(result.cams, dtype=np.float32),
        categories=np.array(cats),
        method=np.array(result.method),
        target_layer=np.array(result.target_layer),
    )
    return {OVERLAYS: overlays, AE_SLICES: [csv_path], MAPS: [maps_path]}


def assessment_record(
    result: AttributionResult,
    volume: Volume,
    *,
    scan_id: str,
    model: nn.Module,
    duration_s: float,
    image_checks: ImageCheckReport | None = None,
    localisation: LocalisationReport | None = None,
) -> AssessmentRecord:
    """The ``complete`` assessment record of one scored scan.

    Cohort outlier flags are not known yet (``None``), except that a failed image check
    (:func:`qa_core.image_checks.check_image`: orientation, field of view, HU calibration,
    body part, metal, motion) flags the ``overall`` category (one alert per session: the
    reason says every score is affected) with its plain reason, prefixed
    ``image check:`` (:data:`IMAGE_CHECK_PREFIX`). With ``localisation`` (the session's
    RTSTRUCT), each category carries ``ae_in_region``, ``region_share`` and
    ``pointing_hit_rate``; whether a map falls outside its organ is a cohort question (with
    the shipped model every map lies mostly outside every organ), so the localisation flags
    are written by :func:`write_outlier_flags`, not here.
    """
    from xnat_plugin.gateway import AssessmentRecord, CategoryAssessment

    card: dict[str, Any] = getattr(model, "card", None) or {}
    image_reason = (
        "; ".join(f"{IMAGE_CHECK_PREFIX} {_clause(r)}" for r in image_checks.reasons)[:1000]
        if image_checks is not None
        else ""
    )

    def reason(c: str) -> str:
        # an image problem is one alert (on ``overall``), not one per category
        return image_reason if c == "overall" else ""

    def loc(c: str, name: str) -> float:
        cl = localisation.categories.get(c) if localisation is not None else None
        return math.nan if cl is None else float(getattr(cl, name))

    return AssessmentRecord(
        status="complete",
        scan_id=scan_id,
        model_version=model_version(model),
        series_uid=volume.series_uid,
        slices=volume.n_slices,
        spacing=(float(volume.spacing[0]), float(volume.spacing[1]), float(volume.spacing[2])),
        model_name=str(result.provenance.get("model_name") or type(model).__name__),
        model_sha256=str(card.get("sha256") or ""),
        cam_method=result.method,
        target_layer=result.target_layer,
        package_version=__version__,
        duration_s=round(duration_s, 3),
        categories={
            c: CategoryAssessment(
                score=float(result.scores[c]),
                ae=float(result.ae[c]),
                ae_per_voxel=float(result.ae_per_voxel[c]),
                outlier=True if reason(c) else None,
                outlier_reason=reason(c),
                ae_in_region=loc(c, "ae_in_region"),
                region_share=loc(c, "region_share"),
                pointing_hit_rate=loc(c, "pointing_hit_rate"),
            )
            for c in result.categories
        },
    )


def _clause(reason: str) -> str:
    """One reason as one clause of an outlier reason: reasons are joined, and split again, on
    ``"; "``, so a reason's own semicolons become commas (else its tail would be lost)."""
    return reason.replace("; ", ", ").strip()


def image_checks_of(volume: Volume, session_label: str = "") -> ImageCheckReport | None:
    """Image-level checks of a loaded volume; ``None`` (logged) when they cannot run."""
    from qa_core.image_checks import check_image

    try:
        return check_image(volume)
    except CbctQaError as exc:
        logger.warning("session %s: image checks not run: %s", session_label, redact(str(exc)))
        return None


def session_localisation(
    gw: XnatGateway,
    session: SessionRef,
    volume: Volume,
    result: AttributionResult,
    dest_dir: Path,
) -> tuple[LocalisationReport | None, OrganMasks | None]:
    """Localise the maps in the organs of the session's RTSTRUCT that references ``volume``.

    RTSTRUCT scans (modality ``RTSTRUCT``) of the session are downloaded in turn into
    ``dest_dir`` until one references the scored series; ``(None, None)`` when none does. A
    structure set that cannot be used (another frame of reference, no TG-263 organ, open
    contours, ...) is logged with its reason and skipped: the scores stand without it.
    """
    from qa_core.localisation import localise_rtstruct
    from qa_core.rtstruct import find_rtstructs

    candidates = [
        s
        for s in gw.list_scans(session)
        if s.modality.upper() == "RTSTRUCT"
        or (not s.modality and "RTSTRUCT" in f"{s.type} {s.series_description}".upper())
    ]
    for scan in candidates:
        try:
            folder = gw.download_scan(session, scan.scan_id, dest_dir=dest_dir)
            for info in find_rtstructs(folder, series_uid=volume.series_uid):
                report, organs = localise_rtstruct(result, volume, info.path)
                logger.info(
                    "session %s: localised in RTSTRUCT scan %s (%s)",
                    session.label, scan.scan_id, ", ".join(report.categories),
                )  # fmt: skip
                return report, organs
        except CbctQaError as exc:
            logger.warning(
                "session %s: RTSTRUCT scan %s not used: %s",
                session.label, scan.scan_id, redact(str(exc)),
            )  # fmt: skip
    return None, None


def score_scan(
    gw: XnatGateway,
    session: SessionRef,
    scan_id: str,
    model: nn.Module,
    *,
    workdir: Path,
    method: str = "gradcam",
    batch_size: int | None = None,
    top_k: int = 3,
    timings: dict[str, float] | None = None,
) -> tuple[str, AttributionResult]:
    """Download, load, attribute, write products and the ``complete`` assessment of one scan.

    Raises whatever goes wrong (no failure is recorded here; see :func:`record_failure`).
    Returns the assessor's accession ID and the attribution. ``timings`` (if given) receives
    the seconds of ``download``, ``load``, ``attribute``, ``products`` and ``upload``.
    """
    from qa_core.attribution import attribute_volume
    from qa_core.dicom_series import load_series

    times = timings if timings is not None else {}
    t0 = time.perf_counter()
    session_dir = workdir / session.label
    folder = gw.download_scan(session, scan_id, dest_dir=session_dir / "download")
    t1 = time.perf_counter()
    times["download"] = t1 - t0
    volume = load_series(folder)
    t2 = time.perf_counter()
    times["load"] = t2 - t1
    result = attribute_volume(model, volume, method=method, batch_size=batch_size)
    t3 = time.perf_counter()
    times["attribute"] = t3 - t2
    localisation, organs = session_localisation(gw, session, volume, result, session_dir / "rtstruct")
    t3b = time.perf_counter()
    times["localise"] = t3b - t3
    products = write_products(volume, result, session_dir / "products", top_k=top_k, organs=organs)
    t4 = time.perf_counter()
    times["products"] = t4 - t3b
    record = assessment_record(
        result, volume, scan_id=scan_id, model=model, duration_s=time.perf_counter() - t0,
        image_checks=image_checks_of(volume, session.label), localisation=localisation,
    )  # fmt: skip
    assessor = gw.write_assessment(session, record, resources=products)
    times["upload"] = time.perf_counter() - t4
    return assessor, result


def record_failure(
    gw: XnatGateway,
    session: SessionRef,
    scan_id: str,
    version: str,
    exc: BaseException,
    *,
    attempt: int = 1,
    max_attempts: int = 1,
    scans: str = "",
) -> tuple[str, str | None]:
    """Record a failed attempt on the session; returns ``(reason, assessor ID or None)``.

    The reason (credentials redacted) is tagged with the attempt (see
    :mod:`xnat_plugin.gateway.attempts`): transient trouble before the last attempt says
    ``will retry``; bad data and the last attempt are final until the session's scans change.
    Never raises for XNAT trouble while recording (it is logged; the session stays to do).
    """
    from xnat_plugin.gateway import tag_failure_reason

    plain = redact(f"{type(exc).__name__}: {exc}")
    reason = tag_failure_reason(
        plain,
        attempt=attempt,
        max_attempts=max_attempts,
        permanent=not is_transient(exc),
        scans=scans,
    )
    logger.warning("session %s (%s) failed: %s", session.label, session.session_id, reason)
    assessor_id: str | None = None
    try:
        assessor_id = gw.mark_failed(session, scan_id or "none", version, reason)
    except CbctQaError as mark_exc:
        logger.error(
            "session %s: could not record the failure in XNAT either: %s",
            session.label,
            redact(str(mark_exc)),
        )
    return reason, assessor_id


def score_session(
    gw: XnatGateway,
    session: SessionRef,
    model: nn.Module,
    *,
    workdir: Path,
    method: str = "gradcam",
    batch_size: int | None = None,
    top_k: int = 3,
    attempt: int = 1,
    max_attempts: int = 1,
    mark_running: bool = False,
) -> ScoreOutcome:
    """Score one session and write its assessment (``complete``, or ``failed`` with the reason).

    Project errors (bad DICOM, no CT scan, XNAT refusing a write, ...) are caught, logged
    with the session named, and recorded on the session as a ``failed`` assessment whose
    reason carries the attempt tag (``attempt`` of ``max_attempts``, see
    :func:`record_failure`); the outcome says what happened. Programming errors propagate.
    With ``mark_running`` the assessment says ``running`` (scan and model version known)
    before the download starts.
    """
    from xnat_plugin.gateway import AssessmentRecord, scans_fingerprint

    t0 = time.perf_counter()
    scan_id = ""
    fingerprint = ""
    version = model_version(model)
    timings: dict[str, float] = {}
    try:
        scans = gw.list_scans(session)
        fingerprint = scans_fingerprint(scans)
        scan_id = gw.select_scan(session, scans=scans).scan_id
        if mark_running:
            gw.write_assessment(
                session, AssessmentRecord(status="running", scan_id=scan_id, model_version=version)
            )
        timings["select"] = time.perf_counter() - t0
        assessor, result = score_scan(
            gw, session, scan_id, model, workdir=workdir, method=method,
            batch_size=batch_size, top_k=top_k, timings=timings,
        )  # fmt: skip
    except CbctQaError as exc:
        reason, assessor_id = record_failure(
            gw, session, scan_id, version, exc,
            attempt=attempt, max_attempts=max_attempts, scans=fingerprint,
        )  # fmt: skip
        return ScoreOutcome(
            session_label=session.label,
            session_id=session.session_id,
            status="failed",
            assessor_id=assessor_id,
            scan_id=scan_id,
            error=reason,
            duration_s=time.perf_counter() - t0,
            scores={},
            ae={},
            timings=timings,
            transient=is_transient(exc),
        )
    return ScoreOutcome(
        session_label=session.label,
        session_id=session.session_id,
        status="complete",
        assessor_id=assessor,
        scan_id=scan_id,
        error="",
        duration_s=time.perf_counter() - t0,
        scores={c: float(v) for c, v in result.scores.items()},
        ae={c: float(v) for c, v in result.ae.items()},
        timings=timings,
    )


def score_sessions(
    gw: XnatGateway,
    sessions: Sequence[SessionRef],
    model: nn.Module,
    *,
    workdir: Path,
    method: str = "gradcam",
    batch_size: int | None = None,
    top_k: int = 3,
    on_outcome: Callable[[ScoreOutcome], None] | None = None,
) -> list[ScoreOutcome]:
    """Score each session in turn (see :func:`score_session`); one failure never stops the rest."""
    outcomes = []
    for session in sessions:
        outcome = score_session(
            gw, session, model, workdir=workdir, method=method, batch_size=batch_size, top_k=top_k
        )
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def cohort_rows(
    assessments: Iterable[StoredAssessment],
    ratings: Iterable[RatingRecord],
    *,
    model_version: str | None = None,
    rater_weights: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Join complete assessments with the consensus of their session's ratings.

    Returns rows ``{session, category, ae, consensus, predicted}`` for
    :func:`qa_core.statistics.analyze_table`; sessions without ratings in a category are left
    out of that category. With ``model_version`` only that model's assessments count.
    """
    from qa_core.consensus import consensus_from_ratings

    rating_rows = [
        {"session": r.session_label, "rater": r.rater, "category": c, "score": s}
        for r in ratings
        for c, s in r.scores.items()
        if s is not None
    ]
    consensus: dict[tuple[str, str], float] = {}
    if rating_rows:
        table = consensus_from_ratings(rating_rows, rater_weights=rater_weights)
        consensus = {(v.session, v.category): v.consensus for v in table.values}
    rows = []
    for a in assessments:
        rec = a.record
        if rec.status != "complete" or (model_version and rec.model_version != model_version):
            continue
        for cat in CATEGORIES:
            res = rec.categories.get(cat)
            key = (a.session_label, cat)
            if res is None or key not in consensus or np.isnan(res.ae):
                continue
            rows.append(
                {
                    "session": a.session_label,
                    "category": cat,
                    "ae": res.ae,
                    "consensus": consensus[key],
                    "predicted": res.score,
                }
            )
    return rows


def analyze_project(
    gw: XnatGateway,
    project: str,
    *,
    model_version: str | None = None,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[CohortAnalysis, list[StoredAssessment]]:
    """Bulk-read a project's assessments and ratings (two requests) and analyse AE vs consensus."""
    from qa_core.statistics import analyze_table

    assessments = gw.read_assessments(project)
    ratings = gw.read_ratings(project)
    rows = cohort_rows(assessments, ratings, model_version=model_version)
    if not rows:
        raise CbctQaError(
            f"project {project}: no complete assessment has ratings yet, so there is nothing "
            "to analyse; score sessions and add radiologists' ratings first"
        )
    analysis = analyze_table(rows, n_resamples=n_resamples, seed=seed, skip_small=True)
    return analysis, assessments


def write_outlier_flags(
    gw: XnatGateway,
    analysis: CohortAnalysis,
    assessments: Iterable[StoredAssessment],
    sessions: dict[str, SessionRef],
) -> int:
    """Write each category's outlier flag and reason onto the analysed assessments.

    The flags are the default alerts of :func:`qa_core.outliers.alerts_from_analysis` (the
    DESIGN's residual flags after a Holm step across the session's categories, influence,
    and attribution atypical for the prediction) and the cohort localisation rule
    (:func:`qa_core.localisation.cohort_localisation_flags` over the stored ``ae_in_region``
    and ``region_share`` of the complete assessments of each model version, prefix
    :data:`LOCALISATION_PREFIX`, recomputed on every call); reasons written at scoring time by the image checks (prefix
    :data:`IMAGE_CHECK_PREFIX`) are kept. Only assessments whose flags
    change are rewritten (idempotent: a second call writes nothing). Returns the number of
    assessments updated.
    """
    from qa_core.localisation import cohort_localisation_flags
    from qa_core.outliers import alerts_from_analysis

    assessments = list(assessments)
    flags: dict[tuple[str, str], list[str]] = {}
    analysed = {cat_result.category for cat_result in analysis.results}
    done = [a for a in assessments if a.record.status == "complete"]
    predicted = {a.session_label: {c: r.score for c, r in a.record.categories.items()} for a in done}
    ae = {a.session_label: {c: r.ae for c, r in a.record.categories.items()} for a in done}
    for alert in alerts_from_analysis(analysis.results, predicted, ae):
        flags.setdefault((alert.session, alert.category), []).append(_clause(alert.reason))
    by_model: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for a in done:  # "usual" is per model: each model version is its own cohort
        by_model.setdefault(a.record.model_version, {})[a.session_label] = {
            c: (r.ae_in_region, r.region_share) for c, r in a.record.categories.items()
        }
    for shares in by_model.values():
        for lf in cohort_localisation_flags(shares):
            flags.setdefault((lf.session, lf.category), []).append(
                f"{LOCALISATION_PREFIX} {_clause(lf.reason)}"
            )
    updated = 0
    for a in assessments:
        rec = a.record
        if rec.status != "complete" or a.session_label not in sessions:
            continue
        cats = dict(rec.categories)
        for cat, res in rec.categories.items():
            old = [r for r in res.outlier_reason.split("; ") if r]
            if cat in analysed:
                kept = [r for r in old if r.startswith(IMAGE_CHECK_PREFIX)]
            else:  # no analysis of this category: only its localisation flags are recomputed
                kept = [r for r in old if not r.startswith(LOCALISATION_PREFIX)]
                if kept == old and (a.session_label, cat) not in flags:
                    continue
            reasons = kept + flags.get((a.session_label, cat), [])
            reason = "; ".join(reasons)[:1000]
            cats[cat] = replace(res, outlier=bool(reasons), outlier_reason=reason)
        if cats != dict(rec.categories):
            gw.write_assessment(sessions[a.session_label], replace(rec, categories=cats))
            updated += 1
    return updated
