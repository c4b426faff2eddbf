"""One-pass batched Grad-CAM for all five categories, and Attribution Energy (AE).

For slice ``s`` and category ``k``, with target-layer activations ``A`` (C × h × w) and
model output ``y_k``, Grad-CAM weights each channel by the spatial mean of the gradient,
``α_kc = mean_ij ∂y_k/∂A_c,ij``, and the *raw map* is

    L_ks = ReLU(Σ_c α_kc A_c)                         (h × w, not normalised, not resized)

The Attribution Energy of a volume is ``AE_k = Σ_s Σ_ij L_ks(i, j)`` (arbitrary units of
the model output times activation; **not** a quality score, and neither direction is
"better" on its own: it is a companion to the prediction that shows how much evidence the
target layer contributes). ``AE per voxel`` divides by the number of map cells summed
(``N · h · w``) so volumes of different length compare.

Resolution
----------
Maps are kept at the target layer's resolution ``h × w`` (e.g. 16 × 16 for a 128 × 128
input and a stride-8 target layer). Bilinear upsampling by an integer factor to the
model input ``H × W`` (half-pixel centres with edge clamping, as ``torch`` ``interpolate``
with ``align_corners=False`` and OpenCV ``resize``, which pytorch-grad-cam uses) multiplies
every sum by exactly ``(H·W)/(h·w)`` (:attr:`AttributionResult.upsample_factor`; 64 for the
shipped model), because each source cell's weights add up to the factor per axis. AE here is
*always* the sum at ``h × w``; multiply by that factor to compare with sums of upsampled maps.

Speed
-----
One forward pass per slice batch serves all five categories. The pass is entered under
``torch.no_grad()``, so the layers *below* the target layer run exactly as in a forward-only
pass (no autograd bookkeeping); a forward hook on the target layer replaces its output by a
detached copy that requires grad and switches grad mode on, so autograd records only the
layers *after* the target layer (every parameter's ``requires_grad`` is off for the
duration). The five outputs are differentiated with respect to that leaf in one batched
backward (``is_grads_batched=True`` over one-hot ``grad_outputs``, a vector-Jacobian product
vmapped over the categories): no parameter gradients and no backward through the
convolutions below the target. What attribution adds to a forward pass is therefore the
head's backward and the channel weighting; ``benchmarks/bench_attribution.py`` measures it
end to end from a :class:`~qa_core.volume.Volume` against the fastest forward-only pass and
against pytorch-grad-cam's public API. ``batch_size=None`` picks the measured per-device
default (:func:`default_batch_size`).

Methods
-------
The channel weighting is pytorch-grad-cam's own, applied to numpy float32 activations and
gradients batched over slices: for the channel-weight methods (``gradcam``, ``gradcam++``,
``xgradcam``) its classes' ``get_cam_weights`` gives ``w`` per category and the map is
``Σ_c w_c A_c`` (its ``BaseCAM.get_cam_image``, as one ``einsum`` over all categories); the
elementwise methods (``hirescam``, ``layercam``) use their own ``get_cam_image``. Then ReLU,
exactly as its ``compute_cam_per_layer`` does, but without its resizing and per-image
min-max normalisation (which destroy AE).

``weighting="numpy"`` (the default on CPU) runs pytorch-grad-cam's code itself.
``weighting="torch"`` (the default on CUDA) runs a line-by-line port of the same formulas
on the device, so that only the finished maps, not the ``(5, B, C, h, w)`` gradients, travel
to the host and the GPU is not left waiting on numpy; the test suite checks the port against
pytorch-grad-cam's code for every method.

Caution
-------
With a global-average-pool → linear head, ``Σ_ij (Σ_c α_kc A_c) = y_k − b_k`` for Grad-CAM:
before the ReLU the map's sum restates the prediction. Report ρ(AE, prediction) beside
ρ(AE, consensus).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from qa_core.categories import CATEGORIES
from qa_core.errors import AttributionError
from qa_core.volume import Volume

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "METHODS",
    "WEIGHTINGS",
    "AttributionResult",
    "attribute_slices",
    "attribute_volume",
    "attribution_mode",
    "default_batch_size",
    "raw_cam",
]


#: Supported CAM methods (names accepted by ``method=``), mapped to pytorch-grad-cam classes.
METHODS: Final[tuple[str, ...]] = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")

_CLASS_NAMES: Final[dict[str, str]] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
}

#: Where the channel weighting runs: ``auto`` (numpy on CPU, torch on CUDA), ``numpy``
#: (pytorch-grad-cam's own code) or ``torch`` (its formulas ported to torch, on the device).
WEIGHTINGS: Final[tuple[str, ...]] = ("auto", "numpy", "torch")

#: Default slices per batch by device type, chosen by measurement (``python
#: benchmarks/bench_attribution.py --sweep``: end-to-end time of :func:`attribute_volume` over
#: batch sizes, 160 slices). See :func:`default_batch_size`.
DEFAULT_BATCH_SIZE: Final[Mapping[str, int]] = {"cpu": 32, "cuda": 128}

FloatArray = npt.NDArray[np.float32]


class _CamMethod(Protocol):
    def get_cam_weights(
        self,
        input_tensor: Any,
        target_layer: Any,
        targets: Any,
        activations: FloatArray,
        grads: FloatArray,
    ) -> FloatArray: ...

    def get_cam_image(
        self,
        input_tensor: Any,
        target_layer: Any,
        targets: Any,
        activations: FloatArray,
        grads: FloatArray,
        eigen_smooth: bool,
    ) -> FloatArray: ...


class _Weighting:
    """pytorch-grad-cam's weighting for one method, batched over slices and categories.

    pytorch-grad-cam's classes register hooks on a model in ``__init__``; their weighting
    (``get_cam_weights`` / ``get_cam_image``) only needs numpy arrays. A subclass with a
    no-op ``__init__``/``__del__`` keeps exactly that code and nothing else.

    Channel-weight methods (GradCAM, GradCAM++, XGradCAM) keep pytorch-grad-cam's
    ``BaseCAM.get_cam_image``, i.e. ``Σ_c w_c A_c``: we call their ``get_cam_weights`` per
    category on the whole slice batch and contract the weights with the activations in one
    ``einsum`` over all categories (no K-fold copy of the activations). Elementwise methods
    (HiResCAM, LayerCAM) override ``get_cam_image``; it is called per category as they
    define it.
    """

    def __init__(self, method: str) -> None:
        if method not in _CLASS_NAMES:
            raise AttributionError(
                f"unknown CAM method {method!r}; expected one of {', '.join(METHODS)} "
                "(set method= or --method, or CBCTQA_CAM_METHOD)"
            )
        import pytorch_grad_cam
        from pytorch_grad_cam.base_cam import BaseCAM

        base = getattr(pytorch_grad_cam, _CLASS_NAMES[method])

        def _init(self: object) -> None:  # no model, no hooks
            return None

        def _del(self: object) -> None:  # nothing to release
            return None

        cls = type(f"_{base.__name__}Weighting", (base,), {"__init__": _init, "__del__": _del})
        self.method = method
        self.impl: _CamMethod = cls()
        self.elementwise: bool = base.get_cam_image is not BaseCAM.get_cam_image

    def __call__(self, activations: FloatArray, grads: FloatArray) -> FloatArray:
        """Pre-ReLU maps for every category.

        Parameters
        ----------
        activations:
            float32 ``(B, C, h, w)``.
        grads:
            float32 ``(K, B, C, h, w)``: ``∂y_k/∂A`` per category.

        Returns
        -------
        numpy.ndarray
            float32 ``(K, B, h, w)``, before the ReLU.
        """
        if self.elementwise:
            return np.stack(
                [self.impl.get_cam_image(None, None, None, activations, gk, False) for gk in grads]
            )
        weights = np.stack(
            [self.impl.get_cam_weights(None, None, None, activations, gk) for gk in grads]
        ).astype(np.float32, copy=False)
        cam: FloatArray = np.einsum("kbc,bchw->kbhw", weights, activations, optimize=True)
        return cam


def _torch_maps(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's weighting ported to torch (same formulas, same epsilons).

    ``a`` is ``(B, C, h, w)``, ``g`` is ``(K, B, C, h, w)``; returns pre-ReLU ``(K, B, h, w)``.
    Sources: ``grad_cam.py``, ``grad_cam_plusplus.py`` (eq. 19 of arXiv:1710.11063, eps 1e-6),
    ``xgrad_cam.py`` (eps 1e-7), ``hirescam.py`` and ``layer_cam.py`` in pytorch-grad-cam 1.5.
    """
    spatial = (3, 4)
    if method == "hirescam":
        return (g * a).sum(dim=2)
    if method == "layercam":
        return (g.clamp(min=0) * a).sum(dim=2)
    if method == "gradcam":
        weights = g.mean(dim=spatial)
    elif method == "gradcam++":
        g2 = g * g
        g3 = g2 * g
        sum_a = a.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g3 + 0.000001)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        weights = (g.clamp(min=0) * aij).sum(dim=spatial)
    elif method == "xgradcam":
        sum_a = a.sum(dim=(2, 3), keepdim=True)
        weights = (g * a / (sum_a + 1e-7)).sum(dim=spatial)
    else:  # pragma: no cover - guarded by _Weighting
        raise AttributionError(
            f"unknown CAM method {method!r}; expected one of {', '.join(METHODS)}"
        )
    return torch.einsum("kbc,bchw->kbhw", weights, a)


