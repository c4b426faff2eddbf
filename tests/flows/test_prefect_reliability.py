"""Reliability: 50 sessions, discovery and push events firing together, XNAT injecting 10% 5xx,
5% dropped connections and 200 ms latency, two worker processes (``cbctqa serve``) that share
nothing but XNAT and the Prefect API. At the end: exactly one complete assessment per session,
none lost, none duplicated, every assessment with its three resources and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.events import archived_event_body, post_session_archived
from xnat_plugin.gateway import XnatGateway
from xnat_plugin.server.faults import FaultConfig, FaultInjector

PROJECT = "REL"
N_SESSIONS = 50
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _serve(api_url: str, server, scratch: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({
        "PREFECT_API_URL": api_url, "XNAT_HOST": server.url, "XNAT_USER": server.user,
        "XNAT_PASS": server.password, "CBCTQA_DATA_DIR": str(scratch),
        "PREFECT_LOGGING_LEVEL": "WARNING", "CBCTQA_DEVICE": "cpu",
    })  # fmt: skip
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--project", PROJECT,
             "--poll-interval", "5", "--workers", "4", "--no-ui"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code, or ``None`` when it did not stop in time (then its group is killed: a
    worker left running would claim the next tests' runs)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return None


def test_fifty_sessions_under_faults_two_workers(
    prefect_api_url, xnat_server_factory, make_session, tmp_path
) -> None:
    server = xnat_server_factory()
    refs = []
    with XnatGateway.connect(server.url, server.user, server.password) as gw:
        gw.xnat.put(f"/data/projects/{PROJECT}", accepted_status=[200, 201])
        for i in range(N_SESSIONS):
            make_session(gw, PROJECT, f"R{i:02d}", tmp_path, seed=i, slices=4, size=32)
        refs = gw.list_sessions(PROJECT)
    assert len(refs) == N_SESSIONS
    from prefect.client.orchestration import get_client

    from flows.session_flows import SCORING_LIMIT, ensure_concurrency_limits

    with get_client(sync_client=True) as client:  # latency-bound: 8 sessions in flight at most
        ensure_concurrency_limits(client)
        client.upsert_global_concurrency_limit_by_name(SCORING_LIMIT, 8)
    injector = FaultInjector(FaultConfig(latency_ms=200, error_rate=0.10, drop_rate=0.05, seed=11))
    server.app.faults = injector
    workers = [_serve(prefect_api_url, server, tmp_path / f"w{k}", tmp_path / f"w{k}.log")
               for k in range(2)]  # fmt: skip
    try:
        # push: every session's archived event, as the Groovy script posts it, while polling runs
        def push(ref) -> int:
            body = archived_event_body(session_id=ref.session_id, project=PROJECT,
                                       subject=ref.subject, subject_id=ref.subject_id,
                                       label=ref.label, xnat_url=server.url)  # fmt: skip
            return post_session_archived(prefect_api_url, body)

        time.sleep(8)  # let the workers register the deployments and their trigger
        with ThreadPoolExecutor(8) as pool:
            assert all(200 <= s < 300 for s in pool.map(push, refs))
        deadline = time.monotonic() + 600
        complete: set[str] = set()
        with XnatGateway.connect(server.url, server.user, server.password, retries=8) as gw:
            while time.monotonic() < deadline:
                stored = gw.read_assessments(PROJECT)
                complete = {a.session_label for a in stored if a.record.status == "complete"}
                if len(complete) == N_SESSIONS:
                    break
                assert all(w.poll() is None for w in workers), "a worker died"
                time.sleep(3)
        assert len(complete) == N_SESSIONS, sorted({r.label for r in refs} - complete)
        time.sleep(5)  # runs still in flight (duplicates would show now)
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGINT)
        codes = [_wait_or_kill(w, 120) for w in workers]
        server.app.faults = FaultInjector(FaultConfig())
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(SCORING_LIMIT, 2)
    assert codes == [0, 0], [(tmp_path / f"w{k}.log").read_text()[-2000:] for k in range(2)]
    with XnatGateway.connect(server.url, server.user, server.password) as gw:
        stored = gw.read_assessments(PROJECT)
        assert len(stored) == N_SESSIONS  # none duplicated
        assert sorted(a.session_label for a in stored) == sorted(r.label for r in refs)  # none lost
        assert {a.record.status for a in stored} == {"complete"}
        for a in stored:  # resources complete, nothing else attached
            rows = gw.xnat.get_json(f"/data/experiments/{a.assessor_id}/resources")["ResultSet"]["Result"]
            counts = {r["label"]: int(r["file_count"]) for r in rows}
            assert set(counts) == {"OVERLAYS", "AE_SLICES", "MAPS"}, (a.label, counts)
            assert counts["AE_SLICES"] == 1 and counts["MAPS"] == 1 and counts["OVERLAYS"] >= 5
    from xnat_plugin.server.faults import FaultDecision

    assert injector.counts[FaultDecision.ERROR] > 20 and injector.counts[FaultDecision.DROP] > 10
