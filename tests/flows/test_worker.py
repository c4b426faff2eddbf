"""The in-process executor and the scoring slot, on the real local Prefect server of the session:
heartbeats come from the worker, a Suspend request reaches a run through the shared observer, a
stop gives running runs a grace period and marks the rest crashed, and a slot of a global
concurrency limit is held, waited for and given back."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from typing import Any

import pytest
from prefect import flow, task

from flows.concurrency_slot import ConcurrencyLimitMissing, hold_slot
from flows.worker import FlowRunWorker

pytestmark = pytest.mark.slow


@task
def _tick(i: int) -> int:
    return i


@flow(name="cbctqa-test-nap")
def nap(seconds: float) -> int:
    """Calls a task every 0.1 s for ``seconds`` (task calls are where a suspension lands)."""
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n = _tick(n) + 1
        time.sleep(0.1)
    return n


def _deploy(name: str) -> Any:
    dep = nap.to_deployment(name=name)
    return dep.apply()


def _run(client: Any, deployment_id: Any, seconds: float) -> Any:
    return client.create_flow_run_from_deployment(deployment_id, parameters={"seconds": seconds})


def _state(client: Any, run_id: Any) -> Any:
    return client.read_flow_run(run_id).state


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_heartbeats_suspension_and_stop_grace(prefect_api_url: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.states import Suspended

    dep_id = _deploy(f"worker-{uuid.uuid4().hex[:8]}")
    with get_client(sync_client=True) as client:
        quick = _run(client, dep_id, 0.3)
        worker = FlowRunWorker({dep_id: nap}, workers=2, poll_interval=0.2, stop_grace=1.0).start()
        try:
            _wait_for(lambda: _state(client, quick.id).is_final(), 120, "a short run to finish")
            assert _state(client, quick.id).is_completed()
            long = _run(client, dep_id, 120)
            _wait_for(lambda: _state(client, long.id).is_running(), 120, "the long run to start")
            time.sleep(1.0)
            client.set_flow_run_state(long.id, Suspended(timeout_seconds=600), force=True)
            # the engine notices at its next task call and ends the run suspended
            _wait_for(lambda: str(long.id) in worker.durations, 60, "the suspended run to stop")
            assert _state(client, long.id).name == "Suspended"
            stuck = _run(client, dep_id, 15)
            _wait_for(lambda: _state(client, stuck.id).is_running(), 120, "a third run to start")
        finally:
            t0 = time.monotonic()
            worker.stop()
        assert time.monotonic() - t0 < 10  # one second of grace, not the run's 15 s
        state = _state(client, stuck.id)
        assert state.is_crashed(), state
        assert "stopped before the run finished" in (state.message or "")
        # the abandoned run's thread ends by itself; let it, so that it talks to no server later
        _wait_for(lambda: worker.busy == 0, 60, "the abandoned run's thread to end")
    # heartbeats come from the worker, as the engine's event (persisted asynchronously)
    resource = f"prefect.flow-run.{long.id}"
    query = {"filter": EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                                   resource=EventResourceFilter(id=[resource])).model_dump(mode="json"),
             "limit": 10}  # fmt: skip
    found: list[Any] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not found:
        with get_client(sync_client=True) as client:
            found = client.request("POST", "/events/filter", json=query).json()["events"]
        time.sleep(0.5)
    assert found, "no heartbeat event for the long run"
    assert found[0]["resource"]["prefect.resource.id"] == resource


def test_hold_slot_waits_for_a_free_slot_and_gives_it_back(prefect_api_url: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"cbctqa-test-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConcurrencyLimitMissing, match=name), hold_slot(name):
        pass
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    first_in = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with hold_slot(name):
            first_in.set()
            release.wait(30)

    t = threading.Thread(target=contextvars.copy_context().run, args=(holder,))  # Prefect settings
    t.start()
    assert first_in.wait(60)
    threading.Timer(1.5, release.set).start()
    with hold_slot(name) as slot:  # full until the holder lets go
        assert slot.waited_s >= 1.0
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
    t.join(30)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0


def _active(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)


def test_hold_slot_in_the_background(prefect_api_url: str) -> None:
    """``wait=False``: the block starts at once and the slot is acquired meanwhile; a block that
    ends first gives the slot back (or stops asking); ``release_in_background`` leaves the block
    before the release, and :func:`wait_for_releases` waits for it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.concurrency_slot import wait_for_releases

    name = f"cbctqa-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    with hold_slot(name, wait=False) as slot:
        assert slot.wait(60) is slot and slot.lease_id is not None
        assert slot.waited_s > 0 and slot.attempts >= 1
        assert _active(name) == 1
    assert _active(name) == 0  # released before the block was left
    # a block that ends before its slot arrives: nothing stays held
    for _ in range(3):
        with hold_slot(name, wait=False):
            pass
    assert wait_for_releases(30)
    assert _active(name) == 0
    # full limit: the waiting block gives up its place when it ends, and never gets a slot
    with hold_slot(name) as held:
        with hold_slot(name, wait=False) as queued:
            time.sleep(1.0)
            assert not queued._ready.is_set()
        assert _active(name) == 1 and held.lease_id is not None
    with hold_slot(name, release_in_background=True):
        assert _active(name) == 1
    assert wait_for_releases(30)
    assert _active(name) == 0
    # what the acquisition raised is raised by wait()
    with pytest.raises(ConcurrencyLimitMissing), hold_slot(f"{name}-missing", wait=False) as slot:
        slot.wait(60)


