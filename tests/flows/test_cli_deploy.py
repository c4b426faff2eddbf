"""``cbctqa deploy``: deployments registered on a process work pool of a real Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main

POOL = "cbctqa-deploy-test"


def test_deploy_needs_a_prefect_server(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["deploy", "--pool", POOL, "--project", "P1"]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL is not set" in err and "cbctqa serve" in err


def test_deploy_needs_a_project(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.delenv("CBCTQA_PROJECTS", raising=False)
    assert main(["deploy", "--pool", POOL]) == 2
    assert "--project" in capsys.readouterr().err


@pytest.mark.slow
def test_deploy_registers_on_a_process_pool(prefect_api_url: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    monkeypatch.setenv("CBCTQA_PROJECTS", "DEP_A,DEP_B")
    assert main(["deploy", "--pool", POOL, "--poll-interval", "30"]) == 0
    out = capsys.readouterr().out
    assert f"work pool '{POOL}' (created, type process)" in out
    assert f"prefect worker start --pool {POOL} --type process" in out

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(POOL)
        assert pool.type == "process"
        names = {
            "score_session/score-session": None,
            "discover_sessions/discover-DEP_A": 30.0,
            "discover_sessions/discover-DEP_B": 30.0,
            "monitor_cohort/monitor-DEP_A": 300.0,
            "monitor_cohort/monitor-DEP_B": 300.0,
        }
        ids = {}
        for name, interval in names.items():
            dep = client.read_deployment_by_name(name)
            ids[name] = dep.id
            assert dep.work_pool_name == POOL, name
            flow_name = name.split("/")[0]
            module = "flows.monitor" if flow_name == "monitor_cohort" else "flows.session_flows"
            assert dep.entrypoint == f"{module}.{flow_name}", (name, dep.entrypoint)
            if interval is not None:
                assert [s.schedule.interval.total_seconds() for s in dep.schedules] == [interval], name
        assert client.read_deployment_by_name("discover_sessions/discover-DEP_A").parameters == {
            "project": "DEP_A"}

        # again: same deployments, the pool is reused
        assert main(["deploy", "--pool", POOL, "--poll-interval", "30"]) == 0
        assert f"work pool '{POOL}' (exists, type process)" in capsys.readouterr().out
        for name, dep_id in ids.items():
            assert client.read_deployment_by_name(name).id == dep_id

        # a pool of another worker type is refused with the fix
        client.create_work_pool(WorkPoolCreate(name="cbctqa-not-process", type="docker"))
    assert main(["deploy", "--pool", "cbctqa-not-process"]) == 2
    err = capsys.readouterr().err
    assert "type 'docker'" in err and "prefect work-pool delete cbctqa-not-process" in err

    # the module entrypoints load from anywhere the package is installed (another folder here)
    code = ("from prefect.flows import load_flow_from_entrypoint as load; "
            "print(load('flows.session_flows.score_session').name, load('flows.monitor.monitor_cohort').name)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PREFECT_API_URL": prefect_api_url},
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["score_session", "monitor_cohort"]
