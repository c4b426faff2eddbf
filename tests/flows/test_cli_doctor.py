"""``cbctqa doctor`` against the real local XNAT-compatible server (and a real Prefect server)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from flows.cli import main
from flows.commands.doctor import Doctor
from xnat_plugin.server import RunningServer

ADMIN = ("admin", "admin-test-pw")
P = "DOC_HN"
SERVICE_PW = "svc-Secret-pw-77"
READER_PW = "reader-Secret-pw-88"
PREFECT_AUTH = "doctor:prefect-Secret-pw-66"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def xnat(xnat_server: RunningServer) -> RunningServer:
    """Project DOC_HN with a Member ``svc`` and a Collaborator ``reader``."""
    http = requests.Session()
    http.auth = ADMIN
    url = xnat_server.url
    assert http.put(f"{url}/data/projects/{P}", timeout=10).status_code in (200, 201)
    for login, pw, role in (("svc", SERVICE_PW, "Members"), ("reader", READER_PW, "Collaborators")):
        r = http.post(f"{url}/xapi/users", json={"username": login, "password": pw,
                                                  "email": f"{login}@example.org",
                                                  "enabled": True, "verified": True}, timeout=10)
        assert r.status_code in (200, 201), r.text
        assert http.put(f"{url}/data/projects/{P}/users/{role}/{login}", timeout=10).status_code == 200
    return xnat_server


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xnat: RunningServer) -> Callable[..., None]:
    """Point the environment at the local XNAT as ``svc``; local Prefect on a free port."""
    for name in ("XNATPY_HOST", "XNATPY_USER", "XNATPY_PASS", "PREFECT_API_URL", "CBCTQA_PROJECTS",
                 "CBCTQA_DEVICE", "CBCTQA_MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))

    def set_env(user: str = "svc", password: str = SERVICE_PW, **extra: str) -> None:
        monkeypatch.setenv("XNAT_HOST", xnat.url)
        monkeypatch.setenv("XNAT_USER", user)
        monkeypatch.setenv("XNAT_PASS", password)
        monkeypatch.setenv("CBCTQA_DATA_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("CBCTQA_PREFECT_PORT", str(_free_port()))
        monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
        for key, value in extra.items():
            monkeypatch.setenv(key, value)

    set_env()
    return set_env


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, dict[str, str]], str]:
    code = main(["doctor", "--json", "--timeout", "5", *argv])
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert data["failed"] == sum(c["status"] == "fail" for c in data["checks"])
    return code, {c["name"]: c for c in data["checks"]}, out.out + out.err


@pytest.mark.slow
def test_ready_machine_passes_every_check(env: Callable[..., None],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--project", P, "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("cbctqa doctor ")
    for name in ("settings", "xnat", "datatypes", f"project:{P}", "prefect", "model", "device",
                 "data-dir"):
        assert any(line.split()[:2] == ["ok", name] for line in lines), (name, out)
    assert "'svc' is member" in out and "cbctqa:qaAssessmentData" in out
    assert "will start a local Prefect server on 127.0.0.1:" in out
    assert lines[-1].startswith("0 failed")
    assert SERVICE_PW not in out


def test_wrong_password_fails_with_the_fix_and_never_prints_it(
    env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    env(password="wrong-Secret-pw-99")
    code, checks, text = _run(capsys, "--project", P, "--skip-model")
    assert code == 1
    assert checks["xnat"]["status"] == "fail"
    assert "rejected the login of 'svc'" in checks["xnat"]["detail"]
    assert "XNAT_USER/XNAT_PASS" in checks["xnat"]["fix"]
    assert checks["datatypes"]["status"] == "skip" and checks[f"project:{P}"]["status"] == "skip"
    assert checks["device"]["status"] == "ok"  # the other checks still ran
    assert "wrong-Secret-pw-99" not in text and SERVICE_PW not in text


def test_missing_host_names_the_variables(env: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("XNAT_HOST")
    code, checks, _ = _run(capsys, "--skip-model")
    assert code == 1
    assert "XNAT_HOST" in checks["xnat"]["detail"] and "~/.netrc" in checks["xnat"]["fix"]


def test_unreachable_xnat(env: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    env(XNAT_HOST=f"http://127.0.0.1:{_free_port()}")
    code, checks, _ = _run(capsys, "--skip-model")
    assert code == 1
    assert checks["xnat"]["detail"].startswith("cannot connect to XNAT at http://127.0.0.1:")
    assert "XNAT_HOST" in checks["xnat"]["fix"]


def test_unreachable_prefect_fails_with_the_fix(env: Callable[..., None],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    env(PREFECT_API_URL=f"http://127.0.0.1:{_free_port()}/api")
    code, checks, _ = _run(capsys, "--project", P, "--skip-model")
    assert code == 1
    assert checks["prefect"]["status"] == "fail"
    assert "unreachable" in checks["prefect"]["detail"]
    assert "prefect server start" in checks["prefect"]["fix"]
    assert checks["xnat"]["status"] == "ok" and checks[f"project:{P}"]["status"] == "ok"


def test_local_prefect_port_taken_by_another_program(env: Callable[..., None],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        env(CBCTQA_PREFECT_PORT=str(squatter.getsockname()[1]))
        code, checks, _ = _run(capsys, "--skip-model", "--timeout", "1")
    assert code == 1
    assert "taken by something that is not Prefect" in checks["prefect"]["detail"]
    assert "CBCTQA_PREFECT_PORT" in checks["prefect"]["fix"]


def test_collaborator_may_not_write(env: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    env(user="reader", password=READER_PW)
    code, checks, text = _run(capsys, "--project", P, "--project", "NO_SUCH_PROJECT", "--skip-model")
    assert code == 1
    project = checks[f"project:{P}"]
    assert project["status"] == "fail" and "collaborator" in project["detail"]
    assert "as Member" in project["fix"]
    missing = checks["project:NO_SUCH_PROJECT"]
    assert missing["status"] == "fail" and "does not exist" in missing["detail"]
    assert READER_PW not in text


def test_projects_default_to_the_setting(env: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    env(CBCTQA_PROJECTS=f"{P}, ")
    code, checks, _ = _run(capsys, "--skip-model")
    assert code == 0 and checks[f"project:{P}"]["status"] == "ok"


def test_plugin_not_installed(env: Callable[..., None], tmp_path: Path,
                              xnat_server_factory: Callable[..., RunningServer],
                              capsys: pytest.CaptureFixture[str]) -> None:
    """An XNAT without the plugin: only XNAT's own schema is served."""
    core = tmp_path / "core-schemas"
    core.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "xnat_plugin" / "schema" / "xnat.xsd", core)
    bare = xnat_server_factory(schema_dirs=(core,))
    env(user=ADMIN[0], password=ADMIN[1], XNAT_HOST=bare.url)
    code, checks, _ = _run(capsys, "--skip-model")
    assert code == 1
    datatypes = checks["datatypes"]
    assert datatypes["status"] == "fail"
    assert "cbctqa:qaAssessmentData, cbctqa:ratingData not installed" in datatypes["detail"]
    assert "plugins/" in datatypes["fix"] and "restart XNAT" in datatypes["fix"]


