"""``XnatGateway``: the one context manager through which flows and dashboard talk to XNAT.

It wraps an xnatpy session (``xnat.connect``) and adds what unattended services need:

* credentials from arguments, environment or ``~/.netrc`` (never prompting), the password
  kept out of every log, error, repr, URL and result;
* retries with exponential backoff and bounded jitter on connection errors and 5xx, none
  on 4xx (:mod:`xnat_plugin.gateway.retry`); errors from :mod:`xnat_plugin.gateway.errors`
  naming the session, label or URI and the status;
* discovery and bulk reads in a constant number of requests whatever the project size
  (XNAT listings with ``xsiType`` and ``columns``);
* idempotent assessment and rating writes (deterministic labels, PUT by label), with the
  assessment's resources uploaded before its status says ``complete``.

Requests made (``P`` a project, ``E`` a session ID, ``A`` an assessor):

=========================  ======================================================================
method                     requests
=========================  ======================================================================
find_sessions_to_score     2: ``GET /data/experiments?xsiType=xnat:ctSessionData&project=P&columns=…``
                           and ``GET /data/experiments?xsiType=cbctqa:qaAssessmentData&project=P&columns=…``
read_assessments           1: ``GET /data/experiments?xsiType=cbctqa:qaAssessmentData&project=P&columns=…``
read_ratings               1: ``GET /data/experiments?xsiType=cbctqa:ratingData&project=P&columns=…``
list_scans                 1: ``GET /data/experiments/E?format=json``
download_scan              1 (+1 to choose the scan): ``GET …/scans/S/resources/DICOM/files?format=zip``
write_assessment           PUT assessor by label (1, more only for very long text fields), GET the
                           session's assessors (duplicate check), per resource label: one PUT per
                           file and one GET listing (digest check, stale files deleted); final PUT
                           of the status
write_rating, mark_failed  PUT by label + duplicate check
=========================  ======================================================================
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import functools
import hashlib
import json
import logging
import random
import re
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import requests
import xnat
import xnat.exceptions
import xnat.session

from qa_core.logs import redact
from xnat_plugin.gateway.attempts import (
    FailureTag,
    ScoringCandidate,
    parse_failure_reason,
    scans_fingerprint,
)
from xnat_plugin.gateway.credentials import Credentials, resolve_credentials
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
    XnatScanSelectionError,
    XnatServerError,
    XnatValidationError,
)
from xnat_plugin.gateway.records import (
    ASSESSMENT_XSI_TYPE,
    CT_SESSION_XSI_TYPE,
    NULL,
    RATING_XSI_TYPE,
    AssessmentRecord,
    RatingRecord,
    ScanRef,
    SessionRef,
    StoredAssessment,
    assessment_label,
    parse_xnat_datetime,
    rating_label,
    safe_label_part,
    validate_scores,
)
from xnat_plugin.gateway.retry import RetryPolicy, is_retryable_status

if TYPE_CHECKING:
    from qa_core.volume import Volume

__all__ = ["RequestCounts", "XnatGateway"]

logger = logging.getLogger("xnat_plugin.gateway")
_XNATPY_LOGGER = logging.getLogger("xnat_plugin.gateway.xnatpy")

#: Every HTTP status: the gateway classifies answers itself instead of xnatpy.
_ANY_STATUS = range(100, 600)
_OK = (200,)
_OK_CREATED = (200, 201)
#: Longest query string sent in one assessor PUT (servlet containers limit the request
#: line to about 8 KiB); longer field sets are split over several PUTs by label.
_MAX_QUERY_CHARS = 4000
_MODALITY_XSI = {"CT": CT_SESSION_XSI_TYPE}
_LOCK_STRIPES = 64
_RESOURCE_LABEL = re.compile(r"[A-Za-z0-9_-]+")
_ID_LIKE = re.compile(r"[A-Za-z0-9_.-]+")
_SESSION_COLUMNS = ("ID", "label", "project", "xsiType", "subject_ID", "subject_label", "URI", "insert_date",
                    "last_modified")  # fmt: skip
_ASSESSOR_COLUMNS = ("ID", "label", "project", "xsiType", "URI", "session_ID", "session_label", "subject_ID",
                     "subject_label", "date", "insert_date", "last_modified")  # fmt: skip


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


def _id_sort_key(accession_id: str) -> tuple[int, str]:
    return (len(accession_id), accession_id)


class XnatGateway:
    """Context manager over an xnatpy session for the CBCT QA services.

    Open with :meth:`connect`::

        with XnatGateway.connect(project="HN_CBCT") as gw:
            for ref in gw.find_sessions_to_score(model_version="1.2.0"):
                volume = gw.load_session_volume(ref)
                ...
                gw.write_assessment(ref, record, resources={"OVERLAYS": pngs})

    Leaving the ``with`` block ends the XNAT session (``DELETE /data/JSESSION``) and closes
    the connection pool, also when the block raised. One gateway may be shared by threads;
    writes of the same assessor label from threads of one process are serialised, and
    writes racing from several processes converge on one assessor (see
    :meth:`write_assessment`).
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

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def connect(
        cls,
        host: str | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        project: str | None = None,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        jitter: float = 0.5,
        timeout: float = 60.0,
        parse_model: bool = False,
        netrc_file: str | Path | None = None,
        seed: int | None = None,
    ) -> XnatGateway:
        """Log in to XNAT and return an open gateway (use it in a ``with`` block).

        Parameters
        ----------
        host, user, password:
            Server URL and credentials; ``None`` falls back to ``XNAT_HOST``/``XNAT_USER``/
            ``XNAT_PASS`` (or ``XNATPY_*``), then to the ``~/.netrc`` (or ``$NETRC``) entry
            for the host, as xnatpy does. Never prompts.
        project:
            Default project ID for the methods that take one.
        retries, backoff, max_backoff, jitter:
            :class:`~xnat_plugin.gateway.retry.RetryPolicy` for every request, login included.
        timeout:
            Seconds to wait for XNAT to accept a connection or send data, per request.
        parse_model:
            Also build xnatpy's object model from the server's schemas (needed only to use
            :attr:`xnat` object access such as ``gw.xnat.projects[...]``; costs a request
            per schema and per data type at connect). The gateway's own methods do not need it.
        netrc_file:
            Alternative netrc file.
        seed:
            Seed of the retry jitter (reproducible tests); ``None`` seeds from the OS.

        Raises
        ------
        XnatConfigurationError
            No host or no credentials found.
        XnatAuthenticationError
            XNAT rejected the login (401/403).
        XnatConnectionError, XnatServerError
            XNAT unreachable or failing after every retry.
        """
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise XnatConfigurationError(f"timeout is {timeout!r}; expected seconds > 0")
        try:
            policy = RetryPolicy(
                retries=retries, backoff=backoff, max_backoff=max_backoff, jitter=jitter
            )
        except ValueError as exc:
            raise XnatConfigurationError(str(exc)) from exc
        credentials = resolve_credentials(host, user, password, netrc_file=netrc_file)
        rng = random.Random(seed)
        session = _open_session(
            credentials, policy=policy, timeout=float(timeout), parse_model=parse_model, rng=rng
        )
        gw = cls(
            session, credentials, project=project, policy=policy, timeout=float(timeout), rng=rng
        )
        logger.info("connected to XNAT at %s as %s", credentials.host, credentials.user)
        return gw

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the XNAT session and close connections; safe to call twice."""
        session, self._xnat = self._xnat, None
        if session is None:
            return
        try:
            session.disconnect()
        except Exception as exc:  # the server may be gone; still release everything locally
            logger.warning(
                "XNAT at %s: ending the session failed (%s); closed locally",
                self._host,
                _excerpt(str(exc), 200),
            )
            xnat.session.BaseXNATSession.disconnect(session)

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

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"XnatGateway(host={self._host!r}, user={self._user!r}, project={self._project!r}, {state})"

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

    # ------------------------------------------------------------------ discovery

    def _project_or_default(self, project: str | None) -> str:
        chosen = project or self._project
        if not chosen:
            raise XnatConfigurationError(
                "no project given: pass project=... to this method or to XnatGateway.connect(project=...)"
            )
        return chosen

    def _session_rows(
        self, project: str, xsi_type: str, extra: Mapping[str, str] | None = None
    ) -> list[SessionRef]:
        query = {"xsiType": xsi_type, "project": project, "columns": ",".join(_SESSION_COLUMNS)}
        query.update(extra or {})
        rows = self._listing(
            "/data/experiments", what=f"{xsi_type} sessions of project {project}", query=query
        )
        refs = []
        for row in rows:
            if row.get("xsitype") and row["xsitype"].lower() != xsi_type.lower():
                continue  # a server that ignores the xsiType filter
            if row.get("project") and row["project"] != project:
                continue
            what = f"session {row.get('label', '?')} ({row.get('id', '?')}) of project {project}"
            refs.append(
                SessionRef(
                    project=project,
                    subject=row.get("subject_label", ""),
                    subject_id=row.get("subject_id", ""),
                    session_id=row.get("id", ""),
                    label=row.get("label", ""),
                    uri=row.get("uri") or f"/data/experiments/{row.get('id', '')}",
                    insert_date=parse_xnat_datetime(
                        row.get("insert_date", ""), what=f"{what} insert_date"
                    ),
                    last_modified=parse_xnat_datetime(
                        row.get("last_modified", ""), what=f"{what} last_modified"
                    ),
                )
            )
        return refs

    def list_sessions(
        self, project: str | None = None, *, modality: str = "CT"
    ) -> list[SessionRef]:
        """All image sessions of ``modality`` in the project, oldest first; one request."""
        project = self._project_or_default(project)
        refs = self._session_rows(project, _modality_xsi(modality))
        return sorted(refs, key=_session_order)

    def get_session(
        self, label: str, project: str | None = None, *, modality: str = "CT"
    ) -> SessionRef:
        """The session with this label (or accession ID) in the project; one request.

        Raises
        ------
        XnatNotFoundError
            No such session in the project.
        """
        project = self._project_or_default(project)
        refs = self._session_rows(project, _modality_xsi(modality))
        for ref in refs:
            if label in (ref.label, ref.session_id):
                return ref
        raise XnatNotFoundError(
            f"no {_modality_xsi(modality)} session with label or ID {label!r} in project {project}; "
            "check the label and the project",
            status=None,
            uri="/data/experiments",
        )

    def find_sessions_to_score(
        self,
        project: str | None = None,
        *,
        model_version: str,
        modality: str = "CT",
        max_attempts: int = 3,
    ) -> list[SessionRef]:
        """Sessions to (re)score by ``model_version``, oldest first (see :meth:`plan_scoring`).

        Two requests whatever the project size (plus one per session whose last failure was
        final, to see whether its scans changed): the project's CT sessions and the project's
        ``cbctqa:qaAssessmentData`` (status, model version, session, failure reason), joined
        here. One complete assessment of any of its scans by this version counts as done; a
        queued or running one is returned again (scoring is idempotent); a failed one is
        returned while transient failures have used fewer than ``max_attempts`` attempts, and
        after bad data or the last attempt only once its scans change.

        Parameters
        ----------
        project:
            Project ID (default: the gateway's project).
        model_version:
            The current model version.
        modality:
            ``"CT"`` (CBCT is archived as ``xnat:ctSessionData``) or an explicit xsi:type.
        max_attempts:
            Attempts allowed for transient trouble (``CBCTQA_MAX_ATTEMPTS``).
        """
        plan = self.plan_scoring(
            project, model_version=model_version, modality=modality, max_attempts=max_attempts
        )
        return [c.session for c in plan]

    def plan_scoring(
        self,
        project: str | None = None,
        *,
        model_version: str,
        modality: str = "CT",
        max_attempts: int = 3,
    ) -> list[ScoringCandidate]:
        """What :meth:`find_sessions_to_score` returns, with each session's next attempt number.

        A failed assessment's attempts are read from the tag at the start of its
        ``failure_reason`` (:mod:`xnat_plugin.gateway.attempts`).
        """
        if not model_version:
            raise XnatValidationError(
                "find_sessions_to_score: model_version is empty; expected the model version"
            )
        if max_attempts < 1:
            raise XnatValidationError(
                f"find_sessions_to_score: max_attempts is {max_attempts}; expected >= 1"
            )
        project = self._project_or_default(project)
        sessions = self._session_rows(project, _modality_xsi(modality))
        prefix = ASSESSMENT_XSI_TYPE.lower()
        columns = ["ID", "label", "xsiType", "session_ID", f"{ASSESSMENT_XSI_TYPE}/status",
                   f"{ASSESSMENT_XSI_TYPE}/model_version",
                   f"{ASSESSMENT_XSI_TYPE}/failure_reason"]  # fmt: skip
        rows = self._listing(
            "/data/experiments",
            what=f"{ASSESSMENT_XSI_TYPE} of project {project}",
            query={
                "xsiType": ASSESSMENT_XSI_TYPE,
                "project": project,
                "columns": ",".join(columns),
            },
        )
        done: set[str] = set()
        in_progress: dict[str, str] = {}
        failures: dict[str, FailureTag] = {}
        for row in rows:
            if row.get("xsitype") and row["xsitype"].lower() != prefix:
                continue
            # XNAT keys a requested xpath that is not a shortcut as the xpath in lower case
            status = row.get(f"{prefix}/status", "")
            version = row.get(f"{prefix}/model_version", "")
            session_id = row.get("session_id", "")
            if version != model_version:
                continue
            if status == "complete":
                done.add(session_id)
            elif status == "failed":
                tag = parse_failure_reason(
                    row.get(f"{prefix}/failure_reason", row.get("failure_reason", ""))
                )
                old = failures.get(session_id)
                if old is None or (tag.final, tag.attempt) > (old.final, old.attempt):
                    failures[session_id] = tag
            else:
                in_progress[session_id] = status
        plan: list[ScoringCandidate] = []
        for ref in sorted(sessions, key=_session_order):
            sid = ref.session_id
            if sid in done:
                continue
            last = failures.get(sid)
            if last is None:
                plan.append(ScoringCandidate(ref, 1, in_progress.get(sid, "")))
            elif not last.final and last.attempt < max_attempts:
                plan.append(ScoringCandidate(ref, last.attempt + 1, "failed"))
            elif last.scans:
                # final failure: retried only when the session's scans changed since
                current = scans_fingerprint(self.list_scans(ref))
                if current != last.scans:
                    plan.append(ScoringCandidate(ref, 1, "failed", scans=current))
        logger.info(
            "project %s: %d of %d %s sessions need scoring by model %s",
            project,
            len(plan),
            len(sessions),
            modality,
            model_version,
        )
        return plan

    # ------------------------------------------------------------------ scans and downloads

    def list_scans(self, session: SessionRef) -> list[ScanRef]:
        """The session's scans (from the session document); one request."""
        what = f"session {session.label} ({session.session_id})"
        path = f"/data/experiments/{quote(session.session_id, safe='')}"
        payload = self._get_json(path, what=what)
        try:
            items = [i for i in payload["items"] if not i.get("meta", {}).get("isHistory", False)]
            children = items[0].get("children", [])
        except (KeyError, TypeError, IndexError) as exc:
            raise XnatResponseFormatError(
                f"GET {path} for {what}: expected an XNAT item document {{'items': [...]}}",
                uri=path,
            ) from exc
        scans: list[ScanRef] = []
        for child in children:
            if child.get("field") != "scans/scan":
                continue
            for item in child.get("items", []):
                fields = item.get("data_fields", {})
                xsi = str(item.get("meta", {}).get("xsi:type", ""))
                frames_raw = str(fields.get("frames", "")).strip()
                try:
                    frames = int(float(frames_raw)) if frames_raw else None
                except ValueError as exc:
                    raise XnatResponseFormatError(
                        f"{what}: scan {fields.get('ID')!r} has frames={frames_raw!r}, not a number",
                        uri=path,
                    ) from exc
                scans.append(
                    ScanRef(
                        session=session,
                        scan_id=str(fields.get("ID", "")),
                        xsi_type=xsi,
                        frames=frames,
                        series_uid=str(fields.get("UID", "")),
                        type=str(fields.get("type", "")),
                        series_description=str(fields.get("series_description", "")),
                        modality=str(fields.get("modality", "")),
                    )
                )
        return scans

    def select_scan(
        self,
        session: SessionRef,
        scan_id: str | None = None,
        *,
        scans: Sequence[ScanRef] | None = None,
    ) -> ScanRef:
        """The scan to score: ``scan_id`` if given, else the CT scan with the most frames.

        Ties go to the scan listed first. One request (none when ``scans``, the session's
        :meth:`list_scans`, is given).

        Raises
        ------
        XnatScanSelectionError
            The session has no CT scan, or no scan ``scan_id``.
        """
        scans = self.list_scans(session) if scans is None else list(scans)
        if scan_id is not None:
            for scan in scans:
                if scan.scan_id == scan_id:
                    return scan
            raise XnatScanSelectionError(
                f"session {session.label} ({session.session_id}) has no scan {scan_id!r}; it has "
                f"{[s.scan_id for s in scans]}",
                uri=session.uri,
            )
        # never an RTSTRUCT, plan, dose, registration or segmentation filed under the session
        ct = [
            s
            for s in scans
            if s.xsi_type.lower() == "xnat:ctscandata" and s.modality.upper() not in _NOT_IMAGES
        ]
        if not ct:
            raise XnatScanSelectionError(
                f"session {session.label} ({session.session_id}) has no CT scan (xnat:ctScanData); scans: "
                f"{[(s.scan_id, s.xsi_type) for s in scans]}. Pass scan_id=... to choose one",
                uri=session.uri,
            )
        best = max(
            range(len(ct)), key=lambda i: (ct[i].frames if ct[i].frames is not None else -1, -i)
        )
        return ct[best]

    def download_scan(
        self,
        session: SessionRef,
        scan_id: str | None = None,
        *,
        dest_dir: str | Path,
        resource: str = "DICOM",
    ) -> Path:
        """Download a scan's DICOM files into ``dest_dir/<session label>/<scan ID>/``.

        One zip download (plus one request to choose the scan when ``scan_id`` is None:
        the CT scan with most frames). Any earlier copy in that folder is replaced
        atomically; zip members are flattened to their base names (the zip's CRCs are
        checked on extraction). Returns the folder.

        Raises
        ------
        XnatScanSelectionError
            No CT scan to choose.
        XnatNotFoundError
            The scan or its ``resource`` does not exist, or holds no files.
        XnatResponseFormatError
            The download is not a valid zip, is corrupt, or holds clashing file names.
        """
        if scan_id is None:
            scan_id = self.select_scan(session).scan_id
        what = f"scan {scan_id} of session {session.label} ({session.session_id})"
        path = (f"/data/experiments/{quote(session.session_id, safe='')}/scans/{quote(scan_id, safe='')}"
                f"/resources/{quote(resource, safe='')}/files")  # fmt: skip
        dest_root = Path(dest_dir)
        dest_root.mkdir(parents=True, exist_ok=True)
        final = dest_root / safe_label_part(session.label) / safe_label_part(scan_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=final.parent))
        try:
            zip_path = staging / "scan.zip"
            self._download(path, zip_path, what=what, query={"format": "zip"})
            out = staging / "files"
            out.mkdir()
            n_files = _extract_flat(zip_path, out, what=what)
            if n_files == 0:
                raise XnatNotFoundError(
                    f"{what}: resource {resource} holds no files", status=200, uri=path
                )
            if final.exists():
                shutil.rmtree(final)
            out.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("downloaded %s (%d files) to %s", what, n_files, final)
        return final

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

    def load_session_volume(
        self, session: SessionRef, scan_id: str | None = None, *, dest_dir: str | Path | None = None
    ) -> Volume:
        """Download a scan (see :meth:`download_scan`) and load it with ``qa_core.load_series``.

        With ``dest_dir=None`` the files go to a temporary folder removed after loading.
        DICOM problems raise :class:`qa_core.errors.DicomError` subclasses from ``load_series``.
        """
        from qa_core.dicom_series import load_series

        if dest_dir is not None:
            return load_series(self.download_scan(session, scan_id, dest_dir=dest_dir))
        with tempfile.TemporaryDirectory(prefix="cbctqa-scan-") as tmp:
            return load_series(self.download_scan(session, scan_id, dest_dir=tmp))

    # ------------------------------------------------------------------ writes

    @contextmanager
    def _label_lock(self, session_id: str, label: str) -> Iterator[None]:
        digest = hashlib.blake2b(f"{session_id}/{label}".encode(), digest_size=4).digest()
        with self._label_locks[int.from_bytes(digest, "big") % _LOCK_STRIPES]:
            yield

    def _assessors_path(self, session: SessionRef) -> str:
        return f"/data/experiments/{quote(session.session_id, safe='')}/assessors"

    def _put_fields(
        self,
        session: SessionRef,
        label: str,
        xsi_type: str,
        fields: Mapping[str, str],
        *,
        what: str,
    ) -> str:
        """PUT an assessor by label with query-string fields; return its accession ID.

        Fields go in as few PUTs as the query-length limit allows; ``status`` (if any) goes
        in the last one, and earlier ones carry ``status=running`` when the final status is
        ``complete`` so no reader sees a complete assessor with half its fields.
        """
        path = f"{self._assessors_path(session)}/{quote(label, safe='')}"
        base = {"xsiType": xsi_type, "req_format": "qs", f"{xsi_type}/label": label}
        items = [(k, v) for k, v in fields.items() if k != "status"]
        chunks: list[list[tuple[str, str]]] = [[]]
        size = 0
        for key, value in items:
            cost = len(quote(f"{xsi_type}/{key}")) + len(quote(value)) + 2
            if chunks[-1] and size + cost > _MAX_QUERY_CHARS:
                chunks.append([])
                size = 0
            chunks[-1].append((key, value))
            size += cost
        final_status = fields.get("status")
        accession = ""
        for index, chunk in enumerate(chunks):
            query = dict(base)
            query.update({f"{xsi_type}/{k}": v for k, v in chunk})
            if final_status is not None:
                last = index == len(chunks) - 1
                query[f"{xsi_type}/status"] = (
                    final_status if last or final_status != "complete" else "running"
                )
            resp = self._put_by_label(path, query, what=what)
            body = resp.text.strip()
            if body and _ID_LIKE.fullmatch(body) and body != label:
                accession = body
        if not accession:
            accession = self._assessor_id(path, what=what)
        return accession

    def _put_by_label(self, path: str, query: Mapping[str, str], *, what: str) -> requests.Response:
        """PUT an assessor by label, absorbing the create race.

        When two writers create the same new label at once, XNAT lets one create it and may
        answer the other 409 (label exists). PUT by label is an update once the assessor
        exists, so the loser simply sends its PUT again (at most twice); a 409 that persists
        is a real conflict (the label is taken elsewhere in the project) and is raised.
        """
        for conflict in range(3):
            try:
                return self._request("PUT", path, what=what, query=query, accepted=_OK_CREATED)
            except XnatConflictError:
                if conflict == 2:
                    raise
                logger.info(
                    "%s: PUT by label met a concurrent create (409); sending it again", what
                )
                self._sleep(self._policy.delay(0, self._rng))
        raise AssertionError("unreachable")  # pragma: no cover

    def _assessor_id(self, path: str, *, what: str) -> str:
        payload = self._get_json(path, what=what)
        try:
            items = [i for i in payload["items"] if not i.get("meta", {}).get("isHistory", False)]
            return str(items[0]["data_fields"]["ID"])
        except (KeyError, TypeError, IndexError) as exc:
            raise XnatResponseFormatError(
                f"GET {path} for {what}: no assessor ID in the answer", uri=path
            ) from exc

    def _reconcile(
        self, session: SessionRef, label: str, xsi_type: str, accession: str, *, what: str
    ) -> str:
        """Make sure exactly one assessor of ``xsi_type`` carries ``label`` in the session.

        A server that creates two assessors when two writers PUT the same new label at the
        same moment is healed here: every writer keeps the one with the smallest accession ID
        and deletes the others, so racing writers converge. One listing request (plus a
        DELETE per duplicate).
        """
        path = self._assessors_path(session)
        rows = self._listing(
            path,
            what=f"assessors of session {session.label}",
            query={"columns": "ID,label,xsiType,URI"},
        )
        same = sorted(
            (
                r["id"]
                for r in rows
                if r.get("label") == label
                and (not r.get("xsitype") or r["xsitype"].lower() == xsi_type.lower())
            ),
            key=_id_sort_key,
        )
        if not same:
            raise XnatResponseFormatError(
                f"{what}: assessor {label} ({accession}) was written but is not listed under session "
                f"{session.label}; check the XNAT server",
                uri=path,
            )
        keep = same[0]
        for extra in same[1:]:
            logger.warning(
                "%s: duplicate assessor %s with label %s found; deleting it, keeping %s",
                what,
                extra,
                label,
                keep,
            )
            try:
                self._request(
                    "DELETE",
                    f"{path}/{quote(extra, safe='')}",
                    what=f"duplicate assessor {extra} of {label}",
                )
            except XnatNotFoundError:
                pass  # another writer removed it first
        return keep

    def write_assessment(
        self,
        session: SessionRef,
        record: AssessmentRecord,
        *,
        resources: Mapping[str, Sequence[str | Path]] | None = None,
    ) -> str:
        """Create or update the ``cbctqa:qaAssessmentData`` of one scan by one model version.

        Idempotent: the label is :func:`~xnat_plugin.gateway.records.assessment_label`
        (session label, ``record.scan_id``, ``record.model_version``), written by PUT on the
        label, so writing again updates the same assessor (same accession ID) and never adds
        one. Absent values are deleted (``NULL``), so the stored fields equal ``record``.

        Order when ``resources`` are given: (1) every field with status ``running`` (or the
        record's status when it is queued/running); (2) each file uploaded with
        ``overwrite=true`` to ``…/assessors/{ID}/resources/{label}/files/{name}``, checked to be
        listed (a digest differing from the local MD5 is logged: a concurrent writer of the same
        assessment replaced it, last write wins), and files of that resource label not in this
        write deleted; (3) the record's status. A reader therefore never sees ``complete`` while
        a resource is missing; a failure in (2) leaves the assessor ``running``.

        Parameters
        ----------
        session:
            The assessed session.
        record:
            Fields to store.
        resources:
            Resource label (``[A-Za-z0-9_-]+``, e.g. ``OVERLAYS``, ``AE_SLICES``, ``MAPS``) to the
            files it must hold (overlay PNGs, slice-level AE CSV, ``.npz`` raw maps). File
            names must be unique within a label. Labels not named are left untouched.

        Returns
        -------
        str
            The assessor's accession ID.

        Raises
        ------
        XnatValidationError
            Bad resource label, missing file, clashing file names (nothing is sent).
        XnatGatewayError
            Any XNAT failure, naming the session and label.
        """
        label = assessment_label(session.label, record.scan_id, record.model_version)
        what = f"assessment {label} of session {session.label} ({session.session_id})"
        files = _check_resources(resources or {}, what=what)
        fields = record.to_xnat_fields()
        with self._label_lock(session.session_id, label):
            if files:
                first = dict(fields)
                first["status"] = (
                    record.status if record.status in ("queued", "running") else "running"
                )
                accession = self._put_fields(session, label, ASSESSMENT_XSI_TYPE, first, what=what)
                accession = self._reconcile(
                    session, label, ASSESSMENT_XSI_TYPE, accession, what=what
                )
                for res_label, paths in files.items():
                    self._upload_resource(session, accession, res_label, paths, what=what)
                if first["status"] != record.status:
                    self._put_fields(
                        session, label, ASSESSMENT_XSI_TYPE, {"status": record.status}, what=what
                    )
            else:
                accession = self._put_fields(session, label, ASSESSMENT_XSI_TYPE, fields, what=what)
                accession = self._reconcile(
                    session, label, ASSESSMENT_XSI_TYPE, accession, what=what
                )
        logger.info("wrote %s as %s (status %s)", what, accession, record.status)
        return accession

    def _upload_resource(
        self,
        session: SessionRef,
        accession: str,
        res_label: str,
        paths: Sequence[Path],
        *,
        what: str,
    ) -> None:
        base = (f"{self._assessors_path(session)}/{quote(accession, safe='')}"
                f"/resources/{quote(res_label, safe='')}/files")  # fmt: skip
        digests: dict[str, str] = {}
        for p in paths:
            digests[p.name] = _md5(p)
            self._request(
                "PUT",
                f"{base}/{quote(p.name, safe='')}",
                what=f"{what}, resource {res_label} file {p.name}",
                query={"overwrite": "true", "inbody": "true"},
                data=functools.partial(open, p, "rb"),
                headers={"Content-Type": "application/octet-stream"},
                accepted=_OK_CREATED,
            )
        rows = self._listing(base, what=f"{what}, resource {res_label}", query={})
        listed: dict[str, str] = {}
        for row in rows:
            name = row.get("name") or PurePosixPath(row.get("uri", "")).name
            listed[name] = row.get("digest", "")
        for name, digest in digests.items():
            if name not in listed:
                raise XnatResponseFormatError(
                    f"{what}: resource {res_label} file {name} was uploaded but XNAT does not list it",
                    uri=base,
                )
            if listed[name] and listed[name] != digest:
                # Not an error: a concurrent writer of this same assessment may have replaced the
                # file after us (last write wins, as for the fields).
                logger.warning(
                    "%s: resource %s file %s has MD5 %s in XNAT but %s locally; another writer of "
                    "this assessment replaced it (last write wins)",
                    what,
                    res_label,
                    name,
                    listed[name],
                    digest,
                )
        for stale in sorted(set(listed) - set(digests)):
            logger.info("%s: deleting stale file %s from resource %s", what, stale, res_label)
            try:
                self._request(
                    "DELETE", f"{base}/{quote(stale, safe='')}", what=f"{what}, stale file {stale}"
                )
            except XnatNotFoundError:
                pass  # removed concurrently

    def mark_failed(
        self, session: SessionRef, scan_id: str, model_version: str, reason: str
    ) -> str:
        """Record that scoring ``scan_id`` with ``model_version`` failed, and why.

        Writes (by the same deterministic label as :meth:`write_assessment`) ``status=failed``,
        ``failure_reason`` (cut to the schema's 2000 characters), the scan ID and model
        version; other fields of an existing assessor are left as they were. Returns the
        assessor's accession ID.
        """
        if not reason:
            raise XnatValidationError(
                f"mark_failed for session {session.label}: reason is empty; say which step failed and why"
            )
        text = redact(reason)
        if len(text) > 2000:
            text = text[:1997] + "..."
        label = assessment_label(session.label, scan_id, model_version)
        what = f"assessment {label} of session {session.label} ({session.session_id})"
        fields = {
            "failure_reason": text,
            "scan_id": scan_id,
            "model_version": model_version,
            "status": "failed",
        }
        with self._label_lock(session.session_id, label):
            accession = self._put_fields(session, label, ASSESSMENT_XSI_TYPE, fields, what=what)
            accession = self._reconcile(session, label, ASSESSMENT_XSI_TYPE, accession, what=what)
        logger.warning("marked %s failed: %s", what, _excerpt(text, 200))
        return accession

    def write_rating(
        self,
        session: SessionRef,
        rater: str,
        scores: Mapping[str, int],
        *,
        comments: str | None = None,
        scan_id: str | None = None,
        on_behalf_of: bool = False,
        date: _dt.date | None = None,
    ) -> str:
        """Create or replace ``rater``'s ``cbctqa:ratingData`` of ``session``.

        The label is ``{session}_rating_{rater}``: a second write by the same rater replaces
        the first (categories not given and absent comments are cleared). Scores are checked
        before anything is sent.

        Parameters
        ----------
        session:
            The rated session.
        rater:
            XNAT username of the radiologist who gave the scores.
        scores:
            Category name to Likert integer 1..5 (5 = best); at least one category.
        comments:
            Free text, optional.
        scan_id:
            The rated scan, optional.
        on_behalf_of:
            Must be ``True`` to record a rating for a ``rater`` other than the logged-in
            user (a service account entering a radiologist's scores); guards against
            attributing scores to the wrong person by mistake.
        date:
            Date of the rating; default today (UTC).

        Returns
        -------
        str
            The rating's accession ID.

        Raises
        ------
        XnatValidationError
            Unknown category, a score that is not an integer 1..5, no scores, empty rater,
            or a rater other than the user without ``on_behalf_of=True``. The message names
            the session and the category.
        """
        if not rater:
            raise XnatValidationError(
                f"rating of session {session.label!r}: rater is empty; expected an XNAT username"
            )
        clean = validate_scores(scores, session_label=session.label)
        if rater != self._user and not on_behalf_of:
            raise XnatValidationError(
                f"rating of session {session.label!r}: rater {rater!r} is not the logged-in user {self._user!r}; "
                "pass on_behalf_of=True to record another user's rating"
            )
        label = rating_label(session.label, rater)
        what = f"rating {label} of session {session.label} ({session.session_id})"
        day = date or _dt.datetime.now(_dt.UTC).date()
        fields: dict[str, str] = {"rater": rater, "scan_id": scan_id or NULL, "comments": comments or NULL,
                                  "date": day.isoformat()}  # fmt: skip
        for cat in RatingRecord.field_names():
            if cat in ("rater", "scan_id", "comments"):
                continue
            fields[cat] = str(clean[cat]) if cat in clean else NULL
        with self._label_lock(session.session_id, label):
            accession = self._put_fields(session, label, RATING_XSI_TYPE, fields, what=what)
            accession = self._reconcile(session, label, RATING_XSI_TYPE, accession, what=what)
        logger.info("wrote %s as %s", what, accession)
        return accession

    def write_project_files(
        self, project: str | None, label: str, paths: Sequence[str | Path]
    ) -> list[str]:
        """Upload files into the project resource ``label`` (replacing same-named files).

        One PUT per file (``overwrite=true``) and one listing to check they are there. Used for
        the cohort report (``CBCTQA_REPORT``). Returns the files' URIs.
        """
        project = self._project_or_default(project)
        if not _RESOURCE_LABEL.fullmatch(label):
            raise XnatValidationError(
                f"project {project}: resource label {label!r} must match [A-Za-z0-9_-]+"
            )
        files = [Path(p) for p in paths]
        for f in files:
            if not f.is_file():
                raise XnatValidationError(f"project {project}: file {f} to upload does not exist")
        base = f"/data/projects/{quote(project, safe='')}/resources/{quote(label, safe='')}/files"
        what = f"project {project} resource {label}"
        for f in files:
            self._request(
                "PUT",
                f"{base}/{quote(f.name, safe='')}",
                what=f"{what} file {f.name}",
                query={"overwrite": "true", "inbody": "true"},
                data=functools.partial(open, f, "rb"),
                headers={"Content-Type": "application/octet-stream"},
                accepted=_OK_CREATED,
            )
        rows = self._listing(base, what=what, query={})
        listed = {row.get("name") or PurePosixPath(row.get("uri", "")).name: row.get("uri", "")
                  for row in rows}  # fmt: skip
        missing = [f.name for f in files if f.name not in listed]
        if missing:
            raise XnatResponseFormatError(f"{what}: uploaded {missing} but XNAT does not list them",
                                          uri=base)  # fmt: skip
        return [listed[f.name] or f"{base}/{f.name}" for f in files]

    # ------------------------------------------------------------------ bulk reads

    def _assessor_listing(
        self, project: str, xsi_type: str, field_names: Sequence[str]
    ) -> list[tuple[dict[str, str], dict[str, str]]]:
        columns = [*_ASSESSOR_COLUMNS, *(f"{xsi_type}/{f}" for f in field_names)]
        rows = self._listing(
            "/data/experiments",
            what=f"{xsi_type} of project {project}",
            query={"xsiType": xsi_type, "project": project, "columns": ",".join(columns)},
        )
        prefix = xsi_type.lower() + "/"
        out = []
        for row in rows:
            if row.get("xsitype") and row["xsitype"].lower() != xsi_type.lower():
                continue
            if row.get("project") and row["project"] != project:
                continue
            ident = {c: row.get(c.lower(), "") for c in _ASSESSOR_COLUMNS}
            fields = {f: row.get(prefix + f.lower(), "") for f in field_names}  # XNAT's keys only
            out.append((ident, fields))
        return out

    def read_assessments(self, project: str | None = None) -> list[StoredAssessment]:
        """Every ``cbctqa:qaAssessmentData`` of the project with its session; ONE request.

        Sorted by session label then assessor label.
        """
        project = self._project_or_default(project)
        out = []
        for ident, fields in self._assessor_listing(
            project, ASSESSMENT_XSI_TYPE, AssessmentRecord.field_names()
        ):
            what = (
                f"assessment {ident['label']} ({ident['ID']}) of session {ident['session_label']}"
            )
            out.append(
                StoredAssessment(
                    assessor_id=ident["ID"],
                    label=ident["label"],
                    uri=ident["URI"] or f"/data/experiments/{ident['ID']}",
                    project=project,
                    session_id=ident["session_ID"],
                    session_label=ident["session_label"],
                    subject_id=ident["subject_ID"],
                    subject=ident["subject_label"],
                    insert_date=parse_xnat_datetime(
                        ident["insert_date"], what=f"{what} insert_date"
                    ),
                    last_modified=parse_xnat_datetime(
                        ident["last_modified"], what=f"{what} last_modified"
                    ),
                    record=AssessmentRecord.from_xnat_fields(fields, what=what),
                )
            )
        return sorted(out, key=lambda a: (a.session_label, a.label))

    def read_ratings(self, project: str | None = None) -> list[RatingRecord]:
        """Every ``cbctqa:ratingData`` of the project; ONE request. Sorted by session, rater."""
        project = self._project_or_default(project)
        out = []
        for ident, fields in self._assessor_listing(
            project, RATING_XSI_TYPE, RatingRecord.field_names()
        ):
            ident["project"] = ident["project"] or project
            what = f"rating {ident['label']} ({ident['ID']}) of session {ident['session_label']}"
            out.append(RatingRecord.from_row(ident, fields, what=what))
        return sorted(out, key=lambda r: (r.session_label, r.rater, r.label))


