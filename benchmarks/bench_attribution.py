"""Benchmark: attribution end to end from a Volume vs the fastest forward-only pass vs
pytorch-grad-cam's public API.

All in one process, same model, same :class:`~qa_core.volume.Volume` (``--slices`` slices of
``--size`` x ``--size`` HU, a head-sized ellipse with a bone rim and noise), same thread
count, CUDA when present. Every variant starts from the Volume, so preprocessing
(``model.preprocess``: window, pad, resample, normalise) is inside every time:

(a) forward only: preprocess + ``model(x)`` under ``torch.inference_mode`` at each batch
    size of ``--forward-batches``; the denominator is the **fastest** of them;
(b) pytorch-grad-cam's public API: preprocess + ``GradCAM(model, [target_layer])`` called
    once per category per batch with ``ClassifierOutputTarget(k)`` (one CAM object reused,
    no smoothing), at each batch size of ``--pgc-batches``; the reference is its fastest;
(c) ours: :func:`qa_core.attribution.attribute_volume` (preprocess, scores, raw maps of all
    five categories, AE) at ``--batch-size`` (default: the per-device default,
    :func:`qa_core.attribution.default_batch_size`).

The variants run in turn (a@8, a@16, ..., c, b@..., a@8, ...) after a one-batch warm-up
each, so load drift on a shared machine hits all of them alike. Printed: best and median
wall time, best process CPU time (robust when the machine is shared), ms per slice, and the
ratios (c)/(a) (target <= 1.3) and (b)/(c) (target >= 8) on best wall times, the median of
back-to-back pairs, and on CPU time; the machine's load average before and after. A sanity
check compares (b)'s normalised maps with pytorch-grad-cam's own resize + min-max steps
applied to our raw maps. ``--sweep`` also times (c) at every forward batch size (how the
per-device default batch is chosen).

Run::

    python benchmarks/bench_attribution.py [--slices 160] [--size 256] [--batch-size N]
        [--forward-batches 8,16,32,64] [--pgc-batches 16,64] [--repeats 5] [--threads N]
        [--device auto|cpu|cuda] [--method gradcam] [--weighting auto] [--sweep]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from qa_core import __version__
from qa_core.attribution import attribute_slices, attribute_volume, default_batch_size
from qa_core.categories import CATEGORIES
from qa_core.errors import CbctQaError
from qa_core.model import LikertCNN, load_model, select_device
from qa_core.volume import Volume


def _model(device: torch.device) -> tuple[torch.nn.Module, str]:
    """The shipped model, or the same architecture with seeded random weights."""
    try:
        return load_model(device=device), "shipped default (qa_core/models/default.pt)"
    except CbctQaError as exc:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LikertCNN()
        return model.to(device).eval(), f"LikertCNN, random weights (shipped model: {exc})"


def _volume(n_slices: int, size: int, seed: int = 0) -> Volume:
    """A head-sized water ellipse with bone rim and noise, ``n_slices x size x size`` HU."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    r = (xx / 0.8) ** 2 + (yy / 0.9) ** 2
    base = np.where(r < 1.0, 40.0, -1000.0) + np.where((r > 0.85) & (r < 1.0), 900.0, 0.0)
    hu = base[None] + rng.normal(0.0, 60.0, (n_slices, size, size))
    return Volume(hu=hu.astype(np.float32), spacing=(2.0, 1.0, 1.0), series_uid="2.25.160")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(
    fns: dict[str, Callable[[], Any]],
    warmups: dict[str, Callable[[], Any]],
    runs: dict[str, int],
    device: torch.device,
) -> dict[str, list[tuple[float, float]]]:
    """(wall s, process CPU s) per call; variants in turn, one warm-up call each first."""
    for fn in warmups.values():
        fn()  # allocator, cuDNN autotune, lazy imports
        _sync(device)
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for r in range(max(runs.values())):
        for key, fn in fns.items():
            if r >= runs[key]:
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            out[key].append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 8,16,32; got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=160)
    ap.add_argument("--size", type=int, default=256, help="rows = cols of the volume (HU)")
    ap.add_argument("--batch-size", type=int, default=None, help="ours (default: per device)")
    ap.add_argument("--forward-batches", type=_ints, default=[8, 16, 32, 64])
    ap.add_argument("--pgc-batches", type=_ints, default=[16, 64])
    ap.add_argument("--repeats", type=int, default=5, help="rounds; pytorch-grad-cam runs half")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--weighting", default="auto", help="auto, numpy or torch")
    ap.add_argument("--sweep", action="store_true", help="also time ours at each forward batch")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    model, model_desc = _model(device)
    volume = _volume(args.slices, args.size)
    n = args.slices
    bs = args.batch_size or default_batch_size(device)
    layer = model.target_layer
    load_before = os.getloadavg()

    def forward_only(b: int, vol: Volume = volume) -> Callable[[], None]:
        def run() -> None:
            x = model.preprocess(vol)
            with torch.inference_mode():
                for s in range(0, x.shape[0], b):
                    model(x[s : s + b].to(device))

        return run

    def pgc_public(b: int, vol: Volume = volume) -> Callable[[], list[np.ndarray]]:
        def run() -> list[np.ndarray]:
            x = model.preprocess(vol)
            maps = []
            with GradCAM(model=model, target_layers=[layer]) as cam:
                for k in range(len(CATEGORIES)):
                    for s in range(0, x.shape[0], b):
                        xb = x[s : s + b].to(device)
                        maps.append(
                            cam(input_tensor=xb, targets=[ClassifierOutputTarget(k)] * len(xb))
                        )
            return maps

        return run

    def ours(b: int, vol: Volume = volume) -> Callable[[], None]:
        def run() -> None:
            attribute_volume(
                model, vol, method=args.method, batch_size=b, device=device,
                weighting=args.weighting,
            )  # fmt: skip

        return run

    small = _volume(min(n, max(args.forward_batches + args.pgc_batches + [bs])), args.size, 1)
    fns: dict[str, Callable[[], Any]] = {}
    warm: dict[str, Callable[[], Any]] = {}
    runs: dict[str, int] = {}
    for b in args.forward_batches:
        fns[f"a_forward_bs{b}"], warm[f"a_forward_bs{b}"] = forward_only(b), forward_only(b, small)
        runs[f"a_forward_bs{b}"] = args.repeats
    ours_batches = sorted({bs, *args.forward_batches}) if args.sweep else [bs]
    for b in ours_batches:
        fns[f"c_ours_bs{b}"], warm[f"c_ours_bs{b}"] = ours(b), ours(b, small)
        runs[f"c_ours_bs{b}"] = args.repeats
    for b in args.pgc_batches:
        key = f"b_pytorch_grad_cam_bs{b}"
        fns[key], warm[key] = pgc_public(b), pgc_public(b, small)
        runs[key] = max(1, args.repeats // 2)

    print(f"cbctqa {__version__}  torch {torch.__version__}  python {platform.python_version()}")
    print(
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"  threads {torch.get_num_threads()}  model: {model_desc}"
    )
    print(
        f"volume {n} x {args.size} x {args.size} HU -> input (N, 1, {model.input_size}, "
        f"{model.input_size}); ours at batch {bs}; method {args.method}; weighting "
        f"{args.weighting}; repeats {args.repeats}"
    )
    print(f"load average before: {load_before[0]:.2f} (1 min) on {os.cpu_count()} CPUs", flush=True)

    times = _time_interleaved(fns, warm, runs, device)
    load_after = os.getloadavg()
    wall = {k: [w for w, _ in v] for k, v in times.items()}
    cpu = {k: [c for _, c in v] for k, v in times.items()}
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}

    fwd_keys = [k for k in fns if k.startswith("a_")]
    pgc_keys = [k for k in fns if k.startswith("b_")]
    a_key = min(fwd_keys, key=lambda k: best[k])
    a_cpu_key = min(fwd_keys, key=lambda k: best_cpu[k])
    b_key = min(pgc_keys, key=lambda k: best[k])
    c_key = f"c_ours_bs{bs}"
    ca = best[c_key] / best[a_key]
    bc = best[b_key] / best[c_key]
    ca_cpu = best_cpu[c_key] / best_cpu[a_cpu_key]
    bc_cpu = min(best_cpu[k] for k in pgc_keys) / best_cpu[c_key]
    # Back-to-back pairs: round r of (c) against round r of the fastest (a).
    paired_ca = statistics.median(c / a for a, c in zip(wall[a_key], wall[c_key], strict=True))

    sanity = float("nan")
    if args.method == "gradcam":
        x0 = model.preprocess(volume)[: min(8, n)]
        ref = pgc_public(len(x0), Volume(hu=volume.hu[: len(x0)], spacing=volume.spacing))()[0]
        raw = attribute_slices(model, x0, method="gradcam", device=device).cams[0]
        size = int(model.input_size)
        sanity = float(np.abs(scale_cam_image(scale_cam_image(raw, (size, size))) - ref).max())

    print()
    print(f"{'variant':34s} {'best s':>8s} {'median s':>9s} {'CPU s':>8s} {'ms/slice':>9s}")
    for key in fns:
        mark = " <- fastest" if key in (a_key, b_key) else ""
        print(
            f"{key:34s} {best[key]:8.3f} {statistics.median(wall[key]):9.3f} "
            f"{best_cpu[key]:8.3f} {1e3 * best[key] / n:9.2f}{mark}"
        )
    print()
    print(
        f"(c)/(a) = {ca:.3f}  target <= 1.3  {'OK' if ca <= 1.3 else 'ABOVE TARGET'}  "
        f"(best wall: ours {best[c_key]:.3f} s at batch {bs} / forward {best[a_key]:.3f} s at "
        f"{a_key.rsplit('bs', 1)[1]})"
    )
    print(f"(c)/(a) = {paired_ca:.3f}  median of {len(wall[c_key])} back-to-back pairs")
    print(f"(c)/(a) = {ca_cpu:.3f}  process CPU time (best of each)")
    print(
        f"(b)/(c) = {bc:.2f}   target >= 8    {'OK' if bc >= 8 else 'BELOW TARGET'}  "
        f"(best wall: pytorch-grad-cam {best[b_key]:.3f} s at {b_key.rsplit('bs', 1)[1]})"
    )
    print(f"(b)/(c) = {bc_cpu:.2f}   process CPU time (best of each)")
    if args.sweep:
        print("\nsweep (best wall s; CPU s):  batch  forward  ours  ours/forward")
        for b in args.forward_batches:
            fa, fc = best[f"a_forward_bs{b}"], best[f"c_ours_bs{b}"]
            ca_b, cc_b = best_cpu[f"a_forward_bs{b}"], best_cpu[f"c_ours_bs{b}"]
            print(f"  {b:5d}  {fa:7.3f} ({ca_b:.3f})  {fc:7.3f} ({cc_b:.3f})  {fc / fa:.3f}")
    if np.isfinite(sanity):
        print(
            f"\nsanity: max |pytorch-grad-cam map - its scale steps on our raw map| = {sanity:.2e}"
        )
    print(f"load average after: {load_after[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    if args.json:
        doc = {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "slices": n,
            "size": args.size,
            "batch_size": bs,
            "method": args.method,
            "weighting": args.weighting,
            "model": model_desc,
            "wall_s": wall,
            "cpu_s": cpu,
            "best_s": best,
            "fastest_forward": a_key,
            "fastest_pytorch_grad_cam": b_key,
            "ratio_c_over_a": ca,
            "ratio_c_over_a_paired_median": paired_ca,
            "ratio_c_over_a_cpu": ca_cpu,
            "ratio_b_over_c": bc,
            "ratio_b_over_c_cpu": bc_cpu,
            "sanity_max_abs_diff": sanity,
            "load_average": [load_before[0], load_after[0]],
            "torch_version": torch.__version__,
            "package_version": __version__,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
