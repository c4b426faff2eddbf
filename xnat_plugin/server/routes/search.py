"""Search: ``POST /data/search`` (``xdat:bundle`` documents) and ``/data/search/elements``.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import search as srch
from ..auth import (
    Access,
)
from ..store import ObjectRow
from ..wire import (
    HttpError,
    Request,
    Response,
)
from .base import RouteBase

__all__ = ["SearchRoutes"]


class SearchRoutes(RouteBase):
    """Routes of searches and searchable datatypes."""

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
