"""``cbctqa demo``: the product running as a service on a simulated hospital.

1. Starts the local XNAT-compatible server (data under ``OUT/xnat``) with a project, an admin,
   a service account and three radiologists, each with a generated password
   (``OUT/credentials.json``, mode 600; printed once for you to sign in with).
2. Simulates a head-and-neck CBCT cohort (default 24 sessions × 48 slices × 256², with known
   truth and a rater panel) and sends the sessions into XNAT one by one through the DICOM
   import endpoint, as a scanner would, posting ``xnat.session.archived`` to Prefect for each
   as XNAT's automation script does.
3. The radiologists' ratings arrive as ``cbctqa:ratingData`` for the first ``--rated``
   sessions, each under its own radiologist's account.
4. Runs ``cbctqa serve`` for the project: every session is scored as it arrives (push, with
   polling as the net), the cohort monitor runs and raises alerts.
5. Starts the dashboard and prints its URL, the XNAT URL and the Prefect UI URL.

Ctrl-C stops everything it started. A second run over the same ``--out`` resumes on the same
data. ``--until-done`` runs the same without the dashboard, waits until every session is
scored and the cohort report covers them all, prints a summary (sessions scored and failed,
the study-style table for the rated sessions, alerts raised, where the report is) and exits
(0 when no session failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.commands.synth import add_cohort_arguments, generate_and_summarise
from flows.live_demo import DEMO_PROJECT

if TYPE_CHECKING:
    from flows.live_demo import DemoProgress, LiveDemo

__all__ = ["DEMO_PROJECT", "register", "run"]

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="the product running live on a simulated cohort: XNAT, Prefect, scoring, dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cohort_arguments(p, sessions=24, slices=48, size=256, out="demo-output")
    p.add_argument("--until-done", action="store_true",
                   help="no dashboard; exit with a summary once every session is scored")
    p.add_argument("--cohort-only", action="store_true",
                   help="only simulate the cohort and summarise it")
    p.add_argument("--rated", type=int, default=16, metavar="N",
                   help="sessions the radiologists rate (the first N; default 16)")
    p.add_argument("--arrival-interval", type=float, default=None, metavar="S",
                   help="seconds between two arriving sessions (default: about a minute in all)")
    p.add_argument("--poll-interval", type=float, default=30.0, metavar="S",
                   help="the service's discovery interval, the net under push (default 30)")
    p.add_argument("--dashboard-port", type=int, default=8501, metavar="N",
                   help="dashboard port on 127.0.0.1 (default 8501)")
    p.add_argument("--prefect-port", type=int, default=None, metavar="N",
                   help="local Prefect server port (default CBCTQA_PREFECT_PORT = 4200)")
    p.add_argument("--timeout", type=float, default=1800.0, metavar="S",
                   help="--until-done gives up after S seconds (default 1800)")
    p.add_argument("--n-resamples", type=int, default=2000,
                   help="permutations/bootstrap resamples of the summary table (default 2000)")
    p.set_defaults(handler=run)


def _check(args: argparse.Namespace) -> None:
    from qa_core.errors import ConfigurationError

    if args.n_resamples < 100:
        raise ConfigurationError(f"--n-resamples must be >= 100; got {args.n_resamples}")
    if args.rated < 0:
        raise ConfigurationError(f"--rated must be >= 0; got {args.rated}")
    if args.arrival_interval is not None and args.arrival_interval < 0:
        raise ConfigurationError(f"--arrival-interval must be >= 0; got {args.arrival_interval}")
    if args.poll_interval <= 0:
        raise ConfigurationError(f"--poll-interval must be > 0; got {args.poll_interval}")


def _print_access(demo: LiveDemo, dashboard: bool) -> None:
    assert demo.xnat is not None and demo.service is not None
    acc = demo.accounts
    ui = demo.service.api_url.removesuffix("/api")
    lines = [
        "",
        "CBCT QA monitor demo is running",
        f"  XNAT        {demo.xnat.url}   (project {DEMO_PROJECT})",
        f"  Prefect UI  {ui}   (API {demo.service.api_url})",
    ]
    if dashboard:
        lines.append(f"  dashboard   http://127.0.0.1:{demo.dashboard_port}")
    lines += [
        "  demo accounts (generated for this demo folder; also in "
        f"{demo.out / 'credentials.json'}):",
        f"    admin          {acc.admin_user} / {acc.admin_password}",
    ]
    for user, password in acc.radiologists.items():
        lines.append(f"    radiologist    {user} / {password}")
    lines.append("  Ctrl-C stops everything.\n")
    print("\n".join(lines), flush=True)


def _summary(demo: LiveDemo, version: str, progress: DemoProgress, n_resamples: int,
             seed: int) -> dict[str, Any]:  # fmt: skip
    """Print and return the end-of-run summary, read back from XNAT."""
    from flows.commands.analyze import format_report
    from flows.monitor import REPORT_RESOURCE
    from flows.scoring import analyze_project
    from qa_core.errors import CbctQaError

    acc = demo.accounts
    analysis_doc: dict[str, Any] | None = None
    with demo.connect(acc.admin_user, acc.admin_password) as gw:
        outliers = []
        for a in gw.read_assessments(DEMO_PROJECT):
            if a.record.model_version != version:
                continue
            for cat, r in a.record.categories.items():
                if r.outlier:
                    outliers.append({"session": a.session_label, "category": cat,
                                     "reason": r.outlier_reason})  # fmt: skip
        print(f"\nsessions: {progress.sessions} in XNAT, {progress.complete} scored, "
              f"{progress.failed} failed; {progress.rated} rated by the radiologists")  # fmt: skip
        for label in progress.labels_failed:
            print(f"  failed: {label}")
        try:
            analysis, _ = analyze_project(gw, DEMO_PROJECT, model_version=version,
                                          n_resamples=n_resamples, seed=seed)  # fmt: skip
        except CbctQaError as exc:
            print(f"\nstudy-style table skipped: {exc}")
        else:
            analysis_doc = analysis.to_dict()
            print()
            print(format_report(analysis))
    print(f"\nalerts raised: {len(outliers)}")
    for o in sorted(outliers, key=lambda o: (o["session"], o["category"])):
        print(f"  {o['session']:<12} {o['category']:<14} {o['reason']}")
    assert demo.xnat is not None
    report = f"{demo.xnat.url}/data/projects/{DEMO_PROJECT}/resources/{REPORT_RESOURCE}/files/report.html"
    print(f"\ncohort report: {report}")
    return {
        "project": DEMO_PROJECT,
        "model_version": version,
        "sessions": progress.sessions,
        "complete": progress.complete,
        "failed": progress.failed,
        "failed_sessions": progress.labels_failed,
        "rated": progress.rated,
        "alerts": outliers,
        "analysis": analysis_doc,
        "report": report,
    }


class _QuietPrefect(logging.Filter):
    """Keeps Prefect's per-run INFO lines (in the Prefect UI) off the demo's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("prefect") and record.levelno < logging.WARNING)


