"""The server's route table names real handlers, and its modules stay readable in one sitting."""

from __future__ import annotations

from pathlib import Path

import xnat_plugin.server as server_pkg
from xnat_plugin.server.app import ROUTES, XnatApp


def test_every_route_names_a_method_of_the_app() -> None:
    missing = [r.handler for r in ROUTES if not callable(getattr(XnatApp, r.handler, None))]
    assert not missing, missing
    paths = " ".join(r.path for r in ROUTES)
    for endpoint in ("/data/services/auth", "/data/JSESSION", "/data/search",
                     "/data/services/import", "/xapi/users", "/data/experiments", "/scans",
                     "/assessors", "/resources", "/files"):
        assert endpoint in paths, endpoint


def test_no_server_module_is_over_600_lines() -> None:
    root = Path(server_pkg.__file__).parent
    sizes = {p.relative_to(root).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in root.rglob("*.py")}
    assert len(sizes) > 10
    assert {k: n for k, n in sizes.items() if n > 600} == {}
