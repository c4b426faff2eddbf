"""``cbctqa demo``: the live service on a tiny simulated cohort, run as a user runs it (a child
process with its own local XNAT, Prefect server and dashboard).

- ``--until-done``: the printed summary agrees with what XNAT holds afterwards, and a second
  run over the same folder resumes (nothing imported, scored or rated twice);
- live mode: once every session is scored and the dashboard answers, SIGINT stops every
  process the demo started and frees its ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main
from flows.commands.demo import DEMO_PROJECT
from flows.scoring import cohort_rows
from qa_core.categories import CATEGORIES
from xnat_plugin.gateway import XnatGateway
from xnat_plugin.server import ServerConfig, run_in_thread

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    """No socket listens on ``port`` (SO_REUSEADDR, as servers bind: TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _demo_cmd(out: Path, *extra: str, sessions: int = 4) -> list[str]:
    return [
        sys.executable, "-m", "flows.cli", "demo", "--out", str(out),
        "--sessions", str(sessions), "--slices", "8", "--size", "64", "--seed", "4",
        "--rated", str(sessions), "--arrival-interval", "0.5", "--poll-interval", "5",
        "--prefect-port", str(_free_port()), "--n-resamples", "200", "--no-progress", *extra,
    ]  # fmt: skip


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "XNAT_HOST", "XNAT_USER", "XNAT_PASS"):
        env.pop(key, None)
    env["CBCTQA_DATA_DIR"] = str(tmp / "data")
    return env


def _xnat(out: Path):
    creds = json.loads((out / "credentials.json").read_text())
    config = ServerConfig(data_dir=out / "xnat", admin_user=creds["admin"]["user"],
                          admin_password=creds["admin"]["password"])  # fmt: skip
    return run_in_thread(config), creds


@pytest.mark.slow
def test_until_done_summary_matches_xnat_and_a_rerun_resumes(tmp_path) -> None:
    out = tmp_path / "demo"
    run = subprocess.run(_demo_cmd(out, "--until-done"), cwd=REPO, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = run.stdout
    m = re.search(r"sessions: (\d+) in XNAT, (\d+) scored, (\d+) failed; (\d+) rated", text)
    assert m, text[-3000:]
    assert tuple(int(g) for g in m.groups()) == (4, 4, 0, 4)
    n_alerts = int(re.search(r"alerts raised: (\d+)", text).group(1))
    summary = json.loads((out / "summary.json").read_text())
    creds_text = (out / "credentials.json").read_text()
    creds = json.loads(creds_text)
    # no password of the service account reaches the summary; the radiologists' are printed for
    # the person at the terminal only
    assert creds["service"]["password"] not in text
    assert creds["service"]["password"] not in json.dumps(summary)
    assert (out / "credentials.json").stat().st_mode & 0o077 == 0

    server, creds = _xnat(out)
    with server, XnatGateway.connect(server.url, creds["admin"]["user"],
                                     creds["admin"]["password"], project=DEMO_PROJECT) as gw:
        assessments = [a for a in gw.read_assessments(DEMO_PROJECT)
                       if a.record.model_version == summary["model_version"]]  # fmt: skip
        ratings = gw.read_ratings(DEMO_PROJECT)
        first_ids = sorted(a.assessor_id for a in assessments)
        assert sorted(a.session_label for a in assessments) == [f"SIM4_{i:03d}" for i in range(1, 5)]
        assert all(a.record.status == "complete" for a in assessments)
        flagged = sum(1 for a in assessments for r in a.record.categories.values() if r.outlier)
        assert flagged == n_alerts == len(summary["alerts"])
        # each rating under its own radiologist's account
        assert sorted({r.rater for r in ratings}) == ["radiologist1", "radiologist2", "radiologist3"]
        assert len(ratings) == 12
        rows = cohort_rows(assessments, ratings, model_version=summary["model_version"])
    from scipy.stats import spearmanr

    for cat in CATEGORIES:
        mine = [r for r in rows if r["category"] == cat]
        rho = spearmanr([r["ae"] for r in mine], [r["consensus"] for r in mine]).statistic
        assert summary["analysis"][cat]["rho"] == pytest.approx(rho, abs=1e-9)
        assert summary["analysis"][cat]["n"] == 4

    again = subprocess.run(_demo_cmd(out, "--until-done"), cwd=REPO, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "arrived:" not in again.stdout  # nothing sent to XNAT again
    server, creds = _xnat(out)
    with server, XnatGateway.connect(server.url, creds["admin"]["user"],
                                     creds["admin"]["password"], project=DEMO_PROJECT) as gw:
        ids = sorted(a.assessor_id for a in gw.read_assessments(DEMO_PROJECT)
                     if a.record.model_version == summary["model_version"])  # fmt: skip
        assert ids == first_ids  # nothing scored twice
        assert len(gw.read_ratings(DEMO_PROJECT)) == 12  # nothing rated twice


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_live_demo_stops_everything_on_ctrl_c(tmp_path) -> None:
    out = tmp_path / "live"
    dash = _free_port()
    cmd = _demo_cmd(out, "--dashboard-port", str(dash), sessions=3)
    prefect_port = int(cmd[cmd.index("--prefect-port") + 1])
    log = (tmp_path / "live.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=log,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        text = ""
        while time.monotonic() < deadline:
            text = (tmp_path / "live.log").read_text()
            if "every session is scored" in text or proc.poll() is not None:
                break
            time.sleep(2)
        assert "every session is scored" in text, text[-4000:]
        assert f"http://127.0.0.1:{dash}" in text
        xnat_url = re.search(r"XNAT\s+(http://127\.0\.0\.1:(\d+))", text)
        assert xnat_url, text[-3000:]
        import requests

        assert requests.get(f"http://127.0.0.1:{dash}/_stcore/health", timeout=10).ok
        children = _descendants(proc.pid)
        assert children, "the demo started no child process (Prefect server, dashboard)"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(180) in (0, 130)
    finally:
        if proc.poll() is None:  # it ignored Ctrl-C: stop it and all it started
            left = _descendants(proc.pid)
            proc.kill()
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        log.close()
    time.sleep(1)
    assert [p for p in children if _alive(p)] == []
    for port in (dash, prefect_port, int(xnat_url.group(2))):
        assert _port_free(port), f"port {port} still bound after Ctrl-C"
    assert "stopped:" in (tmp_path / "live.log").read_text()


def _tiny_demo_argv(out, *, n_resamples: int) -> list[str]:
    return ["demo", "--out", str(out), "--sessions", "2", "--slices", "8", "--size", "64",
            "--n-resamples", str(n_resamples), "--no-progress"]  # fmt: skip


def test_demo_refuses_too_few_resamples(tmp_path, capsys) -> None:
    assert main(_tiny_demo_argv(tmp_path, n_resamples=5)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n-resamples" in err[0]


def test_demo_refuses_a_negative_rated_count(tmp_path, capsys) -> None:
    assert main([*_tiny_demo_argv(tmp_path, n_resamples=200), "--rated", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rated" in err[0]


def test_demo_cohort_only_simulates_and_stops(tmp_path, capsys) -> None:
    assert main([*_tiny_demo_argv(tmp_path, n_resamples=200), "--cohort-only"]) == 0
    assert "2 sessions" in capsys.readouterr().out
    assert not (tmp_path / "xnat").exists()