def run(args: argparse.Namespace) -> int:
    _check(args)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cohort = generate_and_summarise(args, out / "cohort")
    if args.cohort_only:
        return 0
    # the service's state lives in the demo folder, on the embedded defaults (a local Prefect
    # server even where PREFECT_API_URL points at a production one)
    os.environ["PREFECT_HOME"] = str(out / "prefect")
    os.environ.pop("PREFECT_API_URL", None)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietPrefect())

    from flows.live_demo import LiveDemo
    from flows.scoring import model_version
    from flows.session_flows import worker_model

    version = model_version(worker_model())
    n = len(cohort.sessions)
    interval = args.arrival_interval if args.arrival_interval is not None else 60.0 / max(n, 1)
    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.perf_counter()
    demo = LiveDemo(
        out,
        cohort,
        n_rated=min(args.rated, n),
        interval_s=interval,
        poll_interval_s=args.poll_interval,
        workers=1,
        dashboard_port=None if args.until_done else args.dashboard_port,
        prefect_port=args.prefect_port,
        ui=not args.until_done,
    )
    try:
        print(f"\nstarting XNAT, Prefect and the scoring service (model {version}) …", flush=True)
        demo.start()
        if not args.until_done:
            if not demo.dashboard_ready():
                print(f"the dashboard did not start; see {out / 'dashboard.log'}", file=sys.stderr)
            _print_access(demo, dashboard=True)
            demo.start_arrivals()
            last = (-1, -1)

            def show(p: DemoProgress) -> None:
                nonlocal last
                if (p.complete, p.failed) != last:
                    last = (p.complete, p.failed)
                    print(f"  scored {p.complete}/{n}, failed {p.failed}, "
                          f"alerts {p.flagged}", flush=True)  # fmt: skip

            demo.wait_until_done(version, timeout=float("inf"), stop=stop, on_progress=show)
            print("every session is scored; the service keeps watching (Ctrl-C stops)", flush=True)
            while not stop.wait(1.0):
                pass
            return 0
        _print_access(demo, dashboard=False)
        demo.start_arrivals()
        progress = demo.wait_until_done(version, timeout=args.timeout, stop=stop)
        if progress.scored < n or progress.report_sessions < n:
            print(f"\ngave up after {args.timeout:.0f} s: {progress.scored}/{n} sessions scored, "
                  f"report covers {progress.report_sessions}", file=sys.stderr)  # fmt: skip
            return 1
        summary = _summary(demo, version, progress, args.n_resamples, args.seed)
        summary["wall_s"] = round(time.perf_counter() - started, 1)
        (out / "summary.json").write_text(
            json.dumps(summary, sort_keys=True, indent=2, default=str) + "\n", encoding="utf-8"
        )
        print(f"summary: {out / 'summary.json'} ({summary['wall_s']:.0f} s)")
        return 0 if progress.failed == 0 else 1
    except KeyboardInterrupt:
        print("\nstopping …", flush=True)
        return 130
    finally:
        demo.stop()
        signal.signal(signal.SIGTERM, old)
        print("stopped: XNAT, Prefect, the scoring service and the dashboard", flush=True)