# ---------------------------------------------------------------------- helpers


#: DICOM modalities of non-image objects that may arrive as scans of an image session.
_NOT_IMAGES: frozenset[str] = frozenset(
    {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "SEG", "SR", "PR", "KO"}
)


def _modality_xsi(modality: str) -> str:
    if ":" in modality:
        return modality
    try:
        return _MODALITY_XSI[modality.upper()]
    except KeyError:
        raise XnatValidationError(
            f"modality {modality!r} is not supported; expected 'CT' (CBCT sessions are xnat:ctSessionData) "
            "or an explicit xsi:type such as 'xnat:ctSessionData'"
        ) from None


def _session_order(ref: SessionRef) -> tuple[_dt.datetime, str]:
    return (ref.insert_date or _dt.datetime.min, ref.label)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_resources(
    resources: Mapping[str, Sequence[str | Path]], *, what: str
) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for label, paths in resources.items():
        if not _RESOURCE_LABEL.fullmatch(label):
            raise XnatValidationError(f"{what}: resource label {label!r} must match [A-Za-z0-9_-]+")
        if isinstance(paths, str | Path):
            raise XnatValidationError(
                f"{what}: resource {label} must map to a list of files, not one path"
            )
        files = [Path(p) for p in paths]
        if not files:
            raise XnatValidationError(
                f"{what}: resource {label} has no files; omit it or give its files"
            )
        names: dict[str, Path] = {}
        for f in files:
            if not f.is_file():
                raise XnatValidationError(
                    f"{what}: resource {label} file {f} does not exist or is not a file"
                )
            if f.name in names:
                raise XnatValidationError(
                    f"{what}: resource {label} has two files named {f.name} ({names[f.name]} and {f}); "
                    "names must be unique within a resource"
                )
            names[f.name] = f
        out[label] = files
    return out


