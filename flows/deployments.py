"""Deployments of the CBCT QA flows, their triggers and schedules, and serving them.

==============================================  =====================================================
deployment                                      runs
==============================================  =====================================================
``score_session/score-session``                 created by discovery, one per session (idempotency key)
``discover_sessions/discover-<P>``              every ``--poll-interval`` s (the safety net), and on
                                                ``xnat.session.archived`` for project P (the push
                                                path: trigger matches ``xnat.session.*`` with the
                                                related ``xnat.project.<P>``; parameters from the event)
``monitor_cohort/monitor-<P>``                  on ``cbctqa.session.scored`` for P (debounced), and
                                                every ``10 x poll interval`` (at least 5 min);
                                                deployment concurrency limit 1
==============================================  =====================================================

:func:`start_serving` registers them, makes sure the global concurrency limit
``cbctqa-scoring`` exists, and executes their runs in this process with
:class:`flows.worker.FlowRunWorker` (the model loaded once); :func:`serve` blocks until
Ctrl-C. With ``work_pool`` set, the deployments go to a Prefect work pool instead and
``prefect worker start --pool <name>`` processes on any machine run them (production mode).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from flows.events import SESSION_ARCHIVED, SESSION_SCORED

if TYPE_CHECKING:
    from uuid import UUID

    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

    from flows.worker import FlowRunWorker

__all__ = [
    "ServeHandle",
    "archived_trigger",
    "build_deployments",
    "register_deployments",
    "scored_trigger",
    "serve",
    "start_serving",
]

logger = logging.getLogger(__name__)


def archived_trigger(project: str) -> Any:
    """Trigger: ``xnat.session.archived`` of a session in ``project`` → discover that session."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"cbctqa score on archive ({project})",
        expect={SESSION_ARCHIVED},
        match={"prefect.resource.id": "xnat.session.*"},
        match_related={"prefect.resource.id": f"xnat.project.{project}",
                       "prefect.resource.role": "project"},
        parameters={"project": project, "session_id": "{{ event.payload.session_id }}"},
    )


def scored_trigger(project: str) -> Any:
    """Trigger: ``cbctqa.session.scored`` in ``project`` → monitor the cohort (debounced)."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"cbctqa monitor after scores ({project})",
        expect={SESSION_SCORED},
        match={"prefect.resource.id": "xnat.session.*"},
        match_related={"prefect.resource.id": f"xnat.project.{project}",
                       "prefect.resource.role": "project"},
        parameters={"project": project},
    )


def build_deployments(
    projects: Sequence[str],
    *,
    poll_interval: float,
    work_pool: str | None = None,
    monitor: bool = True,
    module_entrypoints: bool = False,
) -> list[RunnerDeployment]:
    """The deployments for ``projects`` (see the module docstring).

    ``module_entrypoints``: record each flow by module path (``flows.session_flows.score_session``)
    instead of a file path relative to the current folder, so that workers on other machines,
    with the package installed elsewhere, find it (``cbctqa deploy``).
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.types.entrypoint import EntrypointType

    from flows.monitor import monitor_cohort
    from flows.session_flows import discover_sessions, score_session

    entry = EntrypointType.MODULE_PATH if module_entrypoints else EntrypointType.FILE_PATH
    out = [score_session.to_deployment("score-session", tags=["cbctqa"], work_pool_name=work_pool,
                                       entrypoint_type=entry)]  # fmt: skip
    for project in projects:
        out.append(
            discover_sessions.to_deployment(
                f"discover-{project}",
                interval=_dt.timedelta(seconds=poll_interval),
                parameters={"project": project},
                triggers=[archived_trigger(project)],
                tags=["cbctqa", f"project:{project}"],
                work_pool_name=work_pool,
                entrypoint_type=entry,
            )
        )
        if monitor:
            out.append(
                monitor_cohort.to_deployment(
                    f"monitor-{project}",
                    interval=_dt.timedelta(seconds=max(300.0, 10 * poll_interval)),
                    parameters={"project": project},
                    triggers=[scored_trigger(project)],
                    concurrency_limit=ConcurrencyLimitConfig(
                        limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                    ),
                    tags=["cbctqa", f"project:{project}"],
                    work_pool_name=work_pool,
                    entrypoint_type=entry,
                )
            )
    return cast("list[RunnerDeployment]", out)


