"""Requests and answers as the application sees them (no sockets), and the small helpers
every route uses: labels, query parameters, multipart bodies, zip downloads.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qa_core.errors import CbctQaError

from . import search as srch
from .auth import Principal
from .resources import build_zip

__all__ = ["XNAT_VERSION", "HttpError", "Request", "Response", "log"]

log = logging.getLogger("xnat_plugin.server")

XNAT_VERSION = "1.8.10"
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"

#: query parameters that steer a request and are never object fields
_RESERVED = {
    "xsitype", "req_format", "format", "inbody", "allowdatadeletion", "event_reason",
    "event_type", "event_action", "event_comment", "overwrite", "removefiles", "activate",
    "quarantine", "triggerpipelines", "fixscantypes", "pulldatafromheaders", "columns",
    "content", "tags", "extract", "update-stats", "_", "limit", "offset", "sortby",
    "sortorder", "accept-not-found", "separatepetmr", "dest", "import-handler",
}
#: child collections inside an XML document, not fields of the object itself
_XML_CHILD_COLLECTIONS = {"scans", "assessors", "resources", "out", "in", "experiments",
                          "sharing", "reconstructions", "files", "file", "fields",
                          "investigators", "aliases", "studyProtocol", "PI"}
_KIND_OF_COLLECTION = {"subjects": "subject", "experiments": "experiment", "scans": "scan",
                       "assessors": "assessor", "projects": "project"}
_LIST_KINDS = {"experiment", "assessor"}
#: most bytes of a login form (``PUT /data/services/auth``), read before anyone is logged in
_LOGIN_BODY_LIMIT = 64 * 1024


class HttpError(CbctQaError):
    """An answer other than success: HTTP status and a short plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One HTTP request as the application sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: IO[bytes]
    body_size: int
    cookies: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None
    new_token: str | None = None
    max_buffered: int = 1 << 30

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def body_bytes(self) -> bytes:
        """The whole body in memory (XML documents, forms, multipart, search bundles).

        Raises
        ------
        HttpError
            413 when the body is larger than ``max_buffered`` bytes; large files go as a raw
            body (``inbody=true`` or octet-stream), which is streamed to disk instead.
        """
        if self.body_size > self.max_buffered:
            raise HttpError(413, f"request body of {self.body_size} bytes is over the "
                                 f"{self.max_buffered} bytes read into memory for {self.path}; "
                                 "send large files as a raw body (inbody=true)")
        self.body.seek(0)
        return self.body.read()

    def param(self, name: str, default: str | None = None) -> str | None:
        """Query parameter, matched case-insensitively."""
        if name in self.query:
            return self.query[name]
        low = name.lower()
        for key, value in self.query.items():
            if key.lower() == low:
                return value
        return default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in {"true", "1", "yes"}


@dataclass
class Response:
    """One answer: status, body (bytes or a file to stream), content type, extra headers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None
    delete_file: bool = False
    drop: bool = False

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode("utf-8"))

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Response:
        return cls(status=status, body=json.dumps(payload).encode("utf-8"),
                   content_type="application/json")


def _strip_type(key: str) -> str:
    if "/" in key and ":" in key.split("/", 1)[0]:
        return key.split("/", 1)[1]
    return key


_LABEL_RE = re.compile(r"[A-Za-z0-9_.\-]{1,255}")


def _check_label(label: str, kind: str) -> None:
    # '.' and '..' would be path steps in URIs and in the member names of zip downloads
    if not _LABEL_RE.fullmatch(label) or set(label) == {"."}:
        raise HttpError(400, f"invalid {kind} label {label!r}: use letters, digits, '_', '-', '.'")


def _int_param(req: Request, name: str, default: int) -> int:
    value = req.param(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise HttpError(400, f"{name}={value!r} is not an integer") from exc


def _in_date_range(value: str, spec: str) -> bool:
    """XNAT date filters: ``MM/DD/YYYY``, ``A-B`` range (either side may be empty)."""
    if not value:
        return False
    v = srch.parse_date_bound(value) or value
    # split a range on a '-' that is not inside an ISO date
    m = re.fullmatch(r"\s*(\d{1,2}/\d{1,2}/\d{4}[^-]*)?\s*-\s*(\d{1,2}/\d{1,2}/\d{4}.*)?\s*", spec)
    if m and (m.group(1) or m.group(2)):
        lo = srch.parse_date_bound(m.group(1)) if m.group(1) else None
        hi = srch.parse_date_bound(m.group(2)) if m.group(2) else None
        if lo is not None and v[: len(lo)] < lo:
            return False
        return not (hi is not None and v[: len(hi)] > hi)
    if ".." in spec:
        lo_s, _, hi_s = spec.partition("..")
        lo = srch.parse_date_bound(lo_s) if lo_s.strip() else None
        hi = srch.parse_date_bound(hi_s) if hi_s.strip() else None
        if lo is not None and v < lo:
            return False
        return not (hi is not None and v[: len(hi)] > hi)
    exact = srch.parse_date_bound(spec)
    if exact is None:
        raise HttpError(400, f"date filter {spec!r}: use MM/DD/YYYY or MM/DD/YYYY-MM/DD/YYYY")
    return v[: len(exact)] == exact


def _multipart(req: Request) -> list[tuple[str | None, str | None, str | None, bytes]]:
    """Parts of a multipart body: (field name, filename, content type, payload)."""
    header = f"Content-Type: {req.header('content-type')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        header + req.body_bytes())
    parts = []
    if not message.is_multipart():
        raise HttpError(400, "multipart body could not be parsed (missing boundary?)")
    for part in message.iter_parts():
        payload = part.get_payload(decode=True) or b""
        parts.append((part.get_param("name", header="content-disposition"),
                      part.get_filename(), part.get_content_type(), payload))
    return parts  # type: ignore[return-value]


def _zip_response(entries: list[tuple[str, Path]], filename: str, folder: Path) -> Response:
    resp = Response(file=build_zip(entries, folder), delete_file=True,
                    content_type="application/zip")
    resp.headers.append(("Content-Disposition", _attachment(filename)))
    return resp


def _attachment(filename: str) -> str:
    """A ``Content-Disposition`` value for ``filename``.

    In the plain ``filename`` control characters (a CR/LF would split the header), quotes,
    backslashes and non-ASCII characters (headers go out as Latin-1) become ``_``; a name
    that is not plain ASCII also gets the exact name as RFC 5987 ``filename*``.
    """
    safe = "".join("_" if ord(ch) < 0x20 or ord(ch) >= 0x7F or ch in '"\\' else ch
                   for ch in filename)
    if safe == filename:
        return f'attachment; filename="{safe}"'
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"
