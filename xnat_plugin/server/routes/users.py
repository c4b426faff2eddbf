"""Users and authentication: login (``/data/services/auth``, Basic auth, ``/data/JSESSION``),
lockout, ``/xapi`` site information and users, project members.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import urllib.parse

from ..auth import (
    ROLES,
    Principal,
    hash_password,
    parse_basic,
    verify_password,
)
from ..wire import (
    _LOGIN_BODY_LIMIT,
    XNAT_VERSION,
    HttpError,
    Request,
    Response,
)
from .base import RouteBase, Walk

__all__ = ["UserRoutes"]


class UserRoutes(RouteBase):
    """Routes of users, logins and site information."""

    _verified: dict[str, str]  # login -> digest of the last password verified for it
    _verified_lock: threading.Lock
    _dummy_hash: str  # checked for unknown users, so they take as long as a wrong password

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

    def _jsession(self, req: Request) -> Response:
        """``GET /data/JSESSION`` (a session for Basic credentials) and ``DELETE`` (logout)."""
        principal = req.principal
        assert principal is not None
        if req.method == "DELETE":
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

    def _auth_status(self, req: Request) -> Response:
        """``GET /data/auth``: who is logged in."""
        principal = req.principal
        assert principal is not None
        return Response.text(f"User '{principal.login}' is logged in")

    def _data_users(self, req: Request) -> Response:
        """``GET /data/users``: the site's users (site admins only, by default)."""
        principal = req.principal
        assert principal is not None
        self._require_user_list(principal)
        with self.store.transaction() as tx:
            rows = [{"login": u["login"], "email": u["email"], "firstname": u["first_name"],
                     "lastname": u["last_name"], "enabled": "1" if u["enabled"] else "0"}
                    for u in tx.users()]
        return self._table(rows, (req.param("format") or "json").lower())
