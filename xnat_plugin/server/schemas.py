"""The data model the local XNAT server knows: XSD schemas served to clients and parsed here.

The server serves every ``*.xsd`` of :mod:`xnat_plugin.schema` (``xnat`` and ``cbctqa``) at
``/xapi/schemas/{name}``, exactly as XNAT serves the schemas of its core and its plugins, and
reads the same files to learn each datatype's fields, its base type and the restrictions on its
values (enumerations, integer ranges, maximum lengths). Those drive

- ``/data/search/elements`` and ``/data/search/elements/{xsiType}`` (search fields),
- validation of values written by PUT (an invalid value answers 400, as XNAT does),
- the type hierarchy used for routing (is an ``xsiType`` a subject, a session, a scan or an
  assessor?).

A minimal built-in hierarchy of XNAT's core types stands in for types the served schemas do not
declare, so the server stays usable with a partial core schema.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CORE_HIERARCHY",
    "FieldSpec",
    "SchemaCatalog",
    "SchemaError",
    "TypeInfo",
    "default_schema_dir",
]

from qa_core.errors import CbctQaError

XS = "{http://www.w3.org/2001/XMLSchema}"

#: Core XNAT types and their base types (XNAT 1.8 ``xnat.xsd``), used when the served schemas
#: do not declare a type. ``None`` marks a root type.
CORE_HIERARCHY: dict[str, str | None] = {
    "xnat:projectData": None,
    "xnat:subjectData": None,
    "xnat:experimentData": None,
    "xnat:subjectAssessorData": "xnat:experimentData",
    "xnat:imageSessionData": "xnat:subjectAssessorData",
    "xnat:ctSessionData": "xnat:imageSessionData",
    "xnat:mrSessionData": "xnat:imageSessionData",
    "xnat:derivedData": "xnat:experimentData",
    "xnat:imageAssessorData": "xnat:derivedData",
    "xnat:imageScanData": None,
    "xnat:ctScanData": "xnat:imageScanData",
    "xnat:mrScanData": "xnat:imageScanData",
    "xnat:abstractResource": None,
    "xnat:resource": "xnat:abstractResource",
    "xnat:resourceCatalog": "xnat:resource",
}

_XS_NUMERIC = {"xs:integer", "xs:int", "xs:long", "xs:short", "xs:float", "xs:double", "xs:decimal"}


class SchemaError(CbctQaError, ValueError):
    """A served XSD cannot be parsed, or a value breaks a schema restriction."""


@dataclass(frozen=True)
class FieldSpec:
    """One leaf field of a datatype (element or attribute with a simple value).

    Attributes
    ----------
    path : str
        Path below the datatype, e.g. ``status`` or ``scanner/manufacturer``.
    xs_type : str
        Built-in XML Schema type the value reduces to (``xs:string``, ``xs:float`` ...).
    enumeration : tuple of str
        Allowed values (empty when unrestricted).
    min_inclusive, max_inclusive : float or None
        Numeric range, when restricted.
    max_length : int or None
        Maximum string length, when restricted.
    """

    path: str
    xs_type: str
    enumeration: tuple[str, ...] = ()
    min_inclusive: float | None = None
    max_inclusive: float | None = None
    max_length: int | None = None

    def normalise(self, value: str, where: str) -> str:
        """Check ``value`` against this field's type and restrictions; return its canonical text.

        Raises
        ------
        SchemaError
            When the value does not parse as the field's type or breaks a restriction; the
            message names ``where`` (the datatype) and the field.
        """
        name = f"{where}/{self.path}"
        text = value.strip() if self.xs_type != "xs:string" else value
        if self.xs_type in {"xs:integer", "xs:int", "xs:long", "xs:short"}:
            try:
                number: float = int(text)
            except ValueError as exc:
                raise SchemaError(f"{name}: expected an integer, got {value!r}") from exc
            text = str(int(number))
        elif self.xs_type in {"xs:float", "xs:double", "xs:decimal"}:
            try:
                number = float(text)
            except ValueError as exc:
                raise SchemaError(f"{name}: expected a number, got {value!r}") from exc
            text = repr(number) if text.lower() not in {"nan", "inf", "-inf"} else text.lower()
            if text.endswith(".0") and "e" not in text:
                text = text[:-2]
        elif self.xs_type == "xs:boolean":
            low = text.lower()
            if low in {"true", "1"}:
                text = "true"
            elif low in {"false", "0"}:
                text = "false"
            else:
                raise SchemaError(f"{name}: expected true or false, got {value!r}")
        if self.enumeration and text not in self.enumeration:
            raise SchemaError(f"{name}: {value!r} is not one of {', '.join(self.enumeration)}")
        if self.xs_type in _XS_NUMERIC:
            num = float(text)
            if self.min_inclusive is not None and num < self.min_inclusive:
                raise SchemaError(f"{name}: {value!r} is below the minimum {self.min_inclusive:g}")
            if self.max_inclusive is not None and num > self.max_inclusive:
                raise SchemaError(f"{name}: {value!r} is above the maximum {self.max_inclusive:g}")
        if self.max_length is not None and len(text) > self.max_length:
            raise SchemaError(f"{name}: value longer than {self.max_length} characters")
        return text


@dataclass
class TypeInfo:
    """A complex datatype of a served schema: its base type and its own leaf fields."""

    name: str
    base: str | None
    fields: dict[str, FieldSpec] = field(default_factory=dict)


@dataclass
class _SimpleType:
    base: str
    enumeration: list[str] = field(default_factory=list)
    min_inclusive: float | None = None
    max_inclusive: float | None = None
    max_length: int | None = None


def default_schema_dir() -> Path:
    """The folder of the project's own schemas (``xnat_plugin/schema``)."""
    return Path(__file__).resolve().parent.parent / "schema"


