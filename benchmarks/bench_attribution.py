"""Benchmark: one-pass batched Grad-CAM for all five categories vs pytorch-grad-cam.

All in one process, same model, same volume (160 slices at the model's input size), same
batches, same thread count, CUDA when present:

(a) forward pass only (batched, ``torch.inference_mode``): the floor;
(b) pytorch-grad-cam's public API, one call per category per batch
    (``GradCAM(model, [target_layer])`` with ``ClassifierOutputTarget(k)``);
(c) ours: :func:`qa_core.attribution.attribute_slices` (all five categories per batch).

The variants are timed in turn (a, b, c, a, b, c, ...) after one warm-up call each. Prints
the best and median times and the ratios (c)/(a) (target ≤ 1.3) and (b)/(c) (target ≥ 8), and checks
that (b)'s normalised maps equal ours after pytorch-grad-cam's own resize + min-max steps.

Run::

    python benchmarks/bench_attribution.py [--slices 160] [--batch-size 32] [--repeats 5]
        [--threads N] [--device auto|cpu|cuda] [--method gradcam] [--weighting auto]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import json
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
from qa_core.attribution import attribute_slices
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
        return model.to(
            device
        ).eval(), f"LikertCNN with random weights (shipped model unusable: {exc})"


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
    fns: dict[str, Callable[[], Any]], runs: dict[str, int], device: torch.device
) -> dict[str, list[float]]:
    """Time the variants in turn (a, b, c, a, b, c, ...) so that load drift on a shared
    machine hits all of them alike; one warm-up call each first."""
    for fn in fns.values():
        fn()  # warm-up (allocator, cuDNN autotune, lazy imports)
        _sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(runs.values())):
        for key, fn in fns.items():
            if r >= runs[key]:
                continue
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out[key].append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--repeats", type=int, default=5, help="rounds of (a) and (c); (b) runs half as often"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument(
        "--weighting", default="auto", help="auto (numpy on CPU, torch on CUDA), numpy or torch"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here (sorted keys)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    model, model_desc = _model(device)
    size = int(getattr(model, "input_size", 128))
    x = model.preprocess(_volume(args.slices, size))  # (N, 1, H, W) on CPU, like the product
    n, bs = int(x.shape[0]), args.batch_size
    layer = model.target_layer
    batches = [x[s : s + bs] for s in range(0, n, bs)]

    def forward_only() -> None:
        with torch.inference_mode():
            for xb in batches:
                model(xb.to(device))

    def pgc_public() -> list[np.ndarray]:
        maps = []
        with GradCAM(model=model, target_layers=[layer]) as cam:
            for k in range(len(CATEGORIES)):
                for xb in batches:
                    maps.append(cam(input_tensor=xb, targets=[ClassifierOutputTarget(k)] * len(xb)))
        return maps

    def ours() -> None:
        attribute_slices(
            model, x, method=args.method, batch_size=bs, device=device, weighting=args.weighting
        )

    print(f"cbctqa {__version__}  torch {torch.__version__}  python {platform.python_version()}")
    print(
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(f"threads {torch.get_num_threads()}  model: {model_desc}")
    print(
        f"volume {n} slices -> input {tuple(x.shape)}, batch {bs}, method {args.method}, weighting {args.weighting}, repeats {args.repeats}"
    )

    times = _time_interleaved(
        {"a_forward": forward_only, "b_pytorch_grad_cam": pgc_public, "c_ours": ours},
        {
            "a_forward": args.repeats,
            "b_pytorch_grad_cam": max(1, args.repeats // 2),
            "c_ours": args.repeats,
        },
        device,
    )
    best = {k: min(v) for k, v in times.items()}
    # Paired ratio per round (a and c run back to back): robust to slow drifts in load.
    paired_ca = statistics.median(
        c / a for a, c in zip(times["a_forward"], times["c_ours"], strict=True)
    )

    # Sanity: pytorch-grad-cam's public maps are its scale_cam_image steps applied to our raw maps.
    sanity = float("nan")
    if args.method == "gradcam":
        ref = pgc_public()[0]  # category 0, first batch
        ours_raw = attribute_slices(
            model, batches[0], method="gradcam", batch_size=bs, device=device
        ).cams[0]
        mine = scale_cam_image(scale_cam_image(ours_raw, (size, size)))
        sanity = float(np.abs(mine - ref).max())

    ca = best["c_ours"] / best["a_forward"]
    bc = best["b_pytorch_grad_cam"] / best["c_ours"]
    print()
    print(f"{'variant':34s} {'best s':>9s} {'median s':>9s} {'ms/slice':>9s}")
    labels = {
        "a_forward": "(a) forward only",
        "b_pytorch_grad_cam": "(b) pytorch-grad-cam, 5 calls",
        "c_ours": "(c) ours, one pass, 5 categories",
    }
    for key, label in labels.items():
        print(
            f"{label:34s} {best[key]:9.4f} {statistics.median(times[key]):9.4f} {1e3 * best[key] / n:9.3f}"
        )
    print()
    print(
        f"(c)/(a) = {ca:.3f}   target <= 1.3   {'OK' if ca <= 1.3 else 'ABOVE TARGET'}   (best times)"
    )
    print(f"(c)/(a) = {paired_ca:.3f}   median of the {len(times['c_ours'])} back-to-back pairs")
    print(f"(b)/(c) = {bc:.2f}   target >= 8     {'OK' if bc >= 8 else 'BELOW TARGET'}")
    if np.isfinite(sanity):
        print(
            f"sanity: max |pytorch-grad-cam public map - its scale steps on our raw map| = {sanity:.2e}"
        )
    if args.json:
        doc = {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor(),
            "threads": torch.get_num_threads(),
            "slices": n,
            "batch_size": bs,
            "method": args.method,
            "weighting": args.weighting,
            "model": model_desc,
            "times_s": times,
            "best_s": best,
            "ratio_c_over_a": ca,
            "ratio_c_over_a_paired_median": paired_ca,
            "ratio_b_over_c": bc,
            "sanity_max_abs_diff": sanity,
            "torch_version": torch.__version__,
            "package_version": __version__,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
