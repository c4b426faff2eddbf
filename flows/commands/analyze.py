"""``cbctqa analyze TABLE.csv``: does Attribution Energy track the radiologists' consensus?

TABLE.csv has one row per volume and category with the columns ``session``, ``category``,
``ae`` and ``consensus`` (Likert 1-5), and optionally ``predicted`` (the model's predicted
score, enabling the partial correlation of AE with consensus given the prediction). With
``--ratings RATINGS.csv`` (columns ``session``, ``rater``, ``category``, ``score`` and optionally
``weight``) the consensus is recomputed from the individual ratings (rater weights overridable
with ``--weights alice=2,bob=1``), TABLE may omit ``consensus``, and inter-rater agreement
(ICC(2,1), Krippendorff's ordinal α) is reported per category.

Prints, per category, the study's protocol (full-sample ρ and p, leave-one-out median ρ and
median p) beside the study's published figures, then the permutation p, the paired BCa
bootstrap CI, Holm and Benjamini-Hochberg adjusted p across the categories, the partial
Spearman ρ given the prediction and ρ(AE, prediction), the outlier flags with their reasons,
and a verdict in words. ``--json OUT`` writes it all (sorted keys, NaN as null) with
provenance. A malformed table exits with code 2 and one line naming the file, line and column.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_report", "read_cohort_table", "read_ratings_table", "register", "run"]

_TABLE_REQUIRED = ("session", "category", "ae")
_TABLE_OPTIONAL = ("consensus", "predicted")
_RATINGS_REQUIRED = ("session", "rater", "category", "score")
_RATINGS_OPTIONAL = ("weight",)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "analyze",
        help="statistics of AE vs consensus per category: the study's protocol, permutation p, BCa CI, Holm/BH, partial ρ, outliers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", help="CSV with columns session, category, ae, consensus[, predicted]")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the full results as JSON to OUT")
    p.add_argument(
        "--ratings",
        default=None,
        metavar="RATINGS.csv",
        help="individual ratings (session, rater, category, score[, weight]): recompute consensus and report agreement",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="RATER=W,...",
        help="override rater weights for the consensus, e.g. alice=2,bob=1 (needs --ratings)",
    )
    p.add_argument("--n-resamples", type=int, default=9999, metavar="N", help="permutations and bootstrap resamples (default 9999)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (default 0.05)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the BCa interval (default 0.95)")
    p.add_argument(
        "--skip-small",
        action="store_true",
        help="list categories with fewer than 4 volumes as skipped instead of failing",
    )
    p.set_defaults(handler=run)


def _read_csv(
    path: str | Path, required: Sequence[str], optional: Sequence[str], what: str
) -> tuple[list[dict[str, Any]], str, tuple[str, ...]]:
    """Read a CSV strictly: known header, one value per column; returns rows with ``origin``."""
    from qa_core.errors import StatisticsError

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise StatisticsError(f"cannot read {what} {p}: {exc.strerror or exc}; check the path") from exc
    sha = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StatisticsError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the {what} as UTF-8 CSV") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise StatisticsError(f"{p}: empty file; expected a header line with {', '.join(required)}") from None
    except csv.Error as exc:
        raise StatisticsError(f"{p} line 1: not valid CSV ({exc})") from exc
    cols = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in cols]
    if missing:
        raise StatisticsError(
            f"{p} line 1: header lacks column(s) {', '.join(missing)}; expected {', '.join(required)}"
            f"{' and optionally ' + ', '.join(optional) if optional else ''}; got {', '.join(cols) or 'nothing'}"
        )
    unknown = [c for c in cols if c not in required and c not in optional]
    if unknown:
        raise StatisticsError(
            f"{p} line 1: unknown column(s) {', '.join(unknown)}; allowed: {', '.join((*required, *optional))}"
        )
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    if dupes:
        raise StatisticsError(f"{p} line 1: column(s) {', '.join(dupes)} appear more than once")
    rows: list[dict[str, Any]] = []
    try:
        for rec in reader:
            line = reader.line_num
            if not rec or all(not v.strip() for v in rec):
                continue
            if len(rec) != len(cols):
                raise StatisticsError(f"{p} line {line}: {len(rec)} fields but the header has {len(cols)}")
            row = {c: v.strip() for c, v in zip(cols, rec, strict=True)}
            row["origin"] = f"{p} line {line}"
            rows.append(row)
    except csv.Error as exc:
        raise StatisticsError(f"{p} line {reader.line_num}: not valid CSV ({exc})") from exc
    if not rows:
        raise StatisticsError(f"{p}: no data rows after the header")
    return rows, sha, tuple(cols)


def _number(row: Mapping[str, Any], column: str) -> float:
    from qa_core.errors import StatisticsError

    text = row[column]
    if text == "":
        raise StatisticsError(f"{row['origin']}, column '{column}': empty; a number is required")
    try:
        value = float(text)
    except ValueError as exc:
        raise StatisticsError(f"{row['origin']}, column '{column}': expected a number, got {text!r}") from exc
    if not math.isfinite(value):
        raise StatisticsError(f"{row['origin']}, column '{column}': {text!r} is not a finite number")
    return value


def read_cohort_table(path: str | Path, *, need_consensus: bool = True) -> tuple[list[dict[str, Any]], str]:
    """Read and validate an analysis table.

    Parameters
    ----------
    path:
        CSV with header ``session, category, ae, consensus[, predicted]`` (any order, case-
        insensitive). ``consensus`` may be omitted when ``need_consensus`` is False.
    need_consensus:
        Whether the ``consensus`` column is required.

    Returns
    -------
    rows, sha256
        Rows as dicts (``session``, ``category``, ``ae``, ``consensus`` or None, ``predicted`` or
        None, ``origin`` = "PATH line N") and the file's sha256.

    Raises
    ------
    qa_core.errors.StatisticsError
        Unreadable file, bad header, a non-numeric, empty or non-finite value, an unknown
        category, consensus outside 1-5 or negative AE; the message names file, line and column.
    """
    from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
    from qa_core.errors import StatisticsError

    rows, sha, cols = _read_csv(path, _TABLE_REQUIRED, _TABLE_OPTIONAL, "analysis table")
    if need_consensus and "consensus" not in cols:
        raise StatisticsError(
            f"{path} line 1: header lacks column consensus; add it or pass --ratings to compute it"
        )
    out = []
    for r in rows:
        if not r["session"]:
            raise StatisticsError(f"{r['origin']}, column 'session': empty")
        if r["category"] not in CATEGORIES:
            raise StatisticsError(
                f"{r['origin']}, column 'category': unknown category {r['category']!r}; "
                f"expected one of {', '.join(CATEGORIES)}"
            )
        ae = _number(r, "ae")
        if ae < 0:
            raise StatisticsError(f"{r['origin']}, column 'ae': {ae:g} is negative; AE is a sum of ReLU'd Grad-CAM values (>= 0)")
        consensus = None
        if "consensus" in cols and (need_consensus or r["consensus"] != ""):
            consensus = _number(r, "consensus")
            if not LIKERT_MIN <= consensus <= LIKERT_MAX:
                raise StatisticsError(
                    f"{r['origin']}, column 'consensus': {consensus:g} is outside the Likert range "
                    f"{LIKERT_MIN}-{LIKERT_MAX}"
                )
        predicted = _number(r, "predicted") if "predicted" in cols and r["predicted"] != "" else None
        out.append(
            {"session": r["session"], "category": r["category"], "ae": ae, "consensus": consensus,
             "predicted": predicted, "origin": r["origin"]}
        )
    return out, sha


def read_ratings_table(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Read a ratings CSV (``session, rater, category, score[, weight]``); returns rows and sha256.

    Values are validated by :func:`qa_core.consensus.parse_rating_rows` (which names the line).
    """
    rows, sha, _ = _read_csv(path, _RATINGS_REQUIRED, _RATINGS_OPTIONAL, "ratings table")
    return rows, sha


