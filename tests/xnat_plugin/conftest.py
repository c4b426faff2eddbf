"""Fixtures: the real local XNAT server over HTTP on a free loopback port.

- ``xnat_server`` (module-scoped): a server with a temporary data dir; attributes ``url``,
  ``user``, ``password`` (site admin), ``data_dir``; ``restart()`` restarts it on the same port
  and data (persistence); ``app`` exposes the running application.
- ``xnat_server_factory`` (function-scoped): ``start(**config_changes)`` starts another server
  (e.g. ``faults=FaultConfig(error_rate=0.3, seed=1)``), stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xnat_plugin.server import RunningServer, ServerConfig, run_in_thread

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-test-pw"


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
