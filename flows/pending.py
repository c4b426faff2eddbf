"""One discovery pass through Prefect, waited for: what ``cbctqa score-pending`` and
``cbctqa rescore`` do.

:func:`score_pending` registers the deployments, starts ``workers`` scoring threads in this
process (:class:`flows.worker.FlowRunWorker`; runs are claimed through the Prefect API, so
another ``score-pending`` or ``serve`` on the same API shares the work and never repeats it),
runs ``discover_sessions`` for each project as a Prefect flow run, then waits until every
``score_session`` run it created or found has finished, and summarises from XNAT (one bulk
read per project): scored, failed, already done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PendingSummary", "rescore", "score_pending", "wait_for_runs"]

logger = logging.getLogger(__name__)


@dataclass
class PendingSummary:
    """What one pass did, per project (session labels).

    Attributes
    ----------
    scored:
        Sessions whose run ended with a complete assessment.
    failed:
        Sessions whose run ended with a failed assessment: label → reason.
    already_done:
        Sessions that already had a complete assessment by this model version.
    not_retried:
        Sessions left alone because their last failure is final (until the session changes).
    broken_runs:
        Runs that did not complete (crashed, cancelled, failed): run ID → state name.
    runs:
        Every run waited for.
    """

    scored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    already_done: list[str] = field(default_factory=list)
    not_retried: list[str] = field(default_factory=list)
    broken_runs: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    run_seconds: dict[str, float] = field(default_factory=dict)
    """Run ID → seconds from start to final state, for the runs this process executed."""
    run_spans: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Run ID → ``time.perf_counter()`` at claim, start and end, for the runs this process
    executed (see :attr:`flows.worker.FlowRunWorker.spans`)."""

    @property
    def ok(self) -> bool:
        """``True`` when every run completed (a ``failed`` assessment is a handled outcome)."""
        return not self.broken_runs

    def line(self) -> str:
        """One-line summary."""
        return (f"scored {len(self.scored)}, failed {len(self.failed)}, already done "
                f"{len(self.already_done)}, not retried {len(self.not_retried)}"
                + (f", runs not completed {len(self.broken_runs)}" if self.broken_runs else ""))  # fmt: skip