def _f(v: float | None, spec: str = ".2f") -> str:
    if v is None:
        return "–"
    if not math.isfinite(v):
        return "undef"
    return format(v, spec)


def _p(v: float | None) -> str:
    if v is None:
        return "–"
    if not math.isfinite(v):
        return "undef"
    return f"{v:.1e}" if v < 0.001 else f"{v:.3f}"


def format_report(analysis: Any, agreement: Mapping[str, Any] | None = None) -> str:
    """The study-style text table, extra statistics, outlier flags and verdicts.

    Parameters
    ----------
    analysis:
        A :class:`qa_core.statistics.CohortAnalysis`.
    agreement:
        Optional ``{category: CategoryAgreement}`` from :func:`qa_core.agreement.agreement_by_category`.
    """
    prov = analysis.provenance
    lines = [
        f"AE vs consensus, Spearman ρ per category ({prov['n_resamples']} permutations and bootstrap "
        f"resamples, seed {prov['seed']}; adjusted p: Holm and Benjamini-Hochberg across "
        f"{len(analysis.results)} categories)",
        "",
        f"{'category':<15}{'n':>3}  {'ρ':>6}{'p':>9}  {'LOO ρ̃':>7}{'LOO p̃':>8}  {'perm p':>8}  "
        f"{'BCa CI':<16}{'Holm p':>8}{'BH p':>8}  {'partial ρ':>9}{'p':>8}  {'ρ(AE,pred)':>10}",
    ]
    for r in analysis.results:
        ci = f"[{_f(r.ci_low)}, {_f(r.ci_high)}]"
        lines.append(
            f"{r.category:<15}{r.n:>3}  {_f(r.rho):>6}{_p(r.p):>9}  {_f(r.loo_median_rho):>7}{_p(r.loo_median_p):>8}  "
            f"{_p(r.perm_p):>8}  {ci:<16}{_p(r.p_holm):>8}{_p(r.p_bh):>8}  {_f(r.partial_rho):>9}"
            f"{_p(r.partial_p):>8}  {_f(r.rho_ae_pred):>10}"
        )
        if r.study is not None:
            lines.append(
                f"{'  study':<15}{r.study.n:>3}  {'':>6}{'':>9}  {r.study.rho:>7.2f}{r.study.p_text:>8}"
            )
    lines += [
        "",
        "ρ, p: full sample (scipy spearmanr). LOO ρ̃, p̃: medians over the leave-one-out subsets (the",
        "study's protocol; 'study' rows are its published figures). perm p: permutation test (valid",
        "with ties). partial ρ: AE with consensus given the predicted score (t test, n-3 df).",
        "",
        "Verdicts:",
    ]
    lines += [f"  {r.verdict}" for r in analysis.results]
    flags = [(r.category, f) for r in analysis.results for f in r.outliers]
    lines += ["", f"Outlier flags ({len(flags)}):" if flags else "Outlier flags: none"]
    for cat, f in flags:
        lines.append(f"  {cat:<14} {f.session:<16} {f.reason}")
    notes = [(r.category, w) for r in analysis.results for w in r.warnings]
    notes += [(cat, f"skipped: {why}") for cat, why in analysis.skipped]
    if notes:
        lines += ["", "Notes:"]
        lines += [f"  {cat}: {w}" for cat, w in notes]
    if agreement:
        lines += ["", "Inter-rater agreement:", f"  {'category':<15}{'sessions':>9}{'raters':>7}  {'ICC(2,1)':>9}  {'95% CI':<16}{'α ordinal':>10}"]
        for cat, a in agreement.items():
            icc = a.icc
            ci = "–" if icc is None else f"[{_f(icc.ci_low)}, {_f(icc.ci_high)}]"
            lines.append(
                f"  {cat:<15}{a.n_sessions:>9}{a.n_raters:>7}  {_f(None if icc is None else icc.icc):>9}  {ci:<16}"
                f"{_f(None if a.alpha is None else a.alpha.alpha):>10}"
            )
            lines += [f"    note: {w}" for w in a.warnings]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def run(args: argparse.Namespace) -> int:
    from qa_core.agreement import agreement_by_category
    from qa_core.consensus import consensus_from_ratings, parse_rater_weights, parse_rating_rows
    from qa_core.errors import StatisticsError
    from qa_core.statistics import analyze_table

    if args.weights is not None and args.ratings is None:
        raise StatisticsError("--weights needs --ratings RATINGS.csv (the individual ratings to weight)")
    if args.n_resamples < 1:
        raise StatisticsError(f"--n-resamples must be a positive integer; got {args.n_resamples}")
    rows, table_sha = read_cohort_table(args.table, need_consensus=args.ratings is None)
    extra: dict[str, Any] = {}
    agreement = None
    if args.ratings is not None:
        rating_rows, ratings_sha = read_ratings_table(args.ratings)
        parsed = parse_rating_rows(rating_rows)
        weights = parse_rater_weights(args.weights) if args.weights is not None else None
        table = consensus_from_ratings(parsed, rater_weights=weights)
        cons = table.as_dict()
        for r in rows:
            key = (r["session"], r["category"])
            if key not in cons:
                raise StatisticsError(
                    f"{r['origin']}: no ratings in {args.ratings} for session {r['session']!r}, "
                    f"category {r['category']!r}; cannot compute its consensus"
                )
            r["consensus"] = cons[key]
        agreement = agreement_by_category(parsed, categories=sorted({r["category"] for r in rows}, key=_cat_order))
        extra = {
            "ratings_sha256": ratings_sha,
            "ratings_file": str(args.ratings),
            "rater_weights": dict(table.rater_weights),
            "rater_weight_sources": dict(table.weight_sources),
            "consensus_source": "recomputed from ratings",
        }
    analysis = analyze_table(
        rows,
        n_resamples=args.n_resamples,
        seed=args.seed,
        confidence_level=args.confidence,
        alpha=args.alpha,
        skip_small=args.skip_small,
    )
    print(format_report(analysis, agreement))
    if args.json_out:
        doc = analysis.to_dict()
        if agreement is not None:
            for cat, a in agreement.items():
                doc[cat]["agreement"] = a.to_dict()
        prov = doc["provenance"]
        prov["rows_sha256"] = prov.pop("input_sha256")
        prov.pop("input_sha256_of", None)
        prov.update({"input_file": str(args.table), "input_sha256": table_sha, "command": "cbctqa analyze", **extra})
        out = Path(args.json_out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(_jsonable(doc), sort_keys=True, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise StatisticsError(f"cannot write --json {out}: {exc.strerror or exc}") from exc
        print(f"\nwrote {out}", file=sys.stderr)
    return 0


def _cat_order(name: str) -> int:
    from qa_core.categories import CATEGORIES

    return CATEGORIES.index(name) if name in CATEGORIES else len(CATEGORIES)
