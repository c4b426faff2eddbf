"""PNG overlays of the top-AE slices per category: the slice in grey, the raw map over it,
optionally the outline of the category's organ.

Each image shows one axial slice, HU-windowed in grey, with that slice's raw Grad-CAM map
for one category upsampled bilinearly to the slice and blended over it (cells where the map
is zero are left uncoloured), a colour bar in raw-map units (the same scale for every slice of
that category, from 0 to the category's largest map cell in the volume, so brightness
compares across its slices), a title with the category, slice index, slice AE, volume AE and
predicted score, and, when masks are given, the outline of the category's region (e.g. the
parotids from an RTSTRUCT) in a colour that neither the grey scale nor the map uses. The same
numbers are stored as PNG text chunks (``category``, ``slice``, ``rank``, ``slice_ae``,
``volume_ae``, ``score``, ``map_max``, ``method``, ``target_layer``, ``grey_window``,
``contour``, ``series_uid``, and ``image_box``: ``x y width height`` of the slice area in
the PNG) for programs that read the files.

Geometry: the model sees each slice square-padded (with the window's low HU, i.e. air) and
resampled to its input size (see :mod:`qa_core.preprocess`); the map covers that padded
square, so the slice (and any mask) is padded the same way here before the map is laid over
it. Small slices are enlarged by an integer factor (nearest neighbour for the grey image and
the mask, bilinear for the map) so every image is at least :data:`MIN_DISPLAY_SIDE` pixels.

Speed: every image is composed with array operations (a 256-entry colour lookup table,
alpha blending in numpy, the outline as mask minus its erosion) and encoded by Pillow; no
plotting figure is built. ``benchmarks/bench_products.py`` compares the cost with attribution
and with the former matplotlib-figure renderer. Thread-safe; needs no display.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from qa_core.attribution import AttributionResult
from qa_core.errors import AttributionError
from qa_core.volume import Volume

#: Threads that encode and write overlay PNGs (zlib releases the GIL).
_ENCODERS: Final = 2

__all__ = [
    "CONTOUR_COLOR",
    "DEFAULT_HU_WINDOW",
    "MIN_DISPLAY_SIDE",
    "ContourMasks",
    "contour_outline",
    "render_overlay",
    "top_slices",
    "upsample_map",
    "write_overlays",
]

#: Grey window of the overlays when none is given: the radiologists' soft-tissue window
#: (W 400, L 40 HU), in which glands, muscle, fat and airway are told apart; bone saturates.
DEFAULT_HU_WINDOW: tuple[float, float] = (-160.0, 240.0)

#: Default outline colour (RGB): magenta, which neither the grey scale nor ``jet`` contains.
CONTOUR_COLOR: Final[tuple[int, int, int]] = (255, 0, 255)

#: Smaller (padded) slices are enlarged by an integer factor to at least this many pixels.
MIN_DISPLAY_SIDE: Final[int] = 256

#: Region masks per category: a boolean array ``(N, rows, cols)`` on the grid of the slices
#: passed to :func:`write_overlays` (the volume's grid for a Volume), or a mapping
#: ``slice index -> (rows, cols)`` boolean mask for some slices.
ContourMasks = Mapping[str, "npt.ArrayLike | Mapping[int, npt.ArrayLike]"]

_BoolArray = npt.NDArray[np.bool_]
_U8 = npt.NDArray[np.uint8]


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


@lru_cache(maxsize=64)
def _interp_taps(
    n_out: int, n_in: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """1-D linear interpolation with half-pixel centres and edge clamping
    (``align_corners=False``): output ``d`` reads source coordinate
    ``max((d + 0.5)·n_in/n_out − 0.5, 0)``, i.e. cells ``i0`` and ``i1 = min(i0 + 1, n_in − 1)``
    with weights ``1 − λ`` and ``λ``. Returns ``(i0, i1, λ)``."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    for a in (i0, i1, lam):
        a.flags.writeable = False
    return i0, i1, lam


