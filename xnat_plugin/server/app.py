"""The local XNAT-compatible server: the application and its route table.

:class:`XnatApp` turns a :class:`~xnat_plugin.server.wire.Request` into a
:class:`~xnat_plugin.server.wire.Response` (no sockets, so it is easy to reason about);
:class:`~xnat_plugin.server.httpd.XnatHTTPServer` serves it over HTTP/1.1.

Routing follows XNAT: ``/data/...``, ``/data/archive/...`` and ``/REST/...`` are the same
resources; objects are addressed by ID or label; every answer a client parses is JSON, CSV, XML
or short plain text, never HTML (both xnatpy and pyxnat treat ``<html>`` bodies as errors).

Where the code lives (``xnat_plugin/server/``): ``routes/users.py`` (users and auth),
``routes/projects.py`` (projects), ``routes/objects.py`` (subjects, sessions, scans,
assessors), ``routes/listings.py`` (collection listings), ``routes/files.py`` (resources and
files), ``routes/search.py`` (search), ``routes/dicom.py`` (DICOM import), ``routes/base.py``
(path walking, access checks, write parsing), ``wire.py`` (requests and answers),
``httpd.py`` (HTTP serving). :data:`ROUTES` below lists every XNAT endpoint served and the
method that answers it.
"""

from __future__ import annotations

import secrets
import threading
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass

from qa_core.logs import redact

from .auth import FailedLogins, SessionTable, hash_password
from .config import AppConfig
from .dicom_import import DicomImportError
from .faults import FaultDecision, FaultInjector, damage, duplicate_created, scripted_answer
from .httpd import XnatHTTPServer
from .resources import UnsafePathError
from .routes.dicom import ImportRoutes
from .routes.files import FileRoutes
from .routes.listings import ListingRoutes
from .routes.objects import ObjectRoutes
from .routes.projects import ProjectRoutes
from .routes.search import SearchRoutes
from .routes.users import UserRoutes
from .schemas import SchemaCatalog, SchemaError
from .search import SearchError
from .store import Store
from .wire import HttpError, Request, Response, log
from .xmlsafe import XmlRejected

__all__ = ["ROUTES", "AppConfig", "HttpError", "Request", "Response", "Route", "XnatApp",
           "XnatHTTPServer"]


@dataclass(frozen=True)
class Route:
    """One served XNAT endpoint: HTTP methods, path pattern, the method that answers."""

    methods: str
    path: str
    handler: str


