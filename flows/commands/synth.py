"""``cbctqa synth``: generate a simulated head-and-neck CBCT cohort with rater ground truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qa_core.synth import Cohort

__all__ = [
    "add_cohort_arguments",
    "generate_and_summarise",
    "print_summary",
    "register",
    "run",
    "validate_args",
]


def add_cohort_arguments(
    p: argparse.ArgumentParser, *, sessions: int, slices: int, size: int, out: str | None
) -> None:
    """Add the cohort options shared by ``synth`` and ``demo``."""
    p.add_argument(
        "--sessions", type=int, default=sessions, help=f"number of sessions (default {sessions})"
    )
    p.add_argument(
        "--slices",
        type=int,
        default=slices,
        help=f"axial slices per session, >= 8 (default {slices})",
    )
    p.add_argument(
        "--size", type=int, default=size, help=f"pixels per side, 64-1024 (default {size})"
    )
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if out is None:
        p.add_argument(
            "--out",
            type=Path,
            required=True,
            help="output folder (new, empty, or an earlier run to resume)",
        )
    else:
        p.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "synth",
        help="simulate a head-and-neck CBCT cohort (DICOM + ratings.csv + truth.json)",
        description=(
            "Simulate CBCT sessions (procedural anatomy, projection-domain physics, FBP) rated by "
            "a panel of simulated radiologists. Writes OUT/cohort.json, OUT/ratings.csv, "
            "OUT/truth.json and OUT/sessions/<session>/DICOM."
        ),
    )
    add_cohort_arguments(p, sessions=24, slices=64, size=256, out=None)
    p.add_argument(
        "--anomalies",
        default="",
        metavar="KINDS",
        help=(
            "inject known anomalies, comma-separated: flip_hf, flip_lr, truncated_fov, body_part, "
            "metal, motion, hu_calibration, or 'all' (recorded under 'anomaly' in truth.json)"
        ),
    )
    p.add_argument(
        "--anomaly-fraction",
        "--anomaly-rate",
        dest="anomaly_fraction",
        type=float,
        default=None,
        metavar="F",
        help="share of sessions (0-1) given an anomaly (default 0.25 when --anomalies is given)",
    )
    p.set_defaults(handler=run)


def validate_args(args: argparse.Namespace) -> None:
    """Check the cohort options; raises :class:`~qa_core.errors.SynthesisError` with the fix."""
    from qa_core.errors import SynthesisError

    if args.sessions < 1:
        raise SynthesisError(f"--sessions must be >= 1; got {args.sessions}")
    if args.slices < 8:
        raise SynthesisError(
            f"--slices must be >= 8 so every category region is sampled; got {args.slices}"
        )
    if not (64 <= args.size <= 1024):
        raise SynthesisError(f"--size must be 64-1024 pixels; got {args.size}")
    if args.seed < 0:
        raise SynthesisError(f"--seed must be >= 0; got {args.seed}")
    if args.workers < 1:
        raise SynthesisError(f"--workers must be >= 1; got {args.workers}")
    fraction = getattr(args, "anomaly_fraction", None)
    if fraction is not None and not (0.0 <= fraction <= 1.0):
        raise SynthesisError(f"--anomaly-fraction must lie in [0, 1]; got {fraction}")
    if fraction and not _anomaly_kinds(args):
        raise SynthesisError("--anomaly-fraction needs --anomalies KINDS (e.g. --anomalies all)")


def _anomaly_kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--anomalies`` list, validated (``all`` = every kind)."""
    from qa_core.synth.anomalies import ANOMALY_KINDS, check_anomaly_kinds

    raw = str(getattr(args, "anomalies", "") or "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if names == ["all"]:
        return ANOMALY_KINDS
    return check_anomaly_kinds(names)


def print_summary(cohort: Cohort, seconds: float) -> None:
    """Print sessions and mean/min/max consensus per category."""
    from qa_core.categories import CATEGORIES

    n = len(cohort.sessions)
    print(
        f"cohort {cohort.root}: {n} sessions x {cohort.slices} slices x {cohort.size}^2 (seed {cohort.seed}) in {seconds:.1f} s"
    )
    print(f"  {'category':14s} {'mean':>6s} {'min':>6s} {'max':>6s}   consensus (1-5)")
    table = cohort.consensus_table()
    for cat in CATEGORIES:
        vals = table[cat]
        print(f"  {cat:14s} {sum(vals) / n:6.2f} {min(vals):6.2f} {max(vals):6.2f}")


def generate_and_summarise(args: argparse.Namespace, out: Path) -> Cohort:
    """Validate the cohort arguments, generate (or resume) the cohort in ``out``, print its summary."""
    from qa_core.synth import generate_cohort

    validate_args(args)
    kinds = _anomaly_kinds(args)
    fraction = getattr(args, "anomaly_fraction", None)
    if fraction is None:
        fraction = 0.25 if kinds else 0.0
    t0 = time.perf_counter()
    cohort = generate_cohort(
        out,
        n_sessions=args.sessions,
        slices=args.slices,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
        anomalies=kinds,
        anomaly_fraction=fraction,
    )
    print_summary(cohort, time.perf_counter() - t0)
    if kinds:
        hit = [s for s in cohort.sessions if s.anomaly]
        counts: dict[str, int] = {}
        for s in hit:
            kind = str((s.anomaly or {}).get("kind"))
            counts[kind] = counts.get(kind, 0) + 1
        listed = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none drawn"
        print(f"  injected anomalies (truth.json 'anomaly'): {len(hit)} of {len(cohort.sessions)} sessions: {listed}")
    return cohort


def run(args: argparse.Namespace) -> int:
    generate_and_summarise(args, args.out)
    return 0
