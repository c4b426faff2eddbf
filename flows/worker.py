"""An in-process executor of scheduled flow runs: the model stays loaded between sessions.

Prefect's runner (``serve``) and its process worker start one Python process per flow run;
scoring would then import torch and load the model for every session. :class:`FlowRunWorker`
does what a Prefect worker does for the runs of the deployments it is given (poll the API for
``SCHEDULED`` runs that are due, claim each by proposing ``PENDING``, which the server grants
to exactly one claimant and refuses while a deployment concurrency limit is full, then run it
with Prefect's own engine, ``prefect.flow_engine.run_flow``) but in threads of one long-lived
process: the model and the XNAT connection are loaded once (see
:func:`flows.session_flows.worker_model`). States, logs, retries, timeouts, concurrency
limits and events are Prefect's; several such workers (threads or machines) may poll the same
deployments: a run is executed once.

Heartbeats (``prefect.flow-run.heartbeat`` every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds,
the same event the engine sends) come from this worker's poll thread for all its runs at once:
the engine's own heartbeat thread sleeps in 1 s steps and is joined when a run ends, which
cost each run 0.5 s on average (measured: 0.39 s in two runs). Likewise the engine's per-run
suspension observer is replaced by one shared observer (:mod:`flows.suspension_watch`), and
its per-run Prefect client by one client the worker owns (the engine takes the client of the
context it runs in; :func:`flows.prefect_requests.open_owned_client`). A claimed run is handed
to the engine as the claim returned it (the engine reads it again as it starts).

Production on a process work pool uses ``prefect worker start`` instead (one process per run,
see the README); both may run side by side.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uuid import UUID

    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun

__all__ = ["FlowRunWorker"]

logger = logging.getLogger(__name__)


class FlowRunWorker:
    """Poll, claim and execute scheduled runs of some deployments in this process.

    Parameters
    ----------
    flows:
        Deployment ID to the flow object its runs execute.
    workers:
        Runs executed at the same time (threads).
    poll_interval:
        Seconds between polls for due runs.
    name:
        Shown in logs.
    stop_grace:
        Seconds :meth:`stop` waits for running runs to finish; runs still going after it are
        marked ``Crashed`` ("worker stopped") and left behind (their threads are daemons, so
        the process can exit): discovery starts a fresh run for those sessions later.

    Use as a context manager (``start`` on enter, ``stop`` on exit), or call them yourself.
    """

    def __init__(
        self,
        flows: Mapping[UUID, Flow[Any, Any]],
        *,
        workers: int = 1,
        poll_interval: float = 1.0,
        name: str = "cbctqa-worker",
        stop_grace: float = 30.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"FlowRunWorker: workers is {workers}; expected >= 1")
        self._flows = dict(flows)
        self._workers = workers
        self._poll = poll_interval
        self._name = name
        self._grace = stop_grace
        self._busy: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._context = contextvars.copy_context()
        self._client: Any = None
        self._clients: Any = None
        self._beats: dict[str, tuple[float, Any, Any]] = {}  # run ID -> (last beat, resource, related)
        self.executed: list[str] = []
        """IDs of the runs this worker executed (in order of claiming)."""
        self.durations: dict[str, float] = {}
        """Run ID → seconds from starting the claimed run to its final state (this worker's runs)."""
        self.spans: dict[str, tuple[float, float, float]] = {}
        """Run ID → ``time.perf_counter()`` when its claim was sent, when it started and when
        it ended (this worker's runs; the benchmark derives the gaps between runs)."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FlowRunWorker:
        """Start polling in a background thread (Prefect settings of the caller's context).

        The poll thread and every run share one Prefect client, owned by this worker (the
        engine would open a new one for each run: 30-60 ms and a CSRF-token request)."""
        from prefect.context import SyncClientContext

        from flows.prefect_requests import open_owned_client

        self._context = contextvars.copy_context()
        self._client = open_owned_client()
        clients = SyncClientContext.model_construct(client=self._client)
        clients._httpx_settings = None  # what get_client compares with its own argument
        clients._context_stack = 0
        self._context.run(clients.__enter__)
        self._clients = clients
        self._thread = threading.Thread(
            target=self._context.copy().run, args=(self._loop,), name=f"{self._name}-poll",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        """Stop claiming runs; with ``wait`` let the running ones finish, for up to
        ``stop_grace`` seconds (then they are marked ``Crashed`` and left to end with the
        process)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if not wait:  # runs may go on: the shared client is left open for them
            return
        with self._lock:
            running = {rid: f for rid, f in self._busy.items() if not f.done()}
        futures_wait(list(running.values()), timeout=self._grace)
        for run_id, future in running.items():
            if not future.done():
                logger.warning("%s: run %s still running %.0f s after stop; marking it crashed "
                               "(discovery starts the session again)", self._name, run_id,
                               self._grace)  # fmt: skip
                self._mark_crashed(run_id, "the worker was stopped before the run finished")
        from flows.concurrency_slot import wait_for_releases

        wait_for_releases(10.0)  # scoring slots the runs gave back in the background
        self._close_client()

    def _close_client(self) -> None:
        """Leave the runs' client context and close the worker's client."""
        from flows.prefect_requests import close_owned_client

        if self._clients is not None:
            self._context.run(self._clients.__exit__, None, None, None)
            self._clients = None
        if self._client is not None:
            close_owned_client(self._client)
            self._client = None

    def __enter__(self) -> FlowRunWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def engine_settings(self) -> Iterator[None]:
        """For a flow called in this thread (not from a deployment): the settings and Prefect
        client this worker's runs get. The engine's heartbeat thread is off (it sleeps in 1 s
        steps and is joined at the end: ~0.5 s for a flow of a few hundred ms, such as
        ``score-pending``'s discovery) and the worker's client is used, not a new one."""
        from prefect.context import SyncClientContext

        token = SyncClientContext.__var__.set(self._clients) if self._clients is not None else None
        try:
            with _without_engine_heartbeats():
                yield
        finally:
            if token is not None:
                SyncClientContext.__var__.reset(token)

    def wake(self) -> None:
        """Poll now (e.g. right after this process created runs) instead of at the next tick."""
        self._wake.set()

    @property
    def busy(self) -> int:
        """Runs executing now."""
        with self._lock:
            return sum(not f.done() for f in self._busy.values())

    # ------------------------------------------------------------------ polling

    def _loop(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not self._stop.is_set():
                try:
                    self.poll_once(client)
                except Exception as exc:
                    logger.warning("%s: polling the Prefect API failed: %s", self._name, exc)
                self._send_heartbeats(client)
                self._wake.wait(self._poll)  # a finished run wakes the poll at once
                self._wake.clear()

    def poll_once(self, client: Any) -> int:
        """Claim and submit due runs up to the free threads; returns how many were submitted."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterNextScheduledStartTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        with self._lock:
            self._busy = {k: f for k, f in self._busy.items() if not f.done()}
            free = self._workers - len(self._busy)
        if free <= 0:
            return 0
        now = _dt.datetime.now(_dt.UTC)
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(self._flows)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=now),
            ),
            sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
            limit=free * 2,
        )
        submitted = 0
        for run in runs:
            if submitted >= free or self._stop.is_set():
                break
            t_claim = time.perf_counter()
            claimed = self._claim(client, run)
            if claimed is not None:
                self._submit(claimed, t_claim)
                submitted += 1
        return submitted

    def _claim(self, client: Any, run: FlowRun) -> FlowRun | None:
        """Propose PENDING as Prefect workers do; only one claimant is accepted. Returns the
        run in its accepted state (the engine reads it again when it starts), or ``None``."""
        from prefect.client.schemas.objects import StateType
        from prefect.states import Pending

        try:
            result = client.set_flow_run_state(run.id, Pending())
        except Exception as exc:
            logger.info("%s: could not claim run %s: %s", self._name, run.id, exc)
            return None
        state = result.state
        if state is None or state.type != StateType.PENDING or result.status.value != "ACCEPT":
            return None
        return run.model_copy(update={"state": state, "state_type": state.type,
                                      "state_name": state.name})  # fmt: skip

    def _submit(self, run: FlowRun, t_claim: float) -> None:
        flow = self._flows[run.deployment_id]  # type: ignore[index]
        ctx = self._context.copy()
        future: Future[None] = Future()

        def target() -> None:
            future.set_running_or_notify_cancel()
            try:
                ctx.run(self._execute, flow, run, t_claim)
            except BaseException as exc:  # _run logs and marks crashes; anything else:
                logger.error("%s: run %s (%s) could not be executed: %r", self._name, run.id,
                             run.name, exc)  # fmt: skip
                self._mark_crashed(str(run.id), f"the worker could not execute it: {exc!r}")
                future.set_exception(exc)
            else:
                future.set_result(None)

        threading.Thread(target=target, name=f"{self._name}-run", daemon=True).start()
        resource, related = _heartbeat_template(flow, run)
        with self._lock:
            self._busy[str(run.id)] = future
            self._beats[str(run.id)] = (0.0, resource, related)
            self.executed.append(str(run.id))

    def _send_heartbeats(self, client: Any) -> None:
        """Send ``prefect.flow-run.heartbeat`` for each run executing here that is due one: one
        ``POST /events`` without retries (a heartbeat that does not arrive is simply late; sent
        through Prefect's events worker, one addressed to a server that has gone away held up
        the process's other events for a minute of retries)."""
        from prefect.events.schemas.events import Event
        from prefect.settings import get_current_settings

        from flows.prefect_requests import post_once

        every = get_current_settings().flows.heartbeat_frequency
        now = time.monotonic()
        with self._lock:
            for run_id in [r for r in self._beats if r not in self._busy or self._busy[r].done()]:
                del self._beats[run_id]
            due = [(r, b) for r, b in self._beats.items() if every and now - b[0] >= every]
            for run_id, (_, resource, related) in due:
                self._beats[run_id] = (now, resource, related)
        if not due or self._stop.is_set():
            return
        events = [Event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
                  .model_dump(mode="json") for _, (_, resource, related) in due]  # fmt: skip
        try:
            post_once(client, "/events", events)
        except Exception as exc:
            logger.debug("%s: heartbeats not sent: %s", self._name, exc)

    def _execute(self, flow: Flow[Any, Any], run: FlowRun, t_claim: float) -> None:
        t0 = time.perf_counter()
        try:
            self._run(flow, run, t0)
        finally:
            with self._lock:
                self.spans[str(run.id)] = (t_claim, t0, time.perf_counter())
            self._wake.set()

    def _run(self, flow: Flow[Any, Any], run: FlowRun, t0: float) -> None:
        from prefect.exceptions import Abort, Pause
        from prefect.flow_engine import run_flow

        from flows.suspension_watch import shared_observation

        try:
            with _without_engine_heartbeats(), shared_observation():
                state = run_flow(flow, flow_run=run, return_type="state")
        except (Pause, Abort) as signal:
            # suspended (it resumes as a new execution) or aborted by the server: the run's
            # state is Prefect's to keep, not a crash
            state = "suspended" if isinstance(signal, Pause) else f"aborted ({signal})"
        except BaseException as exc:
            logger.error("%s: run %s (%s) crashed: %s", self._name, run.id, run.name, exc)
            self._mark_crashed(str(run.id), f"{type(exc).__name__}: {exc}")
            return
        wall = time.perf_counter() - t0
        with self._lock:
            self.durations[str(run.id)] = wall
        logger.info("%s: run %s (%s) ended %s in %.2f s", self._name, run.id, run.name,
                    getattr(state, "type", state), wall)  # fmt: skip

    def _mark_crashed(self, run_id: str, message: str) -> None:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        try:
            with self._context.copy().run(get_client, sync_client=True) as client:
                current = client.read_flow_run(UUID(run_id))
                if current.state is None or not current.state.is_final():
                    client.set_flow_run_state(UUID(run_id), Crashed(message=message), force=True)
        except Exception as mark_exc:
            logger.warning("%s: could not mark run %s crashed: %s", self._name, run_id, mark_exc)


_NO_BEATS: dict[int, tuple[Any, Any]] = {}
_NO_BEATS_LOCK = threading.Lock()


def _without_engine_heartbeats() -> Any:
    """A Prefect settings context: the current settings with the flow engine's heartbeats off
    (this worker sends them). What ``prefect.settings.temporary_settings`` does, but the
    derived settings are built once per base settings object (that validation costs ~30 ms)."""
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    ctx = prefect.context.get_settings_context()
    with _NO_BEATS_LOCK:
        entry = _NO_BEATS.get(id(ctx.settings))
        if entry is None or entry[0] is not ctx.settings:
            if len(_NO_BEATS) > 32:
                _NO_BEATS.clear()
            derived = ctx.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
            entry = _NO_BEATS[id(ctx.settings)] = (ctx.settings, derived)
    return prefect.context.SettingsContext(profile=ctx.profile, settings=entry[1])


def _heartbeat_template(flow: Flow[Any, Any], run: FlowRun) -> tuple[dict[str, str], list[Any]]:
    """Resource and related resources of a run's heartbeat event, as the flow engine sends them."""
    import prefect
    from prefect.events.related import tags_as_related_resources
    from prefect.events.schemas.events import RelatedResource

    resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}",
                "prefect.resource.name": run.name or "", "prefect.version": prefect.__version__}  # fmt: skip
    related = [RelatedResource.model_validate({"prefect.resource.id": f"prefect.flow.{run.flow_id}",
                                               "prefect.resource.role": "flow",
                                               "prefect.resource.name": flow.name})]  # fmt: skip
    if run.deployment_id:
        related.append(RelatedResource.model_validate(
            {"prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
             "prefect.resource.role": "deployment"}))  # fmt: skip
    related += tags_as_related_resources(set(run.tags or []))
    return resource, related
