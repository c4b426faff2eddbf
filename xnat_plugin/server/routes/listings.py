"""Listings: ``/data/projects``, ``/data/experiments``, ``{project}/subjects``,
``{session}/scans``, ``{session}/assessors``, ``{x}/resources``; filters, paging and
columns keyed as XNAT keys them (see :mod:`xnat_plugin.server.columns`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import columns as cols
from .. import search as srch
from ..auth import (
    Access,
    Principal,
)
from ..store import ObjectRow, Tx
from ..wire import (
    _KIND_OF_COLLECTION,
    _RESERVED,
    HttpError,
    Request,
    Response,
    _in_date_range,
    _int_param,
)
from .base import Node, RouteBase

__all__ = ["ListingRoutes"]


class ListingRoutes(RouteBase):
    """Routes of collection listings."""

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
                    continue  # neither a shortcut nor an xpath: XNAT leaves it out
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
        # XNAT has no xsiType shortcut for subjects and projects; strict mode follows it
        xsi_known = listing is None or "xsiType" in listing.shortcuts or not self.config.strict
        if "xsiType" not in keyed and xsi_known and (not triples or "xsiType" in triples[0][0]):
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

    def _resource_listing(self, req: Request, tx: Tx, node: Node, fmt: str) -> Response:
        rows = self._resource_rows(tx, tx.resources(node.owner_key))
        # XNAT ignores ``columns`` on resource listings (xnatpy relies on that)
        return self._columns_table(req, rows, [None] * len(rows), None, fmt, allow_columns=False)
