"""Listings and searches of the local XNAT server: rows, columns, filters and ``xdat:bundle``.

Rows are flat ``{column: text}`` dictionaries, as XNAT's ``ResultSet`` cells are strings. A
requested column is resolved, in order, as a listing column (``ID``, ``label`` ...), a display
field (``STATUS``, ``SUBJECT_LABEL`` ...) or a schema path with its datatype
(``cbctqa:qaAssessmentData/status``, ``xnat:experimentData/meta/last_modified``), all
case-insensitively, exactly as DAX and pyxnat send them.

Search bundles (``POST /data/search``) follow XNAT's ``xdat:bundle`` document: a
``root_element_name``, ``search_field`` list and a ``search_where`` tree of ``criteria`` and
``child_set`` nodes combined with AND/OR; comparisons ``=``, ``!=``, ``<``, ``<=``, ``>``,
``>=``, ``LIKE`` (``%``/``_`` wildcards, case-insensitive), ``IS NULL``, ``IS NOT NULL``.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qa_core.errors import CbctQaError

from .schemas import SchemaCatalog
from .store import ObjectRow, ProjectRow
from .xmlsafe import XmlRejected, parse_xml

__all__ = [
    "Bundle",
    "Criteria",
    "ObjectIndex",
    "SearchError",
    "compare",
    "display_fields",
    "evaluate",
    "field_value",
    "parse_bundle",
    "parse_date_bound",
    "render_csv",
    "render_json",
    "resolve_column",
]

XDAT = "{http://nrg.wustl.edu/security}"


class SearchError(CbctQaError, ValueError):
    """A search bundle or listing query is malformed."""


@dataclass
class ObjectIndex:
    """Objects and projects by key, to resolve parents (subject of a session, session of an
    assessor) without one query per row. Preload what a listing needs; the optional loaders
    fetch anything missing (within the same transaction)."""

    objects: dict[int, ObjectRow]
    projects: dict[str, ProjectRow]
    load_object: Callable[[int], ObjectRow | None] | None = None
    load_project: Callable[[str], ProjectRow | None] | None = None

    def get(self, pk: int) -> ObjectRow | None:
        """Object ``pk`` (loaded on demand)."""
        obj = self.objects.get(pk)
        if obj is None and self.load_object is not None:
            obj = self.load_object(pk)
            if obj is not None:
                self.objects[pk] = obj
        return obj

    def project(self, project_id: str) -> ProjectRow | None:
        """Project ``project_id`` (loaded on demand)."""
        row = self.projects.get(project_id)
        if row is None and self.load_project is not None:
            row = self.load_project(project_id)
            if row is not None:
                self.projects[project_id] = row
        return row

    def parent(self, obj: ObjectRow) -> ObjectRow | None:
        return self.get(obj.parent_pk) if obj.parent_pk is not None else None

    def subject(self, obj: ObjectRow) -> ObjectRow | None:
        current: ObjectRow | None = obj
        while current is not None and current.kind != "subject":
            current = self.parent(current)
        return current

    def session(self, obj: ObjectRow) -> ObjectRow | None:
        current: ObjectRow | None = obj
        while current is not None and current.kind != "experiment":
            current = self.parent(current)
        return current


def uri_of(obj: ObjectRow, index: ObjectIndex) -> str:
    """XNAT's canonical URI of an object."""
    if obj.kind == "subject":
        return f"/data/subjects/{obj.id}"
    if obj.kind == "experiment":
        return f"/data/experiments/{obj.id}"
    session = index.session(obj)
    sid = session.id if session else ""
    if obj.kind == "scan":
        return f"/data/experiments/{sid}/scans/{obj.id}"
    return f"/data/experiments/{sid}/assessors/{obj.id}"


_ID_ALIASES = {"id", "expt_id", "session_id_self"}


