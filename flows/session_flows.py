"""Prefect flows that score sessions: ``score_session`` and ``discover_sessions``.

Thin over :mod:`flows.scoring` and the gateway:

``score_session(project, session_id, attempt)``
    asks for a slot of the global concurrency limit ``cbctqa-scoring``
    (:func:`flows.concurrency_slot.hold_slot`, acquired in the background meanwhile), looks
    the session up, stops if it is already done, chooses the CBCT scan and writes the
    assessment ``queued`` (one task, retried with backoff on transient trouble only), waits
    for the slot, then download, ``load_series``, ``attribute_volume``, products and
    write-back (``running`` → resources → ``complete``) as one task retried on transient
    trouble, and emits ``cbctqa.session.scored``; the slot is given back in the background.
    Bad data ends as a ``failed`` assessment whose reason is final until the session
    changes; transient trouble that outlives the task's retries ends as ``failed`` with
    ``attempt k of N, will retry`` for the next discovery pass (up to ``CBCTQA_MAX_ATTEMPTS``). The flow run itself
    completes either way (the session was handled and the outcome is in XNAT); it fails only
    when even the failure could not be recorded, and discovery then starts a fresh run.

``discover_sessions(project, session_id=None)``
    one bulk search (:meth:`~xnat_plugin.gateway.XnatGateway.plan_scoring`), one scan listing
    per session to do, then one ``score_session`` run per session created from the
    ``score-session`` deployment with an idempotency key built from project, session, scan,
    scans fingerprint, model version and attempt (:func:`score_run_key`): repeated or
    concurrent discovery (the poll schedule, the push trigger, ``cbctqa score-pending``) finds
    the same run instead of making a second one.

The model and the XNAT connection are per worker process (:func:`worker_model`,
:func:`worker_gateway`): loaded once, shared by the runs that process executes. Credentials
come from ``XNAT_HOST``/``XNAT_USER``/``XNAT_PASS`` or ``~/.netrc`` on the worker, never from
flow-run parameters.
"""

from __future__ import annotations

import atexit
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import get_current_settings

from flows.concurrency_slot import hold_slot
from flows.events import emit_session_scored
from flows.scoring import is_transient, model_version, record_failure, score_scan
from qa_core.errors import CbctQaError
from qa_core.settings import get_settings

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun
    from torch import nn

    from xnat_plugin.gateway import SessionRef, XnatGateway

__all__ = [
    "SCORE_DEPLOYMENT",
    "SCORING_LIMIT",
    "DiscoveredRun",
    "close_worker_gateways",
    "discover_sessions",
    "ensure_concurrency_limits",
    "score_run_key",
    "score_session",
    "worker_gateway",
    "worker_model",
]

logger = logging.getLogger(__name__)

#: ``flow name/deployment name`` of the deployment discovery creates runs from.
SCORE_DEPLOYMENT = "score_session/score-session"
#: Global concurrency limit held while a session is downloaded, attributed and written back.
SCORING_LIMIT = "cbctqa-scoring"
#: Final flow-run states that did not complete: discovery starts a fresh run after these.
_BROKEN = {StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}

# ---------------------------------------------------------------------- per-process resources

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], nn.Module] = {}
_GATEWAYS: dict[str, XnatGateway] = {}
_THREAD = threading.local()
#: Model loads in this process (tests check it stays at one per model).
MODEL_LOADS = 0


def worker_model() -> nn.Module:
    """The scoring model of this worker process (``CBCTQA_MODEL_PATH``, ``CBCTQA_DEVICE``: CUDA
    when present), read from disk once per process; each executing thread gets its own copy of
    it (Grad-CAM hooks must not be shared between concurrent sessions)."""
    import copy

    global MODEL_LOADS
    settings = get_settings()
    key = (str(settings.model_path or ""), settings.device)
    mine: dict[tuple[str, str], nn.Module] = _THREAD.__dict__.setdefault("models", {})
    if key in mine:
        return mine[key]
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from qa_core.model import load_model

            model = load_model(settings.model_path, device=settings.device)
            # imported with the model (once per process): importing pytorch-grad-cam (and the
            # torchvision it pulls in) took 6-8 s inside the first session's attribution
            import pytorch_grad_cam  # noqa: F401

            _MODELS[key] = model
            MODEL_LOADS += 1
            logger.info("worker model %s loaded (%s)", model_version(model), key)
        copy_ = copy.deepcopy(model)
    mine[key] = copy_
    return copy_


