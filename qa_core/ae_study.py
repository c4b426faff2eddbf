"""Does AE carry information beyond the prediction? The study, taken further.

For held-out rated cohorts with contours, every CAM method (:data:`~qa_core.attribution.METHODS`)
and two AE definitions (``study``: Σ L over every map cell, the study's; ``organ``: Σ L·r,
restricted to the contoured organ, :mod:`qa_core.localisation`), per category:

* ρ(AE, consensus) with its permutation p (pairings permuted, valid with ties) and Holm across
  the five categories;
* ρ(AE, prediction): how much AE restates the model's own score;
* the partial Spearman ρ of AE with consensus given the prediction (ranks residualised on the
  prediction's ranks, :func:`qa_core.statistics.partial_spearman`), with a permutation p of
  the residual correlation and Holm across categories. A positive, significant partial ρ is
  what "AE says more than the score" would look like.

One forward and one batched backward per slice batch serve all five methods: the target
layer's activations and the gradients of all five outputs are captured once and weighted by
each method with :func:`qa_core.attribution.raw_cam` (pytorch-grad-cam's weighting), so the
``gradcam`` AE equals :func:`~qa_core.attribution.attribute_volume`'s (tested).

Command (writes JSON and a Markdown table)::

    python -m qa_core.ae_study --cohort H3 --cohort H4 --cohort H5 --json study16.json
    python -m qa_core.ae_study --cohort L6 --json study48.json
    python -m qa_core.ae_study --rows study16.json --rows study48.json --pool --json pooled.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from scipy import stats
from torch import nn

from qa_core.attribution import METHODS, attribution_mode, raw_cam
from qa_core.categories import CATEGORIES
from qa_core.errors import AttributionError, StatisticsError
from qa_core.volume import Volume

__all__ = [
    "DEFINITIONS",
    "StudyCell",
    "analyse_study",
    "collect_cohort",
    "format_markdown",
    "main",
    "volume_maps",
]

#: AE definitions compared: the study's (all map cells) and the organ-restricted one.
DEFINITIONS: Final[tuple[str, ...]] = ("study", "organ")


def volume_maps(
    model: nn.Module, volume: Volume, *, methods: Sequence[str] = METHODS, batch_size: int = 16
) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[np.float32]]]:
    """Slice scores ``(5, N)`` and raw maps ``(5, N, h, w)`` of every method, one pass.

    The target layer's output is replaced by a leaf that requires grad (as
    :mod:`qa_core.attribution` does), the gradients of the five outputs with respect to it
    are taken in one batched backward, and each method's weighting is applied to the same
    activations and gradients with :func:`~qa_core.attribution.raw_cam`.
    """
    target = getattr(model, "target_layer", None)
    preprocess = getattr(model, "preprocess", None)
    if not isinstance(target, nn.Module) or not callable(preprocess):
        raise AttributionError(
            f"model {type(model).__name__} needs a target_layer module and preprocess(volume)"
        )
    x = preprocess(volume)
    n = int(x.shape[0])
    k = len(CATEGORIES)
    scores = np.empty((k, n), dtype=np.float32)
    maps: dict[str, npt.NDArray[np.float32]] = {}
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    device = next(model.parameters()).device
    handle = target.register_forward_hook(hook)
    try:
        with attribution_mode(model):
            for s in range(0, n, batch_size):
                xb = x[s : s + batch_size].to(device)
                captured.clear()
                with torch.enable_grad():
                    y = model(xb)
                    leaf = captured[0]
                    eye = torch.eye(k, dtype=y.dtype, device=y.device)
                    grad_out = eye[:, None, :].expand(k, y.shape[0], k)
                    (g,) = torch.autograd.grad(y, leaf, grad_outputs=grad_out, is_grads_batched=True)
                a_np = leaf.detach().float().cpu().numpy()
                g_np = g.detach().float().cpu().numpy()
                scores[:, s : s + y.shape[0]] = y.detach().float().cpu().numpy().T
                for method in methods:
                    cam = raw_cam(method, a_np, g_np)
                    if method not in maps:
                        maps[method] = np.empty((k, n, *cam.shape[2:]), dtype=np.float32)
                    maps[method][:, s : s + y.shape[0]] = cam
    finally:
        handle.remove()
    return scores, maps


def collect_cohort(
    model: nn.Module,
    cohort_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    batch_size: int = 16,
    on_session: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per session, category and method: consensus, prediction, AE, organ AE.

    Every session needs an RTSTRUCT referencing its series in its folder (simulated cohorts
    carry one). Rows: ``cohort``, ``session``, ``category``, ``method``, ``consensus``,
    ``predicted`` (volume mean of slice scores), ``ae`` (Σ L), ``organ_ae`` (Σ L·r),
    ``ae_in_region``.
    """
    from qa_core.dicom_series import load_series
    from qa_core.localisation import cell_coverage
    from qa_core.rtstruct import find_rtstructs, read_rtstruct
    from qa_core.training import read_rated_cohort

    entries, _ = read_rated_cohort(cohort_dir)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        volume = load_series(entry.dicom_dir)
        found = find_rtstructs(entry.dicom_dir.parent, series_uid=volume.series_uid)
        if not found:
            raise StatisticsError(
                f"session {entry.label}: no RTSTRUCT referencing series {volume.series_uid} in "
                f"{entry.dicom_dir.parent}; the study needs contours for every session"
            )
        organs = read_rtstruct(found[0].path, volume)
        body = organs.body
        scores, maps = volume_maps(model, volume, methods=methods, batch_size=batch_size)
        some = next(iter(maps.values()))
        h, w = some.shape[2:]
        coverage = {}
        for c in CATEGORIES:
            region = body if c == "overall" else organs.masks.get(c)
            if region is None:
                raise StatisticsError(
                    f"session {entry.label}: its RTSTRUCT has no {c} region; the study needs every organ"
                )
            coverage[c] = cell_coverage(region, (h, w))
        for k, c in enumerate(CATEGORIES):
            for method, cams in maps.items():
                lmap = cams[k].astype(np.float64)
                ae = float(lmap.sum())
                organ_ae = float(np.sum(lmap * coverage[c]))
                rows.append(
                    {
                        "cohort": str(cohort_dir),
                        "session": entry.label,
                        "category": c,
                        "method": method,
                        "consensus": float(entry.consensus[c]),
                        "predicted": float(scores[k].mean(dtype=np.float64)),
                        "ae": ae,
                        "organ_ae": organ_ae,
                        "ae_in_region": organ_ae / ae if ae > 0 else math.nan,
                    }
                )
        if on_session is not None:
            on_session(entry.label)
    return rows