def field_value(obj: ObjectRow, element: str, name: str, index: ObjectIndex,
                schemas: SchemaCatalog) -> str | None:
    """Value of ``element/name`` for a row whose main object is ``obj``; None when unknown.

    ``element`` may be the object's type, one of its base types, or a related object's type
    (the subject of a session, the session of an assessor, ``xnat:projectData``).
    """
    target: ObjectRow | None = None
    canon = schemas.canonical(element) or element
    if schemas.is_a(obj.xsi_type, canon) or canon.lower() == obj.xsi_type.lower():
        target = obj
    elif canon == "xnat:subjectData":
        target = index.subject(obj)
    elif obj.kind in {"assessor", "scan"} and index.session(obj) is not None \
            and schemas.is_a(index.session(obj).xsi_type, canon):  # type: ignore[union-attr]
        target = index.session(obj)
    elif canon == "xnat:projectData":
        project = index.project(obj.project)
        return _project_value(project, name) if project else None
    if target is None:
        return None
    return _object_value(target, name, index, schemas)


def _project_value(project: ProjectRow, name: str) -> str | None:
    low = name.lower()
    if low in {"id", "project"}:
        return project.id
    if low == "name":
        return project.name
    if low in {"secondary_id"}:
        return project.secondary_id
    if low == "description":
        return project.description
    return project.fields.get(name)


def _object_value(obj: ObjectRow, name: str, index: ObjectIndex,
                  schemas: SchemaCatalog) -> str | None:
    low = name.lower().replace("meta/", "")
    if low in _ID_ALIASES or (low == "subjectid" and obj.kind == "subject"):
        return obj.id
    if low == "label" or (low == "subject_label" and obj.kind == "subject"):
        return obj.label
    if low == "project":
        return obj.project
    if low in {"xsitype", "xsi_type", "element_name"}:
        return obj.xsi_type
    if low == "insert_date":
        return obj.insert_date
    if low == "last_modified":
        return obj.last_modified
    if low == "insert_user":
        return obj.insert_user
    if low == "uri":
        return uri_of(obj, index)
    if low in {"subject_id", "subjectid"}:
        subject = index.subject(obj)
        return subject.id if subject else None
    if low == "subject_label":
        subject = index.subject(obj)
        return subject.label if subject else None
    if low in {"session_id", "imagesession_id", "image_session_id"}:
        if obj.kind == "experiment":
            return obj.id
        session = index.session(obj)
        return session.id if session else None
    if low == "session_label":
        if obj.kind == "experiment":
            return obj.label
        session = index.session(obj)
        return session.label if session else None
    spec = schemas.field(obj.xsi_type, name)
    if spec is not None:
        return obj.fields.get(spec.path, "")
    for key, value in obj.fields.items():
        if key.lower() == name.lower():
            return value
    return None


def resolve_column(column: str, row: dict[str, str], obj: ObjectRow | None,
                   index: ObjectIndex | None, schemas: SchemaCatalog) -> str:
    """Text of ``column`` for one listing row (empty when the column does not apply)."""
    if column in row:
        return row[column]
    low = column.lower()
    for key, value in row.items():
        if key.lower() == low:
            return value
    if obj is None or index is None:
        return ""
    element, _, name = column.partition("/")
    if name and ":" in element:
        return field_value(obj, element, name, index, schemas) or ""
    return _object_value(obj, column, index, schemas) or ""


def display_fields(xsi_type: str, kind: str, schemas: SchemaCatalog) -> list[tuple[str, str, str]]:
    """Search fields of a datatype: ``(FIELD_ID, HEADER, TYPE)``, XNAT-style upper-case IDs."""
    core: list[tuple[str, str, str]] = []
    if kind == "project":
        core = [("ID", "ID", "string"), ("NAME", "Name", "string"),
                ("SECONDARY_ID", "Running Title", "string"),
                ("DESCRIPTION", "Description", "string"), ("INSERT_DATE", "Inserted", "date")]
    elif kind == "subject":
        core = [("SUBJECT_ID", "Subject", "string"), ("SUBJECT_LABEL", "Subject", "string"),
                ("PROJECT", "Project", "string"), ("INSERT_DATE", "Inserted", "date"),
                ("LAST_MODIFIED", "Last modified", "date")]
    elif kind in {"experiment", "assessor"}:
        core = [("ID", "ID", "string"), ("EXPT_ID", "ID", "string"), ("LABEL", "Label", "string"),
                ("PROJECT", "Project", "string"), ("DATE", "Date", "date"),
                ("INSERT_DATE", "Inserted", "date"), ("LAST_MODIFIED", "Last modified", "date"),
                ("SUBJECT_ID", "Subject", "string"), ("SUBJECT_LABEL", "Subject", "string")]
        if kind == "experiment":
            core.append(("SESSION_ID", "Session", "string"))
        else:
            core += [("SESSION_ID", "Session", "string"), ("SESSION_LABEL", "Session", "string")]
    elif kind == "scan":
        core = [("ID", "ID", "string"), ("TYPE", "Type", "string"),
                ("SESSION_ID", "Session", "string")]
    seen = {c[0] for c in core}
    out = list(core)
    for path, spec in schemas.fields(xsi_type).items():
        if "/" in path:
            continue
        fid = path.upper()
        if fid in seen:
            continue
        seen.add(fid)
        typ = {"xs:integer": "integer", "xs:float": "float", "xs:double": "float",
               "xs:boolean": "boolean", "xs:date": "date", "xs:dateTime": "date"}.get(
            spec.xs_type, "string")
        out.append((fid, path, typ))
    return out


