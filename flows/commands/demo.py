"""``cbctqa demo``: the product's main job end to end on simulated data.

1. **Cohort**: simulate a small head-and-neck CBCT cohort with known truth and a rater panel.
2. **XNAT**: start the local XNAT-compatible server (in this process, loopback, data under
   ``OUT/xnat``), create a project, import every session's DICOM as a scanner would
   (``POST /data/services/import``) and enter the simulated radiologists' ratings as
   ``cbctqa:ratingData`` assessors.
3. **Scoring**: discover the sessions that need scoring, and for each one download its
   CBCT scan, predict the five Likert scores, attribute them with Grad-CAM, and write the
   ``cbctqa:qaAssessmentData`` with its overlays, slice-level AE and raw maps back into XNAT.
4. **Monitoring**: read all assessments and ratings back in bulk, analyse AE against the
   consensus (the study's statistics and better ones), write outlier flags onto the
   assessments, and print the table.

Everything is written under ``--out`` (``summary.json`` is the machine-readable result).
Browse the result afterwards with
``cbctqa xnat-server --data-dir OUT/xnat --admin-user admin --admin-password <in OUT/xnat/ADMIN_PASSWORD>``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.commands.synth import add_cohort_arguments, generate_and_summarise

if TYPE_CHECKING:
    from qa_core.synth import Cohort
    from xnat_plugin.gateway import SessionRef, XnatGateway

__all__ = ["register", "run", "run_cohort_step", "run_xnat_steps"]

DEMO_PROJECT = "CBCTQA_DEMO"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on a simulated cohort and a local XNAT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cohort_arguments(p, sessions=16, slices=48, size=256, out="demo-output")
    p.add_argument(
        "--cohort-only", action="store_true", help="only simulate the cohort and summarise it"
    )
    p.add_argument("--method", default="gradcam", help="CAM method (default gradcam)")
    p.add_argument("--n-resamples", type=int, default=2000, help="permutations/bootstrap resamples")
    p.set_defaults(handler=run)


def run_cohort_step(args: argparse.Namespace) -> Cohort:
    """Generate (or resume) the demo cohort under ``args.out / "cohort"`` and print its summary.

    Returns
    -------
    qa_core.synth.Cohort
        The cohort, for the steps that follow.
    """
    return generate_and_summarise(args, args.out / "cohort")


def _admin_password(xnat_dir: Path) -> str:
    """The demo server's admin password: kept in ``ADMIN_PASSWORD`` (mode 600), never printed."""
    xnat_dir.mkdir(parents=True, exist_ok=True)
    path = xnat_dir / "ADMIN_PASSWORD"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(password + "\n")
    return password


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()


def _import_sessions(gw: XnatGateway, cohort: Cohort) -> dict[str, SessionRef]:
    """Send each simulated session to XNAT as a scanner would (skipping ones already there)."""
    existing = {ref.label: ref for ref in gw.list_sessions(DEMO_PROJECT)}
    for s in cohort.sessions:
        if s.label in existing:
            continue
        gw.xnat.post(
            "/data/services/import",
            data=_zip_folder(s.dicom_dir),
            query={
                "import-handler": "DICOM-zip",
                "PROJECT_ID": DEMO_PROJECT,
                "SUBJECT_ID": s.subject,
                "EXPT_LABEL": s.label,
                "overwrite": "append",
            },
            headers={"Content-Type": "application/zip"},
        )
    return {ref.label: ref for ref in gw.list_sessions(DEMO_PROJECT)}


def run_xnat_steps(args: argparse.Namespace, cohort: Cohort) -> dict[str, Any]:
    """Steps 2–4 against a local XNAT in this process; returns the summary written to disk."""
    from flows.commands.analyze import format_report
    from flows.scoring import analyze_project, model_version, score_sessions, write_outlier_flags
    from qa_core.errors import StatisticsError
    from qa_core.model import load_model
    from xnat_plugin.gateway import XnatGateway
    from xnat_plugin.server import ServerConfig, run_in_thread

    xnat_dir = args.out / "xnat"
    password = _admin_password(xnat_dir)
    config = ServerConfig(data_dir=xnat_dir, admin_user="admin", admin_password=password)
    model = load_model()
    version = model_version(model)
    with (
        run_in_thread(config) as server,
        XnatGateway.connect(server.url, "admin", password, project=DEMO_PROJECT) as gw,
    ):
        print(f"\nlocal XNAT at {server.url} (data in {xnat_dir})")
        gw.xnat.put(f"/data/projects/{DEMO_PROJECT}", accepted_status=[200, 201])
        t0 = time.perf_counter()
        sessions = _import_sessions(gw, cohort)
        print(
            f"imported {len(sessions)} sessions into project {DEMO_PROJECT} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        n_ratings = 0
        for s in cohort.sessions:
            for rater, scores in s.ratings.items():
                gw.write_rating(sessions[s.label], rater, scores, on_behalf_of=True)
                n_ratings += 1
        print(f"entered {n_ratings} radiologist ratings ({len(cohort.raters)} raters)")

        todo = gw.find_sessions_to_score(DEMO_PROJECT, model_version=version)
        print(f"\nscoring {len(todo)} session(s) with model {version} ({args.method})")
        t0 = time.perf_counter()
        outcomes = score_sessions(
            gw,
            todo,
            model,
            workdir=args.out / "work",
            method=args.method,
            on_outcome=lambda o: print(
                f"  {o.session_label}: {o.status} in {o.duration_s:.1f} s"
                + (f" — {o.error}" if o.error else "")
            ),
        )
        print(f"scored in {time.perf_counter() - t0:.1f} s")
        left = gw.find_sessions_to_score(DEMO_PROJECT, model_version=version)

        analysis_doc: dict[str, Any] | None = None
        flagged = 0
        try:
            analysis, assessments = analyze_project(
                gw,
                DEMO_PROJECT,
                model_version=version,
                n_resamples=args.n_resamples,
                seed=args.seed,
            )
        except StatisticsError as exc:  # e.g. fewer than 4 volumes: say so, keep the rest
            print(f"\nanalysis skipped: {exc}")
        else:
            flagged = write_outlier_flags(gw, analysis, assessments, sessions)
            analysis_doc = analysis.to_dict()
            print()
            print(format_report(analysis))
        print(
            f"\noutlier flags written to {flagged} assessment(s); "
            f"{len(left)} session(s) still need scoring"
        )
        summary = {
            "project": DEMO_PROJECT,
            "model_version": version,
            "sessions": len(sessions),
            "ratings": n_ratings,
            "scored": [o.__dict__ for o in outcomes],
            "still_to_score": [ref.label for ref in left],
            "outlier_assessments_updated": flagged,
            "analysis": analysis_doc,
            "requests": {
                "attempts": gw.request_counts.attempts,
                "retries": gw.request_counts.retries,
            },
        }
    return summary


def run(args: argparse.Namespace) -> int:
    if args.n_resamples < 100:
        from qa_core.errors import ConfigurationError

        raise ConfigurationError(f"--n-resamples must be >= 100; got {args.n_resamples}")
    cohort = run_cohort_step(args)
    if args.cohort_only:
        return 0
    summary = run_xnat_steps(args, cohort)
    out = args.out / "summary.json"
    out.write_text(
        json.dumps(summary, sort_keys=True, indent=2, default=str) + "\n", encoding="utf-8"
    )
    print(f"summary: {out}", file=sys.stderr)
    return 0 if all(o["status"] == "complete" for o in summary["scored"]) else 1
