"""Resources and files: create resources, upload (raw, multipart, ``extract=true``), list,
download one file or a zip, delete.
"""

from __future__ import annotations

import io
import mimetypes
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO

from .. import search as srch
from ..resources import clean_relative_path, safe_zip_members, store_content
from ..store import FileRow, ResourceRow, Tx, now_text
from ..wire import (
    HttpError,
    Request,
    Response,
    _attachment,
    _check_label,
    _multipart,
    _zip_response,
)
from .base import Node, RouteBase, Walk

__all__ = ["FileRoutes"]


class FileRoutes(RouteBase):
    """Routes of resources and their files."""

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

    def _get_resource(self, req: Request, node: Node) -> Response:
        """``GET {x}/resources/{r}``: the resource's catalogue row as an item."""
        if node.resource is None:
            raise HttpError(404, "Not found")
        with self.store.transaction() as tx:
            row = self._resource_rows(tx, [node.resource])[0]
        item = {"meta": {"isHistory": False, "xsi:type": "xnat:resourceCatalog"},
                "data_fields": row, "children": []}
        return Response.json({"items": [item]})

    def _delete_resource(self, req: Request, node: Node) -> Response:
        """``DELETE {x}/resources/{r}``: the resource and its files."""
        principal = req.principal
        assert principal is not None
        if node.resource is None:
            raise HttpError(405, f"DELETE not allowed on {node.describe()}")
        assert node.project is not None
        self._require(principal, node.project.id, f"resource {node.resource.label}", "delete")
        with self.store.transaction() as tx:
            removed = tx.delete_resource(node.resource.pk)
            if node.owner is not None and node.owner.obj is not None:
                tx.touch(node.owner.obj.pk)
        self._unlink(removed)
        return Response.text("")
