"""Benchmark: an assessment's products (overlay PNGs, slice-AE CSV, raw maps) against
attribution, and the array overlay renderer against the former matplotlib-figure one.

All in one process, same model, same :class:`~qa_core.volume.Volume` (``--slices`` slices of
``--size`` x ``--size`` HU, a head-sized ellipse with bone rim and noise), same result:

(a) attribution: :func:`qa_core.attribution.attribute_volume` end to end from the Volume;
(p) products: ``flows.scoring.write_products`` (``top_k`` overlay PNGs per category, the
    slice-AE CSV and the compressed raw maps), as a scored session writes them;
(o) overlays only: :func:`qa_core.overlays.write_overlays`;
(r) reference: the former renderer, one matplotlib figure per PNG (kept here only, verbatim
    apart from names), writing the same PNGs.

Variants run in turn (a, p, o, r, a, ...) after one warm-up each, every call into a fresh
folder. Printed: best and median wall time, best process CPU time (robust on a shared
machine), the ratios (p)/(a) (target <= 1: products cost no more than attribution) and
(r)/(o), and the machine's load average before and after.

Run::

    python benchmarks/bench_products.py [--slices 48] [--size 256] [--top-k 3]
        [--repeats 5] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qa_core import __version__
from qa_core.attribution import AttributionResult, attribute_volume
from qa_core.errors import CbctQaError
from qa_core.model import LikertCNN, load_model
from qa_core.overlays import DEFAULT_HU_WINDOW, top_slices, upsample_map, write_overlays
from qa_core.volume import Volume


def _model() -> tuple[torch.nn.Module, str]:
    try:
        return load_model(device="cpu"), "shipped default (qa_core/models/default.pt)"
    except CbctQaError as exc:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LikertCNN()
        return model.eval(), f"LikertCNN, random weights (shipped model: {exc})"


def _volume(n_slices: int, size: int, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    r = (xx / 0.8) ** 2 + (yy / 0.9) ** 2
    base = np.where(r < 1.0, 40.0, -1000.0) + np.where((r > 0.85) & (r < 1.0), 900.0, 0.0)
    hu = base[None] + rng.normal(0.0, 60.0, (n_slices, size, size))
    return Volume(hu=hu.astype(np.float32), spacing=(2.0, 1.0, 1.0), series_uid="2.25.48")


def matplotlib_figure_overlays(
    volume: Volume, result: AttributionResult, out_dir: Path, *, top_k: int = 3, dpi: int = 100
) -> list[Path]:
    """The former ``write_overlays`` (one matplotlib figure per PNG), kept as the reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lo, hi = DEFAULT_HU_WINDOW
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = result.map_shape
    written: list[Path] = []
    for k, category in enumerate(result.categories):
        vmax = float(result.cams[k].max())
        vmax = vmax if vmax > 0 else 1.0
        for rank, s in enumerate(top_slices(result, category, top_k), start=1):
            img = np.clip(np.asarray(volume.hu[s], dtype=np.float32), lo, hi)
            rows, cols = img.shape
            side = max(rows, cols)
            pr, pc = side - rows, side - cols
            img = np.pad(
                img, ((pr // 2, pr - pr // 2), (pc // 2, pc - pc // 2)), constant_values=lo
            )
            heat = upsample_map(result.cams[k, s], img.shape)
            fig = Figure(figsize=(5.0, 4.4), dpi=dpi, layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            im = ax.imshow(
                heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=vmax, interpolation="nearest"
            )
            ax.set_axis_off()
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            bar.set_label(
                f"raw {result.method} map (a.u.; AE = sum over {h}×{w} cells)", fontsize=7
            )
            ax.set_title(
                f"{category}: slice {s}, slice AE {result.slice_ae[k, s]:.4g}\n"
                f"volume AE {result.ae[category]:.4g}, score {result.slice_scores[k, s]:.2f} "
                f"(grey: HU {lo:g}..{hi:g})",
                fontsize=8,
            )
            path = out_dir / f"{category}_top{rank}_slice{s:04d}.png"
            fig.savefig(path, dpi=dpi, format="png")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from flows.scoring import write_products

    model, model_desc = _model()
    volume = _volume(args.slices, args.size)
    result = attribute_volume(model, volume)
    scratch = Path(tempfile.mkdtemp(prefix="bench_products_"))
    counter = iter(range(1_000_000))

    def fresh() -> Path:
        return scratch / f"run{next(counter)}"

    fns: dict[str, Callable[[], Any]] = {
        "a_attribution": lambda: attribute_volume(model, volume),
        "p_products": lambda: write_products(volume, result, fresh(), top_k=args.top_k),
        "o_overlays": lambda: write_overlays(volume, result, fresh(), top_k=args.top_k),
        "r_matplotlib_figures": lambda: matplotlib_figure_overlays(
            volume, result, fresh(), top_k=args.top_k
        ),
    }
    load_before = os.getloadavg()
    print(f"cbctqa {__version__}  torch {torch.__version__}  python {platform.python_version()}")
    print(f"threads {torch.get_num_threads()}  model: {model_desc}")
    print(
        f"volume {args.slices} x {args.size} x {args.size} HU; {args.top_k} overlays per "
        f"category ({args.top_k * len(result.categories)} PNGs); repeats {args.repeats}"
    )
    print(f"load average before: {load_before[0]:.2f} (1 min) on {os.cpu_count()} CPUs", flush=True)
    try:
        for fn in fns.values():
            fn()  # warm-up: imports, font and colour tables, allocator
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
        for _ in range(args.repeats):
            for key, fn in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[key].append((time.perf_counter() - t0, time.process_time() - c0))
        sizes = [p.stat().st_size for p in write_overlays(volume, result, fresh())]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()

    wall = {k: [w for w, _ in v] for k, v in times.items()}
    cpu = {k: [c for _, c in v] for k, v in times.items()}
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    n_png = args.top_k * len(result.categories)
    print()
    print(f"{'variant':24s} {'best s':>8s} {'median s':>9s} {'CPU s':>8s} {'ms/PNG':>8s}")
    for key in fns:
        per_png = f"{1e3 * best[key] / n_png:8.1f}" if key[0] in "or" else f"{'':8s}"
        print(
            f"{key:24s} {best[key]:8.3f} {statistics.median(wall[key]):9.3f} "
            f"{best_cpu[key]:8.3f} {per_png}"
        )
    pa = best["p_products"] / best["a_attribution"]
    pa_cpu = best_cpu["p_products"] / best_cpu["a_attribution"]
    paired = statistics.median(
        p / a for a, p in zip(wall["a_attribution"], wall["p_products"], strict=True)
    )
    ro = best["r_matplotlib_figures"] / best["o_overlays"]
    ro_cpu = best_cpu["r_matplotlib_figures"] / best_cpu["o_overlays"]
    print()
    print(f"(p)/(a) = {pa:.3f}  target <= 1  {'OK' if pa <= 1 else 'ABOVE TARGET'}  (best wall)")
    print(f"(p)/(a) = {paired:.3f}  median of {args.repeats} back-to-back pairs")
    print(f"(p)/(a) = {pa_cpu:.3f}  process CPU time (best of each)")
    print(f"(r)/(o) = {ro:.1f}x faster than one matplotlib figure per PNG (best wall)")
    print(f"(r)/(o) = {ro_cpu:.1f}x  process CPU time")
    print(f"PNG size: median {statistics.median(sizes) / 1024:.0f} KiB")
    print(f"load average after: {load_after[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    if args.json:
        doc = {
            "slices": args.slices,
            "size": args.size,
            "top_k": args.top_k,
            "threads": torch.get_num_threads(),
            "model": model_desc,
            "wall_s": wall,
            "cpu_s": cpu,
            "best_s": best,
            "ratio_products_over_attribution": pa,
            "ratio_products_over_attribution_paired_median": paired,
            "ratio_products_over_attribution_cpu": pa_cpu,
            "ratio_matplotlib_over_overlays": ro,
            "ratio_matplotlib_over_overlays_cpu": ro_cpu,
            "png_bytes_median": statistics.median(sizes),
            "load_average": [load_before[0], load_after[0]],
            "package_version": __version__,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