# -- bundles ---------------------------------------------------------------------------------
@dataclass
class Criteria:
    """A criteria tree node: a leaf comparison or a child set of nodes."""

    method: str = "AND"
    children: list[Criteria] = field(default_factory=list)
    schema_field: str | None = None
    comparison: str | None = None
    value: str | None = None


@dataclass
class Bundle:
    """A parsed ``xdat:bundle``: root element, fields ``(element, field_id)`` and criteria."""

    root: str
    fields: list[tuple[str, str]]
    where: Criteria


def parse_bundle(body: bytes) -> Bundle:
    """Parse an ``xdat:bundle`` search document.

    Raises
    ------
    SearchError
        When the body is not XML or lacks ``root_element_name``.
    """
    try:
        root = parse_xml(body, "the body")
    except XmlRejected as exc:
        raise SearchError(f"search body is not an xdat:bundle XML document: {exc}") from exc

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    root_name = None
    fields: list[tuple[str, str, int]] = []
    where = Criteria()
    for child in root:
        tag = local(child.tag)
        if tag == "root_element_name":
            root_name = (child.text or "").strip()
        elif tag == "search_field":
            parts = {local(c.tag): (c.text or "").strip() for c in child}
            seq_text = parts.get("sequence") or str(len(fields))
            try:
                seq = int(seq_text)
            except ValueError as exc:
                raise SearchError(f"search_field {parts.get('field_ID', '')!r}: xdat:sequence "
                                  f"{seq_text[:40]!r} is not an integer") from exc
            fields.append((parts.get("element_name", ""), parts.get("field_ID", ""), seq))
        elif tag == "search_where":
            where = _parse_criteria(child, local)
    if not root_name:
        raise SearchError("search bundle has no xdat:root_element_name; name the datatype to search")
    fields.sort(key=lambda f: f[2])
    return Bundle(root=root_name, fields=[(e, f) for e, f, _ in fields], where=where)


def _parse_criteria(node: ET.Element, local: Callable[[str], str]) -> Criteria:
    out = Criteria(method=(node.get("method") or "AND").strip().upper())
    for child in node:
        tag = local(child.tag)
        if tag == "child_set":
            out.children.append(_parse_criteria(child, local))
        elif tag == "criteria":
            parts = {local(c.tag): (c.text or "") for c in child}
            out.children.append(Criteria(
                schema_field=parts.get("schema_field", "").strip(),
                comparison=parts.get("comparison_type", "=").strip().upper(),
                value=parts.get("value", ""),
            ))
    return out


def parse_date_bound(text: str) -> str | None:
    """``MM/DD/YYYY`` or ISO date(time) as a sortable ``YYYY-MM-DD...`` string; None if neither."""
    text = text.strip()
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})(.*)", text)
    if m:
        return f"{int(m.group(3)):04d}-{int(m.group(1)):02d}-{int(m.group(2)):02d}{m.group(4)}"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", text):
        return text.replace("T", " ")
    if re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return None


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _like_segments(pattern: str) -> list[list[str | None]]:
    """A LIKE pattern split at its unescaped ``%``: each part a list of characters, with
    None for ``_`` (any one character); ``\\`` escapes the next character."""
    segments: list[list[str | None]] = [[]]
    escaped = False
    for ch in pattern:
        if escaped:
            segments[-1].append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            segments.append([])
        elif ch == "_":
            segments[-1].append(None)
        else:
            segments[-1].append(ch)
    return segments


