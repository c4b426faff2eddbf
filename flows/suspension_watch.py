"""One suspension observer for all flow runs a worker process executes.

Prefect's flow engine watches every deployment run for a *Suspend* request (from the UI or
the API) with ``prefect._flow_run_suspension.observe_flow_run_suspension``: per run it starts
a thread with its own event loop, opens an events websocket, waits for it, and on exit joins
that thread, which sleeps in 0.2 s steps. Profiled on ``score_session`` runs executed by
:class:`flows.worker.FlowRunWorker`: 0.18 s of each run's 0.3 s outside the flow function.

:func:`shared_observation` gives the engine the same observation from one long-lived
``FlowRunSuspendingObserver`` per Prefect API (one thread, one websocket) to which each run is added when it
starts and from which it is removed when it ends; a suspension is delivered exactly as the
engine's own observer delivers it (``mark_flow_run_suspension_requested``). Only runs
executed inside :func:`shared_observation` use it; other flow runs in the process keep the
engine's own. If this Prefect version lacks the pieces, nothing is replaced.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["shared_observation"]

logger = logging.getLogger(__name__)

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("cbctqa_shared_suspension", default=False)
_LOCK = threading.Lock()
_INSTALLED = False
_OBSERVERS: dict[str, _SharedObserver] = {}  # by Prefect API URL


class _SharedObserver:
    """A ``FlowRunSuspendingObserver`` running in a daemon thread's event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: Any = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        context = contextvars.copy_context()  # the Prefect settings (API URL) of the caller
        threading.Thread(target=context.run, args=(self._main,), name="cbctqa-suspension",
                         daemon=True).start()  # fmt: skip
        self._ready.wait(timeout=30)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # the engine's own observer is used from now on
            self._failed = exc
            logger.warning("the shared suspension observer stopped: %s", exc)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from prefect._flow_run_suspension import mark_flow_run_suspension_requested
        from prefect._internal.observers import FlowRunSuspendingObserver

        def on_suspended(flow_run_id: Any, state: Any) -> None:
            mark_flow_run_suspension_requested(flow_run_id, state)

        async with FlowRunSuspendingObserver(on_suspended=on_suspended) as observer:
            self._observer = observer
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await asyncio.Event().wait()  # until the process ends

    @property
    def usable(self) -> bool:
        return self._loop is not None and self._failed is None

    def add(self, flow_run_id: Any) -> None:
        assert self._loop is not None
        done = asyncio.run_coroutine_threadsafe(self._add(flow_run_id), self._loop)
        done.result(timeout=30)

    async def _add(self, flow_run_id: Any) -> None:
        self._observer.add_in_flight_flow_run_id(flow_run_id)

    def remove(self, flow_run_id: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._observer.remove_in_flight_flow_run_id, flow_run_id)


def _observer() -> _SharedObserver | None:
    """The shared observer of the Prefect API this context talks to (started on first use)."""
    from prefect.settings import get_current_settings

    api = str(get_current_settings().api.url or "")
    if not api:
        return None  # an ephemeral API: the engine's own observer
    with _LOCK:
        shared = _OBSERVERS.get(api)
        if shared is None or not shared.usable:
            shared = _OBSERVERS[api] = _SharedObserver()
        return shared if shared.usable else None


def _install() -> bool:
    """Route the engine's per-run observation through :func:`_observe` (once per process)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return True
        try:
            import prefect.flow_engine as engine
            from prefect._internal.observers import FlowRunSuspendingObserver
        except ImportError:
            return False
        original = getattr(engine, "observe_flow_run_suspension", None)
        if original is None or not hasattr(FlowRunSuspendingObserver, "add_in_flight_flow_run_id"):
            return False

        @contextmanager
        def observe(flow_run_id: Any, suspension_request: Any, *args: Any, **kwargs: Any) -> Iterator[None]:
            shared = _observer() if _ACTIVE.get() else None
            if shared is None:
                with original(flow_run_id, suspension_request, *args, **kwargs):
                    yield
                return
            shared.add(flow_run_id)
            try:
                yield
            finally:
                shared.remove(flow_run_id)

        engine.observe_flow_run_suspension = observe  # type: ignore[attr-defined]
        _INSTALLED = True
        return True


@contextmanager
def shared_observation() -> Iterator[None]:
    """Flow runs started inside this block (in this context) share one suspension observer."""
    if not _install():
        yield
        return
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
