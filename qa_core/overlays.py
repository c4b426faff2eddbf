"""PNG overlays of the top-AE slices per category: the slice in grey, the raw map over it.

Each image shows one axial slice, HU-windowed in grey, with that slice's raw Grad-CAM map
for one category upsampled bilinearly to the slice and drawn semi-transparently over it,
cells where the map is zero left uncoloured, a colour bar in raw-map units (the same scale for every slice of that category, from 0 to
the category's largest map cell in the volume, so brightness compares across its slices),
and a title with the category, slice index, slice AE, volume AE and predicted score.

Geometry: the model sees each slice square-padded (with the window's low HU, i.e. air) and
resampled to its input size (see :mod:`qa_core.preprocess`); the map covers that padded
square, so the slice is padded the same way here before the map is laid over it.

Matplotlib runs with its Agg canvas directly (no pyplot state), so this is safe in worker
threads and needs no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from qa_core.attribution import AttributionResult
from qa_core.errors import AttributionError
from qa_core.volume import Volume

__all__ = ["DEFAULT_HU_WINDOW", "top_slices", "upsample_map", "write_overlays"]

#: Display window (HU) when neither the caller nor the result's provenance gives one.
#: Grey window of the overlays when none is given: the radiologists' soft-tissue window
#: (W 400, L 40 HU), in which glands, muscle, fat and airway are told apart; bone saturates.
DEFAULT_HU_WINDOW: tuple[float, float] = (-160.0, 240.0)


def top_slices(result: AttributionResult, category: str, top_k: int) -> list[int]:
    """Indices of the ``top_k`` slices with the largest slice AE for ``category``.

    Ties keep the lower slice index first. Fewer are returned when the volume is shorter.
    """
    if category not in result.scores:
        raise AttributionError(
            f"unknown category {category!r}; expected one of {', '.join(result.categories)}"
        )
    k = result.categories.index(category)
    order = np.argsort(-result.slice_ae[k], kind="stable")
    return [int(i) for i in order[: max(0, top_k)]]


def upsample_map(cam: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bilinearly upsample one raw map ``(h, w)`` to ``size = (rows, cols)``.

    Uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (half-pixel
    centres, edge clamping, as OpenCV's ``resize`` that pytorch-grad-cam uses). For an integer
    factor f per axis every source cell's interpolation weights add up to f, so the sum grows
    by exactly ``(rows·cols)/(h·w)`` (up to float32 rounding).
    """
    if cam.ndim != 2:
        raise AttributionError(f"upsample_map needs one (h, w) map; got shape {cam.shape}")
    t = torch.from_numpy(np.array(cam, dtype=np.float32, copy=True))[None, None]  # writable copy
    up = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    out: npt.NDArray[np.float32] = up[0, 0].numpy()
    return out