def raw_cam(method: str, activations: FloatArray, grads: FloatArray) -> FloatArray:
    """Raw (ReLU'd, un-normalised, un-resized) CAM maps from activations and gradients.

    Parameters
    ----------
    method:
        One of :data:`METHODS`.
    activations:
        float32 ``(B, C, h, w)`` target-layer activations.
    grads:
        float32 ``(K, B, C, h, w)`` gradients of K outputs with respect to them (or
        ``(B, C, h, w)`` for a single output).

    Returns
    -------
    numpy.ndarray
        float32 ``(K, B, h, w)`` (or ``(B, h, w)``): ``max(Σ_c w_c A_c, 0)`` with
        pytorch-grad-cam's weights for ``method``.
    """
    single = grads.ndim == 4
    g = grads[None] if single else grads
    if activations.ndim != 4 or g.ndim != 5 or g.shape[1:] != activations.shape:
        raise AttributionError(
            f"raw_cam needs activations (B, C, h, w) and grads (K, B, C, h, w) of matching "
            f"shape; got {activations.shape} and {grads.shape}"
        )
    cam = np.maximum(_Weighting(method)(activations, g), 0).astype(np.float32, copy=False)
    return cam[0] if single else cam


@dataclass(frozen=True, eq=False)
class AttributionResult:
    """Grad-CAM maps and Attribution Energy of one volume (or slice stack).

    Attributes
    ----------
    scores:
        Category → volume-mean predicted Likert score (1–5, higher is better).
    slice_scores:
        float32 ``(K, N)`` predicted score per category and slice (K = 5, contract order).
    cams:
        float32 ``(K, N, h, w)`` raw maps ``L_ks`` at the target layer's resolution.
    ae:
        Category → AE = Σ_s Σ_ij L_ks(i, j) (float64 sum; arbitrary units).
    ae_per_voxel:
        Category → AE / (N · h · w), the mean raw-map value per map cell.
    slice_ae:
        float64 ``(K, N)``: Σ_ij L_ks(i, j) per slice; ``slice_ae.sum(1)`` gives ``ae``.
        The three arrays are read-only views.
    method:
        CAM method name (one of :data:`METHODS`).
    target_layer:
        Dotted name of the target layer inside the model.
    map_shape:
        ``(h, w)`` of the maps.
    input_shape:
        ``(H, W)`` of the model input; upsampled sums scale by :attr:`upsample_factor`.
    provenance:
        Model name/version/sha256, package and torch versions, method, batch size, device,
        volume series UID, input shape, timing (seconds).
    """

    scores: Mapping[str, float]
    slice_scores: FloatArray
    cams: FloatArray
    ae: Mapping[str, float]
    ae_per_voxel: Mapping[str, float]
    slice_ae: npt.NDArray[np.float64]
    method: str
    target_layer: str
    map_shape: tuple[int, int]
    input_shape: tuple[int, int]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("slice_scores", "cams", "slice_ae"):
            arr = getattr(self, name)
            if arr.flags.writeable:
                view = arr.view()
                view.flags.writeable = False
                object.__setattr__(self, name, view)

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names in row order of the arrays (the contract order)."""
        return tuple(self.scores)

    @property
    def n_slices(self) -> int:
        """Number of slices N."""
        return int(self.cams.shape[1])

    @property
    def upsample_factor(self) -> float:
        """``(H·W)/(h·w)``: factor by which a bilinear integer upsampling to the input
        resolution multiplies every map sum (and therefore AE)."""
        (hh, ww), (h, w) = self.input_shape, self.map_shape
        return (hh * ww) / (h * w)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no maps): per-category score/AE, per-slice arrays, provenance."""
        return {
            "categories": {
                c: {"score": self.scores[c], "ae": self.ae[c], "ae_per_voxel": self.ae_per_voxel[c]}
                for c in self.categories
            },
            "slice_scores": {
                c: self.slice_scores[k].astype(float).tolist()
                for k, c in enumerate(self.categories)
            },
            "slice_ae": {
                c: self.slice_ae[k].astype(float).tolist() for k, c in enumerate(self.categories)
            },
            "method": self.method,
            "target_layer": self.target_layer,
            "map_shape": list(self.map_shape),
            "input_shape": list(self.input_shape),
            "upsample_factor": self.upsample_factor,
            "provenance": self.provenance,
        }


