"""Errors raised by :mod:`xnat_plugin.gateway`.

Every class derives from :class:`XnatGatewayError` (itself a
:class:`qa_core.errors.CbctQaError`) and from the matching built-in, so callers may catch
either. Messages name the XNAT object concerned (session label, assessor label, URI),
the HTTP method and status, how many attempts were made, and the fix. They never contain a
password or a session cookie: server text quoted in a message passes through
:func:`qa_core.logs.redact` first.
"""

from __future__ import annotations

from qa_core.errors import CbctQaError, ConfigurationError

__all__ = [
    "XnatAuthenticationError",
    "XnatConfigurationError",
    "XnatConflictError",
    "XnatConnectionError",
    "XnatGatewayClosedError",
    "XnatGatewayError",
    "XnatNotFoundError",
    "XnatPermissionError",
    "XnatRequestError",
    "XnatResponseFormatError",
    "XnatScanSelectionError",
    "XnatServerError",
    "XnatValidationError",
]


class XnatGatewayError(CbctQaError):
    """Root of the gateway's errors.

    Attributes
    ----------
    status:
        HTTP status of the last answer, or ``None`` when no answer came (connection
        error) or the error was raised before any request.
    uri:
        Path of the request concerned (no host, no query string), or ``""``.
    attempts:
        Number of HTTP attempts made (1 when the request was not retried; 0 when the
        error was raised before sending anything).
    """

    def __init__(
        self, message: str, *, status: int | None = None, uri: str = "", attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.status = status
        self.uri = uri
        self.attempts = attempts


class XnatConfigurationError(XnatGatewayError, ConfigurationError):
    """No XNAT host or credentials could be found (arguments, environment, ~/.netrc)."""


class XnatGatewayClosedError(XnatGatewayError, RuntimeError):
    """A gateway method was called after the ``with`` block closed the XNAT session."""


class XnatConnectionError(XnatGatewayError, ConnectionError):
    """XNAT did not answer (refused, dropped or timed-out connections) after every retry."""


class XnatServerError(XnatGatewayError, RuntimeError):
    """XNAT answered with a 5xx status after every retry."""


class XnatAuthenticationError(XnatGatewayError, PermissionError):
    """XNAT rejected the credentials or the session (HTTP 401)."""


class XnatPermissionError(XnatGatewayError, PermissionError):
    """The logged-in user may not read or write this object (HTTP 403)."""


class XnatNotFoundError(XnatGatewayError, LookupError):
    """The project, session, scan, assessor or resource does not exist (HTTP 404)."""


class XnatConflictError(XnatGatewayError, ValueError):
    """XNAT refused the write as conflicting with stored data (HTTP 409)."""


class XnatRequestError(XnatGatewayError, ValueError):
    """XNAT refused the request as malformed (any other 4xx); never retried."""


class XnatResponseFormatError(XnatGatewayError, ValueError):
    """XNAT answered 2xx but with a body the gateway cannot interpret."""


class XnatValidationError(XnatGatewayError, ValueError):
    """A value to be written is invalid (checked before anything is sent)."""


class XnatScanSelectionError(XnatGatewayError, LookupError):
    """No suitable CT scan (or not the requested one) exists in the session."""
