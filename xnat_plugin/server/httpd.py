"""HTTP/1.1 serving of the application: one thread per connection (stdlib
``ThreadingHTTPServer``), keep-alive, chunked request bodies, bodies refused before they are
read unless the client is logged in, a listen backlog sized for bursts.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, TYPE_CHECKING, Any

from qa_core.logs import redact

from .wire import HttpError, Request, Response, log

if TYPE_CHECKING:
    from .app import XnatApp

__all__ = ["XnatHTTPServer"]


def _normalise_path(path: str) -> str:
    if path.startswith("/REST/") or path == "/REST":
        path = "/data" + path[len("/REST"):]
    if path.startswith("/data/archive/") or path == "/data/archive":
        path = "/data" + path[len("/data/archive"):]
    if len(path) > 1:
        path = path.rstrip("/")
    return path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "XNAT"
    sys_version = ""
    server: XnatHTTPServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every keep-alive request
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), redact(format % args))

    def _read_body(self, limit: int) -> tuple[IO[bytes], int]:
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115 - closed by _handle
        size = 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                try:
                    chunk_len = int(line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError as exc:
                    raise HttpError(400, f"malformed chunk size {line[:20]!r}") from exc
                if chunk_len < 0:
                    raise HttpError(400, f"malformed chunk size {line[:20]!r}")
                if chunk_len == 0:
                    while True:  # trailers
                        trailer = self.rfile.readline(65537)
                        if trailer in {b"\r\n", b"\n", b""}:
                            break
                    break
                remaining = chunk_len
                while remaining > 0:
                    data = self.rfile.read(min(remaining, 1 << 20))
                    if not data:
                        raise ConnectionError("client closed the connection mid-chunk")
                    spool.write(data)
                    remaining -= len(data)
                size += chunk_len
                if size > limit:
                    raise HttpError(413, f"request body exceeds {limit} bytes")
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            text = (self.headers.get("Content-Length") or "0").strip()
            if not text.isdigit():
                raise HttpError(400, f"Content-Length {text[:20]!r} is not a byte count")
            length = int(text)
            if length > limit:
                raise HttpError(413, f"request body of {length} bytes exceeds {limit} bytes")
            remaining = length
            while remaining > 0:
                data = self.rfile.read(min(remaining, 1 << 20))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                spool.write(data)
                remaining -= len(data)
            size = length
        spool.seek(0)
        return spool, size

    def _handle(self) -> None:
        started = time.monotonic()
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        cookies: dict[str, str] = {}
        for chunk in (self.headers.get("Cookie") or "").split(";"):
            name, sep, value = chunk.strip().partition("=")
            if sep:
                cookies[name] = value
        path = _normalise_path(parsed.path)
        has_body = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower() \
            or (self.headers.get("Content-Length") or "0").strip() not in {"", "0"}
        try:
            # who may send a body is decided before reading it: an anonymous client must not
            # be able to make the server spool gigabytes to disk
            limit = self.server.app.body_limit(path, headers, cookies) if has_body \
                else self.server.app.config.max_body_bytes
            body, size = self._read_body(limit)
        except HttpError as exc:
            resp = Response.text(exc.message, exc.status)
            if exc.status == 401:
                resp.headers.append(("WWW-Authenticate", 'Basic realm="XNAT"'))
            log.info("%s %s -> %d (%.1f ms)", self.command, redact(parsed.path), resp.status,
                     1000 * (time.monotonic() - started))
            self.close_connection = True
            self._send(resp)
            return
        req = Request(method=self.command, path=path, query=query,
                      headers=headers, body=body, body_size=size, cookies=cookies)
        try:
            resp = self.server.app.handle(req)
        finally:
            body.close()
        if resp.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            log.info("%s %s -> dropped (injected fault)", self.command, redact(parsed.path))
            return
        # logged before the answer is sent, so a client that has its answer can rely on the
        # access-log line being there (tests count requests this way)
        log.info("%s %s -> %d (%.1f ms)", self.command, redact(parsed.path), resp.status,
                 1000 * (time.monotonic() - started))
        self._send(resp)

    def _send(self, resp: Response) -> None:
        handle: IO[bytes] | None = None
        path = resp.file
        if path is not None:
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                resp = Response.text("File removed while the download started; retry", 404)
            else:
                if resp.delete_file:
                    path.unlink(missing_ok=True)  # the open handle keeps the content
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            for name, value in resp.headers:
                self.send_header(name, value)
            if handle is not None:
                size = os.fstat(handle.fileno()).st_size
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command != "HEAD":
                    shutil.copyfileobj(handle, self.wfile, 1 << 20)
            else:
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)
        finally:
            if handle is not None:
                handle.close()

    do_GET = _handle
    do_PUT = _handle
    do_POST = _handle
    do_DELETE = _handle
    do_HEAD = _handle


class XnatHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server bound to one :class:`XnatApp`; tracks open connections so that
    :meth:`close_connections` ends keep-alive connections when the server stops."""

    daemon_threads = True
    allow_reuse_address = True
    #: listen backlog: the standard library's 5 makes every sixth connection of a burst
    #: (many workers starting at once) wait for a SYN retransmission, about a second
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: XnatApp) -> None:
        self.app = app
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection (their handler threads then exit)."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(2)
            except OSError:
                pass
