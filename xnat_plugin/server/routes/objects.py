"""Subjects, experiments (image sessions), scans and assessors: create, read, update,
delete.

XNAT stores them all as items of a project hierarchy (subject > session > scan or
assessor), addressed by ID or label and written the same way (query parameters or an XML
document), so one generic set of routes serves them.
"""

from __future__ import annotations

from typing import Any

from .. import search as srch
from ..store import FileRow, ObjectRow, Tx, now_text
from ..wire import (
    _KIND_OF_COLLECTION,
    HttpError,
    Request,
    Response,
    _check_label,
)
from .base import Node, RouteBase, Walk

__all__ = ["ObjectRoutes"]


class _Exists(Exception):
    """Raised inside a create transaction when the object appeared meanwhile."""

    def __init__(self, obj: ObjectRow) -> None:
        super().__init__(obj.id)
        self.obj = obj


class ObjectRoutes(RouteBase):
    """Routes of subjects, sessions, scans and assessors."""

    def _get_object(self, req: Request, node: Node) -> Response:
        fmt = (req.param("format") or "json").lower()
        with self.store.transaction() as tx:
            if node.kind == "scans":
                raise HttpError(400, "address one scan, or list scans/ALL/files")
            if node.obj is None:
                raise HttpError(404, "Not found")
            index = self._index(tx, [node.obj])
            item = self._item(tx, node.obj, index, children=True)
            xsi_type = node.obj.xsi_type
        if fmt == "xml":
            return Response(body=self._to_xml(xsi_type, item), content_type="application/xml")
        return Response.json({"items": [item]})

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

    def _create(self, req: Request, walk: Walk) -> Response:
        principal = req.principal
        assert principal is not None and walk.ref is not None and walk.coll is not None
        node = walk.node
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

    def _update(self, req: Request, node: Node) -> Response:
        principal = req.principal
        assert principal is not None
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
        if node.obj is not None:
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