class SchemaCatalog:
    """All schemas served by the local XNAT server, parsed.

    Parameters
    ----------
    schema_dirs : sequence of Path
        Folders searched for ``*.xsd`` (schema name = file stem). Later folders override earlier
        ones for the same name.
    """

    def __init__(self, schema_dirs: list[Path] | None = None) -> None:
        self.schema_dirs = list(schema_dirs) if schema_dirs else [default_schema_dir()]
        self._texts: dict[str, str] = {}
        self.types: dict[str, TypeInfo] = {}
        #: top-level element declarations: element name (e.g. ``QAAssessment``) -> type
        self.root_elements: dict[str, str] = {}
        #: namespace URI -> prefix of every served schema
        self.namespaces: dict[str, str] = {}
        self.reload()

    # -- loading ---------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read every schema file (cheap; called when a listed file changed)."""
        texts: dict[str, str] = {}
        for folder in self.schema_dirs:
            if folder.is_dir():
                for path in sorted(folder.glob("*.xsd")):
                    texts[path.stem] = path.read_text(encoding="utf-8")
        self._texts = texts
        self.types = {}
        self.root_elements = {}
        self.namespaces = {}
        for name, text in texts.items():
            self._parse(name, text)
        self._stamp = self._fingerprint()

    def _fingerprint(self) -> tuple[tuple[str, float], ...]:
        stamps: list[tuple[str, float]] = []
        for folder in self.schema_dirs:
            if folder.is_dir():
                stamps.extend((str(p), p.stat().st_mtime) for p in sorted(folder.glob("*.xsd")))
        return tuple(stamps)

    def refresh(self) -> None:
        """Reload when a schema file was added or changed since the last load."""
        if self._fingerprint() != self._stamp:
            self.reload()

    def names(self) -> list[str]:
        """Names of the served schemas, ``xnat`` first."""
        self.refresh()
        return sorted(self._texts, key=lambda n: (n != "xnat", n))

    def text(self, name: str) -> str:
        """The XSD text of schema ``name``.

        Raises
        ------
        KeyError
            When no schema of that name is served.
        """
        self.refresh()
        return self._texts[name]

    def _parse(self, schema_name: str, text: str) -> None:
        try:
            root = ET.fromstring(text.encode("utf-8"))
        except ET.ParseError as exc:
            raise SchemaError(f"schema {schema_name!r} is not well-formed XML: {exc}") from exc
        target = root.get("targetNamespace", "")
        prefix = _prefix_for(text, target) or schema_name
        self.namespaces[target] = prefix
        simple: dict[str, _SimpleType] = {}
        for node in root.findall(f"{XS}simpleType"):
            simple[f"{prefix}:{node.get('name')}"] = _parse_simple(node)
        for node in root.findall(f"{XS}complexType"):
            tname = f"{prefix}:{node.get('name')}"
            base = None
            ext = node.find(f"{XS}complexContent/{XS}extension")
            body = node
            if ext is not None:
                base = ext.get("base")
                body = ext
            info = TypeInfo(name=tname, base=base)
            _collect_fields(body, "", info.fields, simple, depth=0)
            self.types[tname] = info
        for node in root.findall(f"{XS}element"):
            root_type = node.get("type")
            if root_type:
                self.root_elements[f"{prefix}:{node.get('name')}"] = root_type

    # -- type hierarchy --------------------------------------------------------------------
    def canonical(self, xsi_type: str) -> str | None:
        """The declared spelling of ``xsi_type`` (matched case-insensitively), or None."""
        low = xsi_type.strip().lower()
        for name in list(self.types) + list(CORE_HIERARCHY):
            if name.lower() == low:
                return name
        return None

    def base_of(self, xsi_type: str) -> str | None:
        """Direct base type of ``xsi_type`` (None for a root type)."""
        info = self.types.get(xsi_type)
        if info is not None:
            return info.base
        return CORE_HIERARCHY.get(xsi_type)

    def ancestry(self, xsi_type: str) -> list[str]:
        """``xsi_type`` followed by its base types, nearest first."""
        chain = [xsi_type]
        seen = {xsi_type}
        current: str | None = xsi_type
        while current is not None:
            current = self.base_of(current)
            if current is None or current in seen:
                break
            chain.append(current)
            seen.add(current)
        return chain

    def is_a(self, xsi_type: str, base: str) -> bool:
        """True when ``xsi_type`` is ``base`` or derives from it."""
        return base in self.ancestry(xsi_type)

    def fields(self, xsi_type: str) -> dict[str, FieldSpec]:
        """All leaf fields of ``xsi_type``, inherited ones included (own fields win)."""
        merged: dict[str, FieldSpec] = {}
        for name in reversed(self.ancestry(xsi_type)):
            info = self.types.get(name)
            if info is not None:
                merged.update(info.fields)
        return merged

    def field(self, xsi_type: str, path: str) -> FieldSpec | None:
        """The field ``path`` of ``xsi_type`` (case-insensitive), or None."""
        fields = self.fields(xsi_type)
        if path in fields:
            return fields[path]
        low = path.lower()
        for name, spec in fields.items():
            if name.lower() == low:
                return spec
        return None

    def element_types(self) -> list[str]:
        """Datatypes declared as top-level elements (the searchable, instantiable ones)."""
        self.refresh()
        seen: list[str] = []
        for tname in self.root_elements.values():
            if tname not in seen and tname in self.types:
                seen.append(tname)
        return seen

    def element_name(self, xsi_type: str) -> str | None:
        """The top-level element declared for ``xsi_type`` (e.g. ``cbctqa:QAAssessment``)."""
        for ename, tname in self.root_elements.items():
            if tname == xsi_type:
                return ename
        return None

    def namespace_of(self, prefix: str) -> str | None:
        """Namespace URI of a served schema prefix."""
        for uri, pre in self.namespaces.items():
            if pre == prefix:
                return uri
        return None


