"""The local XNAT-compatible server: HTTP handling and XNAT 1.8 REST routing.

:class:`XnatApp` turns a :class:`Request` into a :class:`Response` (no sockets, so it is easy to
reason about); :class:`XnatHTTPServer` serves it over HTTP/1.1 with one thread per connection
(stdlib ``ThreadingHTTPServer``), keep-alive, chunked request bodies and fault injection.

Routing follows XNAT: ``/data/...``, ``/data/archive/...`` and ``/REST/...`` are the same
resources; objects are addressed by ID or label; every answer a client parses is JSON, CSV, XML
or short plain text, never HTML (both xnatpy and pyxnat treat ``<html>`` bodies as errors).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import logging
import mimetypes
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from qa_core.errors import CbctQaError
from qa_core.logs import redact

from . import columns as cols
from . import search as srch
from .auth import (
    ROLES,
    Access,
    FailedLogins,
    Principal,
    SecuritySettings,
    SessionTable,
    hash_password,
    parse_basic,
    verify_password,
)
from .dicom_import import DicomImportError, read_dicom_zip
from .faults import FaultConfig, FaultDecision, FaultInjector
from .resources import (
    UnsafePathError,
    ZipLimits,
    build_zip,
    clean_relative_path,
    safe_zip_members,
    store_content,
)
from .schemas import SchemaCatalog, SchemaError
from .store import FileRow, ObjectRow, ProjectRow, ResourceRow, Store, Tx, now_text
from .xmlsafe import XmlRejected, parse_xml

__all__ = ["HttpError", "Request", "Response", "XnatApp", "XnatHTTPServer"]

log = logging.getLogger("xnat_plugin.server")

XNAT_VERSION = "1.8.10"
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"

#: query parameters that steer a request and are never object fields
_RESERVED = {
    "xsitype", "req_format", "format", "inbody", "allowdatadeletion", "event_reason",
    "event_type", "event_action", "event_comment", "overwrite", "removefiles", "activate",
    "quarantine", "triggerpipelines", "fixscantypes", "pulldatafromheaders", "columns",
    "content", "tags", "extract", "update-stats", "_", "limit", "offset", "sortby",
    "sortorder", "accept-not-found", "separatepetmr", "dest", "import-handler",
}
#: child collections inside an XML document, not fields of the object itself
_XML_CHILD_COLLECTIONS = {"scans", "assessors", "resources", "out", "in", "experiments",
                          "sharing", "reconstructions", "files", "file", "fields",
                          "investigators", "aliases", "studyProtocol", "PI"}
_KIND_OF_COLLECTION = {"subjects": "subject", "experiments": "experiment", "scans": "scan",
                       "assessors": "assessor", "projects": "project"}
_LIST_KINDS = {"experiment", "assessor"}
#: most bytes of a login form (``PUT /data/services/auth``), read before anyone is logged in
_LOGIN_BODY_LIMIT = 64 * 1024


class HttpError(CbctQaError):
    """An answer other than success: HTTP status and a short plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One HTTP request as the application sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: IO[bytes]
    body_size: int
    cookies: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None
    new_token: str | None = None
    max_buffered: int = 1 << 30

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def body_bytes(self) -> bytes:
        """The whole body in memory (XML documents, forms, multipart, search bundles).

        Raises
        ------
        HttpError
            413 when the body is larger than ``max_buffered`` bytes; large files go as a raw
            body (``inbody=true`` or octet-stream), which is streamed to disk instead.
        """
        if self.body_size > self.max_buffered:
            raise HttpError(413, f"request body of {self.body_size} bytes is over the "
                                 f"{self.max_buffered} bytes read into memory for {self.path}; "
                                 "send large files as a raw body (inbody=true)")
        self.body.seek(0)
        return self.body.read()

    def param(self, name: str, default: str | None = None) -> str | None:
        """Query parameter, matched case-insensitively."""
        if name in self.query:
            return self.query[name]
        low = name.lower()
        for key, value in self.query.items():
            if key.lower() == low:
                return value
        return default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in {"true", "1", "yes"}


