"""False-alarm share of the localisation alerts on normal simulated cohorts.

Reuses the energy shares (``ae_in_region``, gradcam rows) of ``python -m qa_core.ae_study``
JSON outputs and recomputes each session's chance level (``region_share``) from its
``RS.dcm`` and CT (no model run), then counts, per cohort, the sessions with at least one
localisation flag under the absolute rule (share < ``CBCTQA_LOCALISATION_MIN_SHARE``) and
under the cohort rule (:func:`qa_core.localisation.cohort_localisation_flags`)::

    .venv/bin/python benchmarks/localisation_alerts.py study16.json study48.json \\
        [--cache chance.json]

The cohorts must contain no injected anomaly (every session counts as normal).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from qa_core.dicom_series import load_series
from qa_core.localisation import body_from_image, cohort_localisation_flags, region_share
from qa_core.rtstruct import read_rtstruct
from qa_core.settings import get_settings


def _chance(cohort: str, label: str, cats: list[str]) -> dict[str, float]:
    vol = load_series(f"{cohort}/sessions/{label}/DICOM")
    masks = read_rtstruct(f"{cohort}/sessions/{label}/DICOM/RS.dcm", vol)
    body = masks.body if masks.body is not None else body_from_image(vol)
    return {
        c: 1.0 if c == "overall" else (region_share(masks.masks[c], body) if c in masks.masks else math.nan)
        for c in cats
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path, help="ae_study JSON outputs")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--cache", type=Path, help="JSON file caching the chance levels")
    args = ap.parse_args()
    min_share = get_settings().localisation_min_share
    shares: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for f in args.studies:
        for r in json.loads(f.read_text())["rows"]:
            if r["method"] == args.method and r.get("ae_in_region") is not None:
                shares[r["cohort"]][r["session"]][r["category"]] = float(r["ae_in_region"])
    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.exists() else {}
    n_all = abs_all = new_all = 0
    for cohort, sessions in shares.items():
        data: dict[str, dict[str, tuple[float, float]]] = {}
        for label, cats in sessions.items():
            key = f"{cohort}/{label}"
            if key not in cache:
                cache[key] = _chance(cohort, label, list(cats))
            data[label] = {c: (s, float(cache[key][c])) for c, s in cats.items()}
        absolute = {s for s, cats in data.items() if any(a < min_share for a, _ in cats.values())}
        flags = cohort_localisation_flags(data, min_share=min_share)
        flagged = {f.session for f in flags}
        n = len(data)
        n_all, abs_all, new_all = n_all + n, abs_all + len(absolute), new_all + len(flagged)
        cats_seen = list(next(iter(data.values())))
        med = {c: float(np.median([d[c][0] for d in data.values()])) for c in cats_seen}
        chance = {c: float(np.median([d[c][1] for d in data.values()])) for c in cats_seen}
        print(f"{cohort}: n={n}; absolute rule {len(absolute)}/{n}; cohort rule {len(flagged)}/{n} "
              f"({len(flagged) / n:.1%}), {len(flags)} flags")
        print("   median share / chance: " + ", ".join(f"{c} {med[c]:.2%}/{chance[c]:.2%}" for c in med))
        for fl in flags:
            print(f"   {fl.session} {fl.category}: {fl.reason}")
    if args.cache:
        args.cache.write_text(json.dumps(cache))
    print(f"ALL: n={n_all}; absolute rule {abs_all}/{n_all} ({abs_all / n_all:.1%}); cohort rule "
          f"{new_all}/{n_all} ({new_all / n_all:.1%}) sessions with a localisation flag")


if __name__ == "__main__":
    main()
