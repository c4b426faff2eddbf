"""``cbctqa doctor``: is this machine ready to run the CBCT QA monitor?

Checks, in order, each printed with what it found and, when something is wrong, the fix:

``settings``
    every ``CBCTQA_*`` variable parses (:func:`qa_core.settings.get_settings`).
``xnat``
    the host and credentials resolve (``XNAT_*``, ``~/.netrc``) and XNAT accepts the login
    (XNAT version from ``/xapi/siteConfig/buildInfo``).
``datatypes``
    the plugin is installed: ``cbctqa`` in ``/xapi/schemas`` and ``cbctqa:qaAssessmentData``,
    ``cbctqa:ratingData`` in ``/data/search/elements``.
``project:P``
    for each monitored project, the account's role from ``/xapi/access/projects`` (Owner or
    Member needed: the service writes assessments; Collaborators only read).
``prefect``
    ``PREFECT_API_URL`` answers ``/health`` (and the work pool exists when ``--pool`` is
    given); with it unset, the local server's port ``CBCTQA_PREFECT_PORT`` is free or already
    serves Prefect.
``model``
    the checkpoint loads and matches its card (sha256, contract).
``device``
    ``CBCTQA_DEVICE`` resolves (CUDA name and memory, or CPU threads), and a GPU that torch
    cannot use is reported.
``data-dir``
    ``CBCTQA_DATA_DIR`` is writable, with its free space.

Exit status: 0 when no check failed (warnings allowed), 1 when one did. Credentials never
appear in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qa_core.logs import redact

__all__ = ["REQUIRED_DATATYPES", "CheckResult", "Doctor", "register", "run"]

#: Datatypes the plugin registers; the services need both.
REQUIRED_DATATYPES = ("cbctqa:qaAssessmentData", "cbctqa:ratingData")

#: Roles (as ``/xapi/access/projects`` spells them) that may write assessments.
WRITE_ROLES = frozenset({"owner", "member"})

_PLUGIN_FIX = (
    "build the plugin JAR (cd xnat_plugin/plugin && gradle xnatPluginJar), copy "
    "build/libs/cbctqa-xnat-plugin-*-xpl.jar into XNAT's plugins/ folder and restart XNAT "
    "(see xnat_plugin/plugin/README.md)"
)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check.

    Attributes
    ----------
    name:
        Check name (``xnat``, ``project:HN_CBCT`` ...).
    status:
        ``ok``, ``warn`` (works, but worth a look), ``fail`` or ``skip`` (a check it depends
        on failed).
    detail:
        What was found, one line.
    fix:
        What to do, one line; empty when nothing is to be done.
    """

    name: str
    status: str
    detail: str
    fix: str = ""