@dataclass
class Response:
    """One answer: status, body (bytes or a file to stream), content type, extra headers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None
    delete_file: bool = False
    drop: bool = False

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode("utf-8"))

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Response:
        return cls(status=status, body=json.dumps(payload).encode("utf-8"),
                   content_type="application/json")


@dataclass
class Node:
    """A resolved REST path element."""

    kind: str  # site, project, subject, experiment, assessor, scan, resource, scans
    project: ProjectRow | None = None
    obj: ObjectRow | None = None
    resource: ResourceRow | None = None
    owner: Node | None = None
    scans: list[ObjectRow] | None = None

    @property
    def owner_key(self) -> str:
        if self.kind == "project" and self.project is not None:
            return f"project:{self.project.id}"
        if self.obj is not None:
            return f"obj:{self.obj.pk}"
        raise HttpError(400, f"a {self.kind} cannot hold resources")

    def describe(self) -> str:
        if self.kind == "project" and self.project:
            return f"project {self.project.id}"
        if self.obj is not None:
            return f"{self.kind} {self.obj.label or self.obj.id} ({self.obj.id})"
        if self.resource is not None:
            return f"resource {self.resource.label}"
        return "the archive"


@dataclass
class Walk:
    """Result of walking a path: deepest node, trailing collection and reference."""

    node: Node
    coll: str | None = None
    ref: str | None = None
    missing: bool = False


@dataclass(frozen=True)
class AppConfig:
    """Settings of one server instance (see :class:`xnat_plugin.server.ServerConfig`)."""

    data_dir: Path
    admin_user: str
    admin_password: str
    database_url: str | None = None
    schema_dirs: tuple[Path, ...] = ()
    faults: FaultConfig = field(default_factory=FaultConfig)
    zip_limits: ZipLimits = field(default_factory=ZipLimits)
    max_body_bytes: int = 8 * 1024**3
    max_buffered_body_bytes: int = 1 << 30
    site_id: str = "XNAT"
    strict: bool = False
    security: SecuritySettings = field(default_factory=SecuritySettings)


class XnatApp:
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

    # -- users ----------------------------------------------------------------------------
    def _ensure_admin(self) -> None:
        with self.store.transaction() as tx:
            existing = tx.user(self.config.admin_user)
            if existing is None or not verify_password(self.config.admin_password,
                                                       existing["password_hash"]):
                tx.put_user(self.config.admin_user, hash_password(self.config.admin_password),
                            "", "Site", "Admin", True, True, True)

    def _check_password(self, login: str, password: str) -> bool:
        """True for the right password of an enabled user that is not locked out.

        Every failure (unknown user, disabled user, wrong password, locked out) costs one
        full password hash and counts towards the lockout of ``login``.
        """
        with self.store.transaction() as tx:
            user = tx.user(login)
        locked = self.failed_logins.locked(login)
        if user is not None and user["enabled"] and not locked:
            key = hashlib.sha256(
                f"{login}\0{password}\0{user['password_hash']}".encode()).hexdigest()
            with self._verified_lock:
                if self._verified.get(login) == key:
                    return True
        stored = user["password_hash"] if user is not None else self._dummy_hash
        matches = verify_password(password, stored)
        if locked:
            return False
        if user is None or not user["enabled"] or not matches:
            self.failed_logins.failed(login)
            return False
        self.failed_logins.succeeded(login)
        with self._verified_lock:
            self._verified[login] = key
        return True

    def _principal(self, login: str) -> Principal:
        with self.store.transaction() as tx:
            user = tx.user(login)
            roles = tx.roles(login)
        if user is None:
            raise HttpError(401, "Login required: user no longer exists")
        if not user["enabled"]:
            # a session opened before the account was disabled ends here
            raise HttpError(401, f"Login required: user {login} is disabled")
        return Principal(login=login, site_admin=bool(user["site_admin"]), roles=roles)

    # -- entry point ----------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        """Answer one request; never raises for client errors (they become 4xx answers)."""
        req.max_buffered = self.config.max_buffered_body_bytes
        decision = self.faults.decide(req.path)
        if decision is FaultDecision.DROP:
            return Response(drop=True)
        if decision is FaultDecision.ERROR:
            return Response.text("Service temporarily unavailable (injected fault)", 503)
        try:
            return self._dispatch(req)
        except HttpError as exc:
            resp = Response.text(exc.message, exc.status)
            if exc.status == 401:
                resp.headers.append(("WWW-Authenticate", 'Basic realm="XNAT"'))
            return resp
        except SchemaError as exc:
            return Response.text(str(exc), 400)
        except (UnsafePathError, DicomImportError, srch.SearchError, XmlRejected) as exc:
            return Response.text(str(exc), 400)
        except (zipfile.BadZipFile, zlib.error) as exc:  # raised while reading a client's zip
            return Response.text(f"the uploaded zip is corrupt ({exc}); check the file and "
                                 "send it again", 400)
        except Exception as exc:  # a server bug: answer 500 with a short message, log it
            log.exception("internal error on %s %s", req.method, redact(req.path))
            return Response.text(redact(f"Internal server error: {type(exc).__name__}: {exc}"), 500)

    def body_limit(self, path: str, headers: dict[str, str], cookies: dict[str, str]) -> int:
        """Most bytes a request to ``path`` may send, checked before its body is read.

        A login form is small (:data:`_LOGIN_BODY_LIMIT`); every other body needs a valid
        session cookie or Basic credentials first.

        Raises
        ------
        HttpError
            401 for a body from a client that is not logged in.
        """
        if path == "/data/services/auth":
            return _LOGIN_BODY_LIMIT
        probe = Request(method="", path=path, query={}, headers=headers, body=io.BytesIO(),
                        body_size=0, cookies=cookies)
        self._authenticate(probe)
        return self.config.max_body_bytes

    def _authenticate(self, req: Request) -> None:
        token = req.cookies.get("JSESSIONID")
        if token:
            login = self.sessions.lookup(token)
            if login is not None:
                req.principal = self._principal(login)
                return
        basic = parse_basic(req.header("authorization"))
        if basic is not None:
            user, password = basic
            if not self._check_password(user, password):
                raise HttpError(401, "Login attempt failed. Please try again.")
            req.principal = self._principal(user)
            return
        raise HttpError(401, "Login required: send a JSESSIONID cookie or Basic credentials")

    def _dispatch(self, req: Request) -> Response:
        path = req.path
        method = req.method
        if path in {"", "/"}:
            return Response.text("XNAT-compatible server (cbctqa local)\n")
        if path == "/data/services/auth" and method in {"PUT", "POST"}:
            return self._login(req)
        if path == "/data/version":
            return Response.text("Not found: /data/version is not served by XNAT 1.7+", 404)
        self._authenticate(req)
        principal = req.principal
        assert principal is not None
        if path == "/data/JSESSION":
            if method == "DELETE":
                token = req.cookies.get("JSESSIONID")
                if token:
                    self.sessions.drop(token)
                return Response.text("")
            token = req.cookies.get("JSESSIONID")
            if not token or self.sessions.lookup(token) is None:
                token = self.sessions.create(principal.login)
            resp = Response.text(token)
            resp.headers.append(("Set-Cookie", f"JSESSIONID={token}; Path=/; HttpOnly"))
            return resp
        if path == "/data/auth":
            return Response.text(f"User '{principal.login}' is logged in")
        if path.startswith("/xapi/"):
            return self._xapi(req, path[len("/xapi/"):])
        if path == "/data/search/elements" or path.startswith("/data/search/elements/"):
            return self._search_elements(req, path[len("/data/search/elements"):].strip("/"))
        if path == "/data/search" and method == "POST":
            return self._search(req)
        if path == "/data/services/import" and method == "POST":
            return self._import(req)
        if path == "/data/users" and method == "GET":
            self._require_user_list(principal)
            with self.store.transaction() as tx:
                rows = [{"login": u["login"], "email": u["email"], "firstname": u["first_name"],
                         "lastname": u["last_name"], "enabled": "1" if u["enabled"] else "0"}
                        for u in tx.users()]
            return self._table(rows, (req.param("format") or "json").lower())
        if path.startswith("/data/"):
            segs = [urllib.parse.unquote(s) for s in path[len("/data/"):].split("/")]
            return self._rest(req, segs)
        raise HttpError(404, f"Not found: {path}")

    def _login(self, req: Request) -> Response:
        form = dict(urllib.parse.parse_qsl(req.body_bytes().decode("utf-8", "replace"),
                                           keep_blank_values=True))
        user = form.get("username") or req.param("username") or ""
        password = form.get("password") or req.param("password") or ""
        if not user or not self._check_password(user, password):
            raise HttpError(401, "Login attempt failed. Please try again.")
        token = self.sessions.create(user)
        resp = Response.text(token)
        resp.headers.append(("Set-Cookie", f"JSESSIONID={token}; Path=/; HttpOnly"))
        return resp

    # -- xapi -----------------------------------------------------------------------------
    def _xapi(self, req: Request, rest: str) -> Response:
        principal = req.principal
        assert principal is not None
        parts = [p for p in rest.split("/") if p]
        if parts[:2] == ["siteConfig", "buildInfo"]:
            return Response.json({"version": XNAT_VERSION, "buildNumber": "cbctqa-local",
                                  "commit": "local", "buildDate": "local",
                                  "isDirty": "false", "siteId": self.config.site_id})
        if parts[:2] == ["siteConfig", "siteId"]:
            return Response.text(self.config.site_id)
        if parts and parts[0] == "schemas":
            if len(parts) == 1:
                return Response.json(self.schemas.names())
            name = parts[-1].removesuffix(".xsd")
            try:
                text = self.schemas.text(name)
            except KeyError as exc:
                raise HttpError(404, f"Schema {name} not found; served: "
                                     f"{', '.join(self.schemas.names())}") from exc
            return Response(body=text.encode("utf-8"), content_type="application/xml")
        if parts[:2] == ["access", "projects"]:
            with self.store.transaction() as tx:
                projects = tx.projects()
            out = []
            for p in projects:
                role = principal.role(p.id) or ("Owners" if principal.site_admin else None)
                if role:
                    out.append({"ID": p.id, "role": role.rstrip("s").lower()
                                if role != "Collaborators" else "collaborator"})
            return Response.json(out)
        if parts and parts[0] == "users":
            return self._xapi_users(req, parts[1:])
        raise HttpError(404, f"Not found: /xapi/{rest}")

    def _require_user_list(self, principal: Principal) -> None:
        """403 for a non-admin listing users under ``restrictUserListAccessToAdmins``."""
        if self.config.security.restrict_user_list_access_to_admins and not principal.site_admin:
            raise HttpError(403, f"User {principal.login} may not list users: this site "
                                 "restricts the user list to site admins "
                                 "(restrictUserListAccessToAdmins)")

    def _xapi_users(self, req: Request, parts: list[str]) -> Response:
        principal = req.principal
        assert principal is not None
        if req.method == "GET" and not parts:
            self._require_user_list(principal)
            with self.store.transaction() as tx:
                return Response.json([u["login"] for u in tx.users()])
        if len(parts) == 3 and parts[1] == "enabled" and req.method in {"PUT", "POST"}:
            return self._set_enabled(principal, parts[0], parts[2])
        if req.method == "GET":
            if parts[0] != principal.login:
                self._require_user_list(principal)
            with self.store.transaction() as tx:
                user = tx.user(parts[0])
            if user is None:
                raise HttpError(404, f"User {parts[0]} not found")
            return Response.json({"username": user["login"], "email": user["email"],
                                  "firstName": user["first_name"], "lastName": user["last_name"],
                                  "enabled": bool(user["enabled"]),
                                  "verified": bool(user["verified"])})
        if req.method in {"POST", "PUT"}:
            if not principal.site_admin:
                raise HttpError(403, f"User {principal.login} may not manage users (site admin only)")
            try:
                payload = json.loads(req.body_bytes() or b"{}")
            except ValueError as exc:
                raise HttpError(400, f"user body is not JSON: {exc}") from exc
            if not isinstance(payload, dict):
                raise HttpError(400, "user body must be a JSON object such as "
                                     '{"username": ..., "password": ..., "email": ...}')
            login = str(payload.get("username") or (parts[0] if parts else ""))
            password = payload.get("password")
            flags = {}
            for flag in ("enabled", "verified"):
                value = payload.get(flag, True)
                if not isinstance(value, bool):
                    raise HttpError(400, f"user {login}: {flag!r} must be JSON true or false; "
                                         f"got {value!r}")
                flags[flag] = value
            if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", login):
                raise HttpError(400, f"invalid username {login!r}: use letters, digits, _.@-")
            with self.store.transaction() as tx:
                existing = tx.user(login)
                if existing is not None and req.method == "POST" and not parts:
                    raise HttpError(409, f"User {login} already exists")
                if password is None and existing is None:
                    raise HttpError(400, f"user {login}: a password is required")
                pw_hash = hash_password(str(password)) if password is not None \
                    else existing["password_hash"]  # type: ignore[index]
                tx.put_user(login, pw_hash, str(payload.get("email", "")),
                            str(payload.get("firstName", "")), str(payload.get("lastName", "")),
                            flags["enabled"], flags["verified"],
                            bool(existing["site_admin"]) if existing else False)
            if password is not None or not flags["enabled"]:
                self.sessions.drop_user(login)
            if flags["enabled"]:
                self.failed_logins.unlock(login)
            return Response.json({"username": login}, 201 if existing is None else 200)
        raise HttpError(405, f"{req.method} not allowed on /xapi/users")

    def _set_enabled(self, principal: Principal, login: str, flag: str) -> Response:
        """``PUT /xapi/users/{user}/enabled/{true|false}`` (XNAT's); true also ends a lockout."""
        if not principal.site_admin:
            raise HttpError(403, f"User {principal.login} may not manage users (site admin only)")
        if flag not in {"true", "false"}:
            raise HttpError(400, f"/xapi/users/{login}/enabled/{flag}: use true or false")
        with self.store.transaction() as tx:
            user = tx.user(login)
            if user is None:
                raise HttpError(404, f"User {login} not found")
            tx.put_user(login, user["password_hash"], user["email"], user["first_name"],
                        user["last_name"], flag == "true", bool(user["verified"]),
                        bool(user["site_admin"]))
        if flag == "true":
            self.failed_logins.unlock(login)
        else:
            self.sessions.drop_user(login)
        return Response.text("")

    # -- search elements ------------------------------------------------------------------
    def _kind_of_type(self, xsi_type: str) -> str | None:
        sc = self.schemas
        if sc.is_a(xsi_type, "xnat:projectData"):
            return "project"
        if sc.is_a(xsi_type, "xnat:subjectData"):
            return "subject"
        if sc.is_a(xsi_type, "xnat:imageAssessorData"):
            return "assessor"
        if sc.is_a(xsi_type, "xnat:experimentData"):
            return "experiment"
        if sc.is_a(xsi_type, "xnat:imageScanData"):
            return "scan"
        return None

    def _search_elements(self, req: Request, element: str) -> Response:
        principal = req.principal
        assert principal is not None
        fmt = (req.param("format") or "json").lower()
        if not element:
            with self.store.transaction() as tx:
                counts: dict[str, int] = {}
                for obj in tx.objects():
                    if Access.of(principal, obj.project).read:
                        counts[obj.xsi_type] = counts.get(obj.xsi_type, 0) + 1
                n_projects = sum(1 for p in tx.projects() if Access.of(principal, p.id).read)
            rows = []
            for xsi_type in self.schemas.element_types():
                kind = self._kind_of_type(xsi_type)
                if kind is None:
                    continue
                ename = (self.schemas.element_name(xsi_type) or xsi_type).split(":")[-1]
                count = n_projects if kind == "project" else counts.get(xsi_type, 0)
                rows.append({"ELEMENT_NAME": xsi_type, "SINGULAR": ename,
                             "PLURAL": ename + "s", "SECURED": "true", "COUNT": str(count)})
            return self._table(rows, fmt)
        canon = self.schemas.canonical(element)
        kind = self._kind_of_type(canon) if canon else None
        if canon is None or kind is None:
            raise HttpError(404, f"Search element {element} not found")
        rows = [{"FIELD_ID": fid, "HEADER": header, "SUMMARY": header, "TYPE": typ,
                 "REQUIRES_VALUE": "false", "DESC": header, "ELEMENT_NAME": canon,
                 "SRC": "0" if fid.upper() == fid and "_" in fid and fid not in {"ID"} else "1"}
                for fid, header, typ in srch.display_fields(canon, kind, self.schemas)]
        return self._table(rows, fmt)

    def _table(self, rows: list[dict[str, str]], fmt: str, columns: list[str] | None = None,
               total: int | None = None) -> Response:
        if fmt == "csv":
            return Response(body=srch.render_csv(rows, columns), content_type="text/csv")
        if fmt == "xml":
            root = ET.Element("ResultSet", {"totalRecords": str(len(rows) if total is None else total)})
            results = ET.SubElement(root, "results")
            for row in rows:
                item = ET.SubElement(results, "row")
                for key, value in row.items():
                    cell = ET.SubElement(item, "cell", {"name": key})
                    cell.text = value
            return Response(body=ET.tostring(root, encoding="utf-8", xml_declaration=True),
                            content_type="application/xml")
        return Response(body=srch.render_json(rows, total), content_type="application/json")

    # -- REST hierarchy -------------------------------------------------------------------
    def _read_project(self, principal: Principal, project: ProjectRow) -> None:
        if not Access.of(principal, project.id).read:
            raise HttpError(403, f"User {principal.login} has no access to project {project.id}")

    def _require(self, principal: Principal, project: str, what: str, action: str) -> None:
        access = Access.of(principal, project)
        allowed = {"read": access.read, "write": access.write, "delete": access.delete,
                   "manage": access.manage}[action]
        if not allowed:
            raise HttpError(403, f"User {principal.login} may not {action} {what} "
                                 f"in project {project}")

    def _pick(self, rows: list[ObjectRow], ref: str) -> ObjectRow | None:
        if not rows:
            return None
        for row in rows:
            if row.id == ref:
                return row
        return rows[0]

    def _obj_node(self, tx: Tx, obj: ObjectRow, principal: Principal) -> Node:
        project = tx.project(obj.project)
        if project is None:
            raise HttpError(404, f"project {obj.project} of {obj.id} not found")
        self._read_project(principal, project)
        return Node(kind=obj.kind, project=project, obj=obj)

    def _child(self, tx: Tx, principal: Principal, node: Node, coll: str, ref: str) -> Node | None:
        kind = node.kind
        if kind == "site":
            if coll == "projects":
                project = tx.project(ref)
                if project is None:
                    return None
                self._read_project(principal, project)
                return Node(kind="project", project=project)
            if coll in {"subjects", "experiments"}:
                kinds = ["subject"] if coll == "subjects" else ["experiment", "assessor"]
                rows = tx.objects(kinds=kinds, ref=ref)
                # a label used in several projects: pick among those this user may read
                readable = [o for o in rows if Access.of(principal, o.project).read]
                obj = self._pick(readable or rows, ref)
                return self._obj_node(tx, obj, principal) if obj else None
            raise HttpError(404, f"Not found: /data/{coll}")
        if coll == "resources":
            if kind == "scans":
                raise HttpError(400, "resources of several scans: address one scan")
            resources = tx.resources(node.owner_key)
            for res in resources:
                if str(res.pk) == ref:
                    return Node(kind="resource", project=node.project, resource=res, owner=node)
            for res in resources:
                if res.label == ref:
                    return Node(kind="resource", project=node.project, resource=res, owner=node)
            return None
        assert node.project is not None
        if kind == "project" and coll in {"subjects", "experiments"}:
            kinds = ["subject"] if coll == "subjects" else ["experiment", "assessor"]
            obj = self._pick(tx.objects(kinds=kinds, project=node.project.id, ref=ref), ref)
            return Node(kind=obj.kind, project=node.project, obj=obj) if obj else None
        if kind == "subject" and coll == "experiments" and node.obj is not None:
            obj = self._pick(tx.objects(kind="experiment", parent_pk=node.obj.pk, ref=ref), ref)
            return Node(kind=obj.kind, project=node.project, obj=obj) if obj else None
        if kind == "experiment" and node.obj is not None:
            if coll == "scans":
                scans = tx.objects(kind="scan", parent_pk=node.obj.pk)
                if ref == "ALL" or "," in ref:
                    wanted = None if ref == "ALL" else set(ref.split(","))
                    chosen = [s for s in scans if wanted is None or s.id in wanted
                              or s.fields.get("type") in wanted]
                    return Node(kind="scans", project=node.project, obj=node.obj, scans=chosen)
                for scan in scans:
                    if scan.id == ref:
                        return Node(kind="scan", project=node.project, obj=scan)
                return None
            if coll == "assessors":
                obj = self._pick(tx.objects(kind="assessor", parent_pk=node.obj.pk, ref=ref), ref)
                return Node(kind="assessor", project=node.project, obj=obj) if obj else None
            if coll == "reconstructions":
                return None
        raise HttpError(404, f"Not found: {coll} of {node.describe()}")

    def _walk(self, tx: Tx, principal: Principal, segs: list[str]) -> Walk:
        node = Node(kind="site")
        i = 0
        segs = [s for s in segs if s != ""]
        while i < len(segs):
            coll = segs[i]
            if node.kind in {"resource", "scans"} and coll == "files":
                rest = "/".join(segs[i + 1:])
                return Walk(node=node, coll="files", ref=rest or None)
            if coll == "files" and node.kind in {"project", "subject", "experiment", "scan",
                                                 "assessor"}:
                rest = "/".join(segs[i + 1:])
                return Walk(node=node, coll="files", ref=rest or None)
            if node.kind == "assessor" and coll in {"out", "in"}:
                i += 1
                continue
            if node.kind == "project" and coll == "users":
                return Walk(node=node, coll="users", ref="/".join(segs[i + 1:]) or None)
            if i + 1 >= len(segs):
                return Walk(node=node, coll=coll)
            ref = segs[i + 1]
            child = self._child(tx, principal, node, coll, ref)
            if child is None:
                if i + 2 == len(segs) or (coll == "resources" and segs[i + 2] == "files"):
                    if coll == "resources" and i + 2 < len(segs):
                        # upload into a resource that does not exist yet
                        return Walk(node=node, coll="resources", ref=ref, missing=True)
                    return Walk(node=node, coll=coll, ref=ref, missing=True)
                raise HttpError(404, f"{coll.rstrip('s').capitalize()} {ref} not found in "
                                     f"{node.describe()}")
            node = child
            i += 2
        return Walk(node=node)

    def _rest(self, req: Request, segs: list[str]) -> Response:
        principal = req.principal
        assert principal is not None
        with self.store.transaction() as tx:
            walk = self._walk(tx, principal, segs)
        full_path = "/".join(segs)
        method = req.method
        if walk.coll == "users":
            return self._project_users(req, walk)
        if walk.coll == "files" or (walk.missing and walk.coll == "resources"
                                    and segs[-1] != walk.ref):
            if walk.missing:
                # /resources/{label}/files/... on a resource to be created
                return self._files(req, walk, segs)
            return self._files(req, walk, segs)
        if method == "GET":
            if walk.missing:
                raise HttpError(404, f"{walk.coll.rstrip('s').capitalize() if walk.coll else 'Object'} "
                                     f"{walk.ref} not found in {walk.node.describe()}")
            if walk.coll is not None:
                return self._listing(req, walk.node, walk.coll)
            return self._get_object(req, walk.node)
        if method in {"PUT", "POST"}:
            if walk.coll == "resources" and walk.ref is not None:
                return self._put_resource(req, walk)
            if walk.missing:
                return self._create(req, walk)
            if walk.coll is not None:
                raise HttpError(405, f"{method} not allowed on /data/{full_path}")
            return self._update(req, walk.node)
        if method == "DELETE":
            if walk.missing:
                raise HttpError(404, f"{walk.ref} not found in {walk.node.describe()}")
            if walk.coll is not None:
                raise HttpError(405, f"DELETE not allowed on a listing (/data/{full_path})")
            return self._delete(req, walk.node)
        raise HttpError(405, f"{method} not allowed on /data/{full_path}")

    # -- listings -------------------------------------------------------------------------
    def _index(self, tx: Tx, preload: Sequence[ObjectRow] | None = None) -> srch.ObjectIndex:
        """An object index over ``tx``: everything when ``preload`` is None, else the given
        objects with the rest loaded on demand."""
        if preload is None:
            return srch.ObjectIndex(objects={o.pk: o for o in tx.objects()},
                                    projects={p.id: p for p in tx.projects()})
        return srch.ObjectIndex(objects={o.pk: o for o in preload}, projects={},
                                load_object=tx.object, load_project=tx.project)

    def _listing(self, req: Request, node: Node, coll: str) -> Response:
        principal = req.principal
        assert principal is not None
        fmt = (req.param("format") or "json").lower()
        if fmt == "html":
            fmt = "json"
        with self.store.transaction() as tx:
            if coll == "projects" and node.kind == "site":
                rows = []
                for p in tx.projects():
                    if not Access.of(principal, p.id).read:
                        continue
                    rows.append({"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
                                 "description": p.description,
                                 "pi_firstname": p.fields.get("PI/firstname", ""),
                                 "pi_lastname": p.fields.get("PI/lastname", ""),
                                 "URI": f"/data/projects/{p.id}", "xsiType": "xnat:projectData",
                                 "insert_date": p.insert_date})
                return self._columns_table(req, rows, [None] * len(rows), None, fmt,
                                           listing=cols.listing_kind("projects", "site", None,
                                                                     False, False))
            if coll == "resources":
                return self._resource_listing(req, tx, node, fmt)
            kind = _KIND_OF_COLLECTION.get(coll)
            if kind is None or kind == "project":
                if coll == "reconstructions":
                    return self._table([], fmt)
                raise HttpError(404, f"Not found: {coll} of {node.describe()}")
            objs = self._collect(tx, principal, node, coll, req)
            if node.kind == "site":
                index = self._index(tx)
            elif node.kind == "project" and node.project is not None:
                index = self._index(tx, tx.objects(project=node.project.id))
            else:
                index = self._index(tx, objs)
            rows = [self._row(o, index) for o in objs]
            listing = self._listing_kind(req, node, coll)

            def scans_of(obj: ObjectRow) -> list[ObjectRow]:
                return tx.objects(kind="scan", parent_pk=obj.pk) if obj.kind == "experiment" \
                    else []
            return self._columns_table(req, rows, objs, index, fmt, listing=listing,
                                       scans_of=scans_of)

    def _listing_kind(self, req: Request, node: Node, coll: str) -> cols.ListingKind | None:
        """Which XNAT listing answers ``coll`` of ``node`` (its shortcuts, root, defaults)."""
        xsi_param = req.param("xsiType")
        canon = self.schemas.canonical(xsi_param.split(",")[0]) if xsi_param else None
        scope = {"site": "site", "project": "project", "subject": "subject"}.get(
            node.kind, "experiment")
        return cols.listing_kind(
            coll, scope, canon,
            is_assessor_type=bool(canon and self.schemas.is_a(canon, "xnat:imageAssessorData")),
            is_session_type=bool(canon and self.schemas.is_a(canon, "xnat:imageSessionData")))

    def _collect(self, tx: Tx, principal: Principal, node: Node, coll: str,
                 req: Request) -> list[ObjectRow]:
        xsi_param = req.param("xsiType")
        wanted_types: list[str] = []
        if xsi_param:
            for part in xsi_param.split(","):
                canon = self.schemas.canonical(part)
                wanted_types.append(canon or part.strip())
        if node.kind == "site":
            if coll == "subjects":
                objs = tx.objects(kind="subject")
            else:
                objs = tx.objects(kinds=["experiment", "assessor"])
            objs = [o for o in objs if Access.of(principal, o.project).read]
        elif node.kind == "project" and node.project is not None:
            if coll == "subjects":
                objs = tx.objects(kind="subject", project=node.project.id)
            else:
                objs = tx.objects(kinds=["experiment", "assessor"], project=node.project.id)
        elif node.obj is not None:
            kind = _KIND_OF_COLLECTION[coll]
            objs = tx.objects(kind=kind, parent_pk=node.obj.pk)
        else:
            objs = []
        if coll == "experiments":
            if wanted_types:
                objs = [o for o in objs if any(self.schemas.is_a(o.xsi_type, t)
                                               or o.xsi_type.lower() == t.lower()
                                               for t in wanted_types)]
            else:
                objs = [o for o in objs if o.kind == "experiment"]
        elif wanted_types:
            objs = [o for o in objs if any(self.schemas.is_a(o.xsi_type, t)
                                           or o.xsi_type.lower() == t.lower()
                                           for t in wanted_types)]
        return objs

    def _row(self, obj: ObjectRow, index: srch.ObjectIndex) -> dict[str, str]:
        uri = srch.uri_of(obj, index)
        if obj.kind == "subject":
            return {"ID": obj.id, "project": obj.project, "label": obj.label,
                    "insert_date": obj.insert_date, "insert_user": obj.insert_user,
                    "URI": uri, "xsiType": obj.xsi_type}
        if obj.kind == "scan":
            return {"xnat_imagescandata_id": str(obj.pk), "ID": obj.id,
                    "type": obj.fields.get("type", ""),
                    "series_description": obj.fields.get("series_description", ""),
                    "quality": obj.fields.get("quality", ""), "note": obj.fields.get("note", ""),
                    "frames": obj.fields.get("frames", ""), "xsiType": obj.xsi_type,
                    "URI": uri}
        row = {"ID": obj.id, "project": obj.project, "date": obj.fields.get("date", ""),
               "xsiType": obj.xsi_type, "label": obj.label, "insert_date": obj.insert_date,
               "URI": uri}
        if obj.kind == "experiment":
            subject = index.subject(obj)
            row["subject_ID"] = subject.id if subject else ""
            row["subject_label"] = subject.label if subject else ""
        else:
            session = index.session(obj)
            row["session_ID"] = session.id if session else ""
            row["session_label"] = session.label if session else ""
        return row

    def _columns_table(self, req: Request, rows: list[dict[str, str]],
                       objs: Sequence[ObjectRow | None],
                       index: srch.ObjectIndex | None, fmt: str,
                       allow_columns: bool = True, listing: cols.ListingKind | None = None,
                       scans_of: Callable[[ObjectRow], list[ObjectRow]] | None = None) -> Response:
        """Filter, page and key a listing as XNAT does (see :mod:`.columns`).

        Requested columns come back under XNAT's keys; a column of a scan type on an
        experiment listing joins the session's scans (one row per scan, as XNAT's query
        does). In strict mode default rows hold only XNAT's default keys.
        """
        columns_param = req.param("columns") if allow_columns else None
        requested = [c for c in columns_param.split(",") if c] \
            if columns_param and columns_param.upper() != "DEFAULT" else None
        scan_types = self._scan_join_types(requested) if listing is not None and scans_of else []
        triples: list[tuple[dict[str, str], ObjectRow | None, ObjectRow | None]] = []
        for r, o in zip(rows, objs, strict=True):
            if scan_types and scans_of is not None and o is not None and o.kind == "experiment":
                joined = [s for s in scans_of(o)
                          if any(self.schemas.is_a(s.xsi_type, t) for t in scan_types)]
                if joined:
                    triples += [(r, o, s) for s in joined]
                    continue
            triples.append((r, o, None))

        def value(column: str, r: dict[str, str], o: ObjectRow | None,
                  joined: ObjectRow | None) -> str:
            if joined is not None and index is not None:
                element, _, name = column.partition("/")
                canon = self.schemas.canonical(element) if name else None
                if canon is not None and canon in scan_types:
                    return srch.field_value(joined, canon, name, index, self.schemas) or ""
            return srch.resolve_column(column, r, o, index, self.schemas)

        # filters
        for key, wanted in req.query.items():
            low = key.lower()
            if low in _RESERVED or low == "xsitype":
                continue
            if low in {"date", "insert_date", "last_modified"} or low.endswith("/date") \
                    or low.endswith("/insert_date") or low.endswith("/last_modified"):
                triples = [t for t in triples if _in_date_range(value(key, *t), wanted)]
                continue
            if triples and not any(k.lower() == low for k in triples[0][0]) and "/" not in key:
                continue  # unknown parameter, not a column: ignore as XNAT does
            triples = [t for t in triples if srch.fnmatch_ci(value(key, *t), wanted)]
        total = len(triples)
        offset = _int_param(req, "offset", 0)
        limit = _int_param(req, "limit", -1)
        triples = triples[offset:] if limit < 0 else triples[offset:offset + limit]
        if requested is None and listing is None:
            return self._table([r for r, _, _ in triples], fmt, None, total)
        keyed: dict[str, str] = {}  # answered key -> column it is resolved from
        if requested is not None:
            for column in requested:
                key = cols.column_key(column, listing.shortcuts) if listing else column
                if self.config.strict and listing is not None and key == column \
                        and key not in listing.shortcuts and key != "URI" and "/" not in key:
                    raise HttpError(400, f"column {column!r} is neither one of this listing's "
                                         f"names ({', '.join(listing.shortcuts)}) nor an xpath "
                                         "such as xnat:experimentData/label")
                keyed.setdefault(key, column)
        else:
            assert listing is not None
            keyed = {k: k for k in listing.defaults}
            if not self.config.strict and triples:
                keyed.update({k: k for k in triples[0][0] if k not in keyed and k != "URI"})
        if listing is not None:
            root_id = listing.root_id_key()
            if root_id is not None:
                keyed.setdefault(root_id, f"{listing.root}/ID")
        if "xsiType" not in keyed and (not triples or "xsiType" in triples[0][0]):
            keyed["xsiType"] = "xsiType"
        keyed.pop("URI", None)
        keyed["URI"] = "URI"
        out = [{k: value(c, *t) for k, c in keyed.items()} for t in triples]
        return self._table(out, fmt, list(keyed), total)

    def _scan_join_types(self, requested: list[str] | None) -> list[str]:
        """Scan datatypes named by requested columns (``xnat:ctScanData/ID``)."""
        found: list[str] = []
        for column in requested or []:
            element, _, name = column.partition("/")
            if not name or ":" not in element:
                continue
            canon = self.schemas.canonical(element)
            if canon is not None and self.schemas.is_a(canon, "xnat:imageScanData") \
                    and canon not in found:
                found.append(canon)
        return found

    def _resource_rows(self, tx: Tx, resources: list[ResourceRow], cat_desc: str = "") -> list[dict[str, str]]:
        stats = tx.file_stats([r.pk for r in resources])
        rows = []
        for res in resources:
            n, size = stats.get(res.pk, (0, 0))
            rows.append({"xnat_abstractresource_id": str(res.pk), "label": res.label,
                         "element_name": "xnat:resourceCatalog", "category": "resources",
                         "cat_id": "", "cat_desc": cat_desc, "file_count": str(n),
                         "file_size": str(size), "tags": res.tags, "content": res.content,
                         "format": res.format})
        return rows

    def _resource_listing(self, req: Request, tx: Tx, node: Node, fmt: str) -> Response:
        rows = self._resource_rows(tx, tx.resources(node.owner_key))
        # XNAT ignores ``columns`` on resource listings (xnatpy relies on that)
        return self._columns_table(req, rows, [None] * len(rows), None, fmt, allow_columns=False)

    # -- single objects -------------------------------------------------------------------
    def _get_object(self, req: Request, node: Node) -> Response:
        fmt = (req.param("format") or "json").lower()
        with self.store.transaction() as tx:
            if node.kind == "resource" and node.resource is not None:
                row = self._resource_rows(tx, [node.resource])[0]
                item = {"meta": {"isHistory": False, "xsi:type": "xnat:resourceCatalog"},
                        "data_fields": row, "children": []}
                return Response.json({"items": [item]})
            if node.kind == "scans":
                raise HttpError(400, "address one scan, or list scans/ALL/files")
            if node.kind == "project" and node.project is not None:
                item = self._project_item(node.project, tx)
                xsi_type = "xnat:projectData"
            elif node.obj is not None:
                index = self._index(tx, [node.obj])
                item = self._item(tx, node.obj, index, children=True)
                xsi_type = node.obj.xsi_type
            else:
                raise HttpError(404, "Not found")
        if fmt == "xml":
            return Response(body=self._to_xml(xsi_type, item), content_type="application/xml")
        return Response.json({"items": [item]})

    def _project_item(self, project: ProjectRow, tx: Tx) -> dict[str, Any]:
        data = {"ID": project.id, "name": project.name, "secondary_ID": project.secondary_id,
                "description": project.description}
        data.update(project.fields)
        resources = [self._resource_item(r) for r in self._resource_rows(
            tx, tx.resources(f"project:{project.id}"))]
        children = [{"field": "resources/resource", "items": resources}] if resources else []
        return {"meta": {"isHistory": False, "xsi:type": "xnat:projectData",
                         "start_date": project.insert_date},
                "data_fields": data, "children": children}

    def _resource_item(self, row: dict[str, str]) -> dict[str, Any]:
        data = {"xnat_abstractresource_id": row["xnat_abstractresource_id"],
                "label": row["label"], "format": row["format"], "content": row["content"],
                "tags": row["tags"], "file_count": row["file_count"],
                "file_size": row["file_size"]}
        return {"meta": {"isHistory": False, "xsi:type": "xnat:resourceCatalog"},
                "data_fields": data, "children": []}

    def _data_fields(self, obj: ObjectRow, index: srch.ObjectIndex) -> dict[str, str]:
        data: dict[str, str] = {"ID": obj.id, "project": obj.project}
        if obj.kind != "scan":
            data["label"] = obj.label
        data.update(obj.fields)
        if obj.kind == "experiment":
            subject = index.subject(obj)
            if subject is not None:
                data["subject_ID"] = subject.id
        elif obj.kind == "assessor":
            session = index.session(obj)
            if session is not None:
                data["imageSession_ID"] = session.id
        elif obj.kind == "scan":
            session = index.session(obj)
            if session is not None:
                data["image_session_ID"] = session.id
            data["xnat_imagescandata_id"] = str(obj.pk)
        return data

    def _item(self, tx: Tx, obj: ObjectRow, index: srch.ObjectIndex,
              children: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "meta": {"isHistory": False, "xsi:type": obj.xsi_type, "start_date": obj.insert_date,
                     "last_modified": obj.last_modified},
            "data_fields": self._data_fields(obj, index),
            "children": [],
        }
        if not children:
            return item
        res_items = [self._resource_item(r) for r in self._resource_rows(
            tx, tx.resources(f"obj:{obj.pk}"))]
        if obj.kind == "experiment":
            kids = tx.objects(parent_pk=obj.pk)
            index.objects.update({o.pk: o for o in kids})
            scans = [self._item(tx, o, index, children=False) for o in kids if o.kind == "scan"]
            assessors = [self._item(tx, o, index, children=False) for o in kids
                         if o.kind == "assessor"]
            if scans:
                item["children"].append({"field": "scans/scan", "items": scans})
            if assessors:
                item["children"].append({"field": "assessors/assessor", "items": assessors})
            if res_items:
                item["children"].append({"field": "resources/resource", "items": res_items})
        elif obj.kind == "scan":
            if res_items:
                item["children"].append({"field": "file", "items": res_items})
        elif obj.kind == "assessor":
            if res_items:
                item["children"].append({"field": "out/file", "items": res_items})
        elif res_items:
            item["children"].append({"field": "resources/resource", "items": res_items})
        return item

    def _to_xml(self, xsi_type: str, item: dict[str, Any]) -> bytes:
        prefix = xsi_type.split(":")[0]
        ns = self.schemas.namespace_of(prefix) or f"urn:{prefix}"
        ename = (self.schemas.element_name(xsi_type) or xsi_type).split(":")[-1]
        ET.register_namespace(prefix, ns)
        data = item["data_fields"]
        attrs = {k: str(data[k]) for k in ("ID", "project", "label") if k in data}
        attrs[f"{_XSI}type"] = xsi_type
        root = ET.Element(f"{{{ns}}}{ename}", attrs)
        for key, value in data.items():
            if key in attrs or "/" in key:
                continue
            child = ET.SubElement(root, f"{{{ns}}}{key}")
            child.text = str(value)
        return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))

    # -- writes ---------------------------------------------------------------------------
    def _body_document(self, req: Request) -> bytes | None:
        """The XML document of a write, if the request carries one."""
        ctype = req.header("content-type").lower()
        if req.body_size == 0:
            return None
        if ctype.startswith("multipart/"):
            for name, _filename, part_type, payload in _multipart(req):
                if (name or "").lower().endswith(".xml") or "xml" in (part_type or "").lower() \
                        or (_filename or "").lower().endswith(".xml"):
                    return payload
            return None
        if "xml" in ctype or req.flag("inbody") or (req.param("req_format") or "").lower() == "xml":
            return req.body_bytes()
        return None

    def _xml_fields(self, doc: bytes) -> tuple[str | None, dict[str, str]]:
        root = parse_xml(doc, "XML body")
        xsi_type = root.get(f"{_XSI}type")
        if xsi_type is None and root.tag.startswith("{"):
            ns, _, local = root.tag[1:].partition("}")
            prefix = self.schemas.namespaces.get(ns)
            if prefix is not None:
                xsi_type = self.schemas.root_elements.get(f"{prefix}:{local}")
        values: dict[str, str] = {}
        for key, value in root.attrib.items():
            if not key.startswith("{"):
                values[key] = value

        def walk(node: ET.Element, prefix: str) -> None:
            for child in node:
                local = child.tag.rsplit("}", 1)[-1]
                if not prefix and local in _XML_CHILD_COLLECTIONS:
                    continue
                path = prefix + local
                for key, value in child.attrib.items():
                    if not key.startswith("{"):
                        values[f"{path}/{key}"] = value
                if len(child):
                    walk(child, path + "/")
                elif child.text is not None and child.text.strip() != "":
                    values[path] = child.text.strip()

        walk(root, "")
        return xsi_type, values

    def _collect_writes(self, req: Request, xsi_type: str | None) -> tuple[str | None, dict[str, str]]:
        """The type and field values of a write: XML body first, query parameters override."""
        values: dict[str, str] = {}
        doc = self._body_document(req)
        if doc is not None:
            body_type, body_values = self._xml_fields(doc)
            xsi_type = xsi_type or body_type
            values.update(body_values)
        q_type = req.param("xsiType")
        if q_type:
            xsi_type = q_type
        for key, value in req.query.items():
            if key.lower() in _RESERVED:
                continue
            values[key] = value
        canon = self.schemas.canonical(xsi_type) if xsi_type else None
        if xsi_type and canon is None:
            raise HttpError(400, f"Unknown xsiType {xsi_type}: not declared by any served schema "
                                 f"({', '.join(self.schemas.names())})")
        return canon, values

    def _normalise_values(self, xsi_type: str, values: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Split values into (special: label/project/ID, fields: path -> text or NULL)."""
        special: dict[str, str] = {}
        fields: dict[str, str] = {}
        for key, value in values.items():
            path = key
            if "/" in key and ":" in key.split("/", 1)[0]:
                prefix, _, path = key.partition("/")
                canon_prefix = self.schemas.canonical(prefix)
                if canon_prefix is None or not (self.schemas.is_a(xsi_type, canon_prefix)):
                    raise HttpError(400, f"Field {key} does not belong to {xsi_type}: its type "
                                         f"{prefix} is not {xsi_type} or one of its base types")
            low = path.lower()
            if low in {"label", "project", "id"}:
                special[{"label": "label", "project": "project", "id": "ID"}[low]] = value
                continue
            if low.startswith("meta/") or low in {"insert_date", "last_modified", "subject_id",
                                                 "imagesession_id", "image_session_id",
                                                 "xnat_imagescandata_id"}:
                continue
            spec = self.schemas.field(xsi_type, path)
            if spec is None:
                if key == path and "/" not in key:
                    continue  # an unknown bare query parameter: ignored, as XNAT does
                raise HttpError(400, f"Field {path} is not a field of {xsi_type}; see "
                                     f"/data/search/elements/{xsi_type} for its fields")
            if value == "NULL":
                fields[spec.path] = "NULL"
            else:
                fields[spec.path] = spec.normalise(value, xsi_type)
        return special, fields

    def _create(self, req: Request, walk: Walk) -> Response:
        principal = req.principal
        assert principal is not None and walk.ref is not None and walk.coll is not None
        node = walk.node
        if walk.coll == "projects" and node.kind == "site":
            return self._create_project(req, walk.ref)
        kind = _KIND_OF_COLLECTION.get(walk.coll)
        if kind is None or kind == "project":
            raise HttpError(404, f"Cannot create {walk.coll} in {node.describe()}")
        defaults = {"subject": "xnat:subjectData"}
        xsi_type, values = self._collect_writes(req, defaults.get(kind))
        if xsi_type is None:
            raise HttpError(400, f"Creating {walk.coll.rstrip('s')} {walk.ref} needs xsiType "
                                 "(e.g. xsiType=xnat:ctSessionData)")
        type_kind = self._kind_of_type(xsi_type)
        if walk.coll == "experiments" and type_kind == "assessor":
            raise HttpError(400, f"{xsi_type} is an assessor: create it under a session's "
                                 "/assessors/{label}")
        if type_kind != kind:
            raise HttpError(400, f"xsiType {xsi_type} cannot be created as a {kind}")
        if node.kind == "site":
            raise HttpError(400, f"Create {kind}s inside a project: "
                                 f"/data/projects/{{project}}/{walk.coll}/{walk.ref}")
        assert node.project is not None
        project_id = node.project.id
        self._require(principal, project_id, f"{kind} {walk.ref}", "write")
        special, fields = self._normalise_values(xsi_type, values)
        if special.get("project", project_id) != project_id:
            raise HttpError(400, f"project {special['project']} differs from the path's project "
                                 f"{project_id}; objects cannot be moved")
        label = special.get("label") or walk.ref
        _check_label(label, kind)
        fields = {k: v for k, v in fields.items() if v != "NULL"}
        now = now_text()
        try:
            with self.store.transaction() as tx:
                if kind == "subject":
                    parent_pk = None
                    for other in tx.objects(kind="subject", project=project_id, ref=label):
                        if other.label == label:
                            raise _Exists(other)
                    new_id = f"{self.config.site_id}_S{tx.next_id('subject'):05d}"
                elif kind in {"experiment", "assessor"}:
                    parent_kind = "subject" if kind == "experiment" else "experiment"
                    if node.kind == parent_kind and node.obj is not None:
                        parent_pk = node.obj.pk
                    elif kind == "experiment":
                        raise HttpError(400, f"Create experiment {label} under a subject: "
                                             f"/data/projects/{project_id}/subjects/{{subject}}"
                                             f"/experiments/{label}")
                    else:
                        raise HttpError(400, "assessors are created under an image session")
                    self._check_unique_experiment(tx, project_id, label, kind, parent_pk)
                    new_id = f"{self.config.site_id}_E{tx.next_id('experiment'):05d}"
                else:  # scan
                    if node.obj is None or node.kind != "experiment":
                        raise HttpError(400, "scans are created under an image session")
                    parent_pk = node.obj.pk
                    new_id = walk.ref
                    _check_label(new_id, "scan")
                    label = new_id
                    for other in tx.objects(kind="scan", parent_pk=parent_pk):
                        if other.id == new_id:
                            raise _Exists(other)
                row = ObjectRow(pk=0, id=new_id, kind=kind, xsi_type=xsi_type, project=project_id,
                                label=label, parent_pk=parent_pk, fields=fields, insert_date=now,
                                last_modified=now, insert_user=principal.login)
                tx.insert_object(row)
                if parent_pk is not None:
                    tx.touch(parent_pk)
        except _Exists as exists:
            # created meanwhile by a concurrent PUT: XNAT answers a PUT on an existing label
            # as an update
            return self._update(req, Node(kind=exists.obj.kind, project=node.project,
                                          obj=exists.obj))
        return Response.text(new_id, 201)

    def _check_unique_experiment(self, tx: Tx, project_id: str, label: str, kind: str,
                                 parent_pk: int | None) -> None:
        for other in tx.objects(kinds=["experiment", "assessor"], project=project_id, ref=label):
            if other.label == label:
                if other.kind == kind and other.parent_pk == parent_pk:
                    raise _Exists(other)
                raise HttpError(409, f"Experiment {label} already exists in project {project_id} "
                                     f"({other.id}, {other.xsi_type}); labels are unique per project")

    def _create_project(self, req: Request, ref: str) -> Response:
        principal = req.principal
        assert principal is not None
        _check_label(ref, "project")
        values = {k: v for k, v in req.query.items() if k.lower() not in _RESERVED}
        doc = self._body_document(req)
        if doc is not None:
            _, body_values = self._xml_fields(doc)
            values = {**body_values, **values}
        fields = {_strip_type(k): v for k, v in values.items()}
        now = now_text()
        with self.store.transaction() as tx:
            if tx.project(ref) is not None:
                raise HttpError(409, f"Project {ref} already exists")
            project = ProjectRow(
                id=ref, name=fields.pop("name", ref), secondary_id=fields.pop("secondary_ID", ref),
                description=fields.pop("description", ""),
                fields={k: v for k, v in fields.items() if k not in {"ID", "label"}},
                insert_date=now, last_modified=now, insert_user=principal.login)
            tx.insert_project(project)
            tx.set_role(ref, principal.login, "Owners")
        return Response.text(ref, 201)

    def _update(self, req: Request, node: Node) -> Response:
        principal = req.principal
        assert principal is not None
        if node.kind == "project" and node.project is not None:
            self._require(principal, node.project.id, f"project {node.project.id}", "manage")
            values = {_strip_type(k): v for k, v in req.query.items()
                      if k.lower() not in _RESERVED}
            with self.store.transaction() as tx:
                project = tx.project(node.project.id)
                assert project is not None
                for key, value in values.items():
                    if key == "ID" and value != project.id:
                        raise HttpError(400, f"project {project.id}: the ID cannot be changed")
                    if key == "name":
                        project.name = value
                    elif key == "secondary_ID":
                        project.secondary_id = value
                    elif key == "description":
                        project.description = value
                    elif key != "ID":
                        if value == "NULL":
                            project.fields.pop(key, None)
                        else:
                            project.fields[key] = value
                tx.update_project(project)
            return Response.text(node.project.id, 200)
        if node.obj is None:
            raise HttpError(405, f"{req.method} not allowed on {node.describe()}")
        obj = node.obj
        what = f"{obj.kind} {obj.label}"
        self._require(principal, obj.project, what, "write")
        xsi_type, values = self._collect_writes(req, obj.xsi_type)
        assert xsi_type is not None
        if xsi_type != obj.xsi_type:
            raise HttpError(400, f"{what} is a {obj.xsi_type}; its xsiType cannot change to {xsi_type}")
        special, fields = self._normalise_values(xsi_type, values)
        if "label" in special and special["label"] != obj.label:
            raise HttpError(400, f"{what} ({obj.id}): the label cannot be changed to "
                                 f"{special['label']}; create a new object instead")
        if "project" in special and special["project"] != obj.project:
            raise HttpError(400, f"{what} ({obj.id}): the project cannot be changed to "
                                 f"{special['project']}")
        if "ID" in special and special["ID"] != obj.id:
            raise HttpError(400, f"{what}: the ID {obj.id} cannot be changed")
        with self.store.transaction() as tx:
            current = tx.object(obj.pk)
            if current is None:
                raise HttpError(404, f"{what} was deleted")
            for path, value in fields.items():
                if value == "NULL":
                    current.fields.pop(path, None)
                else:
                    current.fields[path] = value
            tx.update_object(current)
            if current.parent_pk is not None:
                tx.touch(current.parent_pk)
        return Response.text(obj.id, 200)

    def _delete(self, req: Request, node: Node) -> Response:
        principal = req.principal
        assert principal is not None
        removed: list[FileRow] = []
        if node.kind == "project" and node.project is not None:
            pid = node.project.id
            self._require(principal, pid, f"project {pid}", "delete")
            with self.store.transaction() as tx:
                for obj in tx.objects(project=pid):
                    if obj.parent_pk is None:
                        removed += tx.delete_object(obj.pk)
                for res in tx.resources(f"project:{pid}"):
                    removed += tx.delete_resource(res.pk)
                tx.delete_project(pid)
        elif node.kind == "resource" and node.resource is not None:
            assert node.project is not None
            self._require(principal, node.project.id, f"resource {node.resource.label}", "delete")
            with self.store.transaction() as tx:
                removed = tx.delete_resource(node.resource.pk)
                if node.owner is not None and node.owner.obj is not None:
                    tx.touch(node.owner.obj.pk)
        elif node.obj is not None:
            obj = node.obj
            self._require(principal, obj.project, f"{obj.kind} {obj.label}", "delete")
            with self.store.transaction() as tx:
                removed = tx.delete_object(obj.pk)
                if obj.parent_pk is not None:
                    tx.touch(obj.parent_pk)
        else:
            raise HttpError(405, f"DELETE not allowed on {node.describe()}")
        self._unlink(removed)
        return Response.text("")

    def _unlink(self, files: Iterable[FileRow]) -> None:
        for f in files:
            try:
                self.store.file_path(f.resource_pk, f.stored_name).unlink()
            except FileNotFoundError:
                pass

    # -- project users --------------------------------------------------------------------
    def _project_users(self, req: Request, walk: Walk) -> Response:
        principal = req.principal
        assert principal is not None and walk.node.project is not None
        pid = walk.node.project.id
        parts = [p for p in (walk.ref or "").split("/") if p]
        if req.method == "GET" and not parts:
            with self.store.transaction() as tx:
                members = tx.project_members(pid)
            rows = [{"login": m["login"], "displayname": m["role"], "GROUP_ID": f"{pid}_{m['role'].lower()}",
                     "email": m["email"], "firstname": m["first_name"],
                     "lastname": m["last_name"]} for m in members]
            return self._table(rows, (req.param("format") or "json").lower())
        if len(parts) != 2 or parts[0] not in ROLES:
            raise HttpError(400, f"use /data/projects/{pid}/users/{{Owners|Members|Collaborators}}/{{user}}")
        role, login = parts
        self._require(principal, pid, f"users of project {pid}", "manage")
        with self.store.transaction() as tx:
            if tx.user(login) is None:
                raise HttpError(404, f"User {login} not found; create it with POST /xapi/users")
            if req.method in {"PUT", "POST"}:
                tx.set_role(pid, login, role)
            elif req.method == "DELETE":
                tx.set_role(pid, login, None)
            else:
                raise HttpError(405, f"{req.method} not allowed on project users")
        return Response.text("")

    # -- resources and files ---------------------------------------------------------------
    def _put_resource(self, req: Request, walk: Walk) -> Response:
        principal = req.principal
        assert principal is not None and walk.ref is not None
        node = walk.node
        assert node.project is not None
        self._require(principal, node.project.id, f"resource {walk.ref}", "write")
        if not walk.missing:
            return Response.text(walk.ref, 200)
        _check_label(walk.ref, "resource")
        with self.store.transaction() as tx:
            existing = [r for r in tx.resources(node.owner_key) if r.label == walk.ref]
            if existing:
                return Response.text(str(existing[0].pk), 200)
            pk = tx.insert_resource(node.owner_key, walk.ref, req.param("format") or "",
                                    req.param("content") or "", req.param("tags") or "")
            if node.obj is not None:
                tx.touch(node.obj.pk)
        return Response.text(str(pk), 201)

    def _file_uri(self, tx: Tx, owner: Node, res: ResourceRow, path: str,
                  index: srch.ObjectIndex | None = None) -> str:
        quoted = urllib.parse.quote(path)
        if owner.kind == "project" and owner.project is not None:
            return f"/data/projects/{owner.project.id}/resources/{res.pk}/files/{quoted}"
        assert owner.obj is not None
        index = index or self._index(tx, [owner.obj])
        base = srch.uri_of(owner.obj, index)
        if owner.kind == "assessor":
            base += "/out"
        return f"{base}/resources/{res.pk}/files/{quoted}"

    def _file_rows(self, tx: Tx, owner: Node, resources: list[ResourceRow]) -> list[dict[str, str]]:
        index = self._index(tx, [owner.obj] if owner.obj is not None else [])
        rows = []
        by_pk = {r.pk: r for r in resources}
        for f in tx.files_of(list(by_pk)):
            res = by_pk[f.resource_pk]
            rows.append({"Name": f.path.rsplit("/", 1)[-1], "Size": str(f.size),
                         "URI": self._file_uri(tx, owner, res, f.path, index),
                         "collection": res.label, "file_tags": f.tags, "file_format": f.format,
                         "file_content": f.content, "cat_ID": str(res.pk), "digest": f.digest})
        return rows

    def _zip_entries(self, tx: Tx, owner: Node, resources: list[ResourceRow]) -> list[tuple[str, Path]]:
        index = self._index(tx, [owner.obj] if owner.obj is not None else [])
        if owner.kind == "project" and owner.project is not None:
            base = owner.project.id
        else:
            assert owner.obj is not None
            obj = owner.obj
            if obj.kind == "scan":
                session = index.session(obj)
                scan_type = re.sub(r"[^A-Za-z0-9_-]", "_", obj.fields.get("type", ""))
                base = f"{session.label if session else obj.project}/scans/{obj.id}-{scan_type}"
            elif obj.kind == "assessor":
                session = index.session(obj)
                base = f"{session.label if session else obj.project}/assessors/{obj.label}/out"
            else:
                base = obj.label
        by_pk = {r.pk: r for r in resources}
        return [(f"{base}/resources/{by_pk[f.resource_pk].label}/files/{f.path}",
                 self.store.file_path(f.resource_pk, f.stored_name))
                for f in tx.files_of(list(by_pk))]

    def _files(self, req: Request, walk: Walk, segs: list[str]) -> Response:
        principal = req.principal
        assert principal is not None
        node = walk.node
        method = req.method
        if walk.missing:
            # PUT/POST .../resources/{label}/files/{path}: resource created with the file
            if method not in {"PUT", "POST"}:
                raise HttpError(404, f"Resource {walk.ref} not found in {node.describe()}")
            idx = segs.index("files", len(segs) - 1 - segs[::-1].index(walk.ref or ""))
            path = "/".join(s for s in segs[idx + 1:] if s) or None
            return self._upload(req, node, walk.ref or "", None, path)
        fmt = (req.param("format") or "json").lower()
        if node.kind == "scans":
            assert node.scans is not None
            if method != "GET":
                raise HttpError(405, f"{method} not allowed on several scans' files")
            with self.store.transaction() as tx:
                owner_nodes = [Node(kind="scan", project=node.project, obj=s) for s in node.scans]
                if fmt == "zip":
                    entries: list[tuple[str, Path]] = []
                    for owner in owner_nodes:
                        entries += self._zip_entries(tx, owner, tx.resources(owner.owner_key))
                    return _zip_response(entries, f"{node.obj.label if node.obj else 'scans'}.zip",
                                         self.store.files_dir / "outgoing")
                rows: list[dict[str, str]] = []
                for owner in owner_nodes:
                    rows += self._file_rows(tx, owner, tx.resources(owner.owner_key))
            return self._table(rows, fmt)
        if node.kind == "resource" and node.resource is not None and node.owner is not None:
            owner, resources = node.owner, [node.resource]
        else:
            owner = node
            with self.store.transaction() as tx:
                resources = tx.resources(node.owner_key)
        path = walk.ref
        if method == "GET":
            with self.store.transaction() as tx:
                if path is None:
                    if fmt == "zip":
                        return _zip_response(
                            self._zip_entries(tx, owner, resources),
                            f"{resources[0].label if len(resources) == 1 else 'files'}.zip",
                            self.store.files_dir / "outgoing")
                    return self._table(self._file_rows(tx, owner, resources), fmt)
                for res in resources:
                    for f in tx.files(res.pk):
                        if f.path == path:
                            ctype = mimetypes.guess_type(f.path)[0] or "application/octet-stream"
                            resp = Response(file=self.store.file_path(f.resource_pk, f.stored_name),
                                            content_type=ctype)
                            resp.headers.append(("Content-Disposition", _attachment(
                                f.path.rsplit("/", 1)[-1])))
                            return resp
            raise HttpError(404, f"File {path} not found in {node.describe()}")
        if method in {"PUT", "POST"}:
            if node.kind != "resource" or node.resource is None:
                raise HttpError(400, "upload files into a resource: .../resources/{label}/files/{name}")
            return self._upload(req, node.owner or node, node.resource.label, node.resource, path)
        if method == "DELETE":
            if node.kind != "resource" or node.resource is None or path is None:
                raise HttpError(405, "DELETE a file as .../resources/{label}/files/{name}")
            assert node.project is not None
            self._require(principal, node.project.id, f"file {path}", "delete")
            with self.store.transaction() as tx:
                match = [f for f in tx.files(node.resource.pk) if f.path == path]
                if not match:
                    raise HttpError(404, f"File {path} not found in resource {node.resource.label}")
                tx.delete_file(match[0].pk)
                if node.owner is not None and node.owner.obj is not None:
                    tx.touch(node.owner.obj.pk)
            self._unlink(match)
            return Response.text("")
        raise HttpError(405, f"{method} not allowed on files")

    def _upload(self, req: Request, owner: Node, label: str, resource: ResourceRow | None,
                path: str | None) -> Response:
        principal = req.principal
        assert principal is not None and owner.project is not None
        self._require(principal, owner.project.id, f"files of {owner.describe()}", "write")
        _check_label(label, "resource")
        overwrite = req.flag("overwrite")
        items: list[tuple[str, IO[bytes] | bytes]] = []
        ctype = req.header("content-type").lower()
        if ctype.startswith("multipart/") and not req.flag("inbody"):
            for _name, filename, _ptype, payload in _multipart(req):
                if filename is None and _name is None:
                    continue
                target = path if (path and not path.endswith("/")) else \
                    ((path or "") + (filename or _name or "upload"))
                items.append((target, payload))
        else:
            if path is None:
                raise HttpError(400, "name the file: .../files/{name} (or send multipart with filenames)")
            items.append((path, req.body))
            req.body.seek(0)
        if req.flag("extract") and len(items) == 1 and items[0][0].lower().endswith(".zip"):
            items = self._unzip_items(items[0][1], owner.describe())
        cleaned = [(clean_relative_path(p, f"file in {owner.describe()}"), data) for p, data in items]
        if not cleaned:
            raise HttpError(400, "no file in the request body")
        # duplicates
        with self.store.transaction() as tx:
            res_rows = [r for r in tx.resources(owner.owner_key) if r.label == label]
            existing = {f.path for f in tx.files(res_rows[0].pk)} if res_rows else set()
        duplicates = [p for p, _ in cleaned if p in existing]
        if duplicates and not overwrite:
            return Response.json({"duplicates": duplicates}, 200)
        incoming = self.store.files_dir / "incoming"
        stored = [(p, store_content(incoming, data)) for p, data in cleaned]
        replaced: list[FileRow] = []
        fmt = req.param("format") or ""
        if fmt == "U":
            fmt = ""
        content = req.param("content") or ""
        content = "" if content == "U" else content
        tags = req.param("tags") or ""
        tags = "" if tags == "U" else tags
        created_resource = False
        try:
            with self.store.transaction() as tx:
                res_rows = [r for r in tx.resources(owner.owner_key) if r.label == label]
                if res_rows:
                    res_pk = res_rows[0].pk
                else:
                    res_pk = tx.insert_resource(owner.owner_key, label, "", "", "")
                    created_resource = True
                old = {f.path: f for f in tx.files(res_pk)}
                folder = self.store.files_dir / str(res_pk)
                folder.mkdir(parents=True, exist_ok=True)
                now = now_text()
                for p, content_info in stored:
                    if p in old:
                        if not overwrite:
                            raise HttpError(409, f"File {p} already exists in resource {label}; "
                                                 "add overwrite=true to replace it")
                        replaced.append(old[p])
                    os.replace(incoming / content_info.stored_name, folder / content_info.stored_name)
                    tx.put_file(FileRow(pk=0, resource_pk=res_pk, path=p, size=content_info.size,
                                        digest=content_info.digest, format=fmt, content=content,
                                        tags=tags, stored_name=content_info.stored_name,
                                        insert_date=now))
                if owner.obj is not None:
                    tx.touch(owner.obj.pk)
        except BaseException:
            for _, content_info in stored:
                for candidate in (incoming / content_info.stored_name,):
                    if candidate.exists():
                        candidate.unlink()
            raise
        self._unlink(replaced)
        return Response.text("", 201 if created_resource or len(replaced) < len(stored) else 200)

    def _unzip_items(self, data: IO[bytes] | bytes, what: str) -> list[tuple[str, IO[bytes] | bytes]]:
        import zipfile

        source = io.BytesIO(data) if isinstance(data, bytes) else data
        source.seek(0)
        try:
            archive = zipfile.ZipFile(source)
        except zipfile.BadZipFile as exc:
            raise HttpError(400, f"extract=true but the upload to {what} is not a zip") from exc
        with archive:
            members = safe_zip_members(archive, self.config.zip_limits, f"zip for {what}")
            # members are spooled to temporary files, not read into memory: the limits allow
            # gigabytes in total (the spools are closed when the request's items are dropped)
            items: list[tuple[str, IO[bytes] | bytes]] = []
            try:
                for m in members:
                    spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115
                    items.append((m.filename, spool))
                    with archive.open(m) as handle:
                        shutil.copyfileobj(handle, spool, 1 << 20)
                    spool.seek(0)
            except BaseException:
                for _, spooled in items:
                    spooled.close()  # type: ignore[union-attr]
                raise
            return items

    # -- search ---------------------------------------------------------------------------
    def _search(self, req: Request) -> Response:
        principal = req.principal
        assert principal is not None
        bundle = srch.parse_bundle(req.body_bytes())
        root = self.schemas.canonical(bundle.root)
        kind = self._kind_of_type(root) if root else None
        if root is None or kind is None:
            raise HttpError(400, f"search root element {bundle.root} is not a searchable datatype")
        fmt = (req.param("format") or "json").lower()
        with self.store.transaction() as tx:
            index = self._index(tx)
        if kind == "project":
            raise HttpError(400, "project searches are not supported; list /data/projects")
        candidates = [o for o in index.objects.values()
                      if o.kind == kind and (self.schemas.is_a(o.xsi_type, root))
                      and Access.of(principal, o.project).read]

        def lookup_for(obj: ObjectRow) -> Callable[[str], str | None]:
            def lookup(schema_field: str) -> str | None:
                element, _, name = schema_field.partition("/")
                if not name:
                    element, name = root, schema_field
                return srch.field_value(obj, element, name, index, self.schemas)
            return lookup

        hits = [o for o in candidates if srch.evaluate(bundle.where, lookup_for(o))]
        headers: list[tuple[str, str, str]] = []  # header, element, field
        for element, field_id in bundle.fields:
            canon = self.schemas.canonical(element) or element
            name = field_id
            if "/" in field_id and ":" in field_id.split("/", 1)[0]:
                element_part, _, name = field_id.partition("/")
                canon = self.schemas.canonical(element_part) or element_part
            if canon == root:
                header = name.lower().replace("/", "_")
            else:
                header = f"{canon.replace(':', '_')}_{name}".lower().replace("/", "_")
            headers.append((header, canon, name))
        extra = {"project": "project"}
        if kind in {"experiment", "assessor"}:
            extra.update({"subject_id": "subject_ID", "session_id": "ID"})
        elif kind == "subject":
            extra.update({"subjectid": "ID"})
        present = {h for h, _, _ in headers}
        for header, name in extra.items():
            if header not in present:
                headers.append((header, root, name))
        rows = []
        for obj in hits:
            row = {}
            for header, element, name in headers:
                row[header] = srch.field_value(obj, element, name, index, self.schemas) or ""
            rows.append(row)
        columns = [h for h, _, _ in headers]
        return self._table(rows, fmt, columns)

    # -- DICOM import ---------------------------------------------------------------------
    def _import(self, req: Request) -> Response:
        principal = req.principal
        assert principal is not None
        handler = (req.param("import-handler") or "DICOM-zip").lower()
        if handler not in {"dicom-zip", "si", "gradual-dicom"}:
            raise HttpError(400, f"import-handler {handler} is not supported; use DICOM-zip")
        project_id = req.param("PROJECT_ID") or req.param("project")
        if not project_id:
            raise HttpError(400, "DICOM import needs PROJECT_ID (or project=) naming the target project")
        dest = req.param("dest") or "/archive"
        if dest.startswith("/prearchive"):
            raise HttpError(400, "this server archives directly; use dest=/archive")
        overwrite = (req.param("overwrite") or "none").lower()
        if overwrite not in {"none", "append", "delete"}:
            raise HttpError(400, f"overwrite={overwrite}: use none, append or delete")
        with self.store.transaction() as tx:
            project = tx.project(project_id)
        if project is None:
            raise HttpError(404, f"Project {project_id} not found; create it first (PUT /data/projects/{project_id})")
        self._read_project(principal, project)
        self._require(principal, project.id, "sessions", "write")
        body: IO[bytes] = req.body
        ctype = req.header("content-type").lower()
        if ctype.startswith("multipart/"):
            parts = [p for p in _multipart(req) if p[1]]
            if not parts:
                raise HttpError(400, "multipart import without a file part")
            body = io.BytesIO(parts[0][3])
        body.seek(0)
        session, archive = read_dicom_zip(body, self.config.zip_limits)
        with archive:
            subject_label = req.param("SUBJECT_ID") or req.param("subject") or \
                re.sub(r"[^A-Za-z0-9_-]", "_", session.patient_name or session.patient_id or "Unknown")
            label = req.param("EXPT_LABEL") or req.param("session") or \
                re.sub(r"[^A-Za-z0-9_-]", "_", f"{subject_label}_{session.study_label or 'session'}")
            _check_label(subject_label, "subject")
            _check_label(label, "experiment")
            # write every file's content first (outside the transaction), then the rows
            incoming = self.store.files_dir / "incoming"
            staged: list[tuple[int, str, Any]] = []  # (scan index, name, StoredContent)
            try:
                for i, scan in enumerate(session.scans):
                    for name, member in scan.members:
                        with archive.open(member) as handle:
                            staged.append((i, name, store_content(incoming, handle)))
            except BaseException:
                for _, _, info in staged:
                    (incoming / info.stored_name).unlink(missing_ok=True)
                raise
        removed: list[FileRow] = []
        try:
            with self.store.transaction() as tx:
                now = now_text()
                subjects = [s for s in tx.objects(kind="subject", project=project.id, ref=subject_label)]
                if subjects:
                    subject = subjects[0]
                else:
                    sid = f"{self.config.site_id}_S{tx.next_id('subject'):05d}"
                    subject = ObjectRow(pk=0, id=sid, kind="subject", xsi_type="xnat:subjectData",
                                        project=project.id, label=subject_label, parent_pk=None,
                                        insert_date=now, last_modified=now,
                                        insert_user=principal.login)
                    subject.pk = tx.insert_object(subject)
                existing = [e for e in tx.objects(kinds=["experiment", "assessor"],
                                                  project=project.id, ref=label) if e.label == label]
                if existing and overwrite == "none":
                    raise HttpError(409, f"Session {label} already exists in project {project.id}; "
                                         "import with overwrite=append or overwrite=delete")
                if existing and existing[0].kind != "experiment":
                    raise HttpError(409, f"{label} is an assessor in project {project.id}")
                if existing and overwrite == "delete":
                    self._require(principal, project.id, f"session {label}", "delete")
                    removed += tx.delete_object(existing[0].pk)
                    existing = []
                fields = dict(session.fields)
                if existing:
                    exp = existing[0]
                    exp.fields.update(fields)
                    tx.update_object(exp)
                else:
                    eid = f"{self.config.site_id}_E{tx.next_id('experiment'):05d}"
                    exp = ObjectRow(pk=0, id=eid, kind="experiment", xsi_type=session.xsi_type,
                                    project=project.id, label=label, parent_pk=subject.pk,
                                    fields=fields, insert_date=now, last_modified=now,
                                    insert_user=principal.login)
                    exp.pk = tx.insert_object(exp)
                scans_now = {s.id: s for s in tx.objects(kind="scan", parent_pk=exp.pk)}
                for i, scan in enumerate(session.scans):
                    same_uid = [s for s in scans_now.values() if s.fields.get("UID") == scan.fields.get("UID")]
                    if same_uid:
                        scan_row = same_uid[0]
                        scan_row.fields.update(scan.fields)
                    else:
                        scan_id = scan.scan_id
                        n = 1
                        while scan_id in scans_now:
                            n += 1
                            scan_id = f"{scan.scan_id}-{n}"
                        scan_row = ObjectRow(pk=0, id=scan_id, kind="scan", xsi_type=scan.xsi_type,
                                             project=project.id, label=scan_id, parent_pk=exp.pk,
                                             fields=dict(scan.fields), insert_date=now,
                                             last_modified=now, insert_user=principal.login)
                        scan_row.pk = tx.insert_object(scan_row)
                        scans_now[scan_id] = scan_row
                    owner = f"obj:{scan_row.pk}"
                    dicom = [r for r in tx.resources(owner) if r.label == "DICOM"]
                    res_pk = dicom[0].pk if dicom else tx.insert_resource(owner, "DICOM", "DICOM", "RAW", "")
                    folder = self.store.files_dir / str(res_pk)
                    folder.mkdir(parents=True, exist_ok=True)
                    old = {f.path: f for f in tx.files(res_pk)}
                    for j, name, info in staged:
                        if j != i:
                            continue
                        if name in old:
                            removed.append(old[name])
                        os.replace(incoming / info.stored_name, folder / info.stored_name)
                        tx.put_file(FileRow(pk=0, resource_pk=res_pk, path=name, size=info.size,
                                            digest=info.digest, format="DICOM", content="RAW",
                                            tags="", stored_name=info.stored_name, insert_date=now))
                    frames = len(tx.files(res_pk))
                    scan_row.fields["frames"] = str(frames)
                    tx.update_object(scan_row)
                tx.touch(exp.pk)
        except BaseException:
            for _, _, info in staged:
                leftover = incoming / info.stored_name
                if leftover.exists():
                    leftover.unlink()
            raise
        self._unlink(removed)
        uri = f"/data/archive/projects/{project.id}/subjects/{subject_label}/experiments/{label}"
        return Response.text(uri + "\r\n", 200)


class _Exists(Exception):
    """Raised inside a create transaction when the object appeared meanwhile."""

    def __init__(self, obj: ObjectRow) -> None:
        super().__init__(obj.id)
        self.obj = obj


def _strip_type(key: str) -> str:
    if "/" in key and ":" in key.split("/", 1)[0]:
        return key.split("/", 1)[1]
    return key


_LABEL_RE = re.compile(r"[A-Za-z0-9_.\-]{1,255}")


def _check_label(label: str, kind: str) -> None:
    # '.' and '..' would be path steps in URIs and in the member names of zip downloads
    if not _LABEL_RE.fullmatch(label) or set(label) == {"."}:
        raise HttpError(400, f"invalid {kind} label {label!r}: use letters, digits, '_', '-', '.'")


def _int_param(req: Request, name: str, default: int) -> int:
    value = req.param(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise HttpError(400, f"{name}={value!r} is not an integer") from exc


def _in_date_range(value: str, spec: str) -> bool:
    """XNAT date filters: ``MM/DD/YYYY``, ``A-B`` range (either side may be empty)."""
    if not value:
        return False
    v = srch.parse_date_bound(value) or value
    # split a range on a '-' that is not inside an ISO date
    m = re.fullmatch(r"\s*(\d{1,2}/\d{1,2}/\d{4}[^-]*)?\s*-\s*(\d{1,2}/\d{1,2}/\d{4}.*)?\s*", spec)
    if m and (m.group(1) or m.group(2)):
        lo = srch.parse_date_bound(m.group(1)) if m.group(1) else None
        hi = srch.parse_date_bound(m.group(2)) if m.group(2) else None
        if lo is not None and v[: len(lo)] < lo:
            return False
        return not (hi is not None and v[: len(hi)] > hi)
    if ".." in spec:
        lo_s, _, hi_s = spec.partition("..")
        lo = srch.parse_date_bound(lo_s) if lo_s.strip() else None
        hi = srch.parse_date_bound(hi_s) if hi_s.strip() else None
        if lo is not None and v < lo:
            return False
        return not (hi is not None and v[: len(hi)] > hi)
    exact = srch.parse_date_bound(spec)
    if exact is None:
        raise HttpError(400, f"date filter {spec!r}: use MM/DD/YYYY or MM/DD/YYYY-MM/DD/YYYY")
    return v[: len(exact)] == exact


def _multipart(req: Request) -> list[tuple[str | None, str | None, str | None, bytes]]:
    """Parts of a multipart body: (field name, filename, content type, payload)."""
    header = f"Content-Type: {req.header('content-type')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        header + req.body_bytes())
    parts = []
    if not message.is_multipart():
        raise HttpError(400, "multipart body could not be parsed (missing boundary?)")
    for part in message.iter_parts():
        payload = part.get_payload(decode=True) or b""
        parts.append((part.get_param("name", header="content-disposition"),
                      part.get_filename(), part.get_content_type(), payload))
    return parts  # type: ignore[return-value]


def _zip_response(entries: list[tuple[str, Path]], filename: str, folder: Path) -> Response:
    resp = Response(file=build_zip(entries, folder), delete_file=True,
                    content_type="application/zip")
    resp.headers.append(("Content-Disposition", _attachment(filename)))
    return resp


def _attachment(filename: str) -> str:
    """A ``Content-Disposition`` value for ``filename``.

    In the plain ``filename`` control characters (a CR/LF would split the header), quotes,
    backslashes and non-ASCII characters (headers go out as Latin-1) become ``_``; a name
    that is not plain ASCII also gets the exact name as RFC 5987 ``filename*``.
    """
    safe = "".join("_" if ord(ch) < 0x20 or ord(ch) >= 0x7F or ch in '"\\' else ch
                   for ch in filename)
    if safe == filename:
        return f'attachment; filename="{safe}"'
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


# -- HTTP ------------------------------------------------------------------------------------
def _normalise_path(path: str) -> str:
    if path.startswith("/REST/") or path == "/REST":
        path = "/data" + path[len("/REST"):]
    if path.startswith("/data/archive/") or path == "/data/archive":
        path = "/data" + path[len("/data/archive"):]
    if len(path) > 1:
        path = path.rstrip("/")
    return path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "XNAT"
    sys_version = ""
    server: XnatHTTPServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every keep-alive request
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), redact(format % args))

    def _read_body(self, limit: int) -> tuple[IO[bytes], int]:
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115 - closed by _handle
        size = 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                try:
                    chunk_len = int(line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError as exc:
                    raise HttpError(400, f"malformed chunk size {line[:20]!r}") from exc
                if chunk_len < 0:
                    raise HttpError(400, f"malformed chunk size {line[:20]!r}")
                if chunk_len == 0:
                    while True:  # trailers
                        trailer = self.rfile.readline(65537)
                        if trailer in {b"\r\n", b"\n", b""}:
                            break
                    break
                remaining = chunk_len
                while remaining > 0:
                    data = self.rfile.read(min(remaining, 1 << 20))
                    if not data:
                        raise ConnectionError("client closed the connection mid-chunk")
                    spool.write(data)
                    remaining -= len(data)
                size += chunk_len
                if size > limit:
                    raise HttpError(413, f"request body exceeds {limit} bytes")
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            text = (self.headers.get("Content-Length") or "0").strip()
            if not text.isdigit():
                raise HttpError(400, f"Content-Length {text[:20]!r} is not a byte count")
            length = int(text)
            if length > limit:
                raise HttpError(413, f"request body of {length} bytes exceeds {limit} bytes")
            remaining = length
            while remaining > 0:
                data = self.rfile.read(min(remaining, 1 << 20))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                spool.write(data)
                remaining -= len(data)
            size = length
        spool.seek(0)
        return spool, size

    def _handle(self) -> None:
        started = time.monotonic()
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        cookies: dict[str, str] = {}
        for chunk in (self.headers.get("Cookie") or "").split(";"):
            name, sep, value = chunk.strip().partition("=")
            if sep:
                cookies[name] = value
        path = _normalise_path(parsed.path)
        has_body = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower() \
            or (self.headers.get("Content-Length") or "0").strip() not in {"", "0"}
        try:
            # who may send a body is decided before reading it: an anonymous client must not
            # be able to make the server spool gigabytes to disk
            limit = self.server.app.body_limit(path, headers, cookies) if has_body \
                else self.server.app.config.max_body_bytes
            body, size = self._read_body(limit)
        except HttpError as exc:
            resp = Response.text(exc.message, exc.status)
            if exc.status == 401:
                resp.headers.append(("WWW-Authenticate", 'Basic realm="XNAT"'))
            log.info("%s %s -> %d (%.1f ms)", self.command, redact(parsed.path), resp.status,
                     1000 * (time.monotonic() - started))
            self.close_connection = True
            self._send(resp)
            return
        req = Request(method=self.command, path=path, query=query,
                      headers=headers, body=body, body_size=size, cookies=cookies)
        try:
            resp = self.server.app.handle(req)
        finally:
            body.close()
        if resp.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            log.info("%s %s -> dropped (injected fault)", self.command, redact(parsed.path))
            return
        # logged before the answer is sent, so a client that has its answer can rely on the
        # access-log line being there (tests count requests this way)
        log.info("%s %s -> %d (%.1f ms)", self.command, redact(parsed.path), resp.status,
                 1000 * (time.monotonic() - started))
        self._send(resp)

    def _send(self, resp: Response) -> None:
        handle: IO[bytes] | None = None
        path = resp.file
        if path is not None:
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                resp = Response.text("File removed while the download started; retry", 404)
            else:
                if resp.delete_file:
                    path.unlink(missing_ok=True)  # the open handle keeps the content
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            for name, value in resp.headers:
                self.send_header(name, value)
            if handle is not None:
                size = os.fstat(handle.fileno()).st_size
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command != "HEAD":
                    shutil.copyfileobj(handle, self.wfile, 1 << 20)
            else:
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)
        finally:
            if handle is not None:
                handle.close()

    do_GET = _handle
    do_PUT = _handle
    do_POST = _handle
    do_DELETE = _handle
    do_HEAD = _handle


class XnatHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server bound to one :class:`XnatApp`; tracks open connections so that
    :meth:`close_connections` ends keep-alive connections when the server stops."""

    daemon_threads = True
    allow_reuse_address = True
    #: listen backlog: the standard library's 5 makes every sixth connection of a burst
    #: (many workers starting at once) wait for a SYN retransmission, about a second
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: XnatApp) -> None:
        self.app = app
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection (their handler threads then exit)."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(2)
            except OSError:
                pass