def test_bad_setting_and_bad_model(env: Callable[..., None], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    env(CBCTQA_BATCH_SIZE="0")
    code, checks, _ = _run(capsys, "--skip-model")
    assert code == 1
    assert "CBCTQA_BATCH_SIZE" in checks["settings"]["detail"]
    assert checks["device"]["status"] == "skip" and checks["data-dir"]["status"] == "skip"

    env(CBCTQA_BATCH_SIZE="32", CBCTQA_MODEL_PATH=str(tmp_path / "missing.pt"))
    code, checks, _ = _run(capsys)
    assert code == 1
    assert "missing.pt not found" in checks["model"]["detail"]
    assert "CBCTQA_MODEL_PATH" in checks["model"]["fix"]


def test_cuda_requested(env: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    env(CBCTQA_DEVICE="cuda")
    code, checks, _ = _run(capsys, "--skip-model")
    if torch.cuda.is_available():
        assert checks["device"]["status"] == "ok" and "CUDA" in checks["device"]["detail"]
    else:
        assert code == 1 and checks["device"]["status"] == "fail"
        assert "CUDA is not available" in checks["device"]["detail"]
        assert "CBCTQA_DEVICE=auto" in checks["device"]["fix"]


def test_unwritable_data_dir(env: Callable[..., None], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env(CBCTQA_DATA_DIR=str(blocker / "state"))
    code, checks, _ = _run(capsys, "--skip-model")
    assert code == 1 and checks["data-dir"]["status"] == "fail"
    assert "CBCTQA_DATA_DIR" in checks["data-dir"]["fix"]


def test_doctor_releases_the_xnat_session(env: Callable[..., None], xnat: RunningServer) -> None:
    doctor = Doctor([P], check_model=False, timeout=5)
    results = list(doctor.run())
    assert [r.status for r in results if r.name == "xnat"] == ["ok"]
    assert doctor._gw is None


# ----------------------------------------------------------------------------- real Prefect


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server (SQLite) on a free loopback port."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": "", "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_SERVER_API_AUTH_STRING": PREFECT_AUTH}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-services"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{api}/health", timeout=2).text.strip() == "true":
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, "the Prefect server exited during start-up"
            assert time.monotonic() < deadline, "the Prefect server did not start in 180 s"
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_real_prefect_server_and_work_pool(env: Callable[..., None], prefect_api: str,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # the server requires basic auth (PREFECT_SERVER_API_AUTH_STRING): without it, a clear failure
    env(PREFECT_API_URL=prefect_api)
    code, checks, text = _run(capsys, "--project", P, "--skip-model", "--pool", "cbctqa-doctor")
    assert code == 1
    assert "HTTP 401" in checks["prefect"]["detail"]
    assert "PREFECT_API_AUTH_STRING" in checks["prefect"]["fix"]

    env(PREFECT_API_URL=prefect_api, PREFECT_API_AUTH_STRING=PREFECT_AUTH)
    code, checks, text = _run(capsys, "--project", P, "--skip-model", "--pool", "cbctqa-doctor")
    assert code == 1
    assert "prefect-Secret-pw-66" not in text
    assert "healthy at " + prefect_api in checks["prefect"]["detail"]
    assert "work pool 'cbctqa-doctor' does not exist" in checks["prefect"]["detail"]
    assert "prefect work-pool create cbctqa-doctor --type process" in checks["prefect"]["fix"]

    created = requests.post(f"{prefect_api}/work_pools/", auth=tuple(PREFECT_AUTH.split(":")),  # type: ignore[arg-type]
                            json={"name": "cbctqa-doctor", "type": "process"}, timeout=30)
    assert created.status_code in (200, 201), created.text
    code, checks, _ = _run(capsys, "--project", P, "--skip-model", "--pool", "cbctqa-doctor")
    assert code == 0, checks  # a warning, not a failure
    assert checks["prefect"]["status"] == "warn"
    assert "work pool 'cbctqa-doctor' (process) has no deployments" in checks["prefect"]["detail"]
    assert "cbctqa deploy --pool cbctqa-doctor" in checks["prefect"]["fix"]

    monkeypatch.setenv("PREFECT_API_AUTH_STRING", PREFECT_AUTH)  # the client side of Prefect
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    assert main(["deploy", "--pool", "cbctqa-doctor", "--project", P]) == 0
    capsys.readouterr()
    code, checks, _ = _run(capsys, "--project", P, "--skip-model", "--pool", "cbctqa-doctor")
    assert code == 0 and checks["prefect"]["status"] == "ok", checks
    assert "work pool 'cbctqa-doctor' (process) with 3 deployments" in checks["prefect"]["detail"]

    # local mode, with a Prefect server already on the configured port: nothing to start
    env(CBCTQA_PREFECT_PORT=prefect_api.rsplit(":", 1)[1].split("/")[0])
    monkeypatch.delenv("PREFECT_API_URL")
    code, checks, _ = _run(capsys, "--skip-model")
    assert checks["prefect"]["status"] == "ok"
    assert "already answers" in checks["prefect"]["detail"]