def _extract_flat(zip_path: Path, out: Path, *, what: str) -> int:
    """Extract every file of the zip into ``out`` under its base name; return the count."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            seen: set[str] = set()
            count = 0
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = PurePosixPath(info.filename.replace("\\", "/")).name
                if not name or name in {".", ".."}:
                    continue
                if name in seen:
                    raise XnatResponseFormatError(
                        f"{what}: the download holds two files named {name}; download them with scan_id and "
                        "inspect the resource in XNAT"
                    )
                seen.add(name)
                with zf.open(info) as src, open(out / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                count += 1
            return count
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as exc:
        # a broken deflate stream raises zlib.error, a cut one EOFError: both mean a bad zip
        with open(zip_path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html")):  # e.g. a single-sign-on login page
            raise XnatResponseFormatError(
                f"{what}: XNAT answered with an HTML page instead of a zip; check the host URL "
                "(XNAT's REST root, not a login portal in front of it)"
            ) from exc
        raise XnatResponseFormatError(
            f"{what}: XNAT's download is not a valid zip ({exc})"
        ) from exc


def _open_session(
    credentials: Credentials,
    *,
    policy: RetryPolicy,
    timeout: float,
    parse_model: bool,
    rng: random.Random,
) -> Any:
    """Log in (own PUT /data/services/auth, retried) and open xnatpy on the JSESSION.

    The password goes only into the login request's form body; xnatpy never sees it.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            token = _login(credentials, timeout=timeout)
            return xnat.connect(
                credentials.host,
                user=credentials.user,
                jsession=token,
                logger=_XNATPY_LOGGER,
                no_parse_model=not parse_model,
                default_timeout=timeout,
                pilot_timeout=timeout,
            )
        except _Retryable as exc:
            if attempt < policy.max_attempts:
                wait = policy.delay(attempt - 1, rng, exc.retry_after)
                logger.warning(
                    "connecting to XNAT at %s failed (%s); retry %d of %d in %.2f s",
                    credentials.host,
                    exc.cause,
                    attempt,
                    policy.retries,
                    wait,
                )
                time.sleep(wait)
                continue
            if exc.status is None:
                raise XnatConnectionError(
                    f"cannot connect to XNAT at {credentials.host} as {credentials.user!r} after {attempt} attempt(s) "
                    f"({exc.cause}); check that XNAT is running and the host URL is right",
                    uri="/data/services/auth",
                    attempts=attempt,
                ) from exc
            raise XnatServerError(
                f"XNAT at {credentials.host} failed during login of {credentials.user!r} with HTTP {exc.status} "
                f"after {attempt} attempt(s); retry later or check the XNAT server logs",
                status=exc.status,
                uri="/data/services/auth",
                attempts=attempt,
            ) from exc
        except (
            requests.ConnectionError,
            requests.Timeout,
            xnat.exceptions.XNATConnectionError,
        ) as exc:
            if attempt < policy.max_attempts:
                wait = policy.delay(attempt - 1, rng)
                logger.warning(
                    "connecting to XNAT at %s failed (%s); retry %d of %d in %.2f s",
                    credentials.host,
                    type(exc).__name__,
                    attempt,
                    policy.retries,
                    wait,
                )
                time.sleep(wait)
                continue
            raise XnatConnectionError(
                f"cannot connect to XNAT at {credentials.host} after {attempt} attempt(s) ({type(exc).__name__}); "
                "check that XNAT is running and the host URL is right",
                attempts=attempt,
            ) from None
        except xnat.exceptions.XNATLoginFailedError as exc:
            raise XnatAuthenticationError(
                f"XNAT at {credentials.host} did not accept the session of user {credentials.user!r}; check the "
                "credentials (XNAT_USER/XNAT_PASS or ~/.netrc)",
                status=401,
                uri="/data/auth",
                attempts=attempt,
            ) from exc
        except xnat.exceptions.XNATError as exc:
            raise XnatResponseFormatError(
                f"XNAT at {credentials.host}: xnatpy could not open a session for user {credentials.user!r}: "
                f"{_excerpt(str(exc), 200)}",
                attempts=attempt,
            ) from exc


