"""A local XNAT-compatible server for the demo and the tests (``cbctqa xnat-server``).

It implements the subset of XNAT 1.8's REST API that xnatpy 0.8 and pyxnat 1.6 use (see
``../shared/XNAT_REST_NOTES.md``), over SQLite or PostgreSQL and a files folder.

Start one in-process (tests)::

    from xnat_plugin.server import ServerConfig, run_in_thread

    with run_in_thread(ServerConfig(data_dir=tmp, admin_user="admin",
                                    admin_password="secret")) as server:
        with xnat.connect(server.url, user="admin", password="secret") as session:
            ...

``run_in_thread`` binds a free loopback port when ``port=0`` and stops the server (closing the
socket and the database) when the ``with`` block ends; ``server.restart()`` stops it and
starts a fresh server on the same port and data.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from qa_core.errors import ConfigurationError

from .app import AppConfig, XnatApp, XnatHTTPServer
from .auth import SecuritySettings
from .faults import FaultConfig
from .resources import ZipLimits

__all__ = ["FaultConfig", "RunningServer", "SecuritySettings", "ServerConfig", "is_loopback",
           "run_in_thread"]


@dataclass(frozen=True)
class ServerConfig:
    """Settings of a local XNAT server.

    Attributes
    ----------
    data_dir : Path
        Folder for the SQLite database (``xnat.sqlite``) and the stored files (``files/``).
    admin_user, admin_password : str
        Site administrator, created (or its password reset) at start-up.
    host : str
        Address to bind; loopback unless TLS or ``allow_insecure_remote`` (checked by the CLI).
    port : int
        Port to bind; 0 picks a free one.
    database_url : str or None
        ``postgresql://user@host:port/db`` for PostgreSQL; None for SQLite in ``data_dir``.
    schema_dirs : tuple of Path
        Folders of served ``*.xsd``; empty for the project's ``xnat_plugin/schema``.
    faults : FaultConfig
        Fault injection (off by default).
    tls_cert, tls_key : Path or None
        Serve HTTPS with this certificate and key.
    zip_limits : ZipLimits
        Limits on uploaded zips (members, sizes, compression ratio).
    strict : bool
        Answer only what XNAT would: listings without this server's extra keys, in XNAT's
        key case (see :mod:`xnat_plugin.server.columns`); for tests of clients.
    security : SecuritySettings
        Lockout after failed logins, user-list restriction, session idle timeout (XNAT's
        ``maxFailedLogins``, ``restrictUserListAccessToAdmins``, ``sessionTimeout`` ...).
    """

    data_dir: Path
    admin_user: str
    admin_password: str
    host: str = "127.0.0.1"
    port: int = 0
    database_url: str | None = None
    schema_dirs: tuple[Path, ...] = ()
    faults: FaultConfig = field(default_factory=FaultConfig)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    zip_limits: ZipLimits = field(default_factory=ZipLimits)
    strict: bool = False
    security: SecuritySettings = field(default_factory=SecuritySettings)

    def __post_init__(self) -> None:
        if not self.admin_user:
            raise ConfigurationError("admin user is empty; pass --admin-user or set CBCTQA_XNAT_ADMIN_USER")
        if not self.admin_password:
            raise ConfigurationError(
                "admin password is empty; pass --admin-password or set CBCTQA_XNAT_ADMIN_PASSWORD")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("TLS needs both --tls-cert and --tls-key")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RunningServer:
    """A server running in a background thread; a context manager.

    Attributes
    ----------
    url : str
        Base URL, e.g. ``http://127.0.0.1:54321``.
    user, password : str
        The site administrator's credentials.
    data_dir : Path
        The data folder.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._httpd: XnatHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = config.port
        self.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def user(self) -> str:
        return self.config.admin_user

    @property
    def password(self) -> str:
        return self.config.admin_password

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def app(self) -> XnatApp:
        """The running application (its store, schemas and fault counters)."""
        if self._httpd is None:
            raise RuntimeError("server is stopped")
        return self._httpd.app

    def start(self) -> None:
        """Bind and serve (a no-op when already running)."""
        if self._httpd is not None:
            return
        cfg = self.config
        app = XnatApp(AppConfig(
            data_dir=Path(cfg.data_dir), admin_user=cfg.admin_user,
            admin_password=cfg.admin_password, database_url=cfg.database_url,
            schema_dirs=tuple(cfg.schema_dirs), faults=cfg.faults, zip_limits=cfg.zip_limits,
            strict=cfg.strict, security=cfg.security,
        ))
        try:
            httpd = XnatHTTPServer((cfg.host, self.port), app)
        except OSError:
            app.close()
            raise
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
            # handshake on first read, in the connection's own thread, so a slow client
            # cannot stall the accept loop
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True,
                                               do_handshake_on_connect=False)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"xnat-server-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket and the database."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=10)
        time.sleep(0.05)  # let handler threads see their closed sockets before the db closes
        self._httpd.app.close()
        self._httpd = None
        self._thread = None

    def restart(self, **changes: object) -> None:
        """Stop, optionally change settings (e.g. ``faults=...``), and start on the same port."""
        self.stop()
        if changes:
            self.config = replace(self.config, **changes)  # type: ignore[arg-type]
        self.start()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def run_in_thread(config: ServerConfig) -> RunningServer:
    """Start a server in a background thread; use it as a context manager."""
    return RunningServer(config)
