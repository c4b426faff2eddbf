"""What every route module shares: the resolved REST path (:class:`Node`, :class:`Walk`),
access checks, the walk from a ``/data/...`` path to the object it names, result tables,
and the parsing of write requests (XML documents and query parameters).

:class:`RouteBase` declares the state of the application (set by
:class:`xnat_plugin.server.app.XnatApp`); each route module adds its methods in a subclass.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import search as srch
from ..auth import (
    Access,
    FailedLogins,
    Principal,
    SessionTable,
)
from ..config import AppConfig
from ..schemas import SchemaCatalog
from ..store import FileRow, ObjectRow, ProjectRow, ResourceRow, Store, Tx
from ..wire import (
    _RESERVED,
    _XML_CHILD_COLLECTIONS,
    _XSI,
    HttpError,
    Request,
    Response,
    _multipart,
)
from ..xmlsafe import parse_xml

__all__ = ["Node", "RouteBase", "Walk"]


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


class RouteBase:
    """State and shared helpers of the application's route modules."""

    config: AppConfig
    store: Store
    schemas: SchemaCatalog
    sessions: SessionTable
    failed_logins: FailedLogins

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

    def _index(self, tx: Tx, preload: Sequence[ObjectRow] | None = None) -> srch.ObjectIndex:
        """An object index over ``tx``: everything when ``preload`` is None, else the given
        objects with the rest loaded on demand."""
        if preload is None:
            return srch.ObjectIndex(objects={o.pk: o for o in tx.objects()},
                                    projects={p.id: p for p in tx.projects()})
        return srch.ObjectIndex(objects={o.pk: o for o in preload}, projects={},
                                load_object=tx.object, load_project=tx.project)

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

    def _resource_item(self, row: dict[str, str]) -> dict[str, Any]:
        data = {"xnat_abstractresource_id": row["xnat_abstractresource_id"],
                "label": row["label"], "format": row["format"], "content": row["content"],
                "tags": row["tags"], "file_count": row["file_count"],
                "file_size": row["file_size"]}
        return {"meta": {"isHistory": False, "xsi:type": "xnat:resourceCatalog"},
                "data_fields": data, "children": []}

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

    def _unlink(self, files: Iterable[FileRow]) -> None:
        for f in files:
            try:
                self.store.file_path(f.resource_pk, f.stored_name).unlink()
            except FileNotFoundError:
                pass