def _resolve_target(
    model: nn.Module, target_layer: nn.Module | str | None
) -> tuple[nn.Module, str]:
    """The target layer module and its dotted name inside ``model``."""
    if target_layer is None:
        found = getattr(model, "target_layer", None)
        if found is None:
            raise AttributionError(
                f"model {type(model).__name__} has no 'target_layer' attribute; pass "
                "target_layer= (a submodule or its dotted name, e.g. 'features.6')"
            )
        target_layer = found
    if isinstance(target_layer, str):
        try:
            module = model.get_submodule(target_layer)
        except AttributeError as exc:
            raise AttributionError(
                f"model {type(model).__name__} has no submodule {target_layer!r}; use a name "
                "from model.named_modules()"
            ) from exc
        return module, target_layer
    if not isinstance(target_layer, nn.Module):
        raise AttributionError(
            f"target_layer must be an nn.Module or a dotted submodule name; got {type(target_layer).__name__}"
        )
    for name, module in model.named_modules():
        if module is target_layer and name:
            return target_layer, name
    raise AttributionError(
        f"target layer {type(target_layer).__name__} is not a submodule of model "
        f"{type(model).__name__}; pass one of its own layers"
    )


@contextmanager
def attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with every parameter frozen; restore both on exit.

    Each submodule's ``training`` flag and each parameter's ``requires_grad`` are saved
    and restored individually, also when the body raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


