"""One slot of a Prefect global concurrency limit, acquired without Prefect's 2-second stalls.

:func:`prefect.concurrency.sync.concurrency` does the right thing against the server but pays
for it on SQLite: the server's ``increment-with-lease`` reads the limit and then updates it in
one deferred transaction, and when a background service (event persister, task-run recorder)
commits in between, SQLite answers ``database is locked`` at once (the busy timeout does not
apply to a read transaction that must become a write). The API turns that into ``503`` and
Prefect's HTTP client retries after an exponential back-off that starts at 2 s. Measured on
``score_session`` runs one after another (local server, SQLite): three acquisitions in five
waited 1.9-2.4 s with every slot free.

:func:`hold_slot` speaks the same API (``/v2/concurrency_limits/increment-with-lease``, a
lease renewed in the background, ``decrement-with-lease`` at the end) and differs in its
retries: a ``503`` is retried after 20 ms, doubling to at most 0.5 s (for up to
``busy_limit_s``); a ``423`` (the limit is full) waits the server's ``Retry-After`` as Prefect
does. PostgreSQL servers rarely answer ``503`` at all; there the two behave the same.

It can also take the two round trips off the caller's path: with ``wait=False`` the slot is
acquired in the background while the caller does other work (``score_session`` looks the
session up and writes it ``queued`` meanwhile, then waits), and with
``release_in_background`` the caller goes on while the slot is given back. One Prefect client
per process and API serves all slots (a client per slot cost a connection and a CSRF-token
request each time).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from flows.prefect_requests import close_owned_client, open_owned_client, post_once

if TYPE_CHECKING:
    from uuid import UUID

__all__ = ["ConcurrencyLimitMissing", "SlotLease", "hold_slot", "wait_for_releases"]

logger = logging.getLogger(__name__)

#: First retry after a ``503`` (seconds); doubled up to :data:`_BUSY_MAX_S`.
_BUSY_FIRST_S = 0.02
_BUSY_MAX_S = 0.5


class ConcurrencyLimitMissing(RuntimeError):
    """The global concurrency limit does not exist on the Prefect server."""


class SlotLease:
    """A slot being acquired or held: its lease ID once acquired, the seconds spent waiting.

    :func:`hold_slot` with ``wait=False`` yields it while the slot is still being acquired in
    the background; :meth:`wait` blocks until it is held (and raises what the acquisition
    raised)."""

    def __init__(self) -> None:
        self.lease_id: UUID | None = None
        self.waited_s = 0.0
        """Seconds from asking for the slot to holding it."""
        self.blocked_s = 0.0
        """Seconds :meth:`wait` blocked the caller (less than ``waited_s`` when the slot was
        acquired while the caller did other work)."""
        self.attempts = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._cancelled = threading.Event()

    def wait(self, timeout: float | None = None) -> SlotLease:
        """Block until the slot is held; re-raises the acquisition's error. Waits in short
        steps, so that an exception raised into this thread (Prefect's flow timeout does that
        for flows run in threads) is not held up until the slot arrives."""
        t0 = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready.wait(0.25):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no slot within {timeout} s")
        self.blocked_s += time.perf_counter() - t0
        if self._error is not None:
            raise self._error
        return self


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _acquire(
    client: Any, name: str, lease_s: float, holder: Any, busy_limit_s: float, lease: SlotLease
) -> None:
    """Acquire the slot into ``lease`` (its ID, waited seconds, attempts); stops early, with
    nothing acquired, once the lease is cancelled."""
    from uuid import UUID

    t0 = time.perf_counter()
    busy_since: float | None = None
    delay = _BUSY_FIRST_S
    while not lease._cancelled.is_set():
        lease.attempts += 1
        try:
            body: dict[str, Any] = {"names": [name], "slots": 1, "mode": "concurrency",
                                    "lease_duration": lease_s}  # fmt: skip
            if holder is not None:
                body["holder"] = holder.model_dump(mode="json")
            response = post_once(client, "/v2/concurrency_limits/increment-with-lease", body)
        except Exception as exc:
            code = _status(exc)
            if code == 423:  # full: wait as long as the server asks
                busy_since = None
                retry_after = float(exc.response.headers.get("Retry-After", "1"))  # type: ignore[attr-defined]
                lease._cancelled.wait(max(0.05, retry_after))
                continue
            if code == 503 or (code is None and _is_connection_trouble(exc)):
                now = time.perf_counter()
                busy_since = busy_since if busy_since is not None else now
                if now - busy_since > busy_limit_s:
                    raise
                lease._cancelled.wait(delay * (1 + random.random() / 2))
                delay = min(delay * 2, _BUSY_MAX_S)
                continue
            raise
        limits = response.json().get("limits") or []
        if not limits:
            raise ConcurrencyLimitMissing(
                f"the Prefect global concurrency limit {name!r} does not exist; `cbctqa serve`, "
                f"`cbctqa deploy` and `cbctqa score-pending` create it, or run "
                f"`prefect gcl create {name} --limit N`"
            )
        lease.lease_id = UUID(str(response.json()["lease_id"]))
        lease.waited_s = time.perf_counter() - t0
        return


def _is_connection_trouble(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError)


def _quietly(what: str, call: Any, tries: int = 6) -> None:
    """Run ``call()`` with quick retries on 503/connection trouble; log (not raise) a failure:
    a lease not renewed or not released expires on the server by itself."""
    delay = _BUSY_FIRST_S
    for i in range(tries):
        try:
            call()
            return
        except Exception as exc:
            transient = _status(exc) == 503 or _is_connection_trouble(exc)
            if not transient or i == tries - 1:
                logger.warning("%s failed: %s", what, exc)
                return
            time.sleep(delay)
            delay = min(delay * 4, 2.0)


_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_KEEPERS: set[threading.Thread] = set()


def _shared_client() -> Any:
    """This process's Prefect client for the current API (URL, key, auth string): opened on
    first use, shared by all slots (its ``httpx`` client is thread-safe), closed at exit. A
    client per slot cost a connection and a CSRF-token request on every acquisition, and a
    release finishing after its run must not use the run's client (closed with the run)."""
    import hashlib

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    secrets = f"{PREFECT_API_KEY.value()}|{PREFECT_API_AUTH_STRING.value()}"
    key = (str(PREFECT_API_URL.value()), hashlib.sha256(secrets.encode()).hexdigest())
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = open_owned_client()
        return client


