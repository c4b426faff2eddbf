"""Users, login sessions and project roles of the local XNAT server, as XNAT grants them.

Passwords are stored as salted scrypt hashes (``scrypt$n$r$p$salt$hash``) and compared in
constant time; they never appear in logs. A login (``PUT /data/services/auth`` or Basic auth on
``/data/JSESSION``) yields a random 32-hex-digit ``JSESSIONID``, stored in the database.

Access, per project, as XNAT's default roles:

============== ==== =============== ====== ================
role           read create / edit   delete manage users
============== ==== =============== ====== ================
Owners         yes  yes             yes    yes
Members        yes  yes             no     no
Collaborators  yes  no              no     no
site admin     yes  yes             yes    yes
============== ==== =============== ====== ================

A user without a role does not see the project at all (listings are filtered).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "ROLES",
    "Access",
    "Principal",
    "SessionTable",
    "hash_password",
    "parse_basic",
    "verify_password",
]

#: XNAT's project groups, most privileged first.
ROLES: tuple[str, ...] = ("Owners", "Members", "Collaborators")

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, n: int = _SCRYPT_N) -> str:
    """Salted scrypt hash of ``password`` as ``scrypt$n$r$p$salt_hex$hash_hex``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=_SCRYPT_R, p=_SCRYPT_P,
                            dklen=32)
    return f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the stored hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt_hex, hash_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=int(n),
                            r=int(r), p=int(p), dklen=len(hash_hex) // 2)
    return hmac.compare_digest(digest.hex(), hash_hex)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header, or None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class Principal:
    """The authenticated user of one request."""

    login: str
    site_admin: bool
    roles: dict[str, str]

    def role(self, project: str) -> str | None:
        """This user's role in ``project`` (None without access)."""
        return self.roles.get(project)


@dataclass(frozen=True)
class Access:
    """What a principal may do in one project."""

    read: bool
    write: bool
    delete: bool
    manage: bool

    @classmethod
    def of(cls, principal: Principal, project: str) -> Access:
        """Access of ``principal`` to ``project`` under XNAT's default role rules."""
        if principal.site_admin:
            return cls(True, True, True, True)
        role = principal.role(project)
        if role == "Owners":
            return cls(True, True, True, True)
        if role == "Members":
            return cls(True, True, False, False)
        if role == "Collaborators":
            return cls(True, False, False, False)
        return cls(False, False, False, False)


class SessionTable:
    """JSESSIONID -> login, kept in the server's database so sessions survive a restart, with
    idle expiry (XNAT's default: 15 minutes)."""

    def __init__(self, store: Store, idle_timeout_s: float = 900.0) -> None:
        self.store = store
        self.idle_timeout_s = idle_timeout_s

    def create(self, login: str) -> str:
        """A new session token for ``login``."""
        token = secrets.token_hex(16).upper()
        with self.store.transaction() as tx:
            tx.add_session(token, login, time.time())
        return token

    def lookup(self, token: str) -> str | None:
        """Login of a live session (refreshing its idle timer), or None."""
        with self.store.transaction() as tx:
            return tx.session_login(token, time.time(), self.idle_timeout_s)

    def drop(self, token: str) -> None:
        """End a session (logout)."""
        with self.store.transaction() as tx:
            tx.drop_sessions(token=token)

    def drop_user(self, login: str) -> None:
        """End every session of ``login`` (password changed, user disabled)."""
        with self.store.transaction() as tx:
            tx.drop_sessions(login=login)
