"""``cbctqa rescore SESSION_LABEL --project P``: score one session again, on request.

For a session whose last failure is final (bad data: not retried by discovery until the
session changes), or to redo a complete one. Runs ``score_session`` through Prefect (a fresh
run of the ``score-session`` deployment), waits, and prints the assessment's status.
Same Prefect and XNAT settings as ``cbctqa score-pending``. Exit 0 when the session is
``complete``, 1 when it ended ``failed`` (the reason is printed).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rescore",
        help="score one session again through Prefect (after a final failure, or to redo it)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("session", metavar="SESSION_LABEL", help="session label (or accession ID)")
    p.add_argument("--project", required=True, metavar="P", help="XNAT project ID")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from flows.pending import rescore
    from flows.prefect_server import prefect_api

    with prefect_api() as api_url:
        print(f"Prefect API: {api_url}", file=sys.stderr)
        out = rescore(args.project, args.session)
    line = f"{args.project}/{out['label']}: {out['status']} (run {out['run']}, {out['state']})"
    if out["status"] == "failed":
        line += f": {out['reason']}"
    print(line)
    return 0 if out["status"] == "complete" else 1
