"""``cbctqa deploy --pool NAME [--project P ...] [--poll-interval S]``: production registration.

Registers the deployments of ``cbctqa serve`` (scoring, discovery every ``S`` seconds and on
``xnat.session.archived``, the cohort monitor) on the Prefect **work pool** ``NAME`` of the
server at ``PREFECT_API_URL``, creates the pool (type ``process``) when it is missing and the
global concurrency limit ``cbctqa-scoring``, prints what it registered and exits. The runs are
then executed by ``prefect worker start --pool NAME`` on any machine that has the package, XNAT
credentials and the Prefect API (docs/scale-out.md). Flows are recorded by module path
(``flows.session_flows.score_session``), so a worker finds them wherever the package is
installed. Idempotent: run it again after an upgrade or to change the projects.

For a single machine, ``cbctqa serve`` does all of this and runs the flows itself.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["ensure_work_pool", "register", "run"]


def ensure_work_pool(name: str) -> str:
    """Create the work pool ``name`` (type ``process``) if missing; returns ``created``/``exists``.

    Raises
    ------
    qa_core.errors.ConfigurationError
        The pool exists with another worker type.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from qa_core.errors import ConfigurationError

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return "created"
    if pool.type != "process":
        raise ConfigurationError(
            f"work pool {name!r} exists with type {pool.type!r}; the CBCT QA workers need a "
            f"'process' pool: choose another --pool or delete it (prefect work-pool delete {name})"
        )
    return "exists"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "deploy",
        help="register the deployments on a Prefect work pool (production; workers run them)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pool", required=True, metavar="NAME",
                   help="Prefect work pool (created as type 'process' if missing), e.g. cbctqa")
    p.add_argument("--project", action="append", default=None, metavar="P",
                   help="XNAT project ID to watch (repeat; default CBCTQA_PROJECTS)")
    p.add_argument("--poll-interval", type=float, default=None, metavar="S",
                   help="seconds between discovery passes (default CBCTQA_POLL_INTERVAL_S = 60)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qa_core.errors import ConfigurationError
    from qa_core.logs import redact
    from qa_core.settings import get_settings

    settings = get_settings()
    projects = args.project or [p.strip() for p in settings.projects.split(",") if p.strip()]
    if not projects:
        raise ConfigurationError("no project to watch: pass --project P or set CBCTQA_PROJECTS")
    if args.poll_interval is not None and args.poll_interval <= 0:
        raise ConfigurationError(f"--poll-interval is {args.poll_interval}; expected seconds > 0")
    api = os.environ.get("PREFECT_API_URL", "")
    if not api:
        raise ConfigurationError(
            "PREFECT_API_URL is not set: `cbctqa deploy` registers on a running Prefect server "
            "(e.g. http://prefect-server:4200/api); on a single machine use `cbctqa serve`"
        )
    from flows.deployments import build_deployments, register_deployments
    from flows.prefect_server import prefect_api

    interval = args.poll_interval or settings.poll_interval_s
    with prefect_api():  # Prefect's client settings follow PREFECT_API_URL as it is now
        pool_state = ensure_work_pool(args.pool)
        deployments = build_deployments(projects, poll_interval=interval, work_pool=args.pool,
                                        module_entrypoints=True)  # fmt: skip
        registered = register_deployments(deployments, work_pool=args.pool)
    print(f"Prefect API {redact(api)}: work pool {args.pool!r} ({pool_state}, type process)")
    for dep, (dep_id, flow) in zip(deployments, registered.items(), strict=True):
        print(f"  {flow.name}/{dep.name}  {dep_id}  entrypoint {dep.entrypoint}")
    print(f"watching {', '.join(projects)}, discovery every {interval:g} s; run the flows with:\n"
          f"  prefect worker start --pool {args.pool} --type process")
    return 0