def wait_for_releases(timeout: float = 10.0) -> bool:
    """Wait up to ``timeout`` seconds for slots released in the background to be given back;
    ``True`` when none is left."""
    deadline = time.monotonic() + timeout
    with _CLIENTS_LOCK:
        keepers = list(_KEEPERS)
    for thread in keepers:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in keepers)


@atexit.register
def _at_exit() -> None:  # pragma: no cover - process exit
    wait_for_releases(5.0)
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            close_owned_client(client)


@contextmanager
def hold_slot(
    name: str,
    *,
    lease_s: float = 300.0,
    holder: Any = None,
    busy_limit_s: float = 60.0,
    wait: bool = True,
    release_in_background: bool = False,
) -> Iterator[SlotLease]:
    """Hold one slot of the global concurrency limit ``name`` for the ``with`` block.

    A background thread acquires the slot, renews its lease every third of ``lease_s`` and
    gives it back when the block ends.

    Parameters
    ----------
    name:
        The limit (it must exist: :class:`ConcurrencyLimitMissing` otherwise, as
        ``concurrency(..., strict=True)`` does).
    lease_s:
        Lease duration (60 s to 1 day); renewed every third of it while the block runs, so a
        process that dies frees its slot after at most ``lease_s``.
    holder:
        ``prefect.client.schemas.objects.ConcurrencyLeaseHolder`` shown on the lease.
    busy_limit_s:
        How long a server answering ``503``/refusing connections is retried before giving up.
    wait:
        Enter the block once the slot is held (default). With ``False`` the block starts at
        once while the slot is acquired in the background: call :meth:`SlotLease.wait`
        before the work the slot guards (the caller's other work hides the acquisition). A
        block that ends before that gives the slot back, or stops asking for it.
    release_in_background:
        Leave the block without waiting for the slot to be given back (one request, retried
        on ``503``); :func:`wait_for_releases` waits for such releases (and does at exit).

    Yields
    ------
    SlotLease
        With ``waited_s``, the seconds spent acquiring the slot.
    """
    lease_s = min(max(lease_s, 60.0), 86400.0)
    client = _shared_client()
    lease = SlotLease()
    done = threading.Event()

    def keep() -> None:
        try:
            _acquire(client, name, lease_s, holder, busy_limit_s, lease)
        except BaseException as exc:
            lease._error = exc
        finally:
            lease._ready.set()
        try:
            if lease.lease_id is None:
                return
            while not done.wait(lease_s / 3):
                _quietly(f"renewing the lease on {name!r}", lambda: post_once(
                    client, f"/v2/concurrency_limits/leases/{lease.lease_id}/renew",
                    {"lease_duration": lease_s}))  # fmt: skip
            _quietly(f"releasing the slot of {name!r}", lambda: post_once(
                client, "/v2/concurrency_limits/decrement-with-lease",
                {"lease_id": str(lease.lease_id)}))  # fmt: skip
        finally:
            with _CLIENTS_LOCK:
                _KEEPERS.discard(threading.current_thread())

    thread = threading.Thread(target=contextvars.copy_context().run, args=(keep,),
                              name=f"slot-{name}", daemon=True)  # fmt: skip
    with _CLIENTS_LOCK:
        _KEEPERS.add(thread)
    thread.start()
    try:
        if wait:
            lease.wait()
        yield lease
    finally:
        lease._cancelled.set()  # stop asking if the slot is not held yet
        done.set()  # the keeper wakes at once and gives the slot back
        if not release_in_background:
            thread.join(timeout=30)