def wait_for_runs(run_ids: Sequence[str], *, timeout: float, poll: float = 0.25) -> dict[str, Any]:
    """Wait until the runs are in a final state; returns run ID → final state."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    pending = {UUID(r) for r in run_ids}
    final: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while pending:
            for i in range(0, len(pending), 200):
                chunk = list(pending)[i:i + 200]
                for run in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
                ):
                    if run.state is not None and run.state.is_final():
                        final[str(run.id)] = run.state
                        pending.discard(run.id)
            if not pending:
                break
            if time.monotonic() > deadline:
                for run_id in pending:
                    final[str(run_id)] = None
                break
            time.sleep(poll)
    return final


def score_pending(
    projects: Sequence[str],
    *,
    workers: int = 1,
    timeout: float | None = None,
) -> dict[str, PendingSummary]:
    """One discovery pass per project through Prefect, waited for (see the module docstring).

    Must run inside :func:`flows.prefect_server.prefect_api` (the command does that).
    """
    from flows.deployments import build_deployments, register_deployments
    from flows.scoring import model_version
    from flows.session_flows import (
        _gateway,
        close_worker_gateways,
        discover_sessions,
        worker_model,
    )
    from flows.worker import FlowRunWorker
    from qa_core.settings import get_settings

    settings = get_settings()
    version = model_version(worker_model())
    deps = register_deployments(
        build_deployments(projects, poll_interval=settings.poll_interval_s, monitor=False),
        workers=workers,
    )
    scoring = {k: f for k, f in deps.items() if f.name == "score_session"}
    limit = timeout or settings.session_timeout_s * 4
    out: dict[str, PendingSummary] = {}
    with FlowRunWorker(scoring, workers=workers, name="cbctqa-pending") as worker:
        for project in projects:
            summary = PendingSummary()
            with _gateway() as gw:
                before = gw.read_assessments(project)
                sessions = gw.list_sessions(project)
            with worker.engine_settings():
                runs = discover_sessions(project)
            worker.wake()
            summary.runs = runs
            states = wait_for_runs([r["flow_run_id"] for r in runs], timeout=limit)
            for run_id, state in states.items():
                if state is None or not state.is_completed():
                    summary.broken_runs[run_id] = "not finished" if state is None else state.name
            done_before = {a.session_label for a in before
                           if a.record.status == "complete" and a.record.model_version == version}  # fmt: skip
            with _gateway() as gw:
                after = gw.read_assessments(project)
            latest: dict[str, Any] = {}
            for a in after:
                if a.record.model_version == version:
                    prev = latest.get(a.session_label)
                    if prev is None or a.record.status == "complete":
                        latest[a.session_label] = a.record
            in_pass = {r["label"] for r in runs}
            for s in sessions:
                rec = latest.get(s.label)
                if s.label in done_before:
                    summary.already_done.append(s.label)
                elif s.label in in_pass and rec is not None and rec.status == "complete":
                    summary.scored.append(s.label)
                elif s.label in in_pass and rec is not None and rec.status == "failed":
                    summary.failed[s.label] = rec.failure_reason
                elif rec is not None and rec.status == "complete":
                    # completed by another worker between this pass's first read and its discovery
                    summary.already_done.append(s.label)
                elif rec is not None and rec.status == "failed":
                    summary.not_retried.append(s.label)
            summary.run_seconds = {r["flow_run_id"]: worker.durations[r["flow_run_id"]]
                                   for r in runs if r["flow_run_id"] in worker.durations}  # fmt: skip
            summary.run_spans = {r["flow_run_id"]: worker.spans[r["flow_run_id"]]
                                 for r in runs if r["flow_run_id"] in worker.spans}  # fmt: skip
            out[project] = summary
    close_worker_gateways()
    return out


def rescore(project: str, session_label: str, *, timeout: float | None = None) -> dict[str, Any]:
    """Score one session again on request (also after a final failure or when complete).

    Creates a ``score_session`` run with ``rescore=True`` from the deployment, executes it in
    this process, waits for it and returns ``{"run": id, "state": name, "status": ...}`` with
    the session's assessment status read back from XNAT.
    """
    from prefect.client.orchestration import get_client

    from flows.deployments import build_deployments, register_deployments
    from flows.scoring import model_version
    from flows.session_flows import (
        SCORE_DEPLOYMENT,
        _gateway,
        close_worker_gateways,
        rescore_key,
        worker_model,
    )
    from flows.worker import FlowRunWorker
    from qa_core.settings import get_settings

    settings = get_settings()
    version = model_version(worker_model())
    with _gateway() as gw:
        session = gw.get_session(session_label, project)
    deps = register_deployments(build_deployments([], poll_interval=settings.poll_interval_s))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(SCORE_DEPLOYMENT)
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"project": project, "session_id": session.session_id, "attempt": 1,
                        "rescore": True},
            idempotency_key=rescore_key(project, session.session_id),
            tags=["cbctqa", f"project:{project}", "rescore"],
        )
    with FlowRunWorker(deps, workers=1, name="cbctqa-rescore"):
        states = wait_for_runs([str(run.id)], timeout=timeout or settings.session_timeout_s * 2)
    state = states[str(run.id)]
    with _gateway() as gw:
        records = [a.record for a in gw.read_assessments(project)
                   if a.session_id == session.session_id and a.record.model_version == version]  # fmt: skip
    close_worker_gateways()
    status = next((r.status for r in records if r.status == "complete"),
                  records[0].status if records else "none")  # fmt: skip
    reason = next((r.failure_reason for r in records if r.status == "failed"), "")
    return {"run": str(run.id), "state": None if state is None else state.name,
            "status": status, "reason": reason, "label": session.label}  # fmt: skip