class Doctor:
    """Runs the checks; holds the XNAT connection between them.

    Parameters
    ----------
    projects:
        Project IDs to check access to.
    pool:
        Prefect work pool that must exist (``None``: not checked).
    timeout:
        Seconds per network request.
    check_model:
        Load the model (a second or two); ``False`` skips it.
    """

    def __init__(
        self,
        projects: list[str],
        *,
        pool: str | None = None,
        timeout: float = 10.0,
        check_model: bool = True,
    ) -> None:
        self.projects = projects
        self.pool = pool
        self.timeout = timeout
        self.check_model = check_model
        self.settings: Any = None
        self._gw: Any = None

    # ------------------------------------------------------------------ driver
    def run(self) -> Iterator[CheckResult]:
        """Yield the results as the checks run; releases the XNAT session at the end."""
        try:
            yield self._settings()
            yield self._xnat()
            yield self._datatypes()
            if not self.projects:
                yield CheckResult(
                    "projects", "warn", "no project to check",
                    "pass --project P (repeatable) or set CBCTQA_PROJECTS=P,Q",
                )
            for project in self.projects:
                yield self._project(project)
            yield self._prefect()
            yield self._model()
            yield self._device()
            yield self._data_dir()
        finally:
            if self._gw is not None:
                self._gw.close()
                self._gw = None

    # ------------------------------------------------------------------ checks
    def _settings(self) -> CheckResult:
        from qa_core.errors import ConfigurationError
        from qa_core.settings import get_settings

        try:
            self.settings = get_settings()
        except ConfigurationError as exc:
            return CheckResult(
                "settings", "fail", redact(str(exc)),
                "correct the variable(s) named above (see docs/configuration.md)",
            )
        n = len(type(self.settings).model_fields)
        if not self.projects:
            configured = str(getattr(self.settings, "projects", "") or "")
            self.projects = [p.strip() for p in configured.split(",") if p.strip()]
        return CheckResult("settings", "ok", f"{n} CBCTQA_* settings valid")

    def _xnat(self) -> CheckResult:
        from xnat_plugin.gateway import (
            XnatAuthenticationError,
            XnatConfigurationError,
            XnatConnectionError,
            XnatGateway,
            XnatGatewayError,
            resolve_credentials,
        )

        try:
            creds = resolve_credentials()
        except XnatConfigurationError as exc:
            return CheckResult(
                "xnat", "fail", redact(str(exc)),
                "set XNAT_HOST, XNAT_USER and XNAT_PASS, or add the host to ~/.netrc (mode 600)",
            )
        where = f"{creds.host} as {creds.user!r} (password from {creds.source})"
        try:
            self._gw = XnatGateway.connect(
                retries=1, backoff=0.2, max_backoff=0.5, timeout=self.timeout
            )
        except XnatAuthenticationError:
            return CheckResult(
                "xnat", "fail", f"XNAT at {creds.host} rejected the login of {creds.user!r}",
                "check XNAT_USER/XNAT_PASS (or the ~/.netrc entry for "
                f"{urllib.parse.urlsplit(creds.host).netloc}); the account may be disabled or "
                "its password expired",
            )
        except XnatConnectionError:
            return CheckResult(
                "xnat", "fail", f"cannot connect to XNAT at {creds.host}",
                "check XNAT_HOST (scheme, host, port, path), that XNAT is running and that this "
                "machine reaches it (proxy, firewall, TLS certificate)",
            )
        except XnatGatewayError as exc:
            return CheckResult(
                "xnat", "fail", redact(str(exc)),
                "check that XNAT_HOST is an XNAT 1.8+ server and see its logs",
            )
        version = "unknown version"
        try:
            resp = self._gw.xnat.get("/xapi/siteConfig/buildInfo", format="json",
                                     timeout=self.timeout)
            version = f"XNAT {resp.json().get('version', '?')}"
        except Exception:  # version is informative only; the login already succeeded
            pass
        return CheckResult("xnat", "ok", f"logged in to {where}; {version}")

    def _get(self, path: str, **query: str) -> Any:
        """GET through the logged-in xnatpy session; returns the ``requests`` response."""
        return self._gw.xnat.get(
            path, query=query or None, accepted_status=range(200, 600), timeout=self.timeout
        )

    def _datatypes(self) -> CheckResult:
        if self._gw is None:
            return CheckResult("datatypes", "skip", "needs a working XNAT login")
        try:
            schemas_resp = self._get("/xapi/schemas", format="json")
            elements_resp = self._get("/data/search/elements", format="json")
            schemas = schemas_resp.json() if schemas_resp.status_code == 200 else []
            rows = (elements_resp.json().get("ResultSet", {}).get("Result", [])
                    if elements_resp.status_code == 200 else [])
        except ValueError:
            return CheckResult("datatypes", "fail", "XNAT answered schema listings that are not JSON",
                               "check that XNAT_HOST points at XNAT itself, not a login page or proxy")
        except Exception as exc:
            return CheckResult("datatypes", "fail", f"reading XNAT's data types failed "
                               f"({type(exc).__name__})", "retry; see XNAT's logs if it persists")
        elements = {str(r.get("ELEMENT_NAME", "")) for r in rows}
        missing = [t for t in REQUIRED_DATATYPES if t not in elements]
        if "cbctqa" not in schemas or missing:
            what = ", ".join(missing) if missing else "the cbctqa schema"
            return CheckResult(
                "datatypes", "fail", f"{what} not installed on this XNAT "
                f"(schemas: {', '.join(map(str, schemas)) or 'none listed'})", _PLUGIN_FIX,
            )
        return CheckResult("datatypes", "ok", f"schema cbctqa with {', '.join(REQUIRED_DATATYPES)}")

    def _project(self, project: str) -> CheckResult:
        name = f"project:{project}"
        if self._gw is None:
            return CheckResult(name, "skip", "needs a working XNAT login")
        user = self._gw.user
        owner_fix = (f"ask an Owner of {project} to add {user!r} as Member (Project > Access), "
                     "or use an account that is")
        try:
            access = self._get("/xapi/access/projects")
            roles: dict[str, str] | None = None
            if access.status_code == 200:
                roles = {str(p.get("ID")): str(p.get("role", "")).lower() for p in access.json()}
            if roles is not None and project in roles:
                role = roles[project]
                if role in WRITE_ROLES:
                    return CheckResult(name, "ok", f"{user!r} is {role} (may read and write assessments)")
                return CheckResult(
                    name, "fail", f"{user!r} is {role or 'without a role'} in {project}: may read, "
                    "not write assessments", owner_fix,
                )
            probe = self._get(f"/data/projects/{urllib.parse.quote(project, safe='')}", format="json")
        except Exception as exc:
            return CheckResult(name, "fail", f"checking access failed ({type(exc).__name__})",
                               "retry; see XNAT's logs if it persists")
        if probe.status_code == 404:
            return CheckResult(
                name, "fail", f"project {project!r} does not exist on {self._gw.host}",
                "check the project ID (not its name or secondary ID) in XNAT, or create it",
            )
        if probe.status_code in (401, 403):
            return CheckResult(name, "fail", f"{user!r} may not read project {project!r}", owner_fix)
        if probe.status_code == 200:
            return CheckResult(
                name, "warn", f"{user!r} reads {project!r}; its role is not listed "
                "(site admin, or an XNAT without /xapi/access/projects)",
                f"make sure {user!r} may write there (Member or Owner)",
            )
        return CheckResult(name, "fail", f"XNAT answered HTTP {probe.status_code} for project {project!r}",
                           "see XNAT's logs")

    def _prefect(self) -> CheckResult:
        import requests

        api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
        if not api:
            port = int(getattr(self.settings, "prefect_port", 4200) or 4200)
            home = os.environ.get("PREFECT_HOME") or str(Path("~/.prefect").expanduser())
            if _port_free("127.0.0.1", port):
                return CheckResult(
                    "prefect", "ok", f"PREFECT_API_URL unset: `cbctqa serve` will start a local "
                    f"Prefect server on 127.0.0.1:{port} (database under {home})",
                )
            local = f"http://127.0.0.1:{port}/api"
            if _prefect_health(local, self.timeout):
                return CheckResult(
                    "prefect", "ok", f"PREFECT_API_URL unset; a Prefect server already answers at "
                    f"{local} (a running `cbctqa serve`?)",
                    "",
                )
            return CheckResult(
                "prefect", "fail", f"PREFECT_API_URL unset and port 127.0.0.1:{port} is taken by "
                "something that is not Prefect",
                "set CBCTQA_PREFECT_PORT to a free port, or PREFECT_API_URL to your Prefect server",
            )
        shown = redact(api)
        auth_string = os.environ.get("PREFECT_API_AUTH_STRING")
        auth: tuple[str, str] | None = None
        if auth_string and ":" in auth_string:
            user, _, password = auth_string.partition(":")
            auth = (user, password)
        try:
            health = requests.get(f"{api}/health", timeout=self.timeout)
        except requests.RequestException as exc:
            return CheckResult(
                "prefect", "fail", f"Prefect API {shown} unreachable ({type(exc).__name__})",
                "start the Prefect server (`prefect server start`, or the compose service "
                "prefect-server), fix PREFECT_API_URL (it ends in /api), or unset it to use a "
                "local server",
            )
        if health.status_code != 200 or health.text.strip() != "true":
            return CheckResult(
                "prefect", "fail", f"{shown}/health answered HTTP {health.status_code}, not a "
                "healthy Prefect server",
                "check that PREFECT_API_URL points at a Prefect 3 server's API (…/api)",
            )
        version = "?"
        try:
            v = requests.get(f"{api}/admin/version", timeout=self.timeout, auth=auth)
            if v.status_code == 200:
                version = str(v.json())
            elif v.status_code == 401:
                return CheckResult(
                    "prefect", "fail", f"Prefect at {shown} refused the request (HTTP 401)",
                    "set PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING "
                    "(user:password; docker/prefect-auth.env in the compose stack)",
                )
        except (requests.RequestException, ValueError):
            pass
        detail = f"Prefect server {version} healthy at {shown}"
        if self.pool:
            try:
                pool = requests.get(f"{api}/work_pools/{urllib.parse.quote(self.pool, safe='')}",
                                    timeout=self.timeout, auth=auth)
            except requests.RequestException as exc:
                return CheckResult("prefect", "fail", f"{detail}; reading work pool {self.pool!r} "
                                   f"failed ({type(exc).__name__})", "retry")
            if pool.status_code == 404:
                return CheckResult(
                    "prefect", "fail", f"{detail}; work pool {self.pool!r} does not exist",
                    f"create it: prefect work-pool create {self.pool} --type process "
                    "(the compose stack's worker does this at start)",
                )
            if pool.status_code != 200:
                return CheckResult("prefect", "fail", f"{detail}; work pool {self.pool!r}: HTTP "
                                   f"{pool.status_code}", "see the Prefect server's logs")
            kind = pool.json().get("type", "?")
            detail += f"; work pool {self.pool!r} ({kind})"
            try:
                found = requests.post(
                    f"{api}/deployments/filter", timeout=self.timeout, auth=auth,
                    json={"work_pools": {"name": {"any_": [self.pool]}}, "limit": 200},
                )
                names = sorted(d.get("name", "?") for d in found.json()) if found.ok else None
            except (requests.RequestException, ValueError):
                names = None
            if names is not None and not names:
                return CheckResult(
                    "prefect", "warn", f"{detail} has no deployments: its workers will idle",
                    f"register them: cbctqa deploy --pool {self.pool} --project P",
                )
            if names:
                detail += f" with {len(names)} deployments"
        return CheckResult("prefect", "ok", detail)

    def _model(self) -> CheckResult:
        if not self.check_model:
            return CheckResult("model", "skip", "--skip-model")
        if self.settings is None:
            return CheckResult("model", "skip", "needs valid settings")
        from qa_core.errors import CbctQaError
        from qa_core.model import DEFAULT_MODEL_PATH, load_model

        path = self.settings.model_path or DEFAULT_MODEL_PATH
        try:
            model = load_model(path, device="cpu")
        except CbctQaError as exc:
            return CheckResult(
                "model", "fail", redact(str(exc)).split(" Fix:")[0],
                "set CBCTQA_MODEL_PATH to a checkpoint with its .json card beside it, unset it "
                "for the shipped model, or train one with `cbctqa train`",
            )
        card = getattr(model, "card", {}) or {}
        version = card.get("version") or f"sha-{str(card.get('sha256', ''))[:12]}"
        return CheckResult("model", "ok", f"{path} (version {version}, sha256 "
                           f"{str(card.get('sha256', ''))[:12]}…) loads and matches its card")

    def _device(self) -> CheckResult:
        if self.settings is None:
            return CheckResult("device", "skip", "needs valid settings")
        import torch

        from qa_core.errors import ConfigurationError
        from qa_core.model import select_device

        wanted = self.settings.device
        try:
            dev = select_device(wanted)
        except ConfigurationError as exc:
            return CheckResult(
                "device", "fail", f"CBCTQA_DEVICE={wanted}: {exc}".split(" (CBCTQA_DEVICE")[0],
                "set CBCTQA_DEVICE=auto (CUDA when present, else CPU) or cpu; for a GPU install "
                "a CUDA build of torch (the cbctqa-worker:cuda image has one) and the NVIDIA driver",
            )
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            return CheckResult("device", "ok", f"CUDA {torch.version.cuda}: {props.name} "
                               f"({props.total_memory / 2**30:.0f} GiB) as cuda:{index}")
        detail = f"CPU ({torch.get_num_threads()} threads; torch {torch.__version__})"
        gpu_visible = Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/version").exists()
        if gpu_visible and wanted == "auto":
            why = ("torch is a CPU-only build" if torch.version.cuda is None
                   else "torch cannot use the driver")
            return CheckResult(
                "device", "warn", f"{detail}: an NVIDIA GPU is present but {why}",
                "install the CUDA build of torch (or run the cbctqa-worker:cuda image with "
                "--gpus all)",
            )
        return CheckResult("device", "ok", detail)

    def _data_dir(self) -> CheckResult:
        if self.settings is None:
            return CheckResult("data-dir", "skip", "needs valid settings")
        folder = Path(self.settings.data_dir).expanduser()
        fix = f"create {folder} writable by this user, or set CBCTQA_DATA_DIR to a folder that is"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                pass
        except OSError as exc:
            return CheckResult("data-dir", "fail", f"{folder} is not writable ({exc.strerror})", fix)
        free = shutil.disk_usage(folder).free / 2**30
        if free < 5:
            return CheckResult("data-dir", "warn", f"{folder}: only {free:.1f} GiB free",
                               "free space or move CBCTQA_DATA_DIR: each session in flight "
                               "needs its DICOM download and products")
        return CheckResult("data-dir", "ok", f"{folder} writable, {free:.0f} GiB free")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) != 0


