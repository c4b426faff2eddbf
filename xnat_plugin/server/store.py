"""Transactional storage of the local XNAT server: SQLite (default) or PostgreSQL.

Everything XNAT keeps in its database lives in seven tables; file contents live in a files
folder next to the database (``{data_dir}/files/{resource_id}/{path}``).

- ``users`` (password hashes only), ``project_users`` (roles), ``counters`` (ID sequences);
- ``projects``;
- ``objects``: subjects, experiments (image sessions), scans and assessors, one row each, with
  their schema fields as a JSON text column;
- ``resources`` and ``files`` (name, size, MD5 digest, format/content/tags).

Every write runs inside :meth:`Store.transaction`: an assessor and all its fields are one
``INSERT`` in one transaction, so a crash never leaves half an assessor. All SQL is
parameterised. Statements are written with ``?`` placeholders and rewritten to ``%s`` for
PostgreSQL (psycopg 3).

Concurrency: one connection, guarded by a re-entrant lock, so transactions are serialised.
That is ample for a demo and test server and keeps SQLite and PostgreSQL behaviour identical.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa_core.errors import CbctQaError, ConfigurationError

__all__ = [
    "FileRow",
    "ObjectRow",
    "ProjectRow",
    "ResourceRow",
    "Store",
    "StoreError",
    "Tx",
    "now_text",
]


class StoreError(CbctQaError, RuntimeError):
    """The server's database cannot be opened or a statement failed."""


_SCHEMA_SQLITE = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    login TEXT PRIMARY KEY, password_hash TEXT NOT NULL, email TEXT NOT NULL DEFAULT '',
    first_name TEXT NOT NULL DEFAULT '', last_name TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 1, verified INTEGER NOT NULL DEFAULT 1,
    site_admin INTEGER NOT NULL DEFAULT 0, insert_date TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, secondary_id TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '', fields TEXT NOT NULL DEFAULT '{}',
    insert_date TEXT NOT NULL, last_modified TEXT NOT NULL, insert_user TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS project_users (
    project TEXT NOT NULL, login TEXT NOT NULL, role TEXT NOT NULL,
    PRIMARY KEY (project, login));
