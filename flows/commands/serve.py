"""``cbctqa serve --project P [--project Q] [--poll-interval S] [--workers N]``: the service.

Serves and runs the deployments of each project: discovery every ``S`` seconds (default
``CBCTQA_POLL_INTERVAL_S`` = 60, the safety net), discovery of one session on
``xnat.session.archived`` (the push path: XNAT's automation script posts to
``{API}/events``), scoring (``N`` threads in this process, the model loaded once) and cohort
monitoring after new scores and on a schedule (report, outlier flags, ``cbctqa.alert``).

With ``PREFECT_API_URL`` unset it first starts a local Prefect server on
127.0.0.1:CBCTQA_PREFECT_PORT (default 4200) with its database under ``PREFECT_HOME`` and
analytics off, and prints the API URL. Ctrl-C stops everything it started.

Programmatic use: ``flows.deployments.start_serving([...])`` returns a handle whose ``stop()``
ends it all.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the service: poll + push-triggered scoring, cohort monitoring and alerts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--project", action="append", default=None, metavar="P",
                   help="XNAT project ID to watch (repeat; default CBCTQA_PROJECTS)")
    p.add_argument("--poll-interval", type=float, default=None, metavar="S",
                   help="seconds between discovery passes (default CBCTQA_POLL_INTERVAL_S = 60)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="sessions scored at the same time by this process (default 1)")
    p.add_argument("--no-ui", action="store_true", help="local Prefect server without its UI")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from flows.deployments import serve
    from qa_core.errors import ConfigurationError
    from qa_core.settings import get_settings

    settings = get_settings()
    projects = args.project or [p.strip() for p in settings.projects.split(",") if p.strip()]
    if not projects:
        raise ConfigurationError("no project to watch: pass --project P or set CBCTQA_PROJECTS")
    if args.poll_interval is not None and args.poll_interval <= 0:
        raise ConfigurationError(f"--poll-interval is {args.poll_interval}; expected seconds > 0")
    if args.workers < 1:
        raise ConfigurationError(f"--workers is {args.workers}; expected 1 or more")
    serve(projects, poll_interval=args.poll_interval or settings.poll_interval_s,
          workers=args.workers, ui=not args.no_ui, announce=lambda s: print(s, flush=True))
    return 0
