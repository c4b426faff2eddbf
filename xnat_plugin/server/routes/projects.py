"""Projects: create (``PUT /data/projects/{p}``), read, update and delete.
"""

from __future__ import annotations

from typing import Any

from ..store import FileRow, ProjectRow, Tx, now_text
from ..wire import (
    _RESERVED,
    HttpError,
    Request,
    Response,
    _check_label,
    _strip_type,
)
from .base import Node, RouteBase

__all__ = ["ProjectRoutes"]


class ProjectRoutes(RouteBase):
    """Routes of projects."""

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

    def _get_project(self, req: Request, node: Node) -> Response:
        """``GET /data/projects/{p}`` as JSON items or XML."""
        if node.project is None:
            raise HttpError(404, "Not found")
        fmt = (req.param("format") or "json").lower()
        with self.store.transaction() as tx:
            item = self._project_item(node.project, tx)
        if fmt == "xml":
            return Response(body=self._to_xml("xnat:projectData", item),
                            content_type="application/xml")
        return Response.json({"items": [item]})

    def _update_project(self, req: Request, node: Node) -> Response:
        """``PUT /data/projects/{p}?name=...``: name, secondary ID, description, fields."""
        principal = req.principal
        assert principal is not None
        if node.project is None:
            raise HttpError(405, f"{req.method} not allowed on {node.describe()}")
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

    def _delete_project(self, req: Request, node: Node) -> Response:
        """``DELETE /data/projects/{p}``: the project, everything in it and its files."""
        principal = req.principal
        assert principal is not None
        if node.project is None:
            raise HttpError(405, f"DELETE not allowed on {node.describe()}")
        removed: list[FileRow] = []
        pid = node.project.id
        self._require(principal, pid, f"project {pid}", "delete")
        with self.store.transaction() as tx:
            for obj in tx.objects(project=pid):
                if obj.parent_pk is None:
                    removed += tx.delete_object(obj.pk)
            for res in tx.resources(f"project:{pid}"):
                removed += tx.delete_resource(res.pk)
            tx.delete_project(pid)
        self._unlink(removed)
        return Response.text("")
