"""``cbctqa dashboard``: start the Streamlit QA dashboard (``dashboard/app.py``).

XNAT comes from ``XNAT_HOST`` and ``XNAT_USER``/``XNAT_PASS`` (or the ``~/.netrc`` entry for the
host): with an account configured, every page opens read-only as that account; writing (a
rating, an alert acknowledgement) asks the person to sign in with their own XNAT account.
Without one, signing in comes first. ``--project`` chooses the project shown first.

Sign-in: with an ``[auth]`` section in Streamlit's ``secrets.toml`` (``.streamlit/`` in the
working folder or the home folder) the app uses Streamlit's OIDC sign-in (``st.login``);
without one it runs in local mode and refuses to listen on anything but a loopback address.

The command replaces itself with ``python -m streamlit run dashboard/app.py`` (headless, usage
statistics off), so stopping it stops the server. ``CBCTQA_DASHBOARD_TTL_S`` sets how long XNAT
reads are cached (default 300 s); ``CBCTQA_DASHBOARD_RESAMPLES`` the permutations and bootstrap
resamples of the statistics (default 1999).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from qa_core.errors import ConfigurationError

__all__ = ["app_path", "oidc_configured", "register", "run", "streamlit_argv"]


def app_path() -> Path:
    """The dashboard's entry file."""
    import dashboard

    return Path(dashboard.__file__).resolve().parent / "app.py"


def oidc_configured(cwd: Path | None = None) -> bool:
    """True when a Streamlit ``secrets.toml`` (working folder or home) has an ``[auth]`` section."""
    for folder in ((cwd or Path.cwd()) / ".streamlit", Path.home() / ".streamlit"):
        path = folder / "secrets.toml"
        if not path.is_file():
            continue
        try:
            if "auth" in tomllib.loads(path.read_text(encoding="utf-8")):
                return True
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read {path}: {exc}; fix or remove the file") from exc
    return False


def _is_loopback(host: str) -> bool:
    from xnat_plugin.server import is_loopback

    return is_loopback(host)


def streamlit_argv(host: str, port: int) -> list[str]:
    """The ``python -m streamlit run`` command line for ``host``/``port``."""
    return [sys.executable, "-m", "streamlit", "run", str(app_path()),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--global.developmentMode", "false", "--client.toolbarMode", "viewer"]  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dashboard",
        help="start the Streamlit QA dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--project", default=None, help="XNAT project shown first")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port {args.port} is not a TCP port; use 1-65535 (default 8501)")
    oidc = oidc_configured()
    if not oidc and not _is_loopback(args.host):
        raise ConfigurationError(
            f"--host {args.host}: without a sign-in provider the dashboard runs in local mode and only "
            "listens on 127.0.0.1; configure OIDC ([auth] in .streamlit/secrets.toml) to serve other hosts"
        )
    env = dict(os.environ)
    if args.project:
        env["CBCTQA_DASHBOARD_PROJECT"] = args.project
    mode = "OIDC sign-in" if oidc else "local mode (127.0.0.1 only)"
    xnat = env.get("XNAT_HOST") or env.get("XNATPY_HOST") or "not set (sign in on the page)"
    print(f"CBCT QA dashboard on http://{args.host}:{args.port} — {mode}; XNAT {xnat}", file=sys.stderr,
          flush=True)  # fmt: skip
    argv = streamlit_argv(args.host, args.port)
    os.execve(argv[0], argv, env)
    return 0  # pragma: no cover - execve does not return