class _Retryable(Exception):
    def __init__(
        self, cause: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status
        self.retry_after = retry_after


def _login(credentials: Credentials, *, timeout: float) -> str:
    """``PUT /data/services/auth`` with the credentials; return the JSESSION token."""
    uri = credentials.host + "/data/services/auth"
    with requests.Session() as http:
        try:
            resp = http.put(
                uri,
                data={"username": credentials.user, "password": credentials.password.reveal()},
                timeout=timeout,
            )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            if isinstance(exc, requests.exceptions.SSLError):
                raise XnatConnectionError(
                    f"TLS failure connecting to {credentials.host} ({type(exc).__name__}); check the URL scheme "
                    "and certificates",
                    uri="/data/services/auth",
                    attempts=1,
                ) from None
            raise _Retryable(type(exc).__name__) from None
    if resp.status_code in (401, 403):
        raise XnatAuthenticationError(
            f"XNAT at {credentials.host} rejected the login of user {credentials.user!r} (HTTP {resp.status_code}); "
            "check XNAT_USER/XNAT_PASS or the ~/.netrc entry for this host",
            status=resp.status_code,
            uri="/data/services/auth",
            attempts=1,
        )
    if is_retryable_status(resp.status_code):
        raise _Retryable(f"HTTP {resp.status_code}", resp.status_code, _retry_after(resp.headers))
    if resp.status_code != 200:
        raise XnatRequestError(
            f"XNAT at {credentials.host} answered the login of user {credentials.user!r} with HTTP "
            f"{resp.status_code}: {_excerpt(resp.text, 200)}",
            status=resp.status_code,
            uri="/data/services/auth",
            attempts=1,
        )
    token = resp.text.strip()
    if not token or not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", token):
        raise XnatResponseFormatError(
            f"XNAT at {credentials.host} answered the login with HTTP 200 but no session token; check that the "
            "host URL points at XNAT",
            status=200,
            uri="/data/services/auth",
            attempts=1,
        )
    return token
