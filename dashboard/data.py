"""Everything the dashboard reads from XNAT, read in bulk through the gateway and cached.

One **snapshot** of a project is four listing requests whatever its size
(:func:`load_snapshot`): the CT sessions with acquisition date and scanner, every
``cbctqa:qaAssessmentData``, every ``cbctqa:ratingData`` and the alert acknowledgements. It is
kept with a time-to-live (:data:`TTL_S`, ``CBCTQA_DASHBOARD_TTL_S``) per (XNAT host, user,
project): a user only ever sees data read with their own XNAT identity. The refresh button
drops it (:func:`clear_caches`). Derived tables (:func:`cohort_frame`) are cached on the
snapshot, so a widget change never re-reads XNAT nor rebuilds them.

The statistics of AE against consensus (``qa_core.statistics.analyze_table``) grow faster than
linearly with the cohort (leave-one-out and outlier passes), so they run in a background
thread keyed by the cohort table's checksum (:func:`analysis_job`); pages show what is ready
and say what is still being computed.

Heavy objects are cached with ``st.cache_resource`` (shared, never copied): treat them as
read-only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from qa_core.settings import get_settings

if TYPE_CHECKING:
    from qa_core.statistics import CohortAnalysis
    from xnat_plugin.gateway import (
        AlertAcknowledgement,
        RatingRecord,
        SessionDetails,
        StoredAssessment,
        XnatGateway,
    )

__all__ = [
    "ANALYSIS_RESAMPLES",
    "TTL_S",
    "AnalysisJob",
    "Snapshot",
    "analysis_job",
    "clear_caches",
    "cohort_frame",
    "cohort_rows_for",
    "consensus_table",
    "load_snapshot",
    "model_versions",
    "rated_rows",
    "session_frame",
]

logger = logging.getLogger("dashboard")


#: Seconds a project snapshot is reused before XNAT is read again.
TTL_S: float = get_settings().dashboard_ttl_s  # CBCTQA_DASHBOARD_TTL_S
#: Permutations and bootstrap resamples of the dashboard's statistics.
ANALYSIS_RESAMPLES: int = get_settings().dashboard_resamples  # CBCTQA_DASHBOARD_RESAMPLES


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One bulk read of a project (immutable; shared between reruns and users of one identity).

    Attributes
    ----------
    host, user, project:
        Where and as whom it was read.
    sessions, assessments, ratings, acknowledgements:
        The four listings.
    fetched_at:
        When XNAT answered (UTC).
    xnat_s:
        Seconds XNAT took to answer the four listings.
    """

    host: str
    user: str
    project: str
    sessions: tuple[SessionDetails, ...]
    assessments: tuple[StoredAssessment, ...]
    ratings: tuple[RatingRecord, ...]
    acknowledgements: tuple[AlertAcknowledgement, ...]
    fetched_at: _dt.datetime
    xnat_s: float
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def key(self) -> str:
        """Identity of this snapshot (cache key of everything derived from it)."""
        return f"{self.host}|{self.user}|{self.project}|{self.fetched_at.isoformat()}"

    def memo(self, name: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per snapshot and name (thread-safe)."""
        with self._lock:
            if name not in self._memo:
                self._memo[name] = build()
            return self._memo[name]


@st.cache_resource(ttl=TTL_S, max_entries=16, show_spinner=False)
def _cached_snapshot(_gw: XnatGateway, host: str, user: str, project: str, epoch: int) -> Snapshot:
    from xnat_plugin.gateway import read_acknowledgements, read_session_details

    t0 = time.perf_counter()
    sessions = read_session_details(_gw, project)
    assessments = _gw.read_assessments(project)
    ratings = _gw.read_ratings(project)
    acks = read_acknowledgements(_gw, project)
    return Snapshot(
        host=host,
        user=user,
        project=project,
        sessions=tuple(sessions),
        assessments=tuple(assessments),
        ratings=tuple(ratings),
        acknowledgements=tuple(acks),
        fetched_at=_dt.datetime.now(_dt.UTC),
        xnat_s=time.perf_counter() - t0,
    )


def load_snapshot(gw: XnatGateway, project: str) -> Snapshot:
    """The project's snapshot read as ``gw``'s user (cached for :data:`TTL_S` seconds)."""
    epoch = int(st.session_state.get("_data_epoch", 0))
    return _cached_snapshot(gw, gw.host, gw.user, project, epoch)


def clear_caches() -> None:
    """Forget every cached XNAT read (the refresh button; after a write)."""
    _cached_snapshot.clear()
    st.session_state["_data_epoch"] = int(st.session_state.get("_data_epoch", 0)) + 1


def model_versions(snap: Snapshot) -> list[str]:
    """Model versions with assessments, most recently written first."""

    def build() -> list[str]:
        latest: dict[str, _dt.datetime] = {}
        for a in snap.assessments:
            stamp = a.last_modified or a.insert_date or _dt.datetime.min
            v = a.record.model_version
            if v not in latest or stamp > latest[v]:
                latest[v] = stamp
        return sorted(latest, key=lambda v: latest[v], reverse=True)

    return list(snap.memo("versions", build))


def consensus_table(snap: Snapshot) -> Any:
    """``qa_core.consensus.ConsensusTable`` of the snapshot's ratings, or ``None`` without ratings."""

    def build() -> Any:
        from qa_core.consensus import RatingRow, consensus_from_ratings

        rows = [RatingRow(r.session_label, r.rater, c, float(s)) for r in snap.ratings for c, s in r.scores.items()]
        return consensus_from_ratings(rows) if rows else None

    return snap.memo("consensus", build)


def _latest_per_session(snap: Snapshot, version: str) -> dict[str, StoredAssessment]:
    """The newest assessment of each session by ``version`` (one per session)."""
    out: dict[str, StoredAssessment] = {}
    for a in snap.assessments:
        if a.record.model_version != version:
            continue
        prev = out.get(a.session_label)
        stamp = a.last_modified or a.insert_date or _dt.datetime.min
        if prev is None or stamp >= (prev.last_modified or prev.insert_date or _dt.datetime.min):
            out[a.session_label] = a
    return out


def session_frame(snap: Snapshot, version: str | None) -> pd.DataFrame:
    """One row per CT session: acquisition facts, scoring status by ``version``, rating count.

    Columns: ``session``, ``session_id``, ``subject``, ``acquired`` (date), ``scanner``,
    ``station``, ``model``, ``status`` (``complete``/``failed``/``queued``/``running``/
    ``not scored``), ``failure_reason``, ``ratings`` (number of raters), ``scored_at``.
    """

    def build() -> pd.DataFrame:
        latest = _latest_per_session(snap, version) if version else {}
        n_ratings: dict[str, int] = {}
        for r in snap.ratings:
            n_ratings[r.session_label] = n_ratings.get(r.session_label, 0) + 1
        rows = []
        for s in snap.sessions:
            a = latest.get(s.label)
            rows.append(
                {
                    "session": s.label,
                    "session_id": s.session_id,
                    "subject": s.subject,
                    "acquired": pd.Timestamp(s.acquisition_date) if s.acquisition_date else pd.NaT,
                    "scanner": s.scanner,
                    "station": s.station or "unknown",
                    "model": " ".join(p for p in (s.manufacturer, s.model) if p) or "unknown",
                    "status": a.record.status if a is not None else "not scored",
                    "failure_reason": a.record.failure_reason if a is not None else "",
                    "ratings": n_ratings.get(s.label, 0),
                    "scored_at": pd.Timestamp(a.last_modified or a.insert_date)
                    if a is not None and (a.last_modified or a.insert_date)
                    else pd.NaT,
                }
            )
        return pd.DataFrame(
            rows,
            columns=["session", "session_id", "subject", "acquired", "scanner", "station", "model",
                     "status", "failure_reason", "ratings", "scored_at"],
        )  # fmt: skip

    frame: pd.DataFrame = snap.memo(f"sessions|{version}", build)
    return frame


def cohort_frame(snap: Snapshot, version: str) -> pd.DataFrame:
    """One row per (complete session assessment by ``version``, category).

    Columns: ``session``, ``session_id``, ``assessor_id``, ``category``, ``predicted``,
    ``ae``, ``ae_per_voxel``, ``consensus`` (NaN when unrated), ``outlier`` (bool),
    ``outlier_reason``, ``acknowledged_by``, ``acknowledged_at``, ``ack_comment``,
    ``acquired``, ``scanner``, ``station``, ``model``, ``flagged_at``.
    """

    def build() -> pd.DataFrame:
        latest = _latest_per_session(snap, version)
        table = consensus_table(snap)
        cons: dict[tuple[str, str], float] = {}
        if table is not None:
            cons = {(v.session, v.category): v.consensus for v in table.values}
        acks = {(k.assessor_id, k.category): k for k in snap.acknowledgements}
        info = {s.label: (s.acquisition_date, s.scanner, s.station or "unknown",
                          " ".join(p for p in (s.manufacturer, s.model) if p) or "unknown")
                for s in snap.sessions}  # fmt: skip
        unknown = (None, "unknown", "unknown", "unknown")
        cols = ["session", "session_id", "assessor_id", "category", "predicted", "ae", "ae_per_voxel",
                "consensus", "outlier", "outlier_reason", "acknowledged_by", "acknowledged_at",
                "ack_comment", "acquired", "scanner", "station", "model", "flagged_at"]  # fmt: skip
        rows = []
        for label, a in latest.items():
            if a.record.status != "complete":
                continue
            acquired, scanner, station, model = info.get(label, unknown)
            flagged_at = a.last_modified or a.insert_date
            for cat, res in a.record.categories.items():
                ack = acks.get((a.assessor_id, cat))
                rows.append((label, a.session_id, a.assessor_id, cat, res.score, res.ae, res.ae_per_voxel,
                             cons.get((label, cat), math.nan), bool(res.outlier), res.outlier_reason,
                             ack.by if ack else "", ack.at if ack else None, ack.comment if ack else "",
                             acquired, scanner, station, model, flagged_at))  # fmt: skip
        frame = pd.DataFrame.from_records(rows, columns=cols)
        for col in ("acknowledged_at", "acquired", "flagged_at"):
            frame[col] = pd.to_datetime(frame[col], utc=False, errors="coerce") if len(frame) else frame[col]
        for col in ("predicted", "ae", "ae_per_voxel", "consensus"):
            frame[col] = frame[col].astype(float)
        frame["outlier"] = frame["outlier"].astype(bool)
        return frame

    frame: pd.DataFrame = snap.memo(f"cohort|{version}", build)
    return frame


def cohort_rows_for(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows ``{session, category, ae, consensus, predicted}`` of the rated part of ``frame``
    (the input of ``qa_core.statistics.analyze_table``)."""
    rated = frame[np.isfinite(frame["consensus"].to_numpy(dtype=float))]
    rated = rated[np.isfinite(rated["ae"].to_numpy(dtype=float))]
    return [
        {"session": s, "category": c, "ae": float(ae), "consensus": float(co), "predicted": float(p)}
        for s, c, ae, co, p in zip(
            rated["session"], rated["category"], rated["ae"], rated["consensus"], rated["predicted"],
            strict=True,
        )
    ]


# ------------------------------------------------------------------------------ statistics


@dataclass
class AnalysisJob:
    """The statistics of one cohort table, computed in the background.

    Attributes
    ----------
    key:
        SHA-256 of the canonical rows and settings.
    n_rows:
        Rows analysed.
    started:
        ``time.time()`` at submission.
    future:
        Resolves to ``CohortAnalysis`` or raises ``StatisticsError``.
    finished:
        ``time.time()`` when done, else ``None``.
    """

    key: str
    n_rows: int
    started: float
    future: Future[CohortAnalysis]
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.future.done()

    def result(self) -> CohortAnalysis:
        """The analysis (raises what the computation raised)."""
        return self.future.result()

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started


@st.cache_resource(show_spinner=False)
def _job_registry() -> tuple[dict[str, AnalysisJob], threading.Lock, threading.Lock]:
    """Jobs by key, the registry's lock, and the lock that runs one computation at a time."""
    return {}, threading.Lock(), threading.Lock()


def _rows_key(rows: list[dict[str, Any]], n_resamples: int) -> str:
    canon = sorted([r["category"], r["session"], r["ae"], r["consensus"], r["predicted"]] for r in rows)
    blob = json.dumps([canon, n_resamples], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def rated_rows(snap: Snapshot, version: str) -> tuple[list[dict[str, Any]], str]:
    """The analysis input of ``version`` (:func:`cohort_rows_for`) and its key, built once per snapshot."""

    def build() -> tuple[list[dict[str, Any]], str]:
        rows = cohort_rows_for(cohort_frame(snap, version))
        return rows, _rows_key(rows, ANALYSIS_RESAMPLES)

    out: tuple[list[dict[str, Any]], str] = snap.memo(f"rows|{version}", build)
    return out


def analysis_job(rows: list[dict[str, Any]], *, n_resamples: int = ANALYSIS_RESAMPLES, wait_s: float = 0.0,
                 key: str | None = None) -> AnalysisJob:
    """The (possibly still running) analysis of ``rows``; started if new; waits up to ``wait_s``.

    Jobs are shared by every session of the server and kept for the server's lifetime (at most
    32, oldest dropped), so the statistics of one cohort table are computed once. They run one
    at a time in daemon threads (a server shutting down does not wait for them).
    """
    from qa_core.statistics import analyze_table

    jobs, lock, compute = _job_registry()
    key = key or _rows_key(rows, n_resamples)
    with lock:
        job = jobs.get(key)
        if job is None:
            future: Future[CohortAnalysis] = Future()
            job = AnalysisJob(key=key, n_rows=len(rows), started=time.time(), future=future)
            jobs[key] = job

            def run(job: AnalysisJob = job) -> None:
                with compute:
                    try:
                        job.future.set_result(
                            analyze_table(rows, n_resamples=n_resamples, seed=0, skip_small=True)
                        )
                    except BaseException as exc:
                        job.future.set_exception(exc)
                    finally:
                        job.finished = time.time()

            threading.Thread(target=run, name=f"cbctqa-stats-{key[:8]}", daemon=True).start()
            while len(jobs) > 32:
                jobs.pop(next(iter(jobs)))
    if wait_s > 0 and not job.done:
        try:
            job.future.result(timeout=wait_s)
        except TimeoutError:
            pass
        except Exception:
            pass  # reported by the page from job.result()
    return job