def _prefix_for(text: str, namespace: str) -> str | None:
    for match in re.finditer(r'xmlns:([A-Za-z_][\w.-]*)="([^"]*)"', text):
        if match.group(2) == namespace and match.group(1) != "xs":
            return match.group(1)
    return None


def _parse_simple(node: ET.Element) -> _SimpleType:
    restriction = node.find(f"{XS}restriction")
    if restriction is None:
        return _SimpleType(base="xs:string")
    out = _SimpleType(base=str(restriction.get("base", "xs:string")))
    for child in restriction:
        tag = child.tag.replace(XS, "")
        value = child.get("value", "")
        if tag == "enumeration":
            out.enumeration.append(value)
        elif tag == "minInclusive":
            out.min_inclusive = float(value)
        elif tag == "maxInclusive":
            out.max_inclusive = float(value)
        elif tag == "maxLength":
            out.max_length = int(value)
    return out


def _spec(path: str, type_name: str | None, inline: ET.Element | None,
          simple: dict[str, _SimpleType]) -> FieldSpec:
    st: _SimpleType | None = None
    if inline is not None:
        st = _parse_simple(inline)
    elif type_name and type_name in simple:
        st = simple[type_name]
    if st is None:
        return FieldSpec(path=path, xs_type=type_name or "xs:string")
    base = st.base
    # a restriction of another named simple type
    while base in simple:
        inner = simple[base]
        st = _SimpleType(
            base=inner.base,
            enumeration=st.enumeration or inner.enumeration,
            min_inclusive=st.min_inclusive if st.min_inclusive is not None else inner.min_inclusive,
            max_inclusive=st.max_inclusive if st.max_inclusive is not None else inner.max_inclusive,
            max_length=st.max_length if st.max_length is not None else inner.max_length,
        )
        base = st.base
    return FieldSpec(
        path=path,
        xs_type=base if base.startswith("xs:") else "xs:string",
        enumeration=tuple(st.enumeration),
        min_inclusive=st.min_inclusive,
        max_inclusive=st.max_inclusive,
        max_length=st.max_length,
    )