def _square_pad(img: npt.NDArray[np.float32], fill: float) -> npt.NDArray[np.float32]:
    rows, cols = img.shape
    side = max(rows, cols)
    pr, pc = side - rows, side - cols
    if pr == 0 and pc == 0:
        return img
    padded: npt.NDArray[np.float32] = np.pad(
        img,
        ((pr // 2, pr - pr // 2), (pc // 2, pc - pc // 2)),
        mode="constant",
        constant_values=fill,
    )
    return padded


def _display_slices(
    source: Volume | torch.Tensor | npt.NDArray[Any],
    result: AttributionResult,
    hu_window: tuple[float, float] | None,
) -> tuple[Any, tuple[float, float], str, bool]:
    """(indexable slices, grey range, grey label, whether to square-pad with the low end)."""
    if isinstance(source, Volume):
        window = DEFAULT_HU_WINDOW if hu_window is None else hu_window
        if not (np.isfinite(window[0]) and np.isfinite(window[1]) and window[1] > window[0]):
            raise AttributionError(f"HU window must be (low, high) with high > low; got {window!r}")
        return source.hu, (float(window[0]), float(window[1])), "HU", True
    if isinstance(source, torch.Tensor):
        arr = source.detach().float().cpu().numpy()
    elif isinstance(source, np.ndarray):
        arr = np.asarray(source, dtype=np.float32)
    else:
        raise AttributionError(
            "write_overlays needs a Volume or preprocessed slices (N, 1, H, W) as tensor or "
            f"array; got {type(source).__name__}"
        )
    if arr.ndim != 4 or arr.shape[1] != 1:
        raise AttributionError(f"preprocessed slices must be shaped (N, 1, H, W); got {arr.shape}")
    arr = arr[:, 0]
    lo, hi = float(arr.min()), float(arr.max())
    return arr, (lo, hi if hi > lo else lo + 1.0), "model input", False


def write_overlays(
    volume_or_slices: Volume | torch.Tensor | npt.NDArray[Any],
    result: AttributionResult,
    out_dir: str | Path,
    *,
    top_k: int = 3,
    dpi: int = 100,
    hu_window: tuple[float, float] | None = None,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> list[Path]:
    """Write PNGs of the ``top_k`` highest-AE slices of every category.

    Parameters
    ----------
    volume_or_slices:
        The :class:`~qa_core.volume.Volume` that was attributed (HU, shown with
        ``hu_window``), or the preprocessed slices ``(N, 1, H, W)`` that were.
    result:
        The :class:`~qa_core.attribution.AttributionResult` of that input.
    out_dir:
        Folder to write into (created). Files are named
        ``<category>_top<rank>_slice<index>.png``, rank 1 = largest slice AE.
    top_k:
        Slices per category (fewer when the volume is shorter).
    dpi:
        Resolution of the PNG (figure is 5 × 4.4 inches).
    hu_window:
        Grey window in HU; default :data:`DEFAULT_HU_WINDOW`, the soft-tissue window
        (-160, 240). Pass ``result.provenance["hu_window"]`` to see what the model saw.
    alpha, cmap:
        Opacity and matplotlib colormap of the map.

    Returns
    -------
    list of pathlib.Path
        The PNGs written, in category order, then rank.

    Raises
    ------
    AttributionError
        ``top_k`` or ``dpi`` < 1, input of the wrong type or shape, or a slice count that
        differs from the result's.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise AttributionError(f"top_k must be a positive integer; got {top_k!r}")
    if not isinstance(dpi, int) or dpi < 1:
        raise AttributionError(f"dpi must be a positive integer; got {dpi!r}")
    slices, (lo, hi), grey_label, pad = _display_slices(volume_or_slices, result, hu_window)
    n = int(slices.shape[0])
    if n != result.n_slices:
        raise AttributionError(
            f"the input has {n} slices but the attribution result has {result.n_slices}; pass "
            "the same volume that was attributed"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AttributionError(
            f"overlay folder {out} exists and is not a folder; choose another --overlays"
        )
    out.mkdir(parents=True, exist_ok=True)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = result.map_shape
    written: list[Path] = []
    for k, category in enumerate(result.categories):
        vmax = float(result.cams[k].max())
        vmax = vmax if vmax > 0 else 1.0
        for rank, s in enumerate(top_slices(result, category, top_k), start=1):
            img = np.asarray(slices[s], dtype=np.float32)
            if pad:
                img = _square_pad(np.clip(img, lo, hi), lo)
            rows, cols = img.shape
            heat = upsample_map(result.cams[k, s], (rows, cols))
            fig = Figure(figsize=(5.0, 4.4), dpi=dpi, layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            im = ax.imshow(
                heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=vmax, interpolation="nearest"
            )
            ax.set_axis_off()
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            bar.set_label(
                f"raw {result.method} map (a.u.; AE = sum over {h}×{w} cells)", fontsize=7
            )
            ax.set_title(
                f"{category}: slice {s}, slice AE {result.slice_ae[k, s]:.4g}\n"
                f"volume AE {result.ae[category]:.4g}, score {result.slice_scores[k, s]:.2f} "
                f"(grey: {grey_label} {lo:g}..{hi:g})",
                fontsize=8,
            )
            path = out / f"{category}_top{rank}_slice{s:04d}.png"
            fig.savefig(path, dpi=dpi, format="png")
            written.append(path)
    return written
