"""Benchmark: do the alerts mean something? Per rule, the share of injected anomalies flagged
and the share of normal sessions flagged, with the shipped model.

1. Simulate a normal cohort (no anomaly) and an anomalous one (every session carries one
   known anomaly from :mod:`qa_core.synth.anomalies`, the same number of each kind), both
   with :func:`qa_core.synth.generate_cohort` (resumable: a second run reuses them).
2. Score every session as the product does: ``load_series`` -> ``attribute_volume`` (scores,
   AE) -> ``check_image`` (image-level checks; the reference body for the left-right check is
   the structure set's ``External`` when the session has an RTSTRUCT, else the simulator's
   label map, which the RTSTRUCT is drawn from). Results are cached per session.
3. Alerts: the normal cohort is analysed on its own; each anomalous session is analysed as
   one more session of the normal cohort (a rare anomaly among normal sessions, as in a
   department), with :func:`qa_core.outliers.session_alerts` (the default alert rules) and,
   for comparison, the DESIGN's rules as they were (:func:`qa_core.outliers.detect_outliers`:
   isotonic AE-on-consensus residual robust z > 3.5 and |Δρ_i| >= 0.1, every category), on
   raw AE (the default now, rules ``design:``) and on log AE (the default before, ``before:``).

Prints, per rule, anomalies flagged (per kind and in all) and normal sessions flagged, and
the totals against the targets (>= 90 % of anomalies flagged in at least one category,
<= 5 % of normal sessions flagged).

Run (about 25 CPU-minutes at the defaults on one core)::

    python benchmarks/bench_alerts.py [--normal 64] [--per-kind 6] [--slices 48] [--size 256]
        [--seed 900] [--workdir .bench-alerts] [--workers 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from qa_core.categories import CATEGORIES
from qa_core.synth.anomalies import ANOMALY_KINDS

TARGET_ANOMALIES, TARGET_NORMAL = 0.90, 0.05


def _checks_fingerprint() -> str:
    import qa_core.image_checks as ic

    return hashlib.sha256(Path(ic.__file__).read_bytes()).hexdigest()[:16]


def _reference_body(session_dir: Path, volume: Any) -> tuple[np.ndarray | None, str]:
    """The structure set's External when there is an RTSTRUCT, else the label map's body."""
    rs = sorted((session_dir / "DICOM").glob("RS*.dcm"))
    if rs:
        try:
            from qa_core.rtstruct import read_rtstruct

            masks = read_rtstruct(rs[0], volume)
            if masks.body is not None:
                return masks.body, "rtstruct"
        except Exception as exc:
            print(
                f"  {session_dir.name}: RTSTRUCT unusable ({exc}); using the label map",
                file=sys.stderr,
            )
    lab = session_dir / "labels.npz"
    if lab.is_file():
        with np.load(lab) as z:
            return np.asarray(z["labels"] > 0), "labels"
    return None, "none"


def score_cohort(model: Any, root: Path, cache: Path, *, batch_size: int) -> list[dict[str, Any]]:
    """Score and check every session of a cohort (cached per session)."""
    from qa_core.attribution import attribute_volume
    from qa_core.dicom_series import load_series
    from qa_core.image_checks import check_image

    cache.mkdir(parents=True, exist_ok=True)
    fp = _checks_fingerprint()
    sha = str((getattr(model, "card", None) or {}).get("sha256", ""))[:16]
    out = []
    for tpath in sorted((root / "sessions").glob("*/truth.json")):
        label = tpath.parent.name
        t = json.loads(tpath.read_text(encoding="utf-8"))
        path = cache / f"{label}.json"
        rec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        sdir = root / "sessions" / label
        need_score = rec.get("model_sha") != sha
        need_checks = rec.get("checks_fp") != fp
        if need_score or need_checks:
            t0 = time.perf_counter()
            volume = load_series(sorted((sdir / "DICOM").glob("CT*.dcm")))
            if need_score:
                res = attribute_volume(model, volume, batch_size=batch_size)
                rec.update(
                    model_sha=sha,
                    scores={c: float(res.scores[c]) for c in CATEGORIES},
                    ae={c: float(res.ae[c]) for c in CATEGORIES},
                )
            ref, ref_src = _reference_body(sdir, volume)
            rec.update(
                checks_fp=fp,
                checks=check_image(volume, reference_body=ref).to_dict(),
                reference=ref_src,
            )
            rec.update(
                label=label,
                kind=(t.get("anomaly") or {}).get("kind", "normal"),
                anomaly=t.get("anomaly"),
                consensus={c: float(t["consensus"][c]) for c in CATEGORIES},
            )
            path.write_text(json.dumps(rec, sort_keys=True), encoding="utf-8")
            print(
                f"  scored {label} ({rec['kind']}) in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        out.append(rec)
    return out


def _rows(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    return {
        c: {
            "ae": [r["ae"][c] for r in records],
            "consensus": [r["consensus"][c] for r in records],
            "predicted": [r["scores"][c] for r in records],
        }
        for c in CATEGORIES
    }


def tail_scales(records: list[dict[str, Any]]) -> dict[str, float]:
    """99th percentile of |robust z| over sessions x categories, over Φ⁻¹(0.995), per rule."""
    from qa_core.outliers import attribution_residual_z, detect_outliers

    sessions = [r["label"] for r in records]
    cols = _rows(records)
    za, zc = [], []
    for c in CATEGORIES:
        za.extend(attribution_residual_z(sessions, cols[c]["ae"], cols[c]["predicted"]).z)
        zc.extend(detect_outliers(sessions, cols[c]["ae"], cols[c]["consensus"]).residual_z.z)
    return {
        "attribution_vs_prediction": float(np.percentile(np.abs(za), 99) / 2.5758),
        "ae_vs_consensus": float(np.percentile(np.abs(zc), 99) / 2.5758),
    }


def alerts_for(records: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """Session -> rule -> reasons, for the default rules and the DESIGN's rules as they were."""
    from qa_core.image_checks import ImageCheck, ImageCheckReport
    from qa_core.outliers import detect_outliers, session_alerts
    from qa_core.statistics import loo_spearman

    sessions = [r["label"] for r in records]
    cols = _rows(records)
    reports = {}
    for r in records:
        checks = tuple(
            ImageCheck(
                name=c["name"],
                assessed=c["assessed"],
                flagged=c["flagged"],
                value=math.nan if c["value"] is None else c["value"],
                unit=c["unit"],
                limit=c["limit"],
                reason=c["reason"],
                note=c["note"],
            )
            for c in r["checks"]["checks"].values()
        )
        reports[r["label"]] = ImageCheckReport(checks)
    out: dict[str, dict[str, list[str]]] = {s: {} for s in sessions}
    alerts = session_alerts(
        sessions,
        {c: cols[c]["ae"] for c in CATEGORIES},
        {c: cols[c]["predicted"] for c in CATEGORIES},
        consensus={c: cols[c]["consensus"] for c in CATEGORIES},
        image_checks=reports,
    )
    for a in alerts:
        out[a.session].setdefault(a.rule, []).append(f"{a.category}: {a.reason}")
    # The DESIGN's rules, every category, no multiplicity handling: as they raised flags
    # before (log AE) and as detect_outliers now computes them by default (raw AE).
    for c in CATEGORIES:
        loo = loo_spearman(cols[c]["ae"], cols[c]["consensus"])
        for prefix, log_ae in (("before", True), ("design", False)):
            ae = [max(v, 1e-12) for v in cols[c]["ae"]] if log_ae else cols[c]["ae"]
            rep = detect_outliers(
                sessions, ae, cols[c]["consensus"], delta_rho=loo.influence, rho=loo.rho,
                log_ae=log_ae,
            )  # fmt: skip
            for f in rep.flags:
                out[f.session].setdefault(f"{prefix}:{f.kind}", []).append(f"{c}: {f.reason}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--normal", type=int, default=64, help="normal sessions (default 64)")
    p.add_argument(
        "--per-kind", type=int, default=6, help="anomalous sessions per kind (default 6)"
    )
    p.add_argument("--slices", type=int, default=48)
    p.add_argument("--size", type=int, default=256)
    p.add_argument(
        "--seed", type=int, default=900, help="normal cohort seed; the anomalous one uses seed+1"
    )
    p.add_argument("--workdir", type=Path, default=Path(".bench-alerts"))
    p.add_argument("--workers", type=int, default=1, help="synth worker processes (default 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from qa_core.model import load_model
    from qa_core.synth import generate_cohort

    t0 = time.perf_counter()
    kinds = ANOMALY_KINDS
    normal_dir, anom_dir = args.workdir / "normal", args.workdir / "anomalous"
    generate_cohort(
        normal_dir,
        n_sessions=args.normal,
        slices=args.slices,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        progress=False,
    )
    generate_cohort(
        anom_dir,
        n_sessions=args.per_kind * len(kinds),
        slices=args.slices,
        size=args.size,
        seed=args.seed + 1,
        workers=args.workers,
        progress=False,
        anomalies=kinds,
        anomaly_fraction=1.0,
    )
    t_synth = time.perf_counter() - t0
    model = load_model()
    normal = score_cohort(
        model, normal_dir, args.workdir / "scores" / "normal", batch_size=args.batch_size
    )
    anomalous = score_cohort(
        model, anom_dir, args.workdir / "scores" / "anomalous", batch_size=args.batch_size
    )
    t_score = time.perf_counter() - t0 - t_synth

    scales = tail_scales(normal)
    print(
        "tail scale of the robust z on the normal cohort (99th percentile of |z| / 2.576; "
        "qa_core.outliers.TAIL_SCALE holds the defaults): "
        + ", ".join(f"{k} {v:.2f}" for k, v in scales.items()),
        file=sys.stderr,
    )
    normal_alerts = alerts_for(normal)
    anom_alerts: dict[str, dict[str, list[str]]] = {}
    for rec in anomalous:
        anom_alerts[rec["label"]] = alerts_for([*normal, rec])[rec["label"]]
    kind_of = {r["label"]: r["kind"] for r in anomalous}

    rules = sorted({rule for a in (*normal_alerts.values(), *anom_alerts.values()) for rule in a})
    default_rules = [r for r in rules if not r.startswith(("design:", "before:"))]
    n_norm, n_anom = len(normal), len(anomalous)

    def share(
        alerts: dict[str, dict[str, list[str]]], pick: list[str], labels: list[str]
    ) -> tuple[int, float]:
        k = sum(1 for s in labels if any(r in alerts[s] for r in pick))
        return k, k / max(len(labels), 1)

    anom_labels = [r["label"] for r in anomalous]
    norm_labels = [r["label"] for r in normal]
    print(
        f"alerts benchmark: {n_norm} normal + {n_anom} anomalous sessions "
        f"({args.per_kind} per kind), {args.slices} slices x {args.size}^2; synth {t_synth:.0f} s, "
        f"scoring {t_score:.0f} s"
    )
    header = f"{'rule':34s} {'anomalies flagged':>18s} {'normal flagged':>15s}   " + " ".join(
        f"{k[:8]:>8s}" for k in kinds
    )
    print(header)
    table: dict[str, Any] = {}
    for rule in rules:
        ka, fa = share(anom_alerts, [rule], anom_labels)
        kn, fn = share(normal_alerts, [rule], norm_labels)
        per_kind = {
            k: share(anom_alerts, [rule], [s for s in anom_labels if kind_of[s] == k])[1]
            for k in kinds
        }
        table[rule] = {"anomalies": fa, "normal": fn, "per_kind": per_kind}
        print(
            f"{rule:34s} {ka:4d}/{n_anom} {fa:6.0%}   {kn:4d}/{n_norm} {fn:5.0%}   "
            + " ".join(f"{per_kind[k]:8.0%}" for k in kinds)
        )
    totals = {}
    for name, pick in (
        ("default alerts (all rules)", default_rules),
        ("image checks alone", [r for r in rules if r.startswith("image:")]),
        ("DESIGN flags now (raw AE)", [r for r in rules if r.startswith("design:")]),
        ("DESIGN flags as before (log AE)", [r for r in rules if r.startswith("before:")]),
    ):
        ka, fa = share(anom_alerts, pick, anom_labels)
        kn, fn = share(normal_alerts, pick, norm_labels)
        per_kind = {
            k: share(anom_alerts, pick, [s for s in anom_labels if kind_of[s] == k])[1]
            for k in kinds
        }
        totals[name] = {"anomalies": fa, "normal": fn, "per_kind": per_kind}
        print(
            f"{name:34s} {ka:4d}/{n_anom} {fa:6.0%}   {kn:4d}/{n_norm} {fn:5.0%}   "
            + " ".join(f"{per_kind[k]:8.0%}" for k in kinds)
        )
    d = totals["default alerts (all rules)"]
    ok_a, ok_n = d["anomalies"] >= TARGET_ANOMALIES, d["normal"] <= TARGET_NORMAL
    print(
        f"\ntarget: anomalies flagged >= {TARGET_ANOMALIES:.0%}: {d['anomalies']:.1%} "
        f"({'met' if ok_a else 'NOT met'}); normal sessions flagged <= {TARGET_NORMAL:.0%}: "
        f"{d['normal']:.1%} ({'met' if ok_n else 'NOT met'})"
    )
    missed = [s for s in anom_labels if not any(r in anom_alerts[s] for r in default_rules)]
    if missed:
        print("anomalies not flagged: " + ", ".join(f"{s} ({kind_of[s]})" for s in missed))
    false = [s for s in norm_labels if any(r in normal_alerts[s] for r in default_rules)]
    for s in false:
        print(
            f"normal session flagged: {s}: "
            + " | ".join(f"{r}: {v[0]}" for r, v in normal_alerts[s].items() if r in default_rules)
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "rules": table,
                    "totals": totals,
                    "n_normal": n_norm,
                    "n_anomalous": n_anom,
                    "targets": {"anomalies_min": TARGET_ANOMALIES, "normal_max": TARGET_NORMAL},
                    "normal_alerts": normal_alerts,
                    "anomalous_alerts": anom_alerts,
                },
                sort_keys=True,
                indent=1,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
