"""``cbctqa score-pending`` twice at the same moment, ``PREFECT_API_URL`` unset, same
``PREFECT_HOME``: one local Prefect server shared, both exit 0, one assessment per session,
and the server is gone (port free) when both have finished."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from xnat_plugin.gateway import XnatGateway

PROJECT = "TWICE"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_two_score_pending_at_once_share_one_local_server(
    xnat_server_factory, make_session, tmp_path
) -> None:
    server = xnat_server_factory()
    with XnatGateway.connect(server.url, server.user, server.password) as gw:
        gw.xnat.put(f"/data/projects/{PROJECT}", accepted_status=[200, 201])
        for i in range(3):
            make_session(gw, PROJECT, f"T{i}", tmp_path, seed=i, slices=4, size=32)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "CBCTQA_PREFECT_PORT": str(port),
                "XNAT_HOST": server.url, "XNAT_USER": server.user, "XNAT_PASS": server.password,
                "CBCTQA_DEVICE": "cpu", "PREFECT_LOGGING_LEVEL": "WARNING"})  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "score-pending", "--project", PROJECT],
            cwd=ROOT, env=dict(env, CBCTQA_DATA_DIR=str(tmp_path / f"scratch{k}")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for k in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(f"http://127.0.0.1:{port}/api" in o for o in outs), outs
    with XnatGateway.connect(server.url, server.user, server.password) as gw:
        stored = gw.read_assessments(PROJECT)
    assert sorted(a.session_label for a in stored) == ["T0", "T1", "T2"]
    assert {a.record.status for a in stored} == {"complete"}
    for out in outs:  # each waited until all three were done (scored by it, or before it looked)
        m = re.search(r"TWICE: scored (\d+), failed 0, already done (\d+)", out)
        assert m and int(m[1]) + int(m[2]) == 3, out
    assert not _port_open(port)  # the last one out stopped the server
    assert server.password not in "".join(outs)