@dataclass(frozen=True)
class StudyCell:
    """One (cohort, method, definition, category) of the study table.

    Attributes
    ----------
    cohort, method, definition, category:
        What was analysed (``definition``: ``study`` = Σ L, ``organ`` = Σ L·r).
    n:
        Volumes.
    rho_consensus, p_consensus, p_consensus_holm:
        Spearman ρ(AE, consensus), its two-sided permutation p, Holm-adjusted across the five
        categories of this cohort, method and definition.
    rho_prediction:
        Spearman ρ(AE, prediction).
    partial_rho, partial_p, partial_p_holm:
        Partial Spearman ρ of AE with consensus given the prediction, its two-sided
        permutation p (residuals permuted), Holm-adjusted across categories.
    median_ae_in_region:
        Median share of the map's energy inside the organ (localisation).
    """

    cohort: str
    method: str
    definition: str
    category: str
    n: int
    rho_consensus: float
    p_consensus: float
    p_consensus_holm: float
    rho_prediction: float
    partial_rho: float
    partial_p: float
    partial_p_holm: float
    median_ae_in_region: float


def _ranks_residual(x: npt.NDArray[np.float64], z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    rx, rz = stats.rankdata(x), stats.rankdata(z)
    design = np.column_stack([np.ones_like(rz), rz])
    coef, *_ = np.linalg.lstsq(design, rx, rcond=None)
    out: npt.NDArray[np.float64] = rx - design @ coef
    return out


def _perm_p_pearson(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], n_resamples: int, rng: np.random.Generator
) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan

    def stat(x: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
        x = np.moveaxis(x, axis, -1)
        xc = x - x.mean(axis=-1, keepdims=True)
        bc = b - b.mean()
        r: npt.NDArray[np.float64] = (xc * bc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (bc * bc).sum())
        return r

    res = stats.permutation_test(
        (a,), stat, permutation_type="pairings", vectorized=True, n_resamples=n_resamples, rng=rng
    )
    return float(min(1.0, res.pvalue))


def analyse_study(
    rows: Sequence[dict[str, Any]], *, n_resamples: int = 9999, seed: int = 0
) -> list[StudyCell]:
    """The study table from :func:`collect_cohort` rows (see :class:`StudyCell`)."""
    from qa_core.statistics import holm, partial_spearman

    cells: list[StudyCell] = []
    keys = sorted({(r["cohort"], r["method"]) for r in rows}, key=lambda t: (t[0], METHODS.index(t[1])))
    rng = np.random.default_rng(seed)
    for cohort, method in keys:
        for definition in DEFINITIONS:
            col = "ae" if definition == "study" else "organ_ae"
            partial: list[tuple[str, int, float, float, float, float, float, float]] = []
            for cat in CATEGORIES:
                sel = [r for r in rows if r["cohort"] == cohort and r["method"] == method and r["category"] == cat]
                ae = np.array([r[col] for r in sel], dtype=np.float64)
                cons = np.array([r["consensus"] for r in sel], dtype=np.float64)
                pred = np.array([r["predicted"] for r in sel], dtype=np.float64)
                if ae.size < 4:
                    raise StatisticsError(f"cohort {cohort}: {ae.size} volumes; the study needs at least 4")
                rho_c = float(stats.spearmanr(ae, cons).statistic)
                p_c = _perm_p_pearson(stats.rankdata(ae), stats.rankdata(cons), n_resamples, rng)
                rho_p = float(stats.spearmanr(ae, pred).statistic)
                ps = partial_spearman(ae, cons, pred, x_name="AE", y_name="consensus", z_name="prediction")
                pp = _perm_p_pearson(_ranks_residual(ae, pred), _ranks_residual(cons, pred), n_resamples, rng)
                share = float(np.nanmedian([r["ae_in_region"] for r in sel]))
                partial.append((cat, int(ae.size), rho_c, p_c, rho_p, ps.rho, pp, share))
            holm_c = holm([t[3] if not math.isnan(t[3]) else 1.0 for t in partial])
            holm_p = holm([t[6] if not math.isnan(t[6]) else 1.0 for t in partial])
            for i, (cat, n, rho_c, p_c, rho_p, prho, pp, share) in enumerate(partial):
                cells.append(
                    StudyCell(
                        cohort=cohort, method=method, definition=definition, category=cat, n=n,
                        rho_consensus=rho_c, p_consensus=p_c, p_consensus_holm=float(holm_c[i]),
                        rho_prediction=rho_p, partial_rho=prho, partial_p=pp,
                        partial_p_holm=float(holm_p[i]), median_ae_in_region=share,
                    )
                )
    return cells


def _short(cohort: str) -> str:
    return Path(cohort).name or cohort


def format_markdown(cells: Sequence[StudyCell], *, alpha: float = 0.05) -> str:
    """Markdown tables: one per cohort, rows method x definition x category."""
    lines: list[str] = []
    for cohort in dict.fromkeys(c.cohort for c in cells):
        sub = [c for c in cells if c.cohort == cohort]
        lines.append(f"#### {_short(cohort)} (n = {sub[0].n})")
        lines.append("")
        lines.append(
            "| method | AE | category | ρ(AE, consensus) | Holm p | ρ(AE, prediction) | "
            "partial ρ given prediction | Holm p | energy in organ |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for c in sub:
            mark = " **+**" if c.partial_rho > 0 and c.partial_p_holm < alpha else ""
            lines.append(
                f"| {c.method} | {'Σ L' if c.definition == 'study' else 'Σ L·r'} | {c.category} | "
                f"{c.rho_consensus:.2f} | {c.p_consensus_holm:.3g} | {c.rho_prediction:.2f} | "
                f"{c.partial_rho:.2f}{mark} | {c.partial_p_holm:.3g} | {c.median_ae_in_region:.1%} |"
            )
        lines.append("")
    positive = [c for c in cells if c.partial_rho > 0 and c.partial_p_holm < alpha]
    lines.append(
        f"Cells where AE carries information beyond the prediction (partial ρ > 0, Holm p < "
        f"{alpha}): {len(positive)} of {len(cells)}"
        + (": " + ", ".join(f"{_short(c.cohort)}/{c.method}/{c.definition}/{c.category}" for c in positive) if positive else ".")
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m qa_core.ae_study --cohort DIR [...] [--json OUT] [--markdown OUT]``."""
    p = argparse.ArgumentParser(prog="python -m qa_core.ae_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--cohort", action="append", default=[], type=Path, help="rated cohort with contours")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: shipped)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated CAM methods")
    p.add_argument("--n-resamples", type=int, default=9999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--pool", action="store_true", help="analyse all cohorts as one (after collecting each)"
    )
    p.add_argument(
        "--rows", type=Path, action="append", default=None,
        help="reuse the rows of earlier --json outputs instead of scoring the cohorts again",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    from qa_core.model import load_model

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    model = load_model(args.model, device="cpu")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for earlier in args.rows or []:
        rows += json.loads(earlier.read_text(encoding="utf-8"))["rows"]
    if not rows and not args.cohort:
        p.error("give --cohort DIR (one or more) or --rows STUDY.json")
    for cohort in args.cohort:
        rows += collect_cohort(
            model,
            cohort,
            methods=methods,
            batch_size=args.batch_size,
            on_session=lambda s: print(f"  {s}", file=sys.stderr),
        )
    if args.pool:
        names = sorted({Path(r["cohort"]).name for r in rows})
        for r in rows:
            r["cohort"] = "pooled " + "+".join(names)
    cells = analyse_study(rows, n_resamples=args.n_resamples, seed=args.seed)
    text = format_markdown(cells)
    print(text)
    card = getattr(model, "card", {}) or {}
    if args.json is not None:
        doc = {
            "cells": [asdict(c) for c in cells],
            "rows": rows,
            "provenance": {"model_sha256": card.get("sha256"), "methods": methods,
                           "n_resamples": args.n_resamples, "seed": args.seed,
                           "cohorts": [str(c) for c in args.cohort],
                           "rows_from": [str(r) for r in args.rows or []], "pooled": args.pool,
                           "seconds": round(time.perf_counter() - t0, 1)},
        }  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n", encoding="utf-8")
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
