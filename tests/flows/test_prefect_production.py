"""Production configuration: a Prefect server on PostgreSQL, the deployments on a process work
pool, and two ``prefect worker start`` processes that share nothing but XNAT and the Prefect
API (own scratch folders, own model loads)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from xnat_plugin.gateway import XnatGateway

PROJECT = "PROD"
POOL = "cbctqa-test-pool"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres_url():
    psycopg = pytest.importorskip("psycopg")
    name = f"cbctqa_prefect_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                                autocommit=True, connect_timeout=5)  # fmt: skip
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                         autocommit=True) as admin:  # fmt: skip
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_process_work_pool_on_postgres_with_two_workers(
    postgres_url, xnat_server_factory, make_session, tmp_path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.deployments import build_deployments, register_deployments
    from flows.pending import wait_for_runs
    from flows.prefect_server import _client_settings, start_server

    xnat = xnat_server_factory()
    with XnatGateway.connect(xnat.url, xnat.user, xnat.password) as gw:
        gw.xnat.put(f"/data/projects/{PROJECT}", accepted_status=[200, 201])
        for i in range(3):
            make_session(gw, PROJECT, f"PR{i}", tmp_path, seed=i, slices=4, size=32)
    server = start_server(tmp_path / "prefect-home", free_port(), database_url=postgres_url,
                          timeout=300)  # fmt: skip
    workers: list[subprocess.Popen[bytes]] = []
    try:
        env = dict(os.environ)
        env.update({"PREFECT_API_URL": server.api_url, "XNAT_HOST": xnat.url,
                    "XNAT_USER": xnat.user, "XNAT_PASS": xnat.password,
                    "PREFECT_LOGGING_LEVEL": "INFO", "CBCTQA_DEVICE": "cpu"})  # fmt: skip
        saved = {k: os.environ.get(k) for k in ("XNAT_HOST", "XNAT_USER", "XNAT_PASS")}
        os.environ.update({k: env[k] for k in saved})
        with _client_settings(server.api_url, None):
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
            register_deployments(
                build_deployments([PROJECT], poll_interval=3600, work_pool=POOL, monitor=False,
                                  module_entrypoints=True),
                work_pool=POOL,
            )
            for k in range(2):
                wenv = dict(env, CBCTQA_DATA_DIR=str(tmp_path / f"worker{k}"))
                log = (tmp_path / f"worker{k}.log").open("wb")
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                     "--type", "process", "--name", f"w{k}", "--prefetch-seconds", "5"],
                    cwd=ROOT, env=wenv, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))  # fmt: skip
            # discovery as the deployment runs it: one run per session on the pool
            from flows.session_flows import discover_sessions

            runs = discover_sessions(PROJECT)
            assert len(runs) == 3 and all(r["created"] for r in runs)
            states = wait_for_runs([r["flow_run_id"] for r in runs], timeout=400)
            assert all(s is not None and s.is_completed() for s in states.values()), states
            with get_client(sync_client=True) as client:
                pool_runs = [client.read_flow_run(r["flow_run_id"]) for r in runs]
            assert {r.work_pool_name for r in pool_runs} == {POOL}
            assert discover_sessions(PROJECT) == []  # a second discovery finds nothing
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGINT)
        for w in workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
        server.stop()
    with XnatGateway.connect(xnat.url, xnat.user, xnat.password) as gw:
        stored = gw.read_assessments(PROJECT)
    assert sorted(a.session_label for a in stored) == ["PR0", "PR1", "PR2"]
    assert {a.record.status for a in stored} == {"complete"}
    logs = "".join((tmp_path / f"worker{k}.log").read_text(errors="replace") for k in range(2))
    assert "Submitting flow run" in logs or "flow run" in logs.lower()
    assert xnat.password not in logs  # credentials never in the workers' logs
