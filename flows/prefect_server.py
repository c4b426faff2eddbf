"""The Prefect API the services talk to: ``PREFECT_API_URL`` if set, else a local server.

With ``PREFECT_API_URL`` unset, :func:`prefect_api` starts ``prefect server start`` (through
:mod:`flows.prefect_server_process`, which replays requests SQLite answered "busy") on
``127.0.0.1:CBCTQA_PREFECT_PORT`` (default 4200) with its SQLite database under
``PREFECT_HOME`` (Prefect's own variable, default ``~/.prefect``) and analytics off, or joins
one that another ``cbctqa`` process of the same ``PREFECT_HOME`` already started. Users are
counted in ``PREFECT_HOME/cbctqa-server/`` under a file lock: the last one out stops the
server (its whole process group) and frees the port, so two ``cbctqa score-pending`` started
at the same moment share one server and both finish cleanly.

Production mode sets ``PREFECT_API_URL`` to a Prefect server on PostgreSQL (see the README);
nothing is started then.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from qa_core.errors import ConfigurationError

__all__ = [
    "LocalPrefectServer",
    "PrefectServerError",
    "prefect_api",
    "prefect_home",
    "server_env",
    "start_server",
]

logger = logging.getLogger(__name__)

#: Seconds allowed for a local Prefect server to answer its health check (2 loaded cores
#: need tens of seconds for the first database migration).
STARTUP_TIMEOUT_S = 240.0


class PrefectServerError(ConfigurationError, RuntimeError):
    """The local Prefect server could not be started or reached."""


def prefect_home() -> Path:
    """``PREFECT_HOME`` as Prefect reads it (default ``~/.prefect``)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def server_env(
    home: Path, port: int, *, database_url: str | None = None, ui: bool = False
) -> dict[str, str]:
    """Environment of a local ``prefect server start``: database under ``home``, analytics off."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_ENABLED": "true" if ui else "false",
            "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
            "PREFECT_LOGGING_LEVEL": env.get("PREFECT_LOGGING_LEVEL", "WARNING"),
            # the event trigger must see an event within a second or two
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        }
    )
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return env


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        answer = httpx.get(f"{api_url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200


@dataclass
class LocalPrefectServer:
    """A ``prefect server start`` process group on 127.0.0.1 (see :func:`start_server`)."""

    api_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL) and wait for it."""
        _stop_group(self.process.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _stop_group(pid: int, timeout: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def start_server(
    home: Path,
    port: int,
    *,
    database_url: str | None = None,
    ui: bool = False,
    timeout: float = STARTUP_TIMEOUT_S,
) -> LocalPrefectServer:
    """Start ``prefect server start`` in its own process group and wait until it is healthy.

    Raises
    ------
    PrefectServerError
        The server exited or did not answer ``/api/health`` within ``timeout`` seconds (the
        message points at its log file).
    """
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    log_path = home / f"cbctqa-prefect-server-{port}.log"
    cmd = [sys.executable, "-m", "flows.prefect_server_process", "server", "start", "--host", "127.0.0.1",
           "--port", str(port), "--analytics-off", "--ui" if ui else "--no-ui"]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            cmd,
            env=server_env(home, port, database_url=database_url, ui=ui),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LocalPrefectServer(api_url=api_url, process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-600:]
            raise PrefectServerError(
                f"the local Prefect server on 127.0.0.1:{port} exited with code {process.returncode} "
                f"(PREFECT_HOME={home}); is the port taken? Set CBCTQA_PREFECT_PORT or PREFECT_API_URL. "
                f"Log {log_path}: ...{' '.join(tail.split())}"
            )
        if _healthy(api_url):
            logger.info("local Prefect server ready at %s (PREFECT_HOME=%s)", api_url, home)
            return server
        time.sleep(0.5)
    server.stop()
    raise PrefectServerError(
        f"the local Prefect server on 127.0.0.1:{port} did not become healthy within {timeout:.0f} s; "
        f"see {log_path}"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def prefect_api(
    *,
    port: int | None = None,
    home: Path | None = None,
    ui: bool = False,
    timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Yield the Prefect API URL with Prefect's client settings pointing at it.

    ``PREFECT_API_URL`` set: yield it (nothing started). Else join or start the local server
    of ``PREFECT_HOME`` on ``127.0.0.1:port`` (default ``CBCTQA_PREFECT_PORT``); on exit the
    last user stops it. Prefect's in-process settings are switched with
    ``prefect.settings.temporary_settings`` for the duration (and ``os.environ`` for child
    processes).
    """
    from qa_core.settings import get_settings

    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        with _client_settings(configured.rstrip("/"), None):
            yield configured.rstrip("/")
        return
    home = (home or prefect_home()).expanduser().resolve()
    port = port or get_settings().prefect_port
    state = home / "cbctqa-server"
    lock = state / f"{port}.lock"
    me = state / f"{port}.user.{os.getpid()}"
    api_url = f"http://127.0.0.1:{port}/api"
    with _locked(lock):
        pid_file = state / f"{port}.pid"
        if not _healthy(api_url):
            if pid_file.exists():  # a dead server of ours: clean up its group
                with contextlib.suppress(ValueError):
                    _stop_group(int(pid_file.read_text().strip()), 10)
            server = start_server(home, port, ui=ui, timeout=timeout)
            pid_file.write_text(str(server.process.pid))
        me.write_text(str(os.getpid()))
    try:
        with _client_settings(api_url, home):
            yield api_url
    finally:
        with _locked(lock):
            me.unlink(missing_ok=True)
            users = [p for p in state.glob(f"{port}.user.*")
                     if _alive(int(p.name.rsplit(".", 1)[1]))]  # fmt: skip
            for p in state.glob(f"{port}.user.*"):
                if p not in users:
                    p.unlink(missing_ok=True)
            pid_file = state / f"{port}.pid"
            if not users and pid_file.exists():
                with contextlib.suppress(ValueError):
                    pid = int(pid_file.read_text().strip())
                    logger.info("stopping the local Prefect server (pid %d)", pid)
                    _stop_group(pid, 30)
                pid_file.unlink(missing_ok=True)


@contextlib.contextmanager
def _client_settings(api_url: str, home: Path | None) -> Iterator[None]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    updates: dict[object, object] = {PREFECT_API_URL: api_url,
                                     PREFECT_SERVER_ANALYTICS_ENABLED: False}  # fmt: skip
    if home is not None:
        updates[PREFECT_HOME] = str(home)
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ["PREFECT_API_URL"] = api_url
    if home is not None:
        os.environ["PREFECT_HOME"] = str(home)
    try:
        with temporary_settings(updates=updates):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
