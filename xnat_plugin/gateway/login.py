"""Logging in to XNAT: the gateway's own ``PUT /data/services/auth``, retried, then xnatpy.

:func:`open_session` sends the credentials once per attempt in the login request's form
body (never in a URL, a log or an error), retries connection errors and 5xx under the
gateway's :class:`~xnat_plugin.gateway.retry.RetryPolicy`, and opens xnatpy on the
JSESSION token it gets back, so xnatpy never sees the password.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

import requests
import xnat
import xnat.exceptions

from xnat_plugin.gateway.credentials import Credentials
from xnat_plugin.gateway.errors import (
    XnatAuthenticationError,
    XnatConnectionError,
    XnatRequestError,
    XnatResponseFormatError,
    XnatServerError,
)
from xnat_plugin.gateway.retry import RetryPolicy, is_retryable_status
from xnat_plugin.gateway.transport import _excerpt, _retry_after

__all__ = ["open_session"]

logger = logging.getLogger("xnat_plugin.gateway")
_XNATPY_LOGGER = logging.getLogger("xnat_plugin.gateway.xnatpy")


def open_session(
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
