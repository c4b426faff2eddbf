"""Where the gateway finds the XNAT host and credentials, as xnatpy does.

Order: explicit arguments; then the ``XNATPY_HOST``/``XNATPY_USER``/``XNATPY_PASS`` and
``XNAT_HOST``/``XNAT_USER``/``XNAT_PASS`` environment variables (xnatpy's order); then, for
a missing password, the netrc file (``$NETRC`` or ``~/.netrc``) entry whose machine is the
host's ``netloc`` (``host:port`` when a port is given). Unlike xnatpy the gateway never
prompts on the console (it runs unattended): a missing password is an error.

The password is kept in a :class:`Secret`, whose ``repr``/``str`` never show it.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from xnat_plugin.gateway.errors import XnatConfigurationError

__all__ = ["Credentials", "Secret", "resolve_credentials"]


class Secret:
    """A string that does not print itself (``repr``/``str``/f-strings show ``***``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret text; pass it only to the request that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("Secret cannot be pickled (it would write the password to disk)")


@dataclass(frozen=True)
class Credentials:
    """Resolved connection parameters.

    Attributes
    ----------
    host:
        Server URL, ``http(s)://host[:port][/path]``, without a trailing slash.
    user:
        XNAT username.
    password:
        The password, wrapped.
    source:
        Where the password came from: ``"argument"``, ``"environment"`` or ``"netrc"``.
    """

    host: str
    user: str
    password: Secret
    source: str


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _netrc_lookup(
    netloc: str, netrc_file: str | Path | None
) -> tuple[str | None, str | None, Path]:
    path = (
        Path(netrc_file)
        if netrc_file is not None
        else Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    )
    if not path.is_file():
        return None, None, path
    try:
        entry = netrc.netrc(str(path)).authenticators(netloc)
    except netrc.NetrcParseError as exc:
        # The parser's message may quote a token (possibly a password): name the line only.
        raise XnatConfigurationError(
            f"cannot parse netrc file {path} (line {exc.lineno}); fix its syntax or set XNAT_USER/XNAT_PASS"
        ) from None
    except OSError as exc:
        raise XnatConfigurationError(f"cannot read netrc file {path}: {exc.strerror}") from None
    if entry is None:
        return None, None, path
    login, _account, password = entry
    return login or None, password or None, path


def resolve_credentials(
    host: str | None = None,
    user: str | None = None,
    password: str | None = None,
    *,
    netrc_file: str | Path | None = None,
) -> Credentials:
    """Find the host, user and password (arguments, environment, netrc).

    Raises
    ------
    XnatConfigurationError
        No host; a host that is not an http(s) URL or embeds credentials; no user or no
        password anywhere; a netrc entry for another user than the one requested.
    """
    server = host or _env("XNATPY_HOST", "XNAT_HOST")
    if not server:
        raise XnatConfigurationError(
            "no XNAT host: pass host=... or set XNAT_HOST (for example http://127.0.0.1:8080)"
        )
    parts = urlsplit(server)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise XnatConfigurationError(
            f"XNAT host {parts.scheme}://{parts.hostname or ''} is not an http(s) URL; "
            "expected for example https://xnat.example.org"
        )
    if parts.username is not None or parts.password is not None:
        raise XnatConfigurationError(
            f"XNAT host URL for {parts.hostname} embeds credentials; remove them from the URL "
            "and use XNAT_USER/XNAT_PASS or ~/.netrc"
        )
    server = server.rstrip("/")
    login = user or _env("XNATPY_USER", "XNAT_USER")
    secret = password
    source = "argument" if password else "environment"
    if not secret:
        secret = _env("XNATPY_PASS", "XNAT_PASS")
    if not secret:
        netrc_user, netrc_password, path = _netrc_lookup(parts.netloc, netrc_file)
        if netrc_password is not None:
            if login is not None and netrc_user is not None and netrc_user != login:
                raise XnatConfigurationError(
                    f"{path} holds a login for user {netrc_user!r} at {parts.netloc}, but user {login!r} "
                    "was requested; set XNAT_PASS for that user or fix the netrc entry"
                )
            login = login or netrc_user
            secret = netrc_password
            source = "netrc"
    if not login:
        raise XnatConfigurationError(
            f"no XNAT user for {parts.netloc}: pass user=..., set XNAT_USER, or add "
            f"'machine {parts.netloc} login USER password ...' to ~/.netrc"
        )
    if not secret:
        raise XnatConfigurationError(
            f"no password for XNAT user {login!r} at {parts.netloc}: pass password=..., set XNAT_PASS, or add "
            f"'machine {parts.netloc} login {login} password ...' to ~/.netrc"
        )
    return Credentials(host=server, user=login, password=Secret(secret), source=source)