@contextmanager
def _capture(
    target: nn.Module, name: str, head_threads: int | None = None
) -> Iterator[list[torch.Tensor]]:
    """Forward hook that cuts the graph at ``target``: its output is replaced by a leaf
    that requires grad (a clone of it is passed on, so in-place layers after the target
    cannot overwrite the captured activations), and grad mode is switched on from there.

    The forward pass is entered under ``torch.no_grad()``, so the layers *below* the target
    run without autograd bookkeeping, exactly as in a forward-only pass; the hook turns grad
    mode on for the layers after the target, and leaving the ``no_grad`` block restores the
    caller's mode. With ``head_threads`` it also sets torch's intra-op threads for what
    follows (the caller restores them). The hook is removed on exit."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise AttributionError(
                f"target layer {name!r} returned {type(output).__name__}; Grad-CAM needs a "
                "single (B, C, h, w) tensor"
            )
        if output.ndim != 4:
            raise AttributionError(
                f"target layer {name!r} output has shape {tuple(output.shape)}; expected (B, C, h, w)"
            )
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        torch.set_grad_enabled(True)  # only the layers after the target are recorded
        if head_threads is not None:
            torch.set_num_threads(head_threads)
        return leaf.clone()

    handle = target.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _card_name(card: Mapping[str, Any], model: nn.Module) -> str:
    """Model name from its card (``name`` or ``architecture.name``), else the class name."""
    name = card.get("name")
    if isinstance(name, str) and name:
        return name
    arch = card.get("architecture")
    if isinstance(arch, Mapping) and isinstance(arch.get("name"), str):
        return str(arch["name"])
    return type(model).__name__


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def default_batch_size(device: torch.device | str) -> int:
    """Slices per batch used when ``batch_size=None``: :data:`DEFAULT_BATCH_SIZE` for the
    device type (``cpu``, ``cuda``; others use the CPU value).

    CPU, 32 (measured with ``benchmarks/bench_attribution.py --sweep``, 160 slices of
    256 x 256, 2-core AMD EPYC, 2 threads, torch 2.14, shipped model, machine shared with
    other jobs): best of 5 end to end, ours took 23.4 / 8.9 / 5.6 / 5.3 s and 3.8 / 2.4 /
    1.5 / 1.6 CPU-s at batch 8 / 16 / 32 / 64, the forward-only pass 1.8 / 1.7 CPU-s at
    32 / 64 and more below; 32 is at the minimum for both and keeps peak memory lower than
    64 (one slice's first block writes 1 MiB per layer). With one thread 8-16 were best.
    CUDA, 128: not measured here (no GPU in this session); large batches keep the GPU busy
    (kernel launches dominate small batches) and peak memory stays well under 1 GiB for
    the shipped model. Measure on the target machine with ``--device cuda --sweep`` and
    pass ``batch_size`` (``CBCTQA_BATCH_SIZE``) if another size wins.
    """
    dev = torch.device(device)
    return DEFAULT_BATCH_SIZE.get(dev.type, DEFAULT_BATCH_SIZE["cpu"])


def _gradients(y: torch.Tensor, leaf: torch.Tensor, layer_name: str) -> torch.Tensor:
    """``∂y_k/∂A`` for every category k at once: ``(K, B, C, h, w)``.

    One backward through the layers after the target, batched over the K one-hot
    ``grad_outputs`` with ``is_grads_batched=True`` (vmap over the backward engine).
    """
    if y.grad_fn is None:
        raise AttributionError(
            f"the model's output does not depend on target layer {layer_name!r} (no autograd "
            "path from it to the scores: a side branch, a detach() or torch.no_grad() in "
            "forward); choose a layer on the path to the output"
        )
    k = y.shape[1]
    eye = torch.eye(k, dtype=y.dtype, device=y.device)
    grad_out = eye[:, None, :].expand(k, y.shape[0], k)
    try:
        (g,) = torch.autograd.grad(y, leaf, grad_outputs=grad_out, is_grads_batched=True)
    except RuntimeError as exc:
        raise AttributionError(
            f"batched backward from the scores to target layer {layer_name!r} failed ({exc}); "
            "the layers after the target must be differentiable and support torch's vmap "
            "(is_grads_batched)"
        ) from exc
    return g


def attribute_slices(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "gradcam",
    batch_size: int | None = None,
    target_layer: nn.Module | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    weighting: str = "auto",
    _extra_provenance: Mapping[str, Any] | None = None,
) -> AttributionResult:
    """Predict and attribute a stack of preprocessed slices, all five categories at once.

    Parameters
    ----------
    model:
        ``nn.Module`` mapping ``(B, 1, H, W)`` to ``(B, 5)`` scores in
        :data:`~qa_core.categories.CATEGORIES` order, with a ``target_layer`` attribute
        (or pass ``target_layer``). Its train/eval state and ``requires_grad`` flags are
        restored afterwards; it is run in eval mode.
    x:
        float ``(N, 1, H, W)`` preprocessed slices (as ``model.preprocess`` returns).
    method:
        One of :data:`METHODS`.
    batch_size:
        Slices per forward/backward pass; memory beyond the result is O(batch_size).
        ``None`` (default) uses :func:`default_batch_size` for the device it runs on.
    target_layer:
        Override of ``model.target_layer``: a submodule or its dotted name.
    device:
        Device to run on; ``None`` keeps the model's device. A model moved for the call is
        moved back afterwards.
    progress:
        Show a tqdm progress bar over batches on stderr.
    weighting:
        ``auto`` (default: ``numpy`` on CPU, ``torch`` on CUDA), ``numpy`` (pytorch-grad-cam's
        own ``get_cam_weights``/``get_cam_image`` on host arrays) or ``torch`` (the same
        formulas on the device). Results agree to float32 rounding.

    Returns
    -------
    AttributionResult
        With ``cams`` float32 ``(5, N, h, w)`` at the target layer's resolution.

    Raises
    ------
    AttributionError
        Unknown method, no target layer, empty or mis-shaped input, unexpected model output.
    """
    numpy_weighting = _Weighting(method)  # also validates the method name
    t0 = time.perf_counter()  # after the one-time import of pytorch-grad-cam
    if weighting not in WEIGHTINGS:
        raise AttributionError(
            f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}"
        )
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise AttributionError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not isinstance(x, torch.Tensor):
        raise AttributionError(
            f"attribute_slices needs a torch.Tensor (N, 1, H, W); got {type(x).__name__}"
        )
    if x.ndim != 4 or x.shape[1] != 1:
        raise AttributionError(f"input must be shaped (N, 1, H, W); got {tuple(x.shape)}")
    n = int(x.shape[0])
    if n == 0:
        raise AttributionError("input has 0 slices; nothing to attribute (check the series)")
    module, layer_name = _resolve_target(model, target_layer)
    k_cat = len(CATEGORIES)

    original_device = _model_device(model)
    run_device = torch.device(device) if device is not None else original_device
    moved = run_device != original_device
    if weighting == "auto":
        weighting = "torch" if run_device.type == "cuda" else "numpy"
    if batch_size is None:
        batch_size = default_batch_size(run_device)
    if moved:
        model.to(run_device)

    cams: FloatArray | None = None
    slice_scores = np.empty((k_cat, n), dtype=np.float32)
    starts = range(0, n, batch_size)
    threads = torch.get_num_threads()
    # On CPU the layers after the target, their backward and the weighting are many small
    # operations; with more than one intra-op thread each one synchronises the threads, which
    # costs more than it saves (and a whole scheduler slice when the machine is busy).
    head_threads = 1 if run_device.type == "cpu" and threads > 1 else None
    try:
        with (
            attribution_mode(model),
            _capture(module, layer_name, head_threads) as captured,
        ):
            iterator: Any = starts
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(starts, desc=f"Grad-CAM ({method})", unit="batch", leave=False)
            for s in iterator:
                e = min(s + batch_size, n)
                xb = x[s:e].to(run_device, dtype=torch.float32, non_blocking=True)
                captured.clear()
                with torch.inference_mode(False), torch.no_grad():
                    # The hook turns grad mode on after the target layer (and the threads down).
                    y = model(xb)
                    if len(captured) != 1:
                        raise AttributionError(
                            f"target layer {layer_name!r} ran {len(captured)} times in one forward "
                            "pass; expected exactly once (is it part of the model's forward?)"
                        )
                    if not isinstance(y, torch.Tensor) or y.shape != (e - s, k_cat):
                        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                        raise AttributionError(
                            f"model output is {shape}; expected ({e - s}, {k_cat}) scores for "
                            f"categories {', '.join(CATEGORIES)}"
                        )
                    leaf = captured[0]
                    g = _gradients(y, leaf, layer_name)
                _, _, h, w = leaf.shape
                if cams is None:
                    cams = np.empty((k_cat, n, h, w), dtype=np.float32)
                if weighting == "torch":
                    maps = _torch_maps(method, leaf.detach().float(), g.detach().float())
                    cams[:, s:e] = maps.clamp(min=0).cpu().numpy()
                else:
                    a_np = leaf.detach().float().cpu().numpy()
                    g_np = g.detach().float().cpu().numpy()
                    np.maximum(numpy_weighting(a_np, g_np), 0, out=cams[:, s:e])
                slice_scores[:, s:e] = y.detach().float().cpu().numpy().T
                captured.clear()
                del y, g, leaf
                if head_threads is not None:
                    torch.set_num_threads(threads)
    finally:
        if head_threads is not None:
            torch.set_num_threads(threads)
        if moved:
            model.to(original_device)

    assert cams is not None  # n >= 1, so at least one batch ran
    _, _, h, w = cams.shape
    slice_ae = cams.sum(axis=(2, 3), dtype=np.float64)
    ae_total = slice_ae.sum(axis=1)
    cells = n * h * w
    elapsed = time.perf_counter() - t0
    card = getattr(model, "card", None)
    card = card if isinstance(card, Mapping) else {}
    from qa_core import __version__

    provenance: dict[str, Any] = {
        "model_name": _card_name(card, model),
        "model_version": card.get("version", card.get("created")),
        "model_checkpoint": card.get("checkpoint"),
        "model_sha256": card.get("sha256"),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "method": method,
        "target_layer": layer_name,
        "batch_size": batch_size,
        "weighting": weighting,
        "device": str(run_device),
        "input_shape": [int(v) for v in x.shape],
        "map_shape": [h, w],
        "seconds": round(elapsed, 4),
        "seconds_per_slice": round(elapsed / n, 6),
    }
    if _extra_provenance:
        provenance.update(_extra_provenance)
    return AttributionResult(
        scores={c: float(slice_scores[k].mean(dtype=np.float64)) for k, c in enumerate(CATEGORIES)},
        slice_scores=slice_scores,
        cams=cams,
        ae={c: float(ae_total[k]) for k, c in enumerate(CATEGORIES)},
        ae_per_voxel={c: float(ae_total[k] / cells) for k, c in enumerate(CATEGORIES)},
        slice_ae=slice_ae,
        method=method,
        target_layer=layer_name,
        map_shape=(h, w),
        input_shape=(int(x.shape[2]), int(x.shape[3])),
        provenance=provenance,
    )


def attribute_volume(
    model: nn.Module,
    volume: Volume | torch.Tensor,
    *,
    method: str = "gradcam",
    batch_size: int | None = None,
    target_layer: nn.Module | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    weighting: str = "auto",
) -> AttributionResult:
    """Predict the five Likert scores of a CBCT volume and explain them with Grad-CAM and AE.

    Parameters
    ----------
    model:
        The quality model (see :func:`qa_core.model.load_model`): maps ``(B, 1, H, W)`` to
        ``(B, 5)``, exposes ``target_layer`` and ``preprocess(volume) -> (N, 1, H, W)``.
    volume:
        A :class:`~qa_core.volume.Volume` in HU (preprocessed with ``model.preprocess``), or
        an already preprocessed float tensor ``(N, 1, H, W)``.
    method, batch_size, target_layer, device, progress, weighting:
        As in :func:`attribute_slices`.

    Returns
    -------
    AttributionResult
        Scores, raw maps, AE (sum of raw-map cells at the target layer's resolution) and
        AE per voxel, with provenance including the series UID.

    Examples
    --------
    >>> from qa_core import load_model, attribute_volume  # doctest: +SKIP
    >>> result = attribute_volume(load_model(), volume, method="gradcam")  # doctest: +SKIP
    >>> result.ae["parotid"]  # doctest: +SKIP
    """
    extra: dict[str, Any] = {}
    if isinstance(volume, Volume):
        if volume.n_slices == 0:
            raise AttributionError(
                f"volume {volume.series_uid or '(no series UID)'} has 0 slices; nothing to attribute"
            )
        preprocess: Callable[[Volume], torch.Tensor] | None = getattr(model, "preprocess", None)
        if not callable(preprocess):
            raise AttributionError(
                f"model {type(model).__name__} has no preprocess(volume) method; pass a "
                "preprocessed tensor (N, 1, H, W) instead of a Volume"
            )
        x = preprocess(volume)
        extra = {
            "series_uid": volume.series_uid,
            "study_uid": volume.study_uid,
            "volume_shape": list(volume.shape),
            "spacing_mm": list(volume.spacing),
        }
        hu_window = getattr(model, "hu_window", None)
        if hu_window is not None:
            extra["hu_window"] = [float(v) for v in hu_window]
    elif isinstance(volume, torch.Tensor):
        x = volume
    else:
        raise AttributionError(
            f"attribute_volume needs a Volume or a tensor (N, 1, H, W); got {type(volume).__name__}"
        )
    return attribute_slices(
        model,
        x,
        method=method,
        batch_size=batch_size,
        target_layer=target_layer,
        device=device,
        progress=progress,
        weighting=weighting,
        _extra_provenance=extra,
    )
