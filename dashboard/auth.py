"""Who is looking, and as whom the dashboard talks to XNAT.

Two modes:

* **OIDC** (an ``[auth]`` section in Streamlit's ``secrets.toml``): Streamlit's ``st.login``
  gates the whole app; nobody sees anything before signing in with the provider.
* **Local** (no ``[auth]``): the server is bound to 127.0.0.1 (``cbctqa dashboard`` refuses
  anything else without OIDC) and says so in the sidebar.

In both modes XNAT decides what a person may see and write:

* With ``XNAT_USER``/``XNAT_PASS`` (or a ``~/.netrc`` entry for ``XNAT_HOST``) every page opens
  at once, **read-only**, as that service account.
* Writing (a rating, an alert acknowledgement) needs the person's **own** XNAT account: they
  sign in with their XNAT username and password, which XNAT checks (``PUT
  /data/services/auth``). From then on this browser session reads and writes as them (they
  see only the projects XNAT lets them see) until they sign out. Only the JSESSION is kept in
  the session; the password is never stored, logged or shown.
* Without service credentials, signing in comes first.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import streamlit as st

from xnat_plugin.gateway.errors import XnatConfigurationError

if TYPE_CHECKING:
    from xnat_plugin.gateway import XnatGateway

__all__ = [
    "Identity",
    "identity",
    "oidc_configured",
    "reader",
    "service_available",
    "sign_in",
    "sign_out",
    "writer",
    "xnat_host",
]

logger = logging.getLogger("dashboard.auth")
_USER_GW = "_user_gateway"


@dataclass(frozen=True)
class Identity:
    """As whom the dashboard reads XNAT in this browser session.

    Attributes
    ----------
    host:
        XNAT URL.
    user:
        XNAT username used for reads.
    signed_in:
        True when it is the person's own XNAT account (writes allowed).
    """

    host: str
    user: str
    signed_in: bool


def oidc_configured() -> bool:
    """True when Streamlit's secrets hold an ``[auth]`` section (``st.login`` available)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets.toml at all
        return False


def xnat_host() -> str:
    """The XNAT URL from ``XNAT_HOST`` (or ``XNATPY_HOST``), ``""`` when unset."""
    return (os.environ.get("XNATPY_HOST") or os.environ.get("XNAT_HOST") or "").rstrip("/")


def service_available() -> bool:
    """True when a read-only service account is configured (environment or ~/.netrc)."""
    from xnat_plugin.gateway import resolve_credentials

    try:
        resolve_credentials()
    except XnatConfigurationError:
        return False
    return True


@st.cache_resource(ttl=3600, max_entries=4, show_spinner=False)
def _service_gateway(host: str, user: str) -> XnatGateway:
    from xnat_plugin.gateway import XnatGateway

    return XnatGateway.connect(retries=1, backoff=0.2, max_backoff=1.0, timeout=30.0)


def _service() -> XnatGateway:
    from xnat_plugin.gateway import resolve_credentials

    creds = resolve_credentials()  # raises XnatConfigurationError with the fix
    gw = _service_gateway(creds.host, creds.user)
    if gw.closed:
        _service_gateway.clear()
        gw = _service_gateway(creds.host, creds.user)
    return gw


def _own() -> XnatGateway | None:
    gw: Any = st.session_state.get(_USER_GW)
    if gw is None or gw.closed:
        return None
    return gw  # type: ignore[no-any-return]


def reader() -> XnatGateway:
    """The gateway for reads: the signed-in person's own, else the read-only service account.

    Raises
    ------
    XnatConfigurationError
        Nobody signed in and no service account configured (the page asks to sign in).
    XnatConnectionError, XnatAuthenticationError, ...
        Connecting the service account failed.
    """
    own = _own()
    if own is not None:
        return own
    return _service()


def writer() -> XnatGateway | None:
    """The signed-in person's own gateway (writes are recorded under their account), or None."""
    return _own()


def identity() -> Identity | None:
    """Who reads in this session, without connecting; ``None`` when nobody can."""
    own = _own()
    if own is not None:
        return Identity(host=own.host, user=own.user, signed_in=True)
    from xnat_plugin.gateway import resolve_credentials

    try:
        creds = resolve_credentials()
    except XnatConfigurationError:
        return None
    return Identity(host=creds.host, user=creds.user, signed_in=False)


def sign_in(host: str, user: str, password: str) -> XnatGateway:
    """Check the person's XNAT credentials against XNAT and keep their session.

    Raises
    ------
    XnatAuthenticationError
        XNAT rejected the username or password.
    XnatConfigurationError, XnatConnectionError
        Bad host, XNAT unreachable.
    """
    from xnat_plugin.gateway import XnatGateway

    if not user or not password:
        raise XnatConfigurationError("enter your XNAT username and password to sign in")
    if not host:
        raise XnatConfigurationError(
            "no XNAT host: set XNAT_HOST for the dashboard (for example http://127.0.0.1:8080)"
        )
    gw = XnatGateway.connect(host, user, password, retries=0, timeout=30.0)
    sign_out()
    st.session_state[_USER_GW] = gw
    logger.info("user %s signed in to the dashboard (XNAT %s)", user, host)
    return gw


def sign_out() -> None:
    """End the person's XNAT session (back to the read-only account, if any)."""
    gw: Any = st.session_state.pop(_USER_GW, None)
    if gw is not None:
        try:
            gw.close()
        except Exception as exc:  # the server may be gone; nothing else to release
            logger.warning("closing the XNAT session failed: %s", type(exc).__name__)