#: Every XNAT endpoint this server answers, in the order :meth:`XnatApp._dispatch` and
#: :meth:`XnatApp._rest` try them. ``{x}`` is any object path below (a project, subject,
#: session, scan or assessor, by ID or label); ``/data/archive/...`` and ``/REST/...`` are
#: aliases of ``/data/...``.
ROUTES: tuple[Route, ...] = (
    # users and auth (routes/users.py)
    Route("PUT POST", "/data/services/auth", "_login"),
    Route("GET DELETE", "/data/JSESSION", "_jsession"),
    Route("GET", "/data/auth", "_auth_status"),
    Route("GET", "/data/users", "_data_users"),
    Route("GET", "/xapi/siteConfig/buildInfo, /xapi/siteConfig/siteId", "_xapi"),
    Route("GET", "/xapi/schemas, /xapi/schemas/{name}", "_xapi"),
    Route("GET", "/xapi/access/projects", "_xapi"),
    Route("GET POST PUT", "/xapi/users, /xapi/users/{user}", "_xapi_users"),
    Route("PUT POST", "/xapi/users/{user}/enabled/{true|false}", "_set_enabled"),
    Route("GET PUT POST DELETE", "/data/projects/{p}/users[/{role}/{user}]", "_project_users"),
    # search (routes/search.py)
    Route("GET", "/data/search/elements[/{xsiType}]", "_search_elements"),
    Route("POST", "/data/search", "_search"),
    # DICOM import (routes/dicom.py)
    Route("POST", "/data/services/import", "_import"),
    # resources and files (routes/files.py)
    Route("GET PUT POST DELETE", "{x}/resources/{r}/files[/{path}], {x}/out/resources/...",
          "_files"),
    Route("GET", "{session}/scans/{ALL|id,id}/files?format=zip", "_files"),
    Route("PUT POST", "{x}/resources/{label}", "_put_resource"),
    Route("GET", "{x}/resources/{r}", "_get_resource"),
    Route("DELETE", "{x}/resources/{r}", "_delete_resource"),
    # listings (routes/listings.py)
    Route("GET", "/data/projects, /data/experiments, /data/subjects, {p}/subjects, "
                 "{p}/experiments, {subject}/experiments, {session}/scans, "
                 "{session}/assessors, {x}/resources", "_listing"),
    # projects (routes/projects.py)
    Route("PUT POST", "/data/projects/{p} (new)", "_create_project"),
    Route("GET", "/data/projects/{p}", "_get_project"),
    Route("PUT POST", "/data/projects/{p} (existing)", "_update_project"),
    Route("DELETE", "/data/projects/{p}", "_delete_project"),
    # subjects, sessions, scans, assessors (routes/objects.py)
    Route("PUT POST", "{p}/subjects/{s}, {s}/experiments/{e}, {e}/scans/{n}, "
                      "{e}/assessors/{a} (new)", "_create"),
    Route("GET", "/data/subjects/{s}, /data/experiments/{e}, {p}/subjects/{s}, "
                 "{s}/experiments/{e}, {e}/scans/{n}, {e}/assessors/{a}", "_get_object"),
    Route("PUT POST", "the same (existing)", "_update"),
    Route("DELETE", "the same", "_delete"),
)