def _collect_fields(body: ET.Element, prefix: str, out: dict[str, FieldSpec],
                    simple: dict[str, _SimpleType], depth: int) -> None:
    """Collect leaf elements and attributes below ``body`` (inline nesting only)."""
    if depth > 3:
        return
    for attr in body.findall(f"{XS}attribute"):
        name = attr.get("name")
        if name:
            path = prefix + name
            out[path] = _spec(path, attr.get("type"), attr.find(f"{XS}simpleType"), simple)
    for group in ("sequence", "choice", "all"):
        for container in body.findall(f"{XS}{group}"):
            _collect_elements(container, prefix, out, simple, depth)


def _collect_elements(container: ET.Element, prefix: str, out: dict[str, FieldSpec],
                      simple: dict[str, _SimpleType], depth: int) -> None:
    for node in container:
        tag = node.tag.replace(XS, "")
        if tag in {"sequence", "choice", "all"}:
            _collect_elements(node, prefix, out, simple, depth)
            continue
        if tag != "element":
            continue
        name = node.get("name")
        if not name:
            continue
        path = prefix + name
        type_name = node.get("type")
        if (node.get("maxOccurs") or "1") not in {"1", "0"}:
            continue  # repeated children are child objects, not fields
        inline_complex = node.find(f"{XS}complexType")
        if type_name and (type_name.startswith("xs:") or type_name in simple):
            out[path] = _spec(path, type_name, None, simple)
        elif type_name is None and node.find(f"{XS}simpleType") is not None:
            out[path] = _spec(path, None, node.find(f"{XS}simpleType"), simple)
        elif type_name is None and inline_complex is not None:
            sc = inline_complex.find(f"{XS}simpleContent/{XS}extension")
            if sc is not None:
                out[path] = _spec(path, sc.get("base"), None, simple)
                _collect_fields(sc, path + "/", out, simple, depth + 1)
            else:
                _collect_fields(inline_complex, path + "/", out, simple, depth + 1)
        elif type_name is None:
            out[path] = FieldSpec(path=path, xs_type="xs:string")