def _prefect_health(api: str, timeout: float) -> bool:
    import requests

    try:
        r = requests.get(f"{api}/health", timeout=timeout)
    except requests.RequestException:
        return False
    return r.status_code == 200 and r.text.strip() == "true"


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Silence library warnings (retries, xnatpy) while checks run: the report says it all."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check XNAT, the datatypes, project access, Prefect, the model and the device",
        description="Check that this machine can run the CBCT QA monitor: XNAT login and "
        "plugin datatypes, access to the projects, the Prefect API, the model file, the torch "
        "device and the data folder. Prints what is wrong and the fix; exits 1 when a check fails.",
    )
    p.add_argument("--project", action="append", default=[], metavar="P",
                   help="project ID to check access to (repeatable; default CBCTQA_PROJECTS)")
    p.add_argument("--pool", default=None, metavar="NAME",
                   help="Prefect work pool that must exist (e.g. cbctqa)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds per network request (default 10)")
    p.add_argument("--skip-model", action="store_true", help="do not load the model")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, *, out: Callable[[str], None] = print) -> int:
    from flows.commands.version import product_version

    doctor = Doctor(list(args.project), pool=args.pool, timeout=args.timeout,
                    check_model=not args.skip_model)
    results: list[CheckResult] = []
    if not args.json:
        out(f"cbctqa doctor {product_version()}")
    started = time.monotonic()
    with _quiet_logs():
        for result in doctor.run():
            results.append(result)
            if not args.json:
                out(f"  {_MARK[result.status]}  {result.name:16s} {redact(result.detail)}")
                if result.fix and result.status in ("fail", "warn"):
                    out(f"        {'':16s} fix: {redact(result.fix)}")
    failed = sum(r.status == "fail" for r in results)
    if args.json:
        out(json.dumps({"checks": [asdict(r) for r in results], "failed": failed,
                        "version": product_version()}, indent=1, sort_keys=True))
    else:
        counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "fail", "skip")}
        out(f"{counts['fail']} failed, {counts['warn']} warnings, {counts['ok']} ok, "
            f"{counts['skip']} skipped ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0
