"""Transport of the XNAT gateway: every HTTP request, its retries, its count and its errors.

:class:`GatewayTransport` holds the open xnatpy session and sends every request the gateway
makes: ``_request`` sends one logical request, retried with exponential backoff and bounded
jitter on connection errors and 5xx (``Retry-After`` honoured, capped by the policy), never
on 4xx (:mod:`xnat_plugin.gateway.retry`); ``_download`` streams a GET to a file under the
same rules; ``_get_json`` and ``_listing`` read XNAT documents and listings (rows with
lower-case keys); ``_status_error`` turns an HTTP status into a
:mod:`xnat_plugin.gateway.errors` error naming the object, the status and the fix. Every
attempt is counted (:attr:`GatewayTransport.request_counts`).

Logging in is :mod:`xnat_plugin.gateway.login`. Reading (:mod:`~xnat_plugin.gateway.reading`,
:mod:`~xnat_plugin.gateway.downloads`) and writing (:mod:`~xnat_plugin.gateway.writing`,
:mod:`~xnat_plugin.gateway.resources`) build on this class;
:class:`~xnat_plugin.gateway.session.XnatGateway` composes them.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import xnat.exceptions

from qa_core.logs import redact
from xnat_plugin.gateway.credentials import Credentials
from xnat_plugin.gateway.errors import (
    XnatAuthenticationError,
    XnatConfigurationError,
    XnatConflictError,
    XnatConnectionError,
    XnatGatewayClosedError,
    XnatGatewayError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatRequestError,
    XnatResponseFormatError,
    XnatServerError,
)
from xnat_plugin.gateway.records import SessionRef
from xnat_plugin.gateway.retry import RetryPolicy, is_retryable_status

__all__ = ["GatewayTransport", "RequestCounts"]

logger = logging.getLogger("xnat_plugin.gateway")

#: Every HTTP status: the gateway classifies answers itself instead of xnatpy.
_ANY_STATUS = range(100, 600)
_OK = (200,)
_OK_CREATED = (200, 201)
#: Lock stripes for writes of one assessor label (see ``GatewayWriting._label_lock``).
_LOCK_STRIPES = 64


@dataclass(frozen=True)
class RequestCounts:
    """HTTP requests sent by one gateway (login and connection set-up excluded).

    Attributes
    ----------
    attempts:
        Every request sent, retries included.
    retries:
        Attempts that repeated a failed one.
    """

    attempts: int
    retries: int


class _Answer:
    """Status, headers and body text of an HTTP answer (from a response or an xnatpy error)."""

    def __init__(
        self, status: int, text: str, headers: Mapping[str, str], response: requests.Response | None
    ):
        self.status = status
        self.text = text
        self.headers = headers
        self.response = response


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return redact(text)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait: ``Retry-After`` as seconds or as an HTTP-date."""
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        seconds = (when - _dt.datetime.now(_dt.UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)  # a date already past: retry now (the backoff still applies)


def _lower_keys(row: Mapping[str, Any]) -> dict[str, str]:
    return {str(k).lower(): "" if v is None else str(v) for k, v in row.items()}


class GatewayTransport:
    """The open xnatpy session of one gateway and the machinery every request goes through.

    Not used on its own: :class:`~xnat_plugin.gateway.session.XnatGateway` (built with
    :meth:`~xnat_plugin.gateway.session.XnatGateway.connect`) is the class to use.
    """

    def __init__(
        self,
        session: Any,
        credentials: Credentials,
        *,
        project: str | None,
        policy: RetryPolicy,
        timeout: float,
        rng: random.Random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Wrap an open xnatpy session; use :meth:`connect` rather than calling this."""
        self._xnat: Any = session
        self._host = credentials.host
        self._user = credentials.user
        self._project = project
        self._policy = policy
        self._timeout = timeout
        self._rng = rng
        self._sleep = sleep
        self._counter_lock = threading.Lock()
        self._attempts = 0
        self._retries = 0
        # Striped locks: writes of one assessor label from threads of this process take turns;
        # a fixed number of stripes keeps memory bounded in long-running services.
        self._label_locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` ran (or the ``with`` block ended)."""
        return self._xnat is None

    @property
    def xnat(self) -> Any:
        """The underlying xnatpy session (``xnat.session.XNATSession``) for anything not wrapped."""
        return self._open()

    @property
    def host(self) -> str:
        """Server URL."""
        return self._host

    @property
    def user(self) -> str:
        """Logged-in XNAT username."""
        return self._user

    @property
    def project(self) -> str | None:
        """Default project ID, if one was given."""
        return self._project

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy in force."""
        return self._policy

    @property
    def request_counts(self) -> RequestCounts:
        """Requests sent by this gateway's methods so far (connection set-up excluded)."""
        with self._counter_lock:
            return RequestCounts(attempts=self._attempts, retries=self._retries)

    # ------------------------------------------------------------------ HTTP core

    def _open(self) -> Any:
        if self._xnat is None:
            raise XnatGatewayClosedError(
                f"the XNAT gateway for {self._host} is closed; use it inside its 'with XnatGateway.connect(...)' block"
            )
        return self._xnat

    def _count(self, retry: bool) -> None:
        with self._counter_lock:
            self._attempts += 1
            if retry:
                self._retries += 1

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: Mapping[str, str] | None = None,
        data: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        accepted: Container[int] = _OK,
    ) -> requests.Response:
        """Send one logical request with retries; return the accepted response.

        ``data`` is a factory so that each attempt sends a fresh body (open file handles
        are consumed by a failed attempt). ``what`` names the XNAT object for errors.
        """
        attempt = 0
        while True:
            session = self._open()
            self._count(retry=attempt > 0)
            attempt += 1
            try:
                answer = self._send(session, method, path, query=query, data=data, headers=headers)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                if isinstance(exc, requests.exceptions.SSLError):
                    raise XnatConnectionError(
                        f"{method} {path} for {what}: TLS failure talking to {self._host} "
                        f"({type(exc).__name__}); check the host URL scheme and certificates",
                        uri=path,
                        attempts=attempt,
                    ) from exc
                if attempt < self._policy.max_attempts:
                    self._backoff(attempt, method, path, what, f"{type(exc).__name__}", None)
                    continue
                raise XnatConnectionError(
                    f"{method} {path} for {what}: no answer from XNAT at {self._host} after {attempt} attempt(s) "
                    f"({type(exc).__name__}); check that XNAT is running and reachable",
                    uri=path,
                    attempts=attempt,
                ) from exc
            if answer.status in accepted:
                if answer.response is None or answer.text.startswith(("<!DOCTYPE", "<html>")):
                    raise XnatResponseFormatError(
                        f"{method} {path} for {what}: XNAT answered {answer.status} with an HTML page instead of "
                        f"data ({_excerpt(answer.text, 120)}); check that the host URL points at XNAT's REST root",
                        status=answer.status,
                        uri=path,
                        attempts=attempt,
                    )
                return answer.response
            if is_retryable_status(answer.status) and attempt < self._policy.max_attempts:
                self._backoff(
                    attempt,
                    method,
                    path,
                    what,
                    f"HTTP {answer.status}",
                    _retry_after(answer.headers),
                )
                continue
            raise self._status_error(method, path, what, answer, attempt)

    def _send(
        self,
        session: Any,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None,
        data: Callable[[], Any] | None,
        headers: Mapping[str, str] | None,
    ) -> _Answer:
        q = dict(query or {})
        h = dict(headers or {})
        body = data() if data is not None else None
        try:
            try:
                if method == "GET":
                    resp = session.get(
                        path, query=q, accepted_status=_ANY_STATUS, timeout=self._timeout, headers=h
                    )
                elif method in ("PUT", "POST"):
                    send = session.put if method == "PUT" else session.post
                    resp = send(
                        path,
                        data=body,
                        query=q,
                        accepted_status=_ANY_STATUS,
                        timeout=self._timeout,
                        headers=h,
                    )
                elif method == "DELETE":
                    resp = session.delete(
                        path, query=q, accepted_status=_ANY_STATUS, timeout=self._timeout, headers=h
                    )
                else:  # pragma: no cover - internal misuse
                    raise ValueError(f"unsupported HTTP method {method}")
            except xnat.exceptions.XNATResponseError as exc:
                # xnatpy rejects any answer whose body is an HTML page; classify it by status.
                return _Answer(int(exc.status_code), str(exc.text or ""), {}, None)
            except xnat.exceptions.XNATSSLError as exc:
                raise requests.exceptions.SSLError(str(exc)) from exc
        finally:
            close = getattr(body, "close", None)
            if callable(close):
                close()
        return _Answer(resp.status_code, resp.text, resp.headers, resp)

    def _backoff(
        self, attempt: int, method: str, path: str, what: str, cause: str, retry_after: float | None
    ) -> None:
        wait = self._policy.delay(attempt - 1, self._rng, retry_after)
        logger.warning(
            "XNAT %s %s (%s) failed with %s; retry %d of %d in %.2f s",
            method,
            path,
            what,
            cause,
            attempt,
            self._policy.retries,
            wait,
        )
        self._sleep(wait)

    def _status_error(
        self, method: str, path: str, what: str, answer: _Answer, attempts: int
    ) -> XnatGatewayError:
        status = answer.status
        said = _excerpt(answer.text) or "(empty body)"
        head = (
            f"{method} {path} for {what}: XNAT answered HTTP {status} after {attempts} attempt(s)"
        )
        cls: type[XnatGatewayError]
        if status == 401:
            cls, fix = (
                XnatAuthenticationError,
                (
                    f"the session of user {self._user!r} is not (or no longer) authenticated; reconnect, and check "
                    "XNAT_USER/XNAT_PASS or the ~/.netrc entry"
                ),
            )
        elif status == 403:
            cls, fix = (
                XnatPermissionError,
                (
                    f"user {self._user!r} lacks the access this needs; ask a project owner for the Members or Owners role"
                ),
            )
        elif status == 404:
            cls, fix = XnatNotFoundError, "check that the project, session, scan or assessor exists"
        elif status == 409:
            cls, fix = (
                XnatConflictError,
                "the stored object conflicts with this write; inspect it in XNAT",
            )
        elif 400 <= status < 500:
            cls, fix = XnatRequestError, "XNAT refused the request as invalid; this is not retried"
        elif 500 <= status < 600:
            cls, fix = XnatServerError, "XNAT is failing; retry later or check the XNAT server logs"
        else:
            cls, fix = XnatResponseFormatError, "unexpected status"
        return cls(f"{head}: {said}. Fix: {fix}", status=status, uri=path, attempts=attempts)

    def _get_json(self, path: str, *, what: str, query: Mapping[str, str] | None = None) -> Any:
        q = dict(query or {})
        q["format"] = "json"
        resp = self._request("GET", path, what=what, query=q)
        try:
            return resp.json()
        except ValueError as exc:
            raise XnatResponseFormatError(
                f"GET {path} for {what}: XNAT answered 200 but not JSON ({_excerpt(resp.text, 120)})",
                status=resp.status_code,
                uri=path,
                attempts=1,
            ) from exc

    def _listing(self, path: str, *, what: str, query: Mapping[str, str]) -> list[dict[str, str]]:
        """One XNAT listing (``ResultSet.Result``) as rows with lower-case keys."""
        payload = self._get_json(path, what=what, query=query)
        try:
            rows = payload["ResultSet"]["Result"]
        except (KeyError, TypeError) as exc:
            raise XnatResponseFormatError(
                f"GET {path} for {what}: expected an XNAT listing {{'ResultSet': {{'Result': [...]}}}}, got "
                f"{_excerpt(json.dumps(payload)[:200], 120)}",
                uri=path,
            ) from exc
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise XnatResponseFormatError(
                f"GET {path} for {what}: ResultSet.Result is not a list of rows", uri=path
            )
        return [_lower_keys(r) for r in rows]

    def _download(self, path: str, target: Path, *, what: str, query: Mapping[str, str]) -> None:
        """Stream a GET to ``target`` (xnatpy ``download_stream``) with the retry rules of
        :meth:`_request`; each attempt rewrites the file from the start."""
        fmt = query.get("format")
        attempt = 0
        while True:
            session = self._open()
            self._count(retry=attempt > 0)
            attempt += 1
            try:
                with open(target, "wb") as fh:
                    session.download_stream(
                        path, fh, format=fmt, verbose=False, timeout=self._timeout
                    )
                return
            except xnat.exceptions.XNATResponseError as exc:
                answer = _Answer(int(exc.status_code), str(exc.text or ""), {}, None)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                if attempt < self._policy.max_attempts:
                    self._backoff(attempt, "GET", path, what, type(exc).__name__, None)
                    continue
                raise XnatConnectionError(
                    f"GET {path} for {what}: download failed after {attempt} attempt(s) ({type(exc).__name__}); "
                    f"check that XNAT at {self._host} is running and reachable",
                    uri=path,
                    attempts=attempt,
                ) from exc
            except ValueError as exc:  # xnatpy: an HTML page instead of the file
                raise XnatResponseFormatError(
                    f"GET {path} for {what}: XNAT answered with an HTML page instead of a zip; check the host URL",
                    status=200,
                    uri=path,
                    attempts=attempt,
                ) from exc
            if is_retryable_status(answer.status) and attempt < self._policy.max_attempts:
                self._backoff(attempt, "GET", path, what, f"HTTP {answer.status}", None)
                continue
            raise self._status_error("GET", path, what, answer, attempt)

    def _project_or_default(self, project: str | None) -> str:
        chosen = project or self._project
        if not chosen:
            raise XnatConfigurationError(
                "no project given: pass project=... to this method or to XnatGateway.connect(project=...)"
            )
        return chosen

    def _assessors_path(self, session: SessionRef) -> str:
        return f"/data/experiments/{quote(session.session_id, safe='')}/assessors"
