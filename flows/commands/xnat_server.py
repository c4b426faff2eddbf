"""``cbctqa xnat-server``: run the local XNAT-compatible server (demo and tests).

Options fall back to environment variables: ``CBCTQA_XNAT_HOST``, ``CBCTQA_XNAT_PORT``,
``CBCTQA_XNAT_DATA_DIR``, ``CBCTQA_XNAT_ADMIN_USER``, ``CBCTQA_XNAT_ADMIN_PASSWORD``,
``CBCTQA_DATABASE_URL``. Binding an address other than loopback needs ``--tls-cert`` and
``--tls-key``, or an explicit ``--allow-insecure-remote``: passwords travel in every request.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from qa_core.errors import ConfigurationError

__all__ = ["register", "run"]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={value!r} is not an integer port") from exc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "xnat-server",
        help="run the local XNAT-compatible server (XNAT 1.8 REST subset for xnatpy and pyxnat)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; env CBCTQA_XNAT_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 = any free; env CBCTQA_XNAT_PORT)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder for the database and files (env CBCTQA_XNAT_DATA_DIR)")
    p.add_argument("--admin-user", default=None, help="site administrator login (env CBCTQA_XNAT_ADMIN_USER)")
    p.add_argument("--admin-password", default=None,
                   help="site administrator password (env CBCTQA_XNAT_ADMIN_PASSWORD; prefer the env)")
    p.add_argument("--database-url", default=None,
                   help="postgresql://user@host:port/db instead of SQLite (env CBCTQA_DATABASE_URL)")
    p.add_argument("--schema-dir", type=Path, action="append", default=None,
                   help="serve the *.xsd of this folder instead of xnat_plugin/schema (repeatable)")
    p.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, help="private key of --tls-cert (PEM)")
    p.add_argument("--allow-insecure-remote", action="store_true",
                   help="allow plain HTTP on a non-loopback address (credentials travel unencrypted)")
    p.add_argument("--fault-latency-ms", type=float, default=0.0, help="delay added to each request (ms)")
    p.add_argument("--fault-error-rate", type=float, default=0.0, help="share of requests answered 503")
    p.add_argument("--fault-drop-rate", type=float, default=0.0,
                   help="share of requests whose connection is closed without an answer")
    p.add_argument("--fault-path", default=None, help="only inject faults on paths matching this regex")
    p.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws")
    p.add_argument("--strict", action="store_true",
                   help="answer only what XNAT would (no extra listing keys), to test clients")
    p.add_argument("--max-failed-logins", type=int, default=20,
                   help="failed logins that lock a login name (XNAT maxFailedLogins; 0 = never)")
    p.add_argument("--max-failed-logins-lockout-duration", type=float, default=3600.0,
                   help="seconds a lockout lasts (XNAT maxFailedLoginsLockoutDuration)")
    p.add_argument("--session-timeout", type=float, default=900.0,
                   help="seconds an unused JSESSIONID lives (XNAT sessionTimeout)")
    p.add_argument("--open-user-list", action="store_true",
                   help="let every user list users (XNAT restrictUserListAccessToAdmins=false)")
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> object:
    """The :class:`xnat_plugin.server.ServerConfig` from options and environment.

    Raises
    ------
    ConfigurationError
        On a missing data dir or credentials, or a non-loopback host without TLS or
        ``--allow-insecure-remote``.
    """
    from xnat_plugin.server import FaultConfig, SecuritySettings, ServerConfig, is_loopback

    host = args.host or os.environ.get("CBCTQA_XNAT_HOST") or "127.0.0.1"
    port = args.port if args.port is not None else _env_int("CBCTQA_XNAT_PORT", 8080)
    data_dir = args.data_dir or (Path(os.environ["CBCTQA_XNAT_DATA_DIR"])
                                 if os.environ.get("CBCTQA_XNAT_DATA_DIR") else None)
    if data_dir is None:
        raise ConfigurationError("no data folder: pass --data-dir DIR or set CBCTQA_XNAT_DATA_DIR")
    user = args.admin_user or os.environ.get("CBCTQA_XNAT_ADMIN_USER") or ""
    password = args.admin_password or os.environ.get("CBCTQA_XNAT_ADMIN_PASSWORD") or ""
    tls = args.tls_cert is not None and args.tls_key is not None
    if not is_loopback(host) and not tls and not args.allow_insecure_remote:
        raise ConfigurationError(
            f"refusing to serve plain HTTP on non-loopback address {host}: pass --tls-cert and "
            "--tls-key, or --allow-insecure-remote"
        )
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"--port {port} is not a TCP port (0..65535)")
    faults = FaultConfig(latency_ms=args.fault_latency_ms, error_rate=args.fault_error_rate,
                         drop_rate=args.fault_drop_rate, path_regex=args.fault_path,
                         seed=args.fault_seed)
    return ServerConfig(
        data_dir=Path(data_dir), admin_user=user, admin_password=password, host=host, port=port,
        database_url=args.database_url or os.environ.get("CBCTQA_DATABASE_URL") or None,
        schema_dirs=tuple(args.schema_dir or ()), faults=faults,
        tls_cert=args.tls_cert, tls_key=args.tls_key, strict=args.strict,
        security=SecuritySettings(
            max_failed_logins=args.max_failed_logins,
            max_failed_logins_lockout_duration=args.max_failed_logins_lockout_duration,
            restrict_user_list_access_to_admins=not args.open_user_list,
            session_timeout=args.session_timeout),
    )


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or until ``stop`` is set, for in-process tests)."""
    from xnat_plugin.server import ServerConfig, run_in_thread

    config = build_config(args)
    assert isinstance(config, ServerConfig)
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        server = run_in_thread(config)
    except OSError as exc:
        raise ConfigurationError(f"cannot bind {config.host}:{config.port}: {exc.strerror}") from exc
    done = stop or threading.Event()
    if stop is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
    with server:
        print(f"cbctqa xnat-server: serving {server.url} (data {config.data_dir}); Ctrl-C stops",
              flush=True)
        done.wait()
    print("cbctqa xnat-server: stopped", flush=True)
    return 0
