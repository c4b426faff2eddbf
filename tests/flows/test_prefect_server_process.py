"""The local Prefect server's busy answers are replayed inside the server (flows/prefect_server_process.py).

A FastAPI application mounted under ``/api`` like Prefect's, whose endpoint fails with SQLite's
"database is locked" the first times (answered ``503`` by an exception handler that, as
Starlette does, re-raises after answering), is served through :class:`RetryBusy` with
Starlette's test client.
"""

from __future__ import annotations

import sqlite3

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.testclient import TestClient

from flows.prefect_server_process import RetryBusy


def _app(failures: int) -> tuple[FastAPI, dict[str, object]]:
    seen: dict[str, object] = {"calls": 0, "bodies": []}
    api = FastAPI()

    @api.exception_handler(Exception)
    async def busy(request: Request, exc: Exception) -> JSONResponse:  # as Prefect's server does
        if isinstance(exc, sqlite3.OperationalError):
            return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)
        return JSONResponse({"exception_message": "Internal Server Error"}, status_code=500)

    @api.post("/flow_runs/{run_id}/set_state")
    async def set_state(run_id: str, request: Request) -> dict[str, object]:
        seen["calls"] = int(seen["calls"]) + 1  # type: ignore[call-overload]
        seen["bodies"].append(await request.json())  # type: ignore[attr-defined]
        if int(seen["calls"]) <= failures:  # type: ignore[call-overload]
            raise sqlite3.OperationalError("database is locked")
        return {"run": run_id, "status": "ACCEPT"}

    @api.get("/broken")
    async def broken() -> None:
        raise ValueError("a real bug")

    root = FastAPI()
    root.mount("/api", api)

    @root.get("/health")
    async def health() -> dict[str, str]:
        return {"ok": "yes"}

    return root, seen


def test_a_busy_answer_is_replayed_with_its_body_on_the_same_route() -> None:
    app, seen = _app(failures=3)
    wrapped = RetryBusy(app, budget_s=5)
    with TestClient(wrapped, raise_server_exceptions=False) as client:
        response = client.post("/api/flow_runs/r1/set_state", json={"state": {"type": "RUNNING"}})
    assert response.status_code == 200, response.text
    assert response.json() == {"run": "r1", "status": "ACCEPT"}
    assert seen["calls"] == 4
    assert seen["bodies"] == [{"state": {"type": "RUNNING"}}] * 4  # the body, every time
    assert wrapped.replayed == 1


def test_a_server_still_busy_after_the_budget_answers_503() -> None:
    app, seen = _app(failures=10_000)
    with TestClient(RetryBusy(app, budget_s=0.3), raise_server_exceptions=False) as client:
        response = client.post("/api/flow_runs/r1/set_state", json={})
    assert response.status_code == 503
    assert response.json() == {"exception_message": "Service Unavailable"}
    assert 3 <= int(seen["calls"]) <= 10  # 20, 40, 80, 160 ms apart  # type: ignore[call-overload]


def test_other_answers_and_paths_pass_through_once() -> None:
    app, seen = _app(failures=0)
    with TestClient(RetryBusy(app), raise_server_exceptions=False) as client:
        assert client.get("/health").json() == {"ok": "yes"}
        assert client.post("/api/flow_runs/r2/set_state", json={}).status_code == 200
        assert client.get("/api/nothing-here").status_code == 404
        assert client.get("/api/broken").status_code == 500
    assert seen["calls"] == 1


def test_an_error_that_is_not_busy_is_raised_as_before() -> None:
    app, _ = _app(failures=0)
    with TestClient(RetryBusy(app)) as client, pytest.raises(ValueError, match="real bug"):
        client.get("/api/broken")


def test_the_local_prefect_server_runs_through_it(prefect_api_url: str) -> None:
    """The session's Prefect server (started by ``flows.prefect_server.prefect_api``) is the
    process of ``flows.prefect_server_process``, and answers."""
    from pathlib import Path
    from urllib.parse import urlparse

    import httpx

    port = str(urlparse(prefect_api_url).port)
    commands = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                commands.append((proc / "cmdline").read_bytes().split(b"\0"))
            except OSError:
                continue
    mine = [c for c in commands if b"flows.prefect_server_process" in c and port.encode() in c]
    assert mine, f"no flows.prefect_server_process serving port {port}"
    assert httpx.get(f"{prefect_api_url}/health", timeout=30).json() is True
