"""``cbctqa score-pending --project P [--workers N]``: one discovery pass through Prefect.

Finds the project's sessions without a complete assessment by the current model version (one
bulk search), creates one ``score_session`` run per session (idempotency keys: a second pass,
or a second ``score-pending`` started at the same moment, finds the same runs), executes them
with ``N`` scoring threads in this process (the model loaded once), waits until every run it
started or found already running has finished, and prints a summary: scored, failed, already
done. Exit 0 when nothing crashed (a session that ends ``failed`` with its reason is handled).

With ``PREFECT_API_URL`` unset it uses a local Prefect server on 127.0.0.1:CBCTQA_PREFECT_PORT
(default 4200) with its database under ``PREFECT_HOME``, started if needed and stopped when the
last ``cbctqa`` user of it exits. XNAT credentials: ``XNAT_HOST``, ``XNAT_USER``, ``XNAT_PASS``
or ``~/.netrc``.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "score-pending",
        help="one discovery pass through Prefect: score every new CBCT session, wait, summarise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--project", action="append", required=True, metavar="P",
                   help="XNAT project ID (repeat for several)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="sessions scored at the same time by this process (default 1; the global "
                        "limit cbctqa-scoring caps all workers together)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the summary as JSON here")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qa_core.errors import ConfigurationError

    if args.workers < 1:
        raise ConfigurationError(f"--workers is {args.workers}; expected 1 or more")
    from flows.pending import score_pending
    from flows.prefect_server import prefect_api

    with prefect_api() as api_url:
        print(f"Prefect API: {api_url}", file=sys.stderr)
        summaries = score_pending(args.project, workers=args.workers)
    ok = True
    for project, s in summaries.items():
        print(f"{project}: {s.line()}")
        for label, reason in sorted(s.failed.items()):
            print(f"  failed {label}: {reason}")
        for run_id, state in sorted(s.broken_runs.items()):
            print(f"  run {run_id} did not complete: {state}")
        ok = ok and s.ok
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({p: {"scored": s.scored, "failed": s.failed, "already_done": s.already_done,
                           "not_retried": s.not_retried, "broken_runs": s.broken_runs}
                       for p, s in summaries.items()}, fh, indent=1, sort_keys=True)
    return 0 if ok else 1
