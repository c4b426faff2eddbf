"""The process of the local Prefect server: ``prefect server start`` with busy answers retried
inside the server.

On SQLite the API answers ``503 Service Unavailable`` when a transaction meets "database is
locked" (a read that must become a write while a background service commits; the busy timeout
does not cover it). Prefect's clients then wait ``2**n`` seconds before trying again, so a
request that would have succeeded 20 ms later costs every caller 2 s or more: run creation,
deployment registration and state changes stalled 2-4 s at random in a ``score-pending`` pass
(measured with ``benchmarks/bench_flows.py``).

The transaction was rolled back when the 503 was sent, so the same request can be replayed.
:class:`RetryBusy` does that in the server, around Prefect's own application: a plain HTTP
request (not a websocket, not the UI) whose answer is ``503`` is sent to the application
again after 20 ms, doubling to 0.2 s, for up to ``CBCTQA_PREFECT_BUSY_RETRY_S`` seconds
(default 5, :class:`qa_core.settings.Settings`); only then does the client see the 503 (and its own back-off applies). Request
bodies are replayed from memory (API requests are small JSON documents).

Run as ``python -m flows.prefect_server_process server start ...`` (the arguments of the
``prefect`` command); :func:`flows.prefect_server.start_server` does. Everything else is
Prefect's: settings, database migrations, services, UI.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["RetryBusy", "main"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_FIRST_S = 0.02
_MAX_S = 0.2


class RetryBusy:
    """ASGI middleware: replay an HTTP request whose answer is ``503``, for up to ``budget_s``.

    Parameters
    ----------
    app:
        The ASGI application (Prefect's).
    budget_s:
        Seconds of replays before a ``503`` is passed on.
    """

    def __init__(self, app: Any, budget_s: float = 5.0) -> None:
        self.app = app
        self.budget_s = budget_s
        self.replayed = 0
        """Requests answered after at least one replay (for tests and logs)."""

    def __getattr__(self, name: str) -> Any:  # uvicorn and tests may look at the app
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/api/"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        deadline = time.monotonic() + self.budget_s
        delay = _FIRST_S
        tries = 0
        while True:
            tries += 1
            held: list[Message] = []
            # each attempt gets the scope as it came: routing writes into it (root path,
            # path parameters), and a replay on the written one would not find its route
            busy = await self._attempt(dict(scope), receive, body, send, held)
            if not busy:
                if tries > 1:
                    self.replayed += 1
                return
            if time.monotonic() + delay > deadline:
                for message in held:  # the 503 as the application sent it
                    await send(message)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_S)

    async def _attempt(
        self, scope: Scope, receive: Receive, body: bytes, send: Send, held: list[Message]
    ) -> bool:
        """Run the application once; pass its answer through unless it is a ``503``, which is
        kept in ``held``. Returns ``True`` for a ``503``. (Starlette re-raises the exception
        behind an error answer after sending it: after a ``503`` it is dropped here, since
        the request is replayed; any other is raised.)"""
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's own disconnect

        status: int | None = None

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            if status == 503:
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, replay, capture)
        except Exception:
            if status != 503:
                raise
        return status == 503


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _wrap_create_app(budget_s: float) -> None:
    """Make ``prefect.server.api.server.create_app`` (what ``prefect server start`` serves)
    return Prefect's application inside :class:`RetryBusy`."""
    import prefect.server.api.server as server

    create_app = server.create_app

    def create_app_retrying(*args: Any, **kwargs: Any) -> Any:
        return RetryBusy(create_app(*args, **kwargs), budget_s=budget_s)

    server.create_app = create_app_retrying


def main(argv: list[str] | None = None) -> None:
    """``prefect`` with ``argv`` (e.g. ``server start --port 4200``), busy answers retried."""
    from qa_core.settings import get_settings

    _wrap_create_app(get_settings().prefect_busy_retry_s)
    from prefect.cli import app

    sys.argv = ["prefect", *(sys.argv[1:] if argv is None else argv)]
    app()


if __name__ == "__main__":
    main()
