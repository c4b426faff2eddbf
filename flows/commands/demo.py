"""``cbctqa demo``: the product's main job end to end on simulated data.

For now it generates a small simulated cohort and prints its summary; later steps
(scoring, attribution, statistics) extend :func:`run` after :func:`run_cohort_step`.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from flows.commands.synth import add_cohort_arguments, print_summary, validate_args

if TYPE_CHECKING:
    from qa_core.synth import Cohort

__all__ = ["register", "run", "run_cohort_step"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the demo: simulate a small cohort and summarise it")
    add_cohort_arguments(p, sessions=6, slices=32, size=128, out="demo-output")
    p.set_defaults(handler=run)


def run_cohort_step(args: argparse.Namespace) -> Cohort:
    """Generate (or resume) the demo cohort under ``args.out / "cohort"`` and print its summary.

    Returns
    -------
    qa_core.synth.Cohort
        The cohort, for the steps that follow.
    """
    from qa_core.synth import generate_cohort

    validate_args(args)
    t0 = time.perf_counter()
    cohort = generate_cohort(
        args.out / "cohort",
        n_sessions=args.sessions,
        slices=args.slices,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print_summary(cohort, time.perf_counter() - t0)
    return cohort


def run(args: argparse.Namespace) -> int:
    run_cohort_step(args)
    return 0