def upsample_map(cam: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bilinearly upsample one raw map ``(h, w)`` to ``size = (rows, cols)``.

    The same interpolation as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` and OpenCV's ``resize`` that pytorch-grad-cam uses (half-pixel
    centres, edge clamping), done separably with gathers and blends in numpy: for one small
    map this costs microseconds, where a tensor call or a BLAS product pays thread start-up
    (milliseconds on a busy machine). For an integer factor f per axis every source cell's
    weights add up to f, so the sum grows by exactly ``(rows·cols)/(h·w)`` (up to float32
    rounding).
    """
    if cam.ndim != 2:
        raise AttributionError(f"upsample_map needs one (h, w) map; got shape {cam.shape}")
    rows, cols = int(size[0]), int(size[1])
    h, w = cam.shape
    c = np.asarray(cam, dtype=np.float32)
    r0, r1, rl = _interp_taps(rows, h)
    c0, c1, cl = _interp_taps(cols, w)
    tall = c[r0] + (c[r1] - c[r0]) * rl[:, None]  # (rows, w)
    out: npt.NDArray[np.float32] = tall[:, c0] + (tall[:, c1] - tall[:, c0]) * cl[None, :]
    return out


def contour_outline(mask: npt.ArrayLike, width: int = 1) -> _BoolArray:
    """Outline of a 2-D region: its pixels with a 4-neighbour outside it (or on the image
    edge), thickened inwards to ``width`` pixels.

    Parameters
    ----------
    mask:
        ``(rows, cols)``; nonzero = inside the region.
    width:
        Line width in pixels (≥ 1).

    Returns
    -------
    numpy.ndarray
        bool ``(rows, cols)``, True on the outline (a subset of the mask).
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise AttributionError(f"contour_outline needs one (rows, cols) mask; got shape {m.shape}")
    if not isinstance(width, int) or width < 1:
        raise AttributionError(f"contour width must be a positive integer; got {width!r}")
    inner = m.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, mode="constant", constant_values=False)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    outline: _BoolArray = m & ~inner
    return outline


@lru_cache(maxsize=16)
def _lut(cmap: str) -> _U8:
    """``(256, 3)`` uint8 RGB colour table of a matplotlib colormap."""
    from matplotlib import colormaps

    try:
        colormap = colormaps[cmap]
    except KeyError as exc:
        raise AttributionError(
            f"unknown colormap {cmap!r}; use a matplotlib colormap name such as 'jet' or 'inferno'"
        ) from exc
    rgba = colormap(np.linspace(0.0, 1.0, 256))
    table: _U8 = np.round(np.asarray(rgba)[:, :3] * 255.0).astype(np.uint8)
    table.flags.writeable = False
    return table


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _square_pad(img: npt.NDArray[Any], fill: Any) -> npt.NDArray[Any]:
    rows, cols = img.shape
    side = max(rows, cols)
    pr, pc = side - rows, side - cols
    if pr == 0 and pc == 0:
        return img
    padded: npt.NDArray[Any] = np.pad(
        img,
        ((pr // 2, pr - pr // 2), (pc // 2, pc - pc // 2)),
        mode="constant",
        constant_values=fill,
    )
    return padded


def _enlarge(img: npt.NDArray[Any], factor: int) -> npt.NDArray[Any]:
    if factor == 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def render_overlay(
    image: npt.ArrayLike,
    cam: npt.NDArray[np.float32],
    *,
    grey_range: tuple[float, float],
    map_max: float,
    alpha: float = 0.45,
    cmap: str = "jet",
    contour: npt.ArrayLike | None = None,
    contour_color: tuple[int, int, int] = CONTOUR_COLOR,
    scale: int = 1,
) -> _U8:
    """Compose one overlay image as an RGB array (no text, no colour bar).

    Parameters
    ----------
    image:
        ``(side, side)`` grey values (HU or model input), already square.
    cam:
        ``(h, w)`` raw map of this slice; bilinearly upsampled to the displayed image.
    grey_range:
        ``(low, high)`` mapped to black .. white (values outside saturate).
    map_max:
        Map value drawn with the colormap's top colour (> 0); 0 maps to its bottom colour.
    alpha:
        Opacity of the map where it is > 0 (0 = invisible, 1 = opaque); zero cells stay grey.
    cmap:
        matplotlib colormap name of the map.
    contour:
        Optional ``(side, side)`` region mask; its outline is drawn in ``contour_color``.
    scale:
        Integer enlargement of the displayed image.

    Returns
    -------
    numpy.ndarray
        uint8 ``(side·scale, side·scale, 3)``.
    """
    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim != 2:
        raise AttributionError(f"render_overlay needs one 2-D image; got shape {grey.shape}")
    lo, hi = grey_range
    rows, cols = grey.shape[0] * scale, grey.shape[1] * scale
    level = np.clip((grey - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    level = _enlarge(level, scale)
    heat = upsample_map(cam, (rows, cols))
    index = np.clip(heat * (255.0 / map_max) + 0.5, 0.0, 255.0).astype(np.uint8)
    colour = _lut(cmap)[index].astype(np.float32)
    weight = np.where(heat > 0.0, np.float32(alpha), np.float32(0.0))[..., None]
    out = level[..., None] + (colour - level[..., None]) * weight
    rgb: _U8 = (out + 0.5).astype(np.uint8)
    if contour is not None:
        mask = _enlarge(np.asarray(contour).astype(bool, copy=False), scale)
        if mask.shape != (rows, cols):
            raise AttributionError(
                f"contour mask has shape {np.shape(contour)}; expected {grey.shape} (the slice)"
            )
        width = max(1, round(rows / MIN_DISPLAY_SIDE))
        rgb[contour_outline(mask, width)] = contour_color
    return rgb


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


def _check_contours(
    contours: ContourMasks | None, categories: tuple[str, ...], n: int, grid: tuple[int, int]
) -> dict[str, Any]:
    """Validated masks: category -> bool (N, rows, cols) array or {slice: bool (rows, cols)}."""
    if contours is None:
        return {}
    if not isinstance(contours, Mapping):
        raise AttributionError(
            f"contours must map category names to masks; got {type(contours).__name__}"
        )
    checked: dict[str, Any] = {}
    for category, masks in contours.items():
        if category not in categories:
            raise AttributionError(
                f"contours: unknown category {category!r}; expected one of {', '.join(categories)}"
            )
        if isinstance(masks, Mapping):
            per_slice: dict[int, _BoolArray] = {}
            for s, m in masks.items():
                arr = np.asarray(m)
                if not isinstance(s, int | np.integer) or not 0 <= int(s) < n:
                    raise AttributionError(
                        f"contours[{category!r}]: slice index {s!r} is not in 0..{n - 1}"
                    )
                if arr.shape != grid:
                    raise AttributionError(
                        f"contours[{category!r}][{s}] has shape {arr.shape}; expected {grid} "
                        "(the slice grid of the volume that was attributed)"
                    )
                per_slice[int(s)] = arr.astype(bool, copy=False)
            checked[category] = per_slice
        else:
            arr = np.asarray(masks)
            if arr.shape != (n, *grid):
                raise AttributionError(
                    f"contours[{category!r}] has shape {arr.shape}; expected {(n, *grid)} "
                    "(a mask on the grid of the volume that was attributed)"
                )
            checked[category] = arr
    return checked


class _Frame:
    """The parts of an overlay PNG shared by one category's images: white canvas, colour bar
    with three labelled ticks (0, half, ``map_max``) right of the image, and room for the
    title lines above it. Only the image and the title change per slice."""

    def __init__(self, side: int, n_lines: int, map_max: float, lut: _U8) -> None:
        from PIL import Image, ImageDraw

        self.font_px = max(11, side // 24)
        self.font = _font(self.font_px)
        self.margin = self.gap = self.font_px // 2
        self.line_h = self.font_px + 3
        self.side = side
        self.title_h = self.margin + self.line_h * n_lines + self.gap
        bar_w = max(10, side // 20)
        ticks = [map_max, map_max / 2, 0.0]
        labels = [f"{t:.3g}" for t in ticks]
        label_w = int(max(self.font.getlength(t) for t in labels)) + self.margin
        width = self.margin + side + self.gap + bar_w + self.gap // 2 + label_w + self.margin
        height = self.title_h + side + self.margin + self.font_px
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        x_bar = self.margin + side + self.gap
        ramp = lut[np.linspace(255, 0, side).round().astype(np.intp)]  # top = map_max
        canvas[self.title_h : self.title_h + side, x_bar : x_bar + bar_w] = ramp[:, None, :]
        img = Image.fromarray(canvas)
        draw = ImageDraw.Draw(img)
        for t, label in zip(ticks, labels, strict=True):
            ty = self.title_h + (side - 1) * (1.0 - t / map_max)
            draw.line([(x_bar + bar_w, ty), (x_bar + bar_w + 3, ty)], fill=(0, 0, 0))
            xy = (x_bar + bar_w + self.gap // 2 + 2, ty)
            draw.text(xy, label, fill=(0, 0, 0), font=self.font, anchor="lm")
        self.template: _U8 = np.asarray(img).copy()

    def compose(self, rgb: _U8, lines: list[tuple[str, tuple[int, int, int]]]) -> tuple[Any, _U8]:
        """(PIL image, its array) of one overlay: ``rgb`` placed, ``lines`` (text, colour)
        written above it."""
        from PIL import Image, ImageDraw

        canvas = self.template.copy()
        m = self.margin
        canvas[self.title_h : self.title_h + self.side, m : m + rgb.shape[1]] = rgb
        img = Image.fromarray(canvas)
        draw = ImageDraw.Draw(img)
        for i, (text, colour) in enumerate(lines):
            draw.text((m, m + i * self.line_h), text, fill=colour, font=self.font)
        return img, canvas


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
    contours: ContourMasks | None = None,
    contour_color: tuple[int, int, int] = CONTOUR_COLOR,
    scale: int | None = None,
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
        Resolution stored in the PNG (pixels per inch, for printing; the pixel size of the
        image follows the slice, see ``scale``).
    hu_window:
        Grey window in HU; default :data:`DEFAULT_HU_WINDOW`, the soft-tissue window
        (-160, 240). Pass ``result.provenance["hu_window"]`` to see what the model saw.
    alpha, cmap:
        Opacity and matplotlib colormap of the map.
    contours:
        Optional region masks per category (:data:`ContourMasks`): a boolean array
        ``(N, rows, cols)`` on the grid of ``volume_or_slices`` (the volume's grid for a
        Volume; ``(H, W)`` for preprocessed slices), or a mapping ``slice -> (rows, cols)``
        mask. Where a drawn slice's region is not empty its outline is drawn in
        ``contour_color`` and the PNG's ``contour`` text chunk says ``yes``; categories
        without masks get none.
    contour_color:
        RGB of the outline; default :data:`CONTOUR_COLOR` (magenta).
    scale:
        Integer enlargement of the (padded) slice; ``None``: the smallest that makes it at
        least :data:`MIN_DISPLAY_SIDE` pixels.

    Returns
    -------
    list of pathlib.Path
        The PNGs written, in category order, then rank.

    Raises
    ------
    AttributionError
        ``top_k``, ``dpi`` or ``scale`` < 1, input of the wrong type or shape, a slice count
        that differs from the result's, an unknown colormap, or contours for an unknown
        category, of the wrong shape or for a slice outside the volume.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise AttributionError(f"top_k must be a positive integer; got {top_k!r}")
    if not isinstance(dpi, int) or dpi < 1:
        raise AttributionError(f"dpi must be a positive integer; got {dpi!r}")
    if scale is not None and (not isinstance(scale, int) or scale < 1):
        raise AttributionError(f"scale must be a positive integer or None; got {scale!r}")
    if not 0.0 <= alpha <= 1.0:
        raise AttributionError(f"alpha must be between 0 and 1; got {alpha!r}")
    slices, (lo, hi), grey_label, pad = _display_slices(volume_or_slices, result, hu_window)
    n = int(slices.shape[0])
    if n != result.n_slices:
        raise AttributionError(
            f"the input has {n} slices but the attribution result has {result.n_slices}; pass "
            "the same volume that was attributed"
        )
    grid = (int(slices.shape[1]), int(slices.shape[2]))
    masks = _check_contours(contours, result.categories, n, grid)
    lut = _lut(cmap)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AttributionError(
            f"overlay folder {out} exists and is not a folder; choose another --overlays"
        )
    out.mkdir(parents=True, exist_ok=True)

    from PIL.PngImagePlugin import PngInfo

    from qa_core import __version__

    side = max(grid)
    factor = scale if scale is not None else max(1, -(-MIN_DISPLAY_SIDE // side))
    h, w = result.map_shape
    series_uid = str(result.provenance.get("series_uid") or "")
    written: list[Path] = []
    saves: list[Future[Any]] = []
    with ThreadPoolExecutor(max_workers=_ENCODERS, thread_name_prefix="cbctqa-png") as encoder:
        for k, category in enumerate(result.categories):
            vmax = float(result.cams[k].max())
            vmax = vmax if vmax > 0 else 1.0
            cat_masks = masks.get(category)
            frame = _Frame(side * factor, 4 if cat_masks is not None else 3, vmax, lut)
            for rank, s in enumerate(top_slices(result, category, top_k), start=1):
                img = np.asarray(slices[s], dtype=np.float32)
                mask: npt.NDArray[Any] | None = None
                if cat_masks is not None:
                    mask = cat_masks.get(s) if isinstance(cat_masks, dict) else cat_masks[s]
                if mask is not None and not mask.any():
                    mask = None
                if pad:
                    img = _square_pad(img, lo)
                if mask is not None:
                    mask = _square_pad(np.asarray(mask, dtype=bool), False)
                rgb = render_overlay(
                    img,
                    result.cams[k, s],
                    grey_range=(lo, hi),
                    map_max=vmax,
                    alpha=alpha,
                    cmap=cmap,
                    contour=mask,
                    contour_color=contour_color,
                    scale=factor,
                )
                slice_ae = float(result.slice_ae[k, s])
                score = float(result.slice_scores[k, s])
                black = (0, 0, 0)
                lines = [
                    (f"{category}: slice {s}, slice AE {slice_ae:.4g}, score {score:.2f}", black),
                    (f"volume AE {result.ae[category]:.4g}; grey: {grey_label} {lo:g}..{hi:g}", black),
                    (f"colour: raw {result.method} map (a.u.; AE = sum over {h}x{w} cells)", black),
                ]
                if mask is not None:
                    lines.append((f"outline: {category} region", contour_color))
                png, _ = frame.compose(rgb, lines)
                info = PngInfo()
                meta = {
                    "category": category,
                    "slice": str(s),
                    "rank": str(rank),
                    "slice_ae": repr(slice_ae),
                    "volume_ae": repr(float(result.ae[category])),
                    "score": repr(score),
                    "map_max": repr(vmax),
                    "method": result.method,
                    "target_layer": result.target_layer,
                    "grey_window": f"{grey_label} {lo:g}..{hi:g}",
                    "contour": "yes" if mask is not None else "no",
                    "series_uid": series_uid,
                    "image_box": f"{frame.margin} {frame.title_h} {rgb.shape[1]} {rgb.shape[0]}",
                    "Software": f"cbctqa {__version__}",
                }
                for key, value in meta.items():
                    info.add_text(key, value)
                path = out / f"{category}_top{rank}_slice{s:04d}.png"
                # PNG encoding (zlib, which releases the GIL) is most of the cost at 512²: the
                # files are written by a few threads while the next overlays are rendered
                saves.append(encoder.submit(png.save, path, format="PNG", pnginfo=info,
                                            dpi=(dpi, dpi), compress_level=1))  # fmt: skip
                written.append(path)
        for done in saves:
            done.result()  # an encoding or writing error surfaces here
    return written
