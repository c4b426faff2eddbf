"""Fixtures: the real local XNAT server over HTTP on a free loopback port.

- ``xnat_server`` (module-scoped): a server with a temporary data dir; attributes ``url``,
  ``user``, ``password`` (site admin), ``data_dir``; ``restart()`` restarts it on the same port
  and data (persistence); ``app`` exposes the running application.
- ``xnat_server_factory`` (function-scoped): ``start(**config_changes)`` starts another server
  (e.g. ``faults=FaultConfig(error_rate=0.3, seed=1)``), stopped at the end of the test.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from qa_core.dicom_writer import write_series
from xnat_plugin.server import RunningServer, ServerConfig, run_in_thread

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-test-pw"


def dicom_zip(tmp: Path, seed: str = "s1", patient: str = "PAT001") -> tuple[bytes, list[Path]]:
    """A zip of two tiny CT series (CBCT: 4 slices; SCOUT: 2 slices) written with pydicom."""
    rng = np.random.default_rng(7)
    files: list[Path] = []
    files += write_series(rng.normal(0, 50, (4, 8, 8)), (2.0, 0.5, 0.5), tmp / "cbct",
                          uid_seed=seed, patient_id=patient, patient_name=patient,
                          series_description="CBCT HN", series_number=1, study_date="20260315")
    files += write_series(rng.normal(0, 50, (2, 8, 8)), (3.0, 1.0, 1.0), tmp / "scout",
                          uid_seed=seed, patient_id=patient, patient_name=patient,
                          series_description="SCOUT", series_number=2, study_date="20260315",
                          file_prefix="SC")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for path in files:
            archive.write(path, f"{path.parent.name}/{path.name}")
        archive.writestr("README.txt", "not DICOM")
    return buf.getvalue(), files


@pytest.fixture(scope="session")
def make_dicom_zip() -> Callable[..., tuple[bytes, list[Path]]]:
    """``make_dicom_zip(folder, seed=..., patient=...)``: bytes of a two-series CT zip."""
    return dicom_zip


def make_config(data_dir: Path, **changes: object) -> ServerConfig:
    """A loopback test server configuration on a free port."""
    base: dict[str, object] = {"data_dir": data_dir, "admin_user": ADMIN_USER,
                               "admin_password": ADMIN_PASSWORD, "host": "127.0.0.1", "port": 0}
    base.update(changes)
    return ServerConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def xnat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A running local XNAT server shared by the tests of one module."""
    data_dir = tmp_path_factory.mktemp("xnat-data")
    with run_in_thread(make_config(data_dir)) as server:
        yield server


@pytest.fixture
def xnat_server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start extra servers (fault injection, PostgreSQL ...); all stopped after the test."""
    started: list[RunningServer] = []

    def start(**changes: object) -> RunningServer:
        data_dir = Path(str(changes.pop("data_dir", tmp_path / f"xnat-{len(started)}")))
        server = run_in_thread(make_config(data_dir, **changes))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the processes the tests start, as a terminal delivers it.

    A shell starts a background job (``make test &``, a CI runner's step) with SIGINT
    ignored, and an ignored signal stays ignored across ``exec``: every ``cbctqa serve`` /
    ``cbctqa demo`` / ``prefect worker`` a test started then ignored the SIGINT that test sent
    to stop it, ran on past the test and claimed the next tests' runs. A handled signal is
    reset to its default in a child, so handling it here fixes every child."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _fresh_prefect_events_worker() -> Iterator[None]:
    """After each test, flush and retire Prefect's process-wide events worker.

    Prefect keeps ONE events worker per process for a self-hosted API (its key holds no URL);
    its client targets the API it was started for. Tests here start several Prefect servers in
    one process, one after the other: once a test's server had stopped, the worker kept
    retrying that server for a minute, and the next tests' events (``cbctqa.session.scored``,
    triggers, alerts) waited behind it or went to the dead server. A production process talks
    to one API and never meets this. The next emit starts a fresh worker for its own API."""
    import sys

    yield
    worker = sys.modules.get("prefect.events.worker")
    if worker is not None:
        worker.EventsWorker.drain_all(timeout=5, at_exit=False)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Keep the end of the run readable: after the summary, background clients of servers the
    tests already stopped (Prefect's event and log workers, xnatpy sessions disconnecting in
    ``__del__``) may still try to reach them at interpreter exit. Their tracebacks said
    nothing about the tests and pushed the failure summary out of CI's log tail; they become
    one line each."""
    import logging
    import sys

    logging.raiseExceptions = False  # a handler failing at exit prints nothing

    def one_line(unraisable: sys.UnraisableHookArgs) -> None:
        exc = unraisable.exc_value
        print(f"(at exit, ignored: {type(exc).__name__} in {unraisable.object!r:.80})", file=sys.stderr)

    sys.unraisablehook = one_line