def _segment_at(value: str, segment: list[str | None], pos: int) -> bool:
    return all(c is None or value[pos + i] == c for i, c in enumerate(segment))


def _like_match(value: str, pattern: str) -> bool:
    """SQL LIKE: ``%`` any run, ``_`` one character, ``\\`` escapes.

    Matched part by part, each ``%``-separated part at its leftmost place, in
    O(len(value) * len(pattern)) time; a regular expression (``.*a.*a.*...``) backtracks
    exponentially on patterns such as ``%a%a%a%a%a%a%a%a%a%a%b`` (a search could pin a CPU).
    """
    segments = _like_segments(pattern)
    if len(segments) == 1:
        return len(value) == len(segments[0]) and _segment_at(value, segments[0], 0)
    first, *middle, last = segments
    end = len(value) - len(last)
    if len(first) > end or not _segment_at(value, first, 0) \
            or not _segment_at(value, last, end):
        return False
    pos = len(first)
    for segment in middle:
        found = next((p for p in range(pos, end - len(segment) + 1)
                      if _segment_at(value, segment, p)), None)
        if found is None:
            return False
        pos = found + len(segment)
    return True


def compare(left: str | None, op: str, right: str) -> bool:
    """XNAT search comparison of a stored value with a criteria value."""
    op = op.strip().upper()
    if op == "IS NULL":
        return left is None or left == ""
    if op == "IS NOT NULL":
        return left is not None and left != ""
    if left is None:
        return False
    if op == "LIKE":
        return _like_match(left.lower(), right.lower())
    if op == "NOT LIKE":
        return not compare(left, "LIKE", right)
    ln, rn = _as_number(left), _as_number(right)
    if ln is not None and rn is not None:
        lv: float | str = ln
        rv: float | str = rn
    else:
        ld, rd = parse_date_bound(left), parse_date_bound(right)
        if ld is not None and rd is not None:
            lv, rv = ld, rd
            if op in {"=", "!=", "<>"}:
                lv, rv = ld[: len(rd)], rd
        else:
            lv, rv = left.lower(), right.lower()
    if op == "=":
        return lv == rv
    if op in {"!=", "<>"}:
        return lv != rv
    if op == "<":
        return lv < rv  # type: ignore[operator]
    if op == "<=":
        return lv <= rv  # type: ignore[operator]
    if op == ">":
        return lv > rv  # type: ignore[operator]
    if op == ">=":
        return lv >= rv  # type: ignore[operator]
    raise SearchError(f"unsupported comparison_type {op!r}; use =, !=, <, <=, >, >=, LIKE, IS NULL")


def evaluate(criteria: Criteria, lookup: Callable[[str], str | None]) -> bool:
    """Evaluate a criteria tree; ``lookup(schema_field)`` gives a row's value."""
    if criteria.schema_field is not None:
        return compare(lookup(criteria.schema_field), criteria.comparison or "=",
                       criteria.value or "")
    if not criteria.children:
        return True
    results = (evaluate(c, lookup) for c in criteria.children)
    return any(results) if criteria.method == "OR" else all(results)


# -- rendering -------------------------------------------------------------------------------
def render_json(rows: Sequence[dict[str, str]], total: int | None = None,
                title: str = "") -> bytes:
    """XNAT's ``{"ResultSet": {"Result": [...], "totalRecords": "N"}}`` wrapper."""
    payload = {"ResultSet": {"Result": list(rows),
                             "totalRecords": str(len(rows) if total is None else total),
                             "title": title}}
    return json.dumps(payload).encode("utf-8")


def render_csv(rows: Sequence[dict[str, str]], columns: Sequence[str] | None = None) -> bytes:
    """Rows as CSV with a header line (pyxnat's format)."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        columns = list(seen)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return out.getvalue().encode("utf-8")


def fnmatch_ci(value: str, pattern: str) -> bool:
    """Case-insensitive shell-style match (XNAT's ``label=S*`` filters)."""
    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


def today_text() -> str:
    """Today's date as ``YYYY-MM-DD`` (UTC)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
