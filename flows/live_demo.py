"""The live demo: the product running as a service on a simulated hospital.

:class:`LiveDemo` starts, in order, and stops in reverse order (every piece it started, and
nothing else):

1. the local XNAT-compatible server (in this process, loopback, data under ``OUT/xnat``), a
   project, the admin, a service account and three radiologists, each with a generated
   password (``OUT/credentials.json``, mode 600);
2. ``cbctqa serve`` for the project (:func:`flows.deployments.start_serving`): the local
   Prefect server (database under ``OUT/prefect``), the deployments (poll, push trigger,
   monitor) and the scoring workers, logged in to XNAT as the service account;
3. the scanner and the radiologists (:class:`flows.demo_arrivals.ArrivalFeed`): sessions
   arrive one by one through XNAT's DICOM import, each followed by the
   ``xnat.session.archived`` event as XNAT's automation script posts it; the rated share of
   them gets each radiologist's rating under their own account;
4. optionally the dashboard (``cbctqa dashboard``, a child process).

A second run over the same ``OUT`` resumes: the same accounts, sessions already in XNAT are
not sent again, sessions already scored are not scored again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.demo_arrivals import (
    ArrivalFeed,
    DemoAccounts,
    ensure_demo_accounts,
    load_or_make_credentials,
)

if TYPE_CHECKING:
    from flows.deployments import ServeHandle
    from qa_core.synth import Cohort
    from xnat_plugin.gateway import XnatGateway
    from xnat_plugin.server import RunningServer

__all__ = ["DEMO_PROJECT", "DemoProgress", "LiveDemo", "free_port"]

logger = logging.getLogger(__name__)

DEMO_PROJECT = "CBCTQA_DEMO"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (for child processes that cannot report the one they bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class DemoProgress:
    """Where the demo stands, read from XNAT."""

    sessions: int = 0
    complete: int = 0
    failed: int = 0
    running: int = 0
    rated: int = 0
    flagged: int = 0
    report_sessions: int = 0
    labels_failed: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.complete + self.failed


class LiveDemo:
    """Everything ``cbctqa demo`` runs; use as a context manager (``stop`` on exit).

    Parameters
    ----------
    out:
        The demo folder (cohort, XNAT data, Prefect database, credentials).
    cohort:
        The simulated cohort, in arrival order.
    n_rated:
        Sessions (the first ones) the radiologists rate.
    interval_s:
        Seconds between two arrivals.
    poll_interval_s:
        Discovery interval of the service (the safety net under the push events).
    workers:
        Scoring threads of the service.
    dashboard_port:
        Start the dashboard on this port; ``None`` for none.
    ui:
        Serve the Prefect UI with the local Prefect server.
    """

    def __init__(
        self,
        out: Path,
        cohort: Cohort,
        *,
        n_rated: int,
        interval_s: float,
        poll_interval_s: float = 30.0,
        workers: int = 1,
        dashboard_port: int | None = None,
        prefect_port: int | None = None,
        ui: bool = True,
    ) -> None:
        self.out = out.resolve()
        self.cohort = cohort
        self.n_rated = n_rated
        self.interval_s = interval_s
        self.poll_interval_s = poll_interval_s
        self.workers = workers
        self.dashboard_port = dashboard_port
        self.prefect_port = prefect_port
        self.ui = ui
        self.accounts: DemoAccounts = load_or_make_credentials(self.out / "credentials.json")
        self.xnat: RunningServer | None = None
        self.service: ServeHandle | None = None
        self.feed: ArrivalFeed | None = None
        self.dashboard: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ helpers

    def connect(self, user: str, password: str) -> XnatGateway:
        """A gateway to the demo's XNAT as ``user``."""
        from xnat_plugin.gateway import XnatGateway

        assert self.xnat is not None, "the XNAT server is not running"
        return XnatGateway.connect(self.xnat.url, user, password, project=DEMO_PROJECT)

    def _setenv(self, **values: str) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LiveDemo:
        try:
            self._start_xnat()
            self._start_service()
            if self.dashboard_port is not None:
                self._start_dashboard(self.dashboard_port)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_xnat(self) -> None:
        from xnat_plugin.server import ServerConfig, run_in_thread

        config = ServerConfig(
            data_dir=self.out / "xnat",
            admin_user=self.accounts.admin_user,
            admin_password=self.accounts.admin_password,
        )
        self.xnat = self._stack.enter_context(run_in_thread(config))
        acc = self.accounts
        with self.connect(acc.admin_user, acc.admin_password) as gw:
            ensure_demo_accounts(gw, DEMO_PROJECT, acc)
            # the service account: writes assessments, flags and the project report
            service = DemoAccounts(acc.admin_user, acc.admin_password,
                                   {acc.service_user: acc.service_password})  # fmt: skip
            ensure_demo_accounts(gw, DEMO_PROJECT, service, role="Owners")

    def _start_service(self) -> None:
        from flows.deployments import start_serving

        assert self.xnat is not None
        self._setenv(
            PREFECT_HOME=str(self.out / "prefect"),
            XNAT_HOST=self.xnat.url,
            XNAT_USER=self.accounts.service_user,
            XNAT_PASS=self.accounts.service_password,
            CBCTQA_DATA_DIR=str(self.out / "data"),
        )
        (self.out / "prefect").mkdir(parents=True, exist_ok=True)
        self.service = start_serving(
            [DEMO_PROJECT],
            poll_interval=self.poll_interval_s,
            workers=self.workers,
            port=self.prefect_port,
            ui=self.ui,
        )

    def start_arrivals(self) -> None:
        """Start sending the cohort into XNAT (after :meth:`start`)."""
        from flows.events import archived_event_body, post_session_archived

        assert self.service is not None and self.xnat is not None
        api_url = self.service.api_url
        xnat_url = self.xnat.url

        def notify(ref: Any) -> None:
            body = archived_event_body(
                session_id=ref.session_id,
                project=ref.project,
                subject=ref.subject,
                subject_id=ref.subject_id,
                label=ref.label,
                xnat_url=xnat_url,
            )
            post_session_archived(api_url, body)

        self.feed = ArrivalFeed(
            self.connect,
            self.cohort,
            DEMO_PROJECT,
            self.accounts,
            n_rated=self.n_rated,
            interval_s=self.interval_s,
            notify=notify,
            on_arrival=lambda ref, rated: print(
                f"  arrived: {ref.label}" + ("  (+ 3 radiologists' ratings)" if rated else ""),
                flush=True,
            ),
        ).start()

    def _start_dashboard(self, port: int) -> None:
        assert self.xnat is not None
        if not port_is_free(port):
            from qa_core.errors import ConfigurationError

            raise ConfigurationError(
                f"dashboard port {port} is in use; pass --dashboard-port N with a free port"
            )
        env = dict(os.environ)
        env.update(
            XNAT_HOST=self.xnat.url,
            XNAT_USER=self.accounts.service_user,
            XNAT_PASS=self.accounts.service_password,
            PREFECT_API_URL=self.service.api_url if self.service else "",
        )
        cmd = [sys.executable, "-m", "flows.cli", "dashboard", "--host", "127.0.0.1",
               "--port", str(port), "--project", DEMO_PROJECT]  # fmt: skip
        log = (self.out / "dashboard.log").open("ab")
        self.dashboard = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def dashboard_ready(self, timeout: float = 120.0) -> bool:
        """Wait until the dashboard answers its health check."""
        import requests

        if self.dashboard is None or self.dashboard_port is None:
            return False
        url = f"http://127.0.0.1:{self.dashboard_port}/_stcore/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dashboard.poll() is not None:
                return False
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).ok:
                    return True
            time.sleep(1.0)
        return False

    def stop(self) -> None:
        """Stop everything started, in reverse order; idempotent."""
        if self.feed is not None:
            self.feed.stop()
        if self.dashboard is not None and self.dashboard.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.dashboard.pid, signal.SIGTERM)
            try:
                self.dashboard.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.dashboard.pid, signal.SIGKILL)
                self.dashboard.wait(10)
        if self.service is not None:
            self.service.stop()
            self.service = None
        self._stack.close()
        self.xnat = None
        self._restore_env()

    def __enter__(self) -> LiveDemo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ progress

    def progress(self, version: str) -> DemoProgress:
        """Sessions, assessments of ``version`` by status, ratings, flags and the report."""
        from flows.monitor import REPORT_RESOURCE

        p = DemoProgress()
        with self.connect(self.accounts.admin_user, self.accounts.admin_password) as gw:
            p.sessions = len(gw.list_sessions(DEMO_PROJECT))
            for a in gw.read_assessments(DEMO_PROJECT):
                rec = a.record
                if rec.model_version != version:
                    continue
                if rec.status == "complete":
                    p.complete += 1
                elif rec.status == "failed":
                    p.failed += 1
                    p.labels_failed.append(a.session_label)
                else:
                    p.running += 1
                p.flagged += sum(1 for r in rec.categories.values() if r.outlier)
            p.rated = len({r.session_id for r in gw.read_ratings(DEMO_PROJECT)})
            with contextlib.suppress(Exception):
                answer = gw.xnat.get(
                    f"/data/projects/{DEMO_PROJECT}/resources/{REPORT_RESOURCE}/files/report.json",
                    accepted_status=[200],
                )
                report = json.loads(answer.text)
                if report.get("model_version") == version:
                    p.report_sessions = sum(int(v) for v in report.get("status_counts", {}).values())
        return p

    def wait_until_done(
        self, version: str, *, timeout: float, stop: threading.Event | None = None,
        on_progress: Any = None,
    ) -> DemoProgress:
        """Wait until every session has arrived and is scored and the report covers them all."""
        deadline = time.monotonic() + timeout
        last = DemoProgress()
        total = len(self.cohort.sessions)
        while time.monotonic() < deadline:
            feed_done = self.feed is None or self.feed.done
            if self.feed is not None and self.feed.error is not None:
                raise RuntimeError(f"the demo's session feed stopped: {self.feed.error}")
            last = self.progress(version)
            if on_progress is not None:
                on_progress(last)
            if (feed_done and last.sessions >= total and last.scored >= total
                    and last.report_sessions >= total):  # fmt: skip
                return last
            if stop is not None and stop.wait(3.0):
                break
            if stop is None:
                time.sleep(3.0)
        return last