class XnatApp(UserRoutes, SearchRoutes, ImportRoutes, FileRoutes, ListingRoutes, ProjectRoutes,
              ObjectRoutes):
    """The XNAT REST subset, over one :class:`Store`; thread-safe."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir, config.database_url)
        self.schemas = SchemaCatalog(list(config.schema_dirs) or None)
        security = config.security
        self.sessions = SessionTable(self.store, idle_timeout_s=security.session_timeout)
        self.failed_logins = FailedLogins(security.max_failed_logins,
                                          security.max_failed_logins_lockout_duration)
        self.faults = FaultInjector(config.faults)
        self._verified: dict[str, str] = {}
        self._verified_lock = threading.Lock()
        # unknown users are checked against this, so they take as long as a wrong password
        self._dummy_hash = hash_password(secrets.token_hex(16))
        self._ensure_admin()

    def close(self) -> None:
        self.store.close()

    def handle(self, req: Request) -> Response:
        """Answer one request; never raises for client errors (they become 4xx answers)."""
        req.max_buffered = self.config.max_buffered_body_bytes
        decision = self.faults.decide(req.path)
        if decision is FaultDecision.DROP:
            return Response(drop=True)
        if decision is FaultDecision.ERROR:
            return Response.text("Service temporarily unavailable (injected fault)", 503)
        scripted = self.faults.scripted(req.method, req.path)
        if scripted is not None and scripted.status is not None:
            return scripted_answer(scripted)
        try:
            response = self._dispatch(req)
            if scripted is not None and scripted.corrupt is not None:
                response = damage(scripted, response)
            elif scripted is not None and scripted.duplicate:
                duplicate_created(self, response)
            return response
        except HttpError as exc:
            resp = Response.text(exc.message, exc.status)
            if exc.status == 401:
                resp.headers.append(("WWW-Authenticate", 'Basic realm="XNAT"'))
            return resp
        except SchemaError as exc:
            return Response.text(str(exc), 400)
        except (UnsafePathError, DicomImportError, SearchError, XmlRejected) as exc:
            return Response.text(str(exc), 400)
        except (zipfile.BadZipFile, zlib.error) as exc:  # raised while reading a client's zip
            return Response.text(f"the uploaded zip is corrupt ({exc}); check the file and "
                                 "send it again", 400)
        except Exception as exc:  # a server bug: answer 500 with a short message, log it
            log.exception("internal error on %s %s", req.method, redact(req.path))
            return Response.text(redact(f"Internal server error: {type(exc).__name__}: {exc}"), 500)

    def _dispatch(self, req: Request) -> Response:
        """Routes by fixed path first (see :data:`ROUTES`), then the ``/data/...`` hierarchy."""
        path = req.path
        method = req.method
        if path in {"", "/"}:
            return Response.text("XNAT-compatible server (cbctqa local)\n")
        if path == "/data/services/auth" and method in {"PUT", "POST"}:
            return self._login(req)
        if path == "/data/version":
            return Response.text("Not found: /data/version is not served by XNAT 1.7+", 404)
        self._authenticate(req)
        if path == "/data/JSESSION":
            return self._jsession(req)
        if path == "/data/auth":
            return self._auth_status(req)
        if path.startswith("/xapi/"):
            return self._xapi(req, path[len("/xapi/"):])
        if path == "/data/search/elements" or path.startswith("/data/search/elements/"):
            return self._search_elements(req, path[len("/data/search/elements"):].strip("/"))
        if path == "/data/search" and method == "POST":
            return self._search(req)
        if path == "/data/services/import" and method == "POST":
            return self._import(req)
        if path == "/data/users" and method == "GET":
            return self._data_users(req)
        if path.startswith("/data/"):
            segs = [urllib.parse.unquote(s) for s in path[len("/data/"):].split("/")]
            return self._rest(req, segs)
        raise HttpError(404, f"Not found: {path}")

    def _rest(self, req: Request, segs: list[str]) -> Response:
        """The ``/data/...`` hierarchy: walk the path, then route by method and what it names."""
        principal = req.principal
        assert principal is not None
        with self.store.transaction() as tx:
            walk = self._walk(tx, principal, segs)
        full_path = "/".join(segs)
        method = req.method
        node = walk.node
        if walk.coll == "users":
            return self._project_users(req, walk)
        if walk.coll == "files" or (walk.missing and walk.coll == "resources"
                                    and segs[-1] != walk.ref):
            # also /resources/{label}/files/... on a resource to be created
            return self._files(req, walk, segs)
        if method == "GET":
            if walk.missing:
                raise HttpError(404, f"{walk.coll.rstrip('s').capitalize() if walk.coll else 'Object'} "
                                     f"{walk.ref} not found in {node.describe()}")
            if walk.coll is not None:
                return self._listing(req, node, walk.coll)
            if node.kind == "resource":
                return self._get_resource(req, node)
            if node.kind == "project":
                return self._get_project(req, node)
            return self._get_object(req, node)
        if method in {"PUT", "POST"}:
            if walk.coll == "resources" and walk.ref is not None:
                return self._put_resource(req, walk)
            if walk.missing:
                if walk.coll == "projects" and node.kind == "site" and walk.ref is not None:
                    return self._create_project(req, walk.ref)
                return self._create(req, walk)
            if walk.coll is not None:
                raise HttpError(405, f"{method} not allowed on /data/{full_path}")
            if node.kind == "project":
                return self._update_project(req, node)
            return self._update(req, node)
        if method == "DELETE":
            if walk.missing:
                raise HttpError(404, f"{walk.ref} not found in {node.describe()}")
            if walk.coll is not None:
                raise HttpError(405, f"DELETE not allowed on a listing (/data/{full_path})")
            if node.kind == "project":
                return self._delete_project(req, node)
            if node.kind == "resource":
                return self._delete_resource(req, node)
            return self._delete(req, node)
        raise HttpError(405, f"{method} not allowed on /data/{full_path}")
