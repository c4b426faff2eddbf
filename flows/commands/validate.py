"""``cbctqa validate --cohort DIR``: does the model predict the consensus, and does AE track it?

Scores and attributes every session of a rated cohort (a simulated one from ``cbctqa synth``
or a user's own: ``sessions/<label>/DICOM`` plus ``ratings.csv``), then prints per category
the model's agreement with the consensus (Spearman ρ, MAE) and the AE analysis: the study's
protocol, permutation p, BCa interval, Holm/BH, partial ρ given the prediction, outlier flags,
and a verdict in words saying whether AE tracks the consensus, or why not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

__all__ = ["register", "run"]

if TYPE_CHECKING:
    from qa_core.validation import ValidationReport


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="validate the model and AE against the consensus of a rated cohort",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cohort", type=Path, required=True, help="rated cohort folder")
    p.add_argument(
        "--model", type=Path, default=None, metavar="CKPT", help="checkpoint (default: shipped)"
    )
    p.add_argument("--method", default="gradcam", help="CAM method (default gradcam)")
    p.add_argument(
        "--batch-size", type=int, default=32, metavar="B", help="slices per batch (default 32)"
    )
    p.add_argument("--device", default=None, help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--n-resamples", type=int, default=9999, metavar="N", help="resamples (default 9999)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    p.add_argument(
        "--ae",
        choices=("study", "organ"),
        default="study",
        help="AE definition: study (sum of the raw map over all cells, the default and the "
        "study's) or organ (sum of the map times its coverage by the contoured organ; needs an "
        "RTSTRUCT per session)",
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the report as JSON"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from flows.commands.analyze import _jsonable, format_report
    from qa_core.errors import ConfigurationError
    from qa_core.model import load_model
    from qa_core.validation import validate_cohort

    if args.n_resamples < 100:
        raise ConfigurationError(f"--n-resamples must be >= 100; got {args.n_resamples}")
    if args.batch_size < 1:
        raise ConfigurationError(f"--batch-size must be >= 1; got {args.batch_size}")
    model = load_model(args.model, device=args.device)
    report = validate_cohort(
        model,
        args.cohort,
        method=args.method,
        batch_size=args.batch_size,
        n_resamples=args.n_resamples,
        seed=args.seed,
        on_session=lambda label: print(f"  attributed {label}", file=sys.stderr),
        ae_definition=args.ae,
    )
    print(
        f"cohort {args.cohort}: {report.provenance['n_sessions']} sessions, "
        f"model sha256 {str(report.provenance['model_sha256'])[:12]}, method {args.method}"
    )
    print()
    print("Model vs consensus (volume mean of slice predictions; ρ higher is better, MAE lower):")
    print(f"  {'category':<15}{'n':>3}  {'ρ':>6}  {'p':>9}  {'MAE':>6}")
    for m in report.model:
        rho = "  n/a" if math.isnan(m.rho) else f"{m.rho:6.2f}"
        p = "n/a" if math.isnan(m.p) else f"{m.p:.2g}"
        print(f"  {m.category:<15}{m.n:>3}  {rho:>6}  {p:>9}  {m.mae:6.2f}")
    print()
    if args.ae != "study":
        print(f"AE definition: {args.ae} (sum of the raw map times its coverage by the organ)")
    print(format_report(report.analysis))
    _print_alerts(report)
    if report.localisation:
        print()
        print(
            "Localisation (sessions with an RTSTRUCT): share of each map's energy inside the "
            "contoured organ (overall: the body), its chance level (the organ's share of the body), "
            "their ratio, and the pointing game (map maximum inside the organ, over its slices):"
        )
        print(
            f"  {'category':<15}{'n':>3}  {'in organ':>9}  {'IQR':>13}  {'chance':>7}  "
            f"{'ratio':>6}  {'pointing':>8}  {'< limit':>7}  {'alerts':>6}"
        )
        for loc in report.localisation:
            iqr = f"{loc.ae_in_region_q1:.1%}-{loc.ae_in_region_q3:.1%}"
            ratio = "n/a" if math.isnan(loc.ratio_median) else f"{loc.ratio_median:.2f}"
            hit = "n/a" if math.isnan(loc.pointing_hit_rate) else f"{loc.pointing_hit_rate:.0%}"
            print(
                f"  {loc.category:<15}{loc.n:>3}  {loc.ae_in_region_median:>9.1%}  {iqr:>13}  "
                f"{loc.region_share_median:>7.1%}  {ratio:>6}  {hit:>8}  {loc.n_flagged:>7}  "
                f"{loc.n_alerted:>6}"
            )
        for loc in report.localisation:
            print(f"  {loc.category}: {loc.verdict}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(_jsonable(report.to_dict()), sort_keys=True, indent=2) + "\n",
            encoding="utf-8",
        )
        print(f"\nreport: {args.json}")
    return 0


def _print_alerts(report: ValidationReport) -> None:
    """The default alerts (what the product writes onto assessments), one line each."""
    sessions = list(dict.fromkeys(a.session for a in report.alerts))
    n = report.provenance.get("n_sessions", "?")
    print()
    print(
        f"Alerts (default rules: image checks, attribution vs prediction, the outliers above after a "
        f"Holm step per session, localisation unusual for this model): {len(sessions)} of {n} sessions"
        + ("" if sessions else ", none")
    )
    for a in report.alerts:
        print(f"  {a.session:<16} {a.rule:<26} {a.reason}")
