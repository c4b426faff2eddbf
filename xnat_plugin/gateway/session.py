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

The class is composed of layers, one module each: :mod:`~xnat_plugin.gateway.transport`
(the xnatpy session, every request with its retries, counting and error mapping) with
:mod:`~xnat_plugin.gateway.login` (the login); :mod:`~xnat_plugin.gateway.reading`
(sessions, scoring plan, scans, bulk reads) and :mod:`~xnat_plugin.gateway.downloads` (scan
choice, downloads, volumes); :mod:`~xnat_plugin.gateway.writing` (assessments, failures,
ratings by label) and :mod:`~xnat_plugin.gateway.resources` (resource and project file
uploads). This module opens and closes the session.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import TracebackType
from typing import Self

import xnat.session

from xnat_plugin.gateway.credentials import resolve_credentials
from xnat_plugin.gateway.downloads import GatewayDownloads
from xnat_plugin.gateway.errors import XnatConfigurationError
from xnat_plugin.gateway.login import open_session
from xnat_plugin.gateway.retry import RetryPolicy
from xnat_plugin.gateway.transport import RequestCounts, _excerpt
from xnat_plugin.gateway.writing import GatewayWriting

__all__ = ["RequestCounts", "XnatGateway"]

logger = logging.getLogger("xnat_plugin.gateway")


class XnatGateway(GatewayDownloads, GatewayWriting):
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
        session = open_session(
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

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"XnatGateway(host={self._host!r}, user={self._user!r}, project={self._project!r}, {state})"
