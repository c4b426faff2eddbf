"""Parsing XML sent by clients, safely: bounded depth, no DTDs, no entities.

Every XML body the server accepts (object documents, search bundles) goes through
:func:`parse_xml`. A streaming ``expat`` pass (no recursion, no tree) first refuses a
``<!DOCTYPE>`` or entity declaration (entity expansion bombs, external entities) and any
element nested deeper than :data:`MAX_DEPTH`; only then is the tree built. The tree walkers
elsewhere recurse, so the depth bound is what keeps a document nested tens of thousands
deep from raising ``RecursionError`` (a 500) instead of a 400.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from xml.parsers import expat

from qa_core.errors import CbctQaError

__all__ = ["MAX_DEPTH", "XmlRejected", "parse_xml"]

#: deepest element nesting accepted (XNAT documents and search bundles need under 20)
MAX_DEPTH = 64


class XmlRejected(CbctQaError, ValueError):
    """A client's XML body is malformed, too deep, or declares a DTD or entities."""


def parse_xml(doc: bytes, what: str, max_depth: int = MAX_DEPTH) -> ET.Element:
    """The root element of ``doc``.

    Parameters
    ----------
    doc : bytes
        The XML document as sent.
    what : str
        What the document is, for the error message (``"search bundle"``).
    max_depth : int
        Deepest element nesting accepted.

    Raises
    ------
    XmlRejected
        When the document is not well-formed, declares a DTD or entities, or nests
        elements deeper than ``max_depth``.
    """
    depth = 0

    def start(_name: str, _attrs: Any) -> None:
        nonlocal depth
        depth += 1
        if depth > max_depth:
            raise XmlRejected(f"{what}: elements nested deeper than {max_depth} levels; "
                              "send a flat document")

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    def doctype(*_args: Any) -> None:
        raise XmlRejected(f"{what}: DOCTYPE and entity declarations are not accepted; "
                          "remove the <!DOCTYPE ...> part")

    scanner = expat.ParserCreate()
    scanner.StartElementHandler = start
    scanner.EndElementHandler = end
    scanner.StartDoctypeDeclHandler = doctype
    scanner.EntityDeclHandler = doctype
    try:
        scanner.Parse(doc, True)
    except expat.ExpatError as exc:
        raise XmlRejected(f"{what} is not well-formed XML: {exc}") from exc
    try:
        return ET.fromstring(doc)
    except ET.ParseError as exc:
        raise XmlRejected(f"{what} is not well-formed XML: {exc}") from exc