def worker_gateway() -> XnatGateway:
    """This process's gateway to XNAT (``XNAT_HOST``/``XNAT_USER``/``XNAT_PASS`` or
    ``~/.netrc``), opened once and shared by threads; closed at exit."""
    import os

    from xnat_plugin.gateway import XnatGateway

    key = os.environ.get("XNAT_HOST", "") + "|" + os.environ.get("XNAT_USER", "")
    with _LOCK:
        gw = _GATEWAYS.get(key)
        if gw is None or gw.closed:
            gw = XnatGateway.connect()
            _GATEWAYS[key] = gw
        return gw


def _drop_gateway(gw: XnatGateway) -> None:
    with _LOCK:
        for key, value in list(_GATEWAYS.items()):
            if value is gw:
                del _GATEWAYS[key]
    try:
        gw.close()
    except CbctQaError:
        pass


def close_worker_gateways() -> None:
    """Close this process's XNAT connections (they reopen on next use)."""
    with _LOCK:
        gateways = list(_GATEWAYS.values())
        _GATEWAYS.clear()
    for gw in gateways:
        try:
            gw.close()
        except Exception as exc:  # best effort
            logger.debug("closing an XNAT connection failed: %s", exc)


@atexit.register
def _close_at_exit() -> None:  # pragma: no cover - process exit
    logging.getLogger("xnat_plugin.gateway").disabled = True  # streams may be closed already
    close_worker_gateways()


@contextmanager
def _gateway() -> Iterator[XnatGateway]:
    """The worker gateway; dropped (reconnected next time) after an authentication error."""
    from xnat_plugin.gateway import XnatAuthenticationError

    gw = worker_gateway()
    try:
        yield gw
    except XnatAuthenticationError:
        _drop_gateway(gw)
        raise


