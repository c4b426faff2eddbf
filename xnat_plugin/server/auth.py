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

Site security settings (:class:`SecuritySettings`) mirror XNAT's site settings of the same
names: ``maxFailedLogins`` / ``maxFailedLoginsLockoutDuration`` (lockout after repeated
failures, counted per login name across ``/data/services/auth`` and Basic auth, unknown
names included, so a locked name says nothing about whether the user exists),
``restrictUserListAccessToAdmins`` and ``sessionTimeout`` (idle expiry of a JSESSIONID).
Unknown users are checked against a dummy hash, so they take as long as a wrong password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "ROLES",
    "Access",
    "FailedLogins",
    "Principal",
    "SecuritySettings",
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


@dataclass(frozen=True)
class SecuritySettings:
    """Site security settings, named after XNAT's site settings.

    Attributes
    ----------
    max_failed_logins : int
        XNAT's ``maxFailedLogins``: failed logins of one login name that lock it; 0 or less
        turns the lockout off.
    max_failed_logins_lockout_duration : float
        XNAT's ``maxFailedLoginsLockoutDuration``, in seconds: how long a lockout lasts (an
        admin ends it sooner with ``PUT /xapi/users/{user}/enabled/true``).
    restrict_user_list_access_to_admins : bool
        XNAT's ``restrictUserListAccessToAdmins``: only site admins list users
        (``/data/users``, ``/xapi/users``); others may read only their own record.
    session_timeout : float
        XNAT's ``sessionTimeout``, in seconds: a JSESSIONID unused this long ends.
    """

    max_failed_logins: int = 20
    max_failed_logins_lockout_duration: float = 3600.0
    restrict_user_list_access_to_admins: bool = True
    session_timeout: float = 900.0

    def __post_init__(self) -> None:
        from qa_core.errors import ConfigurationError

        if self.max_failed_logins_lockout_duration < 0:
            raise ConfigurationError("maxFailedLoginsLockoutDuration must be >= 0 seconds, got "
                                     f"{self.max_failed_logins_lockout_duration}")
        if self.session_timeout <= 0:
            raise ConfigurationError(f"sessionTimeout must be > 0 seconds, got {self.session_timeout}")


class FailedLogins:
    """Failed-login counts per login name, and lockouts; thread-safe, in memory.

    Names that do not exist are counted like real ones, so that a lockout does not reveal
    which users exist. At most ``capacity`` names are tracked (the oldest are forgotten).
    """

    def __init__(self, max_failed: int, lockout_s: float,
                 clock: Callable[[], float] = time.monotonic, capacity: int = 100_000) -> None:
        self.max_failed = max_failed
        self.lockout_s = lockout_s
        self.clock = clock
        self.capacity = capacity
        self._state: OrderedDict[str, tuple[int, float]] = OrderedDict()  # count, locked until
        self._lock = threading.Lock()

    def locked(self, login: str) -> bool:
        """True while ``login`` is locked out (an ended lockout resets its count)."""
        if self.max_failed <= 0:
            return False
        with self._lock:
            count, until = self._state.get(login, (0, 0.0))
            if count < self.max_failed:
                return False
            if self.clock() < until:
                return True
            del self._state[login]
            return False

    def failed(self, login: str) -> None:
        """Count one failed login; the ``max_failed``-th locks the name."""
        if self.max_failed <= 0:
            return
        with self._lock:
            count, until = self._state.pop(login, (0, 0.0))
            count += 1
            if count >= self.max_failed and until == 0.0:
                until = self.clock() + self.lockout_s
            self._state[login] = (count, until)
            while len(self._state) > self.capacity:
                self._state.popitem(last=False)

    def succeeded(self, login: str) -> None:
        """A good login resets the count."""
        self.unlock(login)

    def unlock(self, login: str) -> None:
        """End a lockout (an admin re-enables the account)."""
        with self._lock:
            self._state.pop(login, None)


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
