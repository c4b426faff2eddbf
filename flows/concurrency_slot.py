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
lease renewed in the background, ``decrement-with-lease`` on exit) and differs only in its
retries: a ``503`` is retried after 20 ms, doubling to at most 0.5 s (for up to
``busy_limit_s``); a ``423`` (the limit is full) waits the server's ``Retry-After`` as Prefect
does. PostgreSQL servers rarely answer ``503`` at all; there the two behave the same.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from flows.prefect_requests import post_once

if TYPE_CHECKING:
    from uuid import UUID

__all__ = ["ConcurrencyLimitMissing", "SlotLease", "hold_slot"]

logger = logging.getLogger(__name__)

#: First retry after a ``503`` (seconds); doubled up to :data:`_BUSY_MAX_S`.
_BUSY_FIRST_S = 0.02
_BUSY_MAX_S = 0.5


class ConcurrencyLimitMissing(RuntimeError):
    """The global concurrency limit does not exist on the Prefect server."""


class SlotLease:
    """A held slot: its lease ID and the seconds spent waiting for it."""

    def __init__(self, lease_id: UUID, waited_s: float, attempts: int) -> None:
        self.lease_id = lease_id
        self.waited_s = waited_s
        self.attempts = attempts


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _acquire(
    client: Any, name: str, lease_s: float, holder: Any, busy_limit_s: float
) -> SlotLease:
    from uuid import UUID

    t0 = time.perf_counter()
    busy_since: float | None = None
    delay = _BUSY_FIRST_S
    attempts = 0
    while True:
        attempts += 1
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
                time.sleep(max(0.05, retry_after))
                continue
            if code == 503 or (code is None and _is_connection_trouble(exc)):
                now = time.perf_counter()
                busy_since = busy_since if busy_since is not None else now
                if now - busy_since > busy_limit_s:
                    raise
                time.sleep(delay * (1 + random.random() / 2))
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
        return SlotLease(UUID(str(response.json()["lease_id"])), time.perf_counter() - t0, attempts)


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


@contextmanager
def hold_slot(
    name: str,
    *,
    lease_s: float = 300.0,
    holder: Any = None,
    busy_limit_s: float = 60.0,
) -> Iterator[SlotLease]:
    """Hold one slot of the global concurrency limit ``name`` for the ``with`` block.

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

    Yields
    ------
    SlotLease
        With ``waited_s``, the seconds spent acquiring the slot.
    """
    from prefect.client.orchestration import get_client

    lease_s = min(max(lease_s, 60.0), 86400.0)
    with get_client(sync_client=True) as client:
        lease = _acquire(client, name, lease_s, holder, busy_limit_s)
    stop = threading.Event()

    def renew() -> None:
        with get_client(sync_client=True) as renewer:
            while not stop.wait(lease_s / 3):
                _quietly(f"renewing the lease on {name!r}", lambda: post_once(
                    renewer, f"/v2/concurrency_limits/leases/{lease.lease_id}/renew",
                    {"lease_duration": lease_s}))  # fmt: skip

    import contextvars

    thread = threading.Thread(target=contextvars.copy_context().run, args=(renew,),
                              name=f"lease-{name}", daemon=True)  # fmt: skip
    thread.start()
    try:
        yield lease
    finally:
        stop.set()  # the renewer wakes at once; no join needed
        with get_client(sync_client=True) as client:
            _quietly(f"releasing the slot of {name!r}", lambda: post_once(
                client, "/v2/concurrency_limits/decrement-with-lease",
                {"lease_id": str(lease.lease_id)}))  # fmt: skip