CREATE TABLE IF NOT EXISTS objects (
    pk {PK}, id TEXT NOT NULL, kind TEXT NOT NULL, xsi_type TEXT NOT NULL,
    project TEXT NOT NULL, label TEXT NOT NULL, parent_pk INTEGER,
    fields TEXT NOT NULL DEFAULT '{}', insert_date TEXT NOT NULL, last_modified TEXT NOT NULL,
    insert_user TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS objects_kind_project ON objects (kind, project);
CREATE INDEX IF NOT EXISTS objects_parent ON objects (parent_pk);
CREATE INDEX IF NOT EXISTS objects_id ON objects (id);
CREATE TABLE IF NOT EXISTS resources (
    pk {PK}, owner TEXT NOT NULL, label TEXT NOT NULL, format TEXT NOT NULL DEFAULT '',
    content TEXT NOT NULL DEFAULT '', tags TEXT NOT NULL DEFAULT '',
    insert_date TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS resources_owner ON resources (owner);
CREATE TABLE IF NOT EXISTS files (
    pk {PK}, resource_pk INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    digest TEXT NOT NULL, format TEXT NOT NULL DEFAULT '', content TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '', stored_name TEXT NOT NULL, insert_date TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS files_resource ON files (resource_pk);
CREATE TABLE IF NOT EXISTS login_sessions (
    token TEXT PRIMARY KEY, login TEXT NOT NULL, last_seen DOUBLE PRECISION NOT NULL);
"""


def now_text() -> str:
    """Current UTC time as XNAT writes ``insert_date``: ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass
class ProjectRow:
    """One project."""

    id: str
    name: str
    secondary_id: str
    description: str
    fields: dict[str, str]
    insert_date: str
    last_modified: str
    insert_user: str


@dataclass
class ObjectRow:
    """One subject, experiment, scan or assessor (``kind``)."""

    pk: int
    id: str
    kind: str
    xsi_type: str
    project: str
    label: str
    parent_pk: int | None
    fields: dict[str, str] = field(default_factory=dict)
    insert_date: str = ""
    last_modified: str = ""
    insert_user: str = ""


@dataclass
class ResourceRow:
    """One resource (a catalog of files) owned by a project or an object."""

    pk: int
    owner: str
    label: str
    format: str
    content: str
    tags: str
    insert_date: str


@dataclass
class FileRow:
    """One file of a resource; ``stored_name`` is its name in the files folder."""

    pk: int
    resource_pk: int
    path: str
    size: int
    digest: str
    format: str
    content: str
    tags: str
    stored_name: str
    insert_date: str


class Tx:
    """One open transaction: parameterised statements and the server's domain queries."""

    def __init__(self, store: Store, conn: Any) -> None:
        self._store = store
        self._conn = conn

    # -- low level -------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement with ``?`` placeholders; returns the cursor."""
        if self._store.is_postgres:
            sql = sql.replace("?", "%s")
        cur = self._conn.cursor()
        cur.execute(sql, tuple(params))
        return cur

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query; rows as dictionaries."""
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT ... RETURNING pk; return the new primary key."""
        cur = self.execute(sql + " RETURNING pk", params)
        row = cur.fetchone()
        return int(row[0])

    def next_id(self, name: str) -> int:
        """Next value of the named counter (XNAT_S, XNAT_E ...), starting at 1."""
        rows = self.rows("SELECT value FROM counters WHERE name = ?", (name,))
        value = (int(rows[0]["value"]) if rows else 0) + 1
        if rows:
            self.execute("UPDATE counters SET value = ? WHERE name = ?", (value, name))
        else:
            self.execute("INSERT INTO counters (name, value) VALUES (?, ?)", (name, value))
        return value

    # -- users ----------------------------------------------------------------------------
    def user(self, login: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM users WHERE login = ?", (login,))
        return rows[0] if rows else None

    def users(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM users ORDER BY login")

    def put_user(self, login: str, password_hash: str, email: str, first: str, last: str,
                 enabled: bool, verified: bool, site_admin: bool) -> None:
        if self.user(login) is None:
            self.execute(
                "INSERT INTO users (login, password_hash, email, first_name, last_name, enabled,"
                " verified, site_admin, insert_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (login, password_hash, email, first, last, int(enabled), int(verified),
                 int(site_admin), now_text()),
            )
        else:
            self.execute(
                "UPDATE users SET password_hash = ?, email = ?, first_name = ?, last_name = ?,"
                " enabled = ?, verified = ?, site_admin = ? WHERE login = ?",
                (password_hash, email, first, last, int(enabled), int(verified), int(site_admin),
                 login),
            )

    def roles(self, login: str) -> dict[str, str]:
        """Project ID -> role (Owners, Members, Collaborators) of ``login``."""
        rows = self.rows("SELECT project, role FROM project_users WHERE login = ?", (login,))
        return {r["project"]: r["role"] for r in rows}

    def project_members(self, project: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT pu.login, pu.role, u.email, u.first_name, u.last_name FROM project_users pu"
            " JOIN users u ON u.login = pu.login WHERE pu.project = ? ORDER BY pu.login",
            (project,),
        )

    def set_role(self, project: str, login: str, role: str | None) -> None:
        self.execute("DELETE FROM project_users WHERE project = ? AND login = ?", (project, login))
        if role is not None:
            self.execute(
                "INSERT INTO project_users (project, login, role) VALUES (?, ?, ?)",
                (project, login, role),
            )

    # -- login sessions -------------------------------------------------------------------
    def session_login(self, token: str, now: float, idle_timeout_s: float) -> str | None:
        """Login of a live session token (refreshing it); expired tokens are removed."""
        rows = self.rows("SELECT login, last_seen FROM login_sessions WHERE token = ?", (token,))
        if not rows:
            return None
        if now - float(rows[0]["last_seen"]) > idle_timeout_s:
            self.execute("DELETE FROM login_sessions WHERE token = ?", (token,))
            return None
        self.execute("UPDATE login_sessions SET last_seen = ? WHERE token = ?", (now, token))
        return str(rows[0]["login"])

    def add_session(self, token: str, login: str, now: float) -> None:
        self.execute("INSERT INTO login_sessions (token, login, last_seen) VALUES (?, ?, ?)",
                     (token, login, now))

    def drop_sessions(self, token: str | None = None, login: str | None = None) -> None:
        if token is not None:
            self.execute("DELETE FROM login_sessions WHERE token = ?", (token,))
        if login is not None:
            self.execute("DELETE FROM login_sessions WHERE login = ?", (login,))

    # -- projects -------------------------------------------------------------------------
    def project(self, ref: str) -> ProjectRow | None:
        rows = self.rows("SELECT * FROM projects WHERE id = ?", (ref,))
        if not rows:
            rows = self.rows("SELECT * FROM projects WHERE secondary_id = ?", (ref,))
        return _project(rows[0]) if rows else None

    def projects(self) -> list[ProjectRow]:
        return [_project(r) for r in self.rows("SELECT * FROM projects ORDER BY id")]

    def insert_project(self, row: ProjectRow) -> None:
        self.execute(
            "INSERT INTO projects (id, name, secondary_id, description, fields, insert_date,"
            " last_modified, insert_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.name, row.secondary_id, row.description, json.dumps(row.fields),
             row.insert_date, row.last_modified, row.insert_user),
        )

    def update_project(self, row: ProjectRow) -> None:
        self.execute(
            "UPDATE projects SET name = ?, secondary_id = ?, description = ?, fields = ?,"
            " last_modified = ? WHERE id = ?",
            (row.name, row.secondary_id, row.description, json.dumps(row.fields), now_text(),
             row.id),
        )

    def delete_project(self, project: str) -> None:
        self.execute("DELETE FROM projects WHERE id = ?", (project,))
        self.execute("DELETE FROM project_users WHERE project = ?", (project,))

    # -- objects --------------------------------------------------------------------------
    def object(self, pk: int) -> ObjectRow | None:
        rows = self.rows("SELECT * FROM objects WHERE pk = ?", (pk,))
        return _object(rows[0]) if rows else None

    def objects(self, kind: str | None = None, project: str | None = None,
                parent_pk: int | None = None, ref: str | None = None,
                kinds: Sequence[str] | None = None) -> list[ObjectRow]:
        """Objects matching every given filter; ``ref`` matches the ID or the label."""
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if kinds is not None:
            where.append("kind IN (" + ", ".join("?" for _ in kinds) + ")")
            params.extend(kinds)
        if project is not None:
            where.append("project = ?")
            params.append(project)
        if parent_pk is not None:
            where.append("parent_pk = ?")
            params.append(parent_pk)
        if ref is not None:
            where.append("(id = ? OR label = ?)")
            params.extend([ref, ref])
        sql = "SELECT * FROM objects"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY pk"
        return [_object(r) for r in self.rows(sql, params)]

    def insert_object(self, row: ObjectRow) -> int:
        return self.insert(
            "INSERT INTO objects (id, kind, xsi_type, project, label, parent_pk, fields,"
            " insert_date, last_modified, insert_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.kind, row.xsi_type, row.project, row.label, row.parent_pk,
             json.dumps(row.fields, sort_keys=True), row.insert_date, row.last_modified,
             row.insert_user),
        )

    def update_object(self, row: ObjectRow) -> None:
        row.last_modified = now_text()
        self.execute(
            "UPDATE objects SET xsi_type = ?, label = ?, fields = ?, last_modified = ?"
            " WHERE pk = ?",
            (row.xsi_type, row.label, json.dumps(row.fields, sort_keys=True), row.last_modified,
             row.pk),
        )

    def touch(self, pk: int) -> None:
        """Set ``last_modified`` of object ``pk`` to now (a child or file changed)."""
        self.execute("UPDATE objects SET last_modified = ? WHERE pk = ?", (now_text(), pk))

    def delete_object(self, pk: int) -> list[FileRow]:
        """Delete object ``pk``, its descendants and their resources; return removed files."""
        removed: list[FileRow] = []
        for child in self.objects(parent_pk=pk):
            removed.extend(self.delete_object(child.pk))
        for res in self.resources(f"obj:{pk}"):
            removed.extend(self.delete_resource(res.pk))
        self.execute("DELETE FROM objects WHERE pk = ?", (pk,))
        return removed

    # -- resources and files --------------------------------------------------------------
    def resources(self, owner: str) -> list[ResourceRow]:
        rows = self.rows("SELECT * FROM resources WHERE owner = ? ORDER BY pk", (owner,))
        return [ResourceRow(**r) for r in rows]

    def resources_of(self, owners: Sequence[str]) -> list[ResourceRow]:
        if not owners:
            return []
        rows = self.rows(
            "SELECT * FROM resources WHERE owner IN (" + ", ".join("?" for _ in owners)
            + ") ORDER BY pk",
            list(owners),
        )
        return [ResourceRow(**r) for r in rows]

    def insert_resource(self, owner: str, label: str, format_: str, content: str,
                        tags: str) -> int:
        return self.insert(
            "INSERT INTO resources (owner, label, format, content, tags, insert_date)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (owner, label, format_, content, tags, now_text()),
        )

    def update_resource(self, row: ResourceRow) -> None:
        self.execute(
            "UPDATE resources SET format = ?, content = ?, tags = ? WHERE pk = ?",
            (row.format, row.content, row.tags, row.pk),
        )

    def delete_resource(self, pk: int) -> list[FileRow]:
        removed = self.files(pk)
        self.execute("DELETE FROM files WHERE resource_pk = ?", (pk,))
        self.execute("DELETE FROM resources WHERE pk = ?", (pk,))
        return removed

    def files(self, resource_pk: int) -> list[FileRow]:
        rows = self.rows("SELECT * FROM files WHERE resource_pk = ? ORDER BY path", (resource_pk,))
        return [FileRow(**r) for r in rows]

    def files_of(self, resource_pks: Sequence[int]) -> list[FileRow]:
        if not resource_pks:
            return []
        rows = self.rows(
            "SELECT * FROM files WHERE resource_pk IN ("
            + ", ".join("?" for _ in resource_pks) + ") ORDER BY resource_pk, path",
            list(resource_pks),
        )
        return [FileRow(**r) for r in rows]

    def file_stats(self, resource_pks: Sequence[int]) -> dict[int, tuple[int, int]]:
        """resource pk -> (file count, total bytes)."""
        if not resource_pks:
            return {}
        rows = self.rows(
            "SELECT resource_pk, COUNT(*) AS n, SUM(size) AS total FROM files WHERE resource_pk"
            " IN (" + ", ".join("?" for _ in resource_pks) + ") GROUP BY resource_pk",
            list(resource_pks),
        )
        return {int(r["resource_pk"]): (int(r["n"]), int(r["total"] or 0)) for r in rows}

    def put_file(self, row: FileRow) -> None:
        """Insert the file, or replace the row of the same resource and path."""
        self.execute("DELETE FROM files WHERE resource_pk = ? AND path = ?",
                     (row.resource_pk, row.path))
        self.execute(
            "INSERT INTO files (resource_pk, path, size, digest, format, content, tags,"
            " stored_name, insert_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.resource_pk, row.path, row.size, row.digest, row.format, row.content, row.tags,
             row.stored_name, row.insert_date),
        )

    def delete_file(self, pk: int) -> None:
        self.execute("DELETE FROM files WHERE pk = ?", (pk,))


def _project(r: dict[str, Any]) -> ProjectRow:
    return ProjectRow(
        id=r["id"], name=r["name"], secondary_id=r["secondary_id"],
        description=r["description"], fields=json.loads(r["fields"] or "{}"),
        insert_date=r["insert_date"], last_modified=r["last_modified"],
        insert_user=r["insert_user"],
    )


def _object(r: dict[str, Any]) -> ObjectRow:
    return ObjectRow(
        pk=int(r["pk"]), id=r["id"], kind=r["kind"], xsi_type=r["xsi_type"],
        project=r["project"], label=r["label"],
        parent_pk=None if r["parent_pk"] is None else int(r["parent_pk"]),
        fields=json.loads(r["fields"] or "{}"), insert_date=r["insert_date"],
        last_modified=r["last_modified"], insert_user=r["insert_user"],
    )


class Store:
    """The server's database and files folder.

    Parameters
    ----------
    data_dir : Path
        Folder holding ``xnat.sqlite`` (when SQLite is used) and ``files/``.
    database_url : str or None
        ``postgresql://user@host:port/db`` to use PostgreSQL; None for SQLite in ``data_dir``.
    """

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.is_postgres = bool(database_url) and str(database_url).startswith(
            ("postgresql://", "postgres://")
        )
        if database_url and not self.is_postgres:
            raise ConfigurationError(
                f"database URL must start with postgresql:// (got scheme "
                f"{str(database_url).split(':', 1)[0]!r}); leave it unset for SQLite in --data-dir"
            )
        self._lock = threading.RLock()
        self._conn: Any = self._connect()
        self._init_schema()

    def _connect(self) -> Any:
        if self.is_postgres:
            try:
                import psycopg
            except ImportError as exc:  # pragma: no cover - psycopg is a dependency
                raise StoreError("PostgreSQL storage needs psycopg (pip install psycopg[binary])") from exc
            try:
                return psycopg.connect(str(self.database_url), autocommit=False, connect_timeout=5)
            except psycopg.Error as exc:
                host = str(self.database_url).split("@")[-1]
                raise StoreError(f"cannot connect to PostgreSQL at {host}: {exc}") from exc
        path = self.data_dir / "xnat.sqlite"
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite database {path}: {exc}") from exc
        return conn

    def _init_schema(self) -> None:
        pk = "BIGSERIAL PRIMARY KEY" if self.is_postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
        script = _SCHEMA_SQLITE.replace("{PK}", pk)
        with self.transaction() as tx:
            for statement in script.split(";"):
                if statement.strip():
                    tx.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One serialised transaction: committed on success, rolled back on any exception."""
        with self._lock:
            if not self.is_postgres:
                self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self, self._conn)
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._conn.commit()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def file_path(self, resource_pk: int, stored_name: str) -> Path:
        """Where the content of a stored file lives."""
        return self.files_dir / str(resource_pk) / stored_name