_CLIENTS_SEEN: list[int] = []


@flow(name="cbctqa-test-client-user")
def _client_user() -> None:
    """Enters and leaves the context's Prefect client, as flows do with ``get_client``."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        _CLIENTS_SEEN.append(id(client))


def test_runs_share_the_workers_client(prefect_api_url: str) -> None:
    """Every run of a worker uses the worker's one Prefect client, and a run that enters and
    leaves it (``with get_client(...)``) does not close it for the others."""
    from prefect.client.orchestration import get_client

    dep_id = _client_user.to_deployment(name=f"client-{uuid.uuid4().hex[:8]}").apply()
    worker = FlowRunWorker({dep_id: _client_user}, workers=2, poll_interval=0.2).start()
    try:
        with get_client(sync_client=True) as client:
            runs = [client.create_flow_run_from_deployment(dep_id) for _ in range(4)]
            _wait_for(lambda: all(_state(client, r.id).is_final() for r in runs), 120,
                      "four runs to finish")  # fmt: skip
            assert all(_state(client, r.id).is_completed() for r in runs)
        assert _CLIENTS_SEEN[-4:] == [id(worker._client)] * 4
        assert not worker._client._closed
    finally:
        worker.stop()
    assert worker._client is None


def test_a_run_the_worker_cannot_execute_is_marked_crashed(prefect_api_url: str) -> None:
    """A claimed run is never left *Pending*: if executing it fails outside the engine, the
    worker marks it crashed (discovery then starts a fresh run)."""
    from prefect.client.orchestration import get_client

    dep_id = _deploy(f"broken-{uuid.uuid4().hex[:8]}")
    worker = FlowRunWorker({dep_id: nap}, workers=1, poll_interval=0.2)

    def cannot(*_args: Any) -> None:
        raise RuntimeError("no thread for it")

    worker._execute = cannot  # type: ignore[method-assign]
    with get_client(sync_client=True) as client, worker:
        run = _run(client, dep_id, 0.1)
        _wait_for(lambda: _state(client, run.id).is_final(), 120, "the run to be marked")
        state = _state(client, run.id)
    assert state.is_crashed(), state
    assert "could not execute it" in (state.message or "") and "no thread for it" in state.message


def test_more_workers_than_scoring_slots_is_said(
    prefect_api_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit is left as it is (an admin may have set it), but a pass with more workers than
    slots says so, with the command that raises it."""
    from prefect.client.orchestration import get_client

    from flows.session_flows import SCORING_LIMIT, ensure_concurrency_limits

    with get_client(sync_client=True) as client:
        slots = ensure_concurrency_limits(client)
        assert slots == client.read_global_concurrency_limit_by_name(SCORING_LIMIT).limit
        assert not [r for r in caplog.records if "workers score at once" in r.getMessage()]
        with caplog.at_level("WARNING", logger="flows.session_flows"):
            assert ensure_concurrency_limits(client, workers=slots + 3) == slots
        assert client.read_global_concurrency_limit_by_name(SCORING_LIMIT).limit == slots
    said = [r.getMessage() for r in caplog.records if "workers score at once" in r.getMessage()]
    assert said and f"prefect gcl update {SCORING_LIMIT} --limit {slots + 3}" in said[0]


@flow(name="cbctqa-test-slot-waiter", timeout_seconds=1)
def _slot_waiter(name: str) -> None:
    with hold_slot(name, wait=False) as slot:
        slot.wait()


def test_a_run_waiting_for_a_slot_still_times_out(prefect_api_url: str) -> None:
    """Waiting for a slot does not hold off Prefect's flow timeout (raised into the run's
    thread), as a run waiting on a full limit in a worker thread would."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"cbctqa-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    states: list[Any] = []
    with hold_slot(name):  # the limit is full while the flow waits
        runner = threading.Thread(target=contextvars.copy_context().run,
                                  args=(lambda: states.append(_slot_waiter(name, return_state=True)),))  # fmt: skip
        t0 = time.monotonic()
        runner.start()
        runner.join(60)
    assert states, "the flow did not end"
    assert time.monotonic() - t0 < 30
    assert states[0].name == "TimedOut", states[0]
    assert _active(name) == 0