def register_deployments(
    deployments: Sequence[RunnerDeployment], *, work_pool: str | None = None, workers: int = 1
) -> dict[UUID, Flow[Any, Any]]:
    """Create or update the deployments (and their triggers) on the Prefect server.

    Returns deployment ID → flow, for :class:`flows.worker.FlowRunWorker`. Also creates the
    global concurrency limit ``cbctqa-scoring`` when missing (and warns when it has fewer
    slots than the ``workers`` about to score).
    """
    from prefect.client.orchestration import get_client

    from flows.session_flows import ensure_concurrency_limits

    with get_client(sync_client=True) as client:
        ensure_concurrency_limits(client, workers=workers)
    out: dict[UUID, Flow[Any, Any]] = {}
    for dep in deployments:
        dep_id = cast("UUID", dep.apply(work_pool_name=work_pool) if work_pool else dep.apply())
        out[dep_id] = _flow_of(dep)
    return out


def _flow_of(dep: RunnerDeployment) -> Flow[Any, Any]:
    from flows.monitor import monitor_cohort
    from flows.session_flows import discover_sessions, score_session

    by_name = {f.name: f for f in (score_session, discover_sessions, monitor_cohort)}
    return by_name[str(dep.flow_name)]


@dataclass
class ServeHandle:
    """What :func:`start_serving` started; :meth:`stop` ends all of it (idempotent).

    Attributes
    ----------
    api_url:
        The Prefect API (``http://127.0.0.1:PORT/api`` for the local server); XNAT's
        automation script posts ``xnat.session.archived`` to ``{api_url}/events``.
    projects:
        The projects watched.
    deployments:
        Deployment ID → flow.
    workers:
        The in-process executors (scoring, and discovery/monitoring).
    """

    api_url: str
    projects: tuple[str, ...]
    deployments: dict[Any, Any]
    workers: list[FlowRunWorker] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _stopped: bool = False

    def stop(self) -> None:
        """Stop the workers (running sessions finish), then the local Prefect server if this
        process started it and nobody else uses it; frees its port."""
        if self._stopped:
            return
        self._stopped = True
        from flows.session_flows import close_worker_gateways

        for worker in self.workers:
            worker.stop(wait=True)
        close_worker_gateways()
        with contextlib.suppress(Exception):  # send the runs' last log lines before the server goes
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
        self._stack.close()

    def __enter__(self) -> ServeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_serving(
    projects: Sequence[str],
    *,
    poll_interval: float | None = None,
    workers: int = 1,
    monitor: bool = True,
    port: int | None = None,
    ui: bool = False,
) -> ServeHandle:
    """Start everything ``cbctqa serve`` runs and return at once (for programmatic use).

    Joins or starts the Prefect API (:func:`flows.prefect_server.prefect_api`), registers the
    deployments for ``projects`` (poll schedule, push trigger, monitor), and starts
    executing their runs in this process: ``workers`` scoring threads and one thread for
    discovery and monitoring. Call :meth:`ServeHandle.stop` (or use it in a ``with`` block)
    to end it all; nothing is left running and the port is free afterwards.
    """
    from flows.prefect_server import prefect_api
    from flows.worker import FlowRunWorker
    from qa_core.settings import get_settings

    if not projects:
        raise ValueError("start_serving: no project given; pass --project P (or CBCTQA_PROJECTS)")
    interval = poll_interval or get_settings().poll_interval_s
    stack = contextlib.ExitStack()
    try:
        api_url = stack.enter_context(prefect_api(port=port, ui=ui))
        deps = register_deployments(
            build_deployments(projects, poll_interval=interval, monitor=monitor), workers=workers
        )
        scoring = {k: f for k, f in deps.items() if f.name == "score_session"}
        light = {k: f for k, f in deps.items() if f.name != "score_session"}
        handle = ServeHandle(api_url=api_url, projects=tuple(projects), deployments=deps,
                             _stack=stack)  # fmt: skip
        handle.workers.append(FlowRunWorker(scoring, workers=workers, name="cbctqa-score").start())
        handle.workers.append(FlowRunWorker(light, workers=1, name="cbctqa-watch").start())
    except BaseException:
        stack.close()
        raise
    return handle


def serve(
    projects: Sequence[str],
    *,
    poll_interval: float | None = None,
    workers: int = 1,
    port: int | None = None,
    ui: bool = True,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    announce: Any = print,
) -> None:
    """Serve until Ctrl-C / SIGTERM (or ``stop`` is set), then stop everything started."""
    done = stop or threading.Event()
    handle = start_serving(projects, poll_interval=poll_interval, workers=workers, port=port, ui=ui)
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        announce(f"Prefect API: {handle.api_url}  (XNAT's automation script posts to {handle.api_url}/events)")
        announce(f"watching {', '.join(projects)}; polling every "
                 f"{poll_interval or 'CBCTQA_POLL_INTERVAL_S'} s; Ctrl-C stops")  # fmt: skip
        if ready is not None:
            ready.set()
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