def scratch_dir() -> Path:
    """This worker's scratch folder (``CBCTQA_DATA_DIR/work``); downloads are removed after use."""
    path = get_settings().data_dir / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_concurrency_limits(client: SyncPrefectClient, *, workers: int = 1) -> int:
    """Create the global concurrency limit ``cbctqa-scoring`` if missing
    (``CBCTQA_SCORING_CONCURRENCY`` slots); an existing limit is left as an admin set it.
    Returns its slots, and warns when ``workers`` scoring threads are more than it lets
    score at once."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    try:
        slots = int(client.read_global_concurrency_limit_by_name(SCORING_LIMIT).limit)
    except ObjectNotFound:
        slots = get_settings().scoring_concurrency
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=SCORING_LIMIT, limit=slots)
            )
        except ObjectAlreadyExists:
            pass  # created concurrently by another process
    if workers > slots:
        logger.warning(
            "the Prefect global concurrency limit %s has %d slot(s): at most %d of the %d "
            "workers score at once (it caps all workers together); raise it with "
            "`prefect gcl update %s --limit %d` if this machine and XNAT can take more",
            SCORING_LIMIT, slots, slots, workers, SCORING_LIMIT, workers,
        )  # fmt: skip
    return slots


# ---------------------------------------------------------------------- tasks


def _transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: XNAT 5xx, dropped connections and timeouts only (never 4xx, bad data)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


#: Retries of I/O tasks: twice, after about 1 and 4 s, on transient trouble only.
_RETRIES, _DELAYS, _JITTER = 2, [1.0, 4.0], 0.5


@task(name="prepare-session", retries=_RETRIES, retry_delay_seconds=_DELAYS,
      retry_jitter_factor=_JITTER, retry_condition_fn=_transient_only, cache_policy=NO_CACHE)
def prepare_session(
    project: str, session_id: str, version: str, rescore: bool = False
) -> tuple[SessionRef, str | None, str, float]:
    """Look the session up (by accession ID or label; one request), stop if it has a complete
    assessment by ``version`` (one listing filtered to the session; not with ``rescore``),
    else choose the CBCT scan (one request) and write the assessment ``queued``.

    Returns the session, the scan ID (``None`` when already done), the scans fingerprint and
    the seconds spent talking to XNAT. An error after the lookup carries the session and the
    fingerprint of the scans seen (attributes ``session`` and ``scans_fingerprint``), so that
    the failure can be recorded on the session."""
    from xnat_plugin.gateway import AssessmentRecord, scans_fingerprint

    t0 = time.perf_counter()
    with _gateway() as gw:
        session = gw.get_session(session_id, project)
        fingerprint = ""
        try:
            if not rescore and _already_complete(gw, session, version):
                return session, None, "", time.perf_counter() - t0
            scans = gw.list_scans(session)
            fingerprint = scans_fingerprint(scans)
            scan_id = gw.select_scan(session, scans=scans).scan_id
            gw.write_assessment(
                session, AssessmentRecord(status="queued", scan_id=scan_id, model_version=version)
            )
        except CbctQaError as exc:
            exc.session = session  # type: ignore[attr-defined]
            exc.scans_fingerprint = fingerprint  # type: ignore[attr-defined]
            raise
    return session, scan_id, fingerprint, time.perf_counter() - t0


@task(name="score-scan", retries=_RETRIES, retry_delay_seconds=_DELAYS, retry_jitter_factor=_JITTER,
      retry_condition_fn=_transient_only, cache_policy=NO_CACHE)
def score_scan_task(
    session: SessionRef, scan_id: str
) -> tuple[str, dict[str, float], dict[str, float], dict[str, float]]:
    """Download, load, attribute, write products and the complete assessment of one scan;
    returns the assessor ID, scores, AE and the seconds of each stage."""
    settings = get_settings()
    model = worker_model()
    timings: dict[str, float] = {}
    with _gateway() as gw, tempfile.TemporaryDirectory(prefix="score-", dir=scratch_dir()) as tmp:
        assessor, result = score_scan(
            gw, session, scan_id, model, workdir=Path(tmp), method=settings.cam_method,
            batch_size=settings.batch_size, timings=timings,
        )  # fmt: skip
    return (
        assessor,
        {c: float(v) for c, v in result.scores.items()},
        {c: float(v) for c, v in result.ae.items()},
        timings,
    )


# ---------------------------------------------------------------------- flows

#: Flow options: results are not kept by Prefect (the outcome lives in XNAT), and their
#: storage is Prefect's local path, named here: without it the engine asks the server for its
#: default result storage twice per run (``GET /admin/storage``, ~10 ms each).
NO_RESULTS: dict[str, Any] = {
    "persist_result": False,
    "result_storage": Path(get_current_settings().results.local_storage_path),
}


@flow(name="score_session", timeout_seconds=get_settings().session_timeout_s, log_prints=False,
      **NO_RESULTS)
def score_session(
    project: str, session_id: str, attempt: int = 1, rescore: bool = False
) -> dict[str, Any]:
    """Score one session (see the module docstring); returns the outcome summary.

    Parameters
    ----------
    project:
        XNAT project ID.
    session_id:
        Accession ID (or label) of the session.
    attempt:
        Which attempt this run is (set by discovery from the session's failed assessments).
    rescore:
        Score even when a complete assessment by this model version exists (on request).
    """
    t_start = time.perf_counter()
    settings = get_settings()
    version = model_version(worker_model())
    timings: dict[str, float] = {}
    base = {"project": project, "session_id": session_id, "label": "", "model_version": version,
            "attempt": attempt}  # fmt: skip
    scan_id = ""
    fingerprint = ""
    session: SessionRef | None = None
    # the slot is asked for at once and acquired while the session is looked up and queued
    with hold_slot(SCORING_LIMIT, holder=_holder(), lease_s=_LEASE_S, wait=False,
                   release_in_background=True) as slot:  # fmt: skip
        try:
            session, chosen, fingerprint, timings["select"] = prepare_session(
                project, session_id, version, rescore
            )
            base.update(session_id=session.session_id, label=session.label)
            if chosen is None:
                return {**base, "status": "already done"}
            scan_id = chosen
            timings["wait"] = slot.wait().blocked_s
            assessor, scores, ae, stages = score_scan_task(session, scan_id)
            timings.update(stages)
        except CbctQaError as exc:
            session = session or getattr(exc, "session", None)
            if session is None:
                raise  # the session itself could not be read: discovery starts a fresh run
            fingerprint = fingerprint or getattr(exc, "scans_fingerprint", "")
            base.update(session_id=session.session_id, label=session.label)
            with _gateway() as gw:
                reason, assessor_id = record_failure(
                    gw, session, scan_id, version, exc,
                    attempt=attempt, max_attempts=settings.max_attempts, scans=fingerprint,
                )  # fmt: skip
            if assessor_id is None:
                raise  # not even the failure is in XNAT: fail the run; discovery starts a fresh one
            return {**base, "status": "failed", "scan_id": scan_id, "reason": reason,
                    "transient": is_transient(exc), "timings": timings}  # fmt: skip
        emit_session_scored(
            project=project, session_id=session.session_id, label=session.label,
            model_version=version, scores=scores, ae=ae, assessor_id=assessor,
        )  # fmt: skip
    timings["flow"] = time.perf_counter() - t_start
    _remember_timings(timings)
    return {**base, "status": "complete", "scan_id": scan_id, "assessor_id": assessor,
            "scores": scores, "ae": ae, "timings": timings}  # fmt: skip


#: Stage timings of the ``score_session`` runs executed in this process, by flow-run ID (the
#: latest 1000; read by ``benchmarks/bench_flows.py`` to split off what Prefect adds).
RUN_TIMINGS: dict[str, dict[str, float]] = {}


def _remember_timings(timings: dict[str, float]) -> None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    with _LOCK:
        RUN_TIMINGS[str(ctx.flow_run.id)] = dict(timings)
        while len(RUN_TIMINGS) > 1000:
            RUN_TIMINGS.pop(next(iter(RUN_TIMINGS)))


#: Lease of a scoring slot: renewed every third of it; a dead worker's slot is free after it.
_LEASE_S = 300.0


def _holder() -> Any:
    """The running flow run as the holder of its scoring slot (shown on the lease)."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=ctx.flow_run.id)


def _already_complete(gw: XnatGateway, session: SessionRef, version: str) -> bool:
    """``True`` when the session has a complete assessment by ``version`` (one listing, filtered
    to the session)."""
    return any(
        a.session_id == session.session_id
        and a.record.status == "complete"
        and a.record.model_version == version
        for a in gw.read_assessments(session.project, session_id=session.session_id)
    )


@dataclass(frozen=True)
class DiscoveredRun:
    """One ``score_session`` run discovery created or found.

    Attributes
    ----------
    session_id, label:
        The session.
    flow_run_id:
        The run (string UUID).
    key:
        Its idempotency key.
    created:
        ``True`` when this discovery created the run, ``False`` when it already existed.
    state:
        The run's state type when discovery saw it (``SCHEDULED``, ``RUNNING``, ``COMPLETED``...).
    """

    session_id: str
    label: str
    flow_run_id: str
    key: str
    created: bool
    state: str


def score_run_key(
    project: str, session_id: str, scan_id: str, scans: str, version: str, attempt: int
) -> str:
    """Idempotency key of a ``score_session`` run: unique per flow, not per deployment.

    >>> score_run_key("HN", "XNAT_E1", "3", "1a2b3c4d", "1.2.0", 1)
    'cbctqa.score_session/HN/XNAT_E1/scan-3/scans-1a2b3c4d/model-1.2.0/attempt-1'
    """
    return (f"cbctqa.score_session/{project}/{session_id}/scan-{scan_id}/scans-{scans}"
            f"/model-{version}/attempt-{attempt}")  # fmt: skip


def _create_run(
    client: SyncPrefectClient, deployment_id: UUID, parameters: dict[str, Any], key: str
) -> tuple[FlowRun, bool]:
    started = time.time()
    run = client.create_flow_run_from_deployment(
        deployment_id, parameters=parameters, idempotency_key=key,
        tags=["cbctqa", f"project:{parameters['project']}"],
    )  # fmt: skip
    created = run.created is not None and run.created.timestamp() >= started - 1.0
    return run, created


def create_score_run(
    client: SyncPrefectClient,
    deployment_id: UUID,
    *,
    project: str,
    session: SessionRef,
    scan_id: str,
    scans: str,
    version: str,
    attempt: int,
    max_attempts: int,
) -> DiscoveredRun | None:
    """Create (or find) the run for this session, scan, model version and attempt.

    When the run with that key ended broken (crashed, cancelled, failed: it never recorded an
    outcome) a fresh run is created under ``key/run-2``, ``key/run-3``... up to
    ``max_attempts`` runs; after that the session is marked ``failed`` with that reason
    (never silently dropped). Returns ``None`` then.
    """
    key = score_run_key(project, session.session_id, scan_id, scans, version, attempt)
    params = {"project": project, "session_id": session.session_id, "attempt": attempt}
    for generation in range(1, max_attempts + 1):
        run_key = key if generation == 1 else f"{key}/run-{generation}"
        run, created = _create_run(client, deployment_id, params, run_key)
        state = run.state.type if run.state is not None else StateType.SCHEDULED
        if state not in _BROKEN:
            return DiscoveredRun(session.session_id, session.label, str(run.id), run_key,
                                 created, state.value)  # fmt: skip
    reason = (f"{max_attempts} score_session runs ended without recording an outcome "
              f"(crashed, cancelled or failed); last run {run.id}")  # fmt: skip
    with _gateway() as gw:
        record_failure(gw, session, scan_id if scan_id != "none" else "", version,
                       TimeoutError(reason), attempt=max_attempts, max_attempts=max_attempts,
                       scans=scans)  # fmt: skip
    return None


@flow(name="discover_sessions", log_prints=False, **NO_RESULTS)
def discover_sessions(project: str, session_id: str | None = None) -> list[dict[str, Any]]:
    """Find the project's sessions to score and create one ``score_session`` run per session.

    Parameters
    ----------
    project:
        XNAT project ID.
    session_id:
        Only this session (the push path: ``xnat.session.archived`` names one session).

    Returns
    -------
    list of dict
        One :class:`DiscoveredRun` (as a dict) per session to do.
    """
    from dataclasses import asdict

    from prefect.client.orchestration import get_client

    settings = get_settings()
    version = model_version(worker_model())
    plan = _plan(project, version, settings.max_attempts)
    if session_id:
        plan = [c for c in plan if session_id in (c.session.session_id, c.session.label)]
    out: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(SCORE_DEPLOYMENT)
        for cand in plan:
            scan_id, scans = _choose_scan(cand.session)
            found = create_score_run(
                client, deployment.id, project=project, session=cand.session, scan_id=scan_id,
                scans=scans, version=version, attempt=cand.attempt,
                max_attempts=settings.max_attempts,
            )  # fmt: skip
            if found is not None:
                out.append(asdict(found))
    logger.info("project %s: %d session(s) to score, %d new run(s)", project, len(out),
                sum(r["created"] for r in out))  # fmt: skip
    return out


@task(name="plan-scoring", retries=_RETRIES, retry_delay_seconds=_DELAYS, retry_jitter_factor=_JITTER,
      retry_condition_fn=_transient_only, cache_policy=NO_CACHE)
def _plan_task(project: str, version: str, max_attempts: int) -> list[Any]:
    with _gateway() as gw:
        return gw.plan_scoring(project, model_version=version, max_attempts=max_attempts)


def _plan(project: str, version: str, max_attempts: int) -> Sequence[Any]:
    return list(_plan_task(project, version, max_attempts))


def _choose_scan(session: SessionRef) -> tuple[str, str]:
    """``(scan ID or "none", scans fingerprint)`` of a session (for the run's key)."""
    from xnat_plugin.gateway import XnatScanSelectionError, scans_fingerprint

    with _gateway() as gw:
        scans = gw.list_scans(session)
        try:
            scan_id = gw.select_scan(session, scans=scans).scan_id
        except XnatScanSelectionError:
            scan_id = "none"
    return scan_id, scans_fingerprint(scans)


def rescore_key(project: str, session_id: str) -> str:
    """A fresh idempotency key for a run requested by a person (``cbctqa rescore``)."""
    return f"cbctqa.score_session/{project}/{session_id}/rescore-{uuid.uuid4()}"
