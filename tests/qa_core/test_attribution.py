"""Tests for qa_core.attribution: equivalence with pytorch-grad-cam, AE, state, hooks, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import qa_core
from qa_core.attribution import (
    DEFAULT_BATCH_SIZE,
    METHODS,
    AttributionResult,
    attribute_slices,
    attribute_volume,
    attribution_mode,
    default_batch_size,
    raw_cam,
)
from qa_core.categories import CATEGORIES
from qa_core.errors import AttributionError, CbctQaError
from qa_core.volume import Volume

_PGC_CLASS = {
    "gradcam": pytorch_grad_cam.GradCAM,
    "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
    "xgradcam": pytorch_grad_cam.XGradCAM,
    "hirescam": pytorch_grad_cam.HiResCAM,
    "layercam": pytorch_grad_cam.LayerCAM,
}


class TinyNet(nn.Module):
    """Two conv blocks (target: the second ReLU, 8 x 8 for a 16 x 16 input), GAP -> linear."""

    def __init__(self, channels: int = 6, *, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, len(CATEGORIES))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            bn = self.features[1]
            assert isinstance(bn, nn.BatchNorm2d)
            bn.running_mean.copy_(torch.randn(8, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
        self.target_layer_name = "features.5"
        self.hu_window = (-1000.0, 1000.0)
        self.card: dict[str, Any] = {"name": "tiny", "version": "t1", "sha256": "0" * 64}

    @property
    def target_layer(self) -> nn.Module:
        return self.features[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))

    def preprocess(self, volume: Volume) -> torch.Tensor:
        hu = torch.from_numpy(np.array(volume.hu, dtype=np.float32)).clamp(-1000.0, 1000.0) / 1000.0
        return hu[:, None]


def _slices(n: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((n, 1, size, size)).astype(np.float32))


def _pgc_raw_maps(
    model: nn.Module, layer: nn.Module, method: str, x: torch.Tensor
) -> npt.NDArray[np.float32]:
    """pytorch-grad-cam's raw maps (K, N, h, w): its own forward/backward, activations,
    gradients and get_cam_image + ReLU, i.e. BaseCAM.forward/compute_cam_per_layer without
    scale_cam_image (resize + min-max normalisation)."""
    out = []
    with _PGC_CLASS[method](model, [layer]) as cam:
        for k in range(len(CATEGORIES)):
            outputs = cam.activations_and_grads(x)
            model.zero_grad()
            loss = sum(ClassifierOutputTarget(k)(o) for o in outputs)
            loss.backward(retain_graph=True)
            acts = cam.activations_and_grads.activations[0].cpu().numpy()
            grads = cam.activations_and_grads.gradients[0].cpu().numpy()
            raw = cam.get_cam_image(x, layer, None, acts, grads, False)
            out.append(np.maximum(raw, 0))
    return np.stack(out).astype(np.float32)


def _assert_maps_equal(ours: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]) -> None:
    assert ours.shape == ref.shape
    assert ref.max() > 0, "reference maps are all zero: the comparison would be vacuous"
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("weighting", ["numpy", "torch"])
@pytest.mark.parametrize("method", METHODS)
def test_equals_pytorch_grad_cam_raw_maps_tiny(method: str, weighting: str) -> None:
    model = TinyNet()
    x = _slices(7)
    result = attribute_slices(model, x, method=method, batch_size=3, weighting=weighting)
    assert result.provenance["weighting"] == weighting
    ref_model = TinyNet()
    ref = _pgc_raw_maps(ref_model, ref_model.target_layer, method, x)
    _assert_maps_equal(result.cams, ref)
    assert result.cams.dtype == np.float32
    assert result.map_shape == (8, 8)
    assert result.method == method


@pytest.fixture(scope="module")
def shipped() -> tuple[nn.Module, torch.Tensor]:
    """The shipped default model (``load_model()``) and 3 preprocessed head-like slices."""
    model = qa_core.load_model(device="cpu")
    rng = np.random.default_rng(5)
    hu = rng.normal(0.0, 400.0, (3, 40, 48)).astype(np.float32)
    hu[:, 10:30, 12:36] += 600.0
    return model, model.preprocess(Volume(hu=hu, spacing=(2.0, 1.0, 1.0)))


@pytest.mark.parametrize("method", METHODS)
def test_equals_pytorch_grad_cam_raw_maps_shipped_model(
    method: str, shipped: tuple[nn.Module, torch.Tensor]
) -> None:
    model, x = shipped
    ref = _pgc_raw_maps(model, model.target_layer, method, x)
    for weighting in ("numpy", "torch"):
        result = attribute_slices(model, x, method=method, batch_size=2, weighting=weighting)
        _assert_maps_equal(result.cams, ref)
    assert result.target_layer == getattr(model, "target_layer_name", None)
    assert result.provenance["model_sha256"] == getattr(model, "card", {})["sha256"]


#: CUDA joins when present (the CPU-only CI runs the CPU case; no skip either way).
_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _DEVICES)
def test_device_run_matches_cpu_and_model_stays_put(device: str) -> None:
    model = TinyNet()
    x = _slices(6)
    ref = attribute_slices(model, x, weighting="numpy")
    for weighting in ("auto", "numpy", "torch"):
        got = attribute_slices(model, x, device=device, weighting=weighting, batch_size=4)
        np.testing.assert_allclose(got.cams, ref.cams, rtol=1e-4, atol=1e-6 * float(ref.cams.max()))
        np.testing.assert_allclose(got.slice_scores, ref.slice_scores, rtol=1e-5, atol=1e-6)
        assert got.provenance["device"].startswith(device)
        expected = ("torch" if device == "cuda" else "numpy") if weighting == "auto" else weighting
        assert got.provenance["weighting"] == expected
        assert all(p.device.type == "cpu" for p in model.parameters()), "model moved back"


def test_scores_match_plain_forward_and_ae_is_sum_of_cams() -> None:
    model = TinyNet()
    x = _slices(9)
    with torch.no_grad():
        y = model.eval()(x).numpy()
    result = attribute_slices(model, x, batch_size=4)
    np.testing.assert_allclose(result.slice_scores, y.T, rtol=1e-5, atol=1e-6)
    for k, cat in enumerate(CATEGORIES):
        assert result.scores[cat] == pytest.approx(float(y[:, k].mean()), rel=1e-5)
        total = float(result.cams[k].sum(dtype=np.float64))
        assert result.ae[cat] == pytest.approx(total, rel=1e-9)
        assert result.ae_per_voxel[cat] == pytest.approx(total / (9 * 8 * 8), rel=1e-9)
    np.testing.assert_allclose(result.slice_ae, result.cams.sum(axis=(2, 3), dtype=np.float64))
    assert result.upsample_factor == 4.0  # (16*16)/(8*8)
    assert list(result.ae) == list(CATEGORIES)


def test_batch_size_does_not_change_result() -> None:
    model = TinyNet()
    x = _slices(10)
    a = attribute_slices(model, x, batch_size=1)
    b = attribute_slices(model, x, batch_size=64)
    np.testing.assert_allclose(a.cams, b.cams, rtol=1e-5, atol=1e-7)


def test_known_answer_gap_linear_sum_identity() -> None:
    """GAP -> linear: ∂y_k/∂A_cij = W_kc/(h·w), so Σ_ij Σ_c α_kc A_cij = y_k − b_k.
    With W ≥ 0 and A ≥ 0 (post-ReLU target) the map is ≥ 0, the ReLU is the identity,
    and the slice AE must equal y_k − b_k exactly."""
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.abs_()
    x = _slices(5)
    result = attribute_slices(model, x, batch_size=2)
    bias = model.fc.bias.detach().numpy()[:, None]
    np.testing.assert_allclose(result.slice_ae, result.slice_scores - bias, rtol=1e-5, atol=1e-6)
    # Mixed-sign weights: the ReLU only removes negative cells, so AE ≥ y − b.
    mixed = attribute_slices(TinyNet(seed=3), x)
    b3 = TinyNet(seed=3).fc.bias.detach().numpy()[:, None]
    assert np.all(mixed.slice_ae >= mixed.slice_scores - b3 - 1e-5)


def test_known_answer_single_output_map_formula() -> None:
    """raw_cam for Grad-CAM is ReLU(Σ_c mean_ij(G_c) A_c) on a hand-made case."""
    acts = np.zeros((1, 2, 2, 2), dtype=np.float32)
    acts[0, 0] = [[1.0, 2.0], [3.0, 4.0]]
    acts[0, 1] = [[1.0, 1.0], [1.0, 1.0]]
    grads = np.zeros_like(acts)
    grads[0, 0] = 0.5  # α_0 = 0.5
    grads[0, 1] = -2.0  # α_1 = -2
    expected = np.maximum(0.5 * acts[0, 0] - 2.0 * acts[0, 1], 0)[None]
    np.testing.assert_allclose(raw_cam("gradcam", acts, grads), expected)
    assert raw_cam("gradcam", acts, grads[None]).shape == (1, 1, 2, 2)
    with pytest.raises(AttributionError, match="matching"):
        raw_cam("gradcam", acts, grads[:, :1])


def test_state_and_requires_grad_restored_and_hooks_released() -> None:
    model = TinyNet()
    model.train()
    model.features[1].eval()  # mixed modes must come back exactly
    model.fc.bias.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    bn = model.features[1]
    assert isinstance(bn, nn.BatchNorm2d)
    running = bn.running_mean.clone()
    attribute_slices(model, _slices(4))
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert len(model.target_layer._forward_hooks) == 0
    assert torch.equal(bn.running_mean, running), "attribution must run in eval mode"
    assert all(p.grad is None for p in model.parameters()), "no parameter gradients"


def test_state_restored_and_hooks_released_after_exception() -> None:
    class Broken(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[:, :3]  # wrong number of categories

    model = Broken()
    model.train()
    with pytest.raises(AttributionError, match=r"expected \(2, 5\)"):
        attribute_slices(model, _slices(2))
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert len(model.target_layer._forward_hooks) == 0


def test_attribution_mode_restores_on_error() -> None:
    model = TinyNet().train()
    with pytest.raises(RuntimeError, match="boom"), attribution_mode(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_in_place_layer_after_target_does_not_corrupt_activations() -> None:
    class InPlace(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.features[5] = nn.Identity()
            self.after = nn.ReLU(inplace=True)
            self.target_layer_name = "features.4"

        @property
        def target_layer(self) -> nn.Module:
            return self.features[4]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.after(self.features(x))).flatten(1))

    model = InPlace()
    x = _slices(3)
    result = attribute_slices(model, x)
    # Reference by hand: conv output A (pre-ReLU) and gradients through the in-place ReLU.
    with torch.no_grad():
        a = model.eval().features[:5](x)
    w = model.fc.weight.detach()
    mask = (a > 0).float()
    for k in range(len(CATEGORIES)):
        grads = (w[k][None, :, None, None] * mask / 64.0).numpy()
        expected = raw_cam("gradcam", a.numpy(), grads)
        np.testing.assert_allclose(result.cams[k], expected, rtol=1e-5, atol=1e-7)


def test_volume_input_provenance_and_json() -> None:
    rng = np.random.default_rng(2)
    vol = Volume(
        hu=rng.normal(0, 300, (6, 16, 16)).astype(np.float32),
        spacing=(2.5, 0.5, 0.5),
        series_uid="1.2.3.4",
        study_uid="1.2.3",
    )
    model = TinyNet()
    result = qa_core.attribute_volume(model, vol, method="gradcam++", batch_size=4)
    assert isinstance(result, AttributionResult)
    prov = result.provenance
    assert prov["series_uid"] == "1.2.3.4"
    assert prov["model_name"] == "tiny" and prov["model_version"] == "t1"
    assert prov["model_sha256"] == "0" * 64
    assert prov["method"] == "gradcam++" and prov["batch_size"] == 4
    assert prov["input_shape"] == [6, 1, 16, 16]
    assert prov["device"] == "cpu"
    assert prov["package_version"] == qa_core.__version__
    assert prov["torch_version"] == torch.__version__
    assert prov["seconds"] >= 0
    doc = json.loads(json.dumps(result.to_dict(), sort_keys=True))
    assert set(doc["categories"]) == set(CATEGORIES)
    assert doc["categories"]["larynx"]["ae"] == pytest.approx(result.ae["larynx"])
    assert len(doc["slice_ae"]["overall"]) == 6
    # Same maps as feeding the preprocessed tensor.
    direct = attribute_volume(model, model.preprocess(vol), method="gradcam++")
    np.testing.assert_allclose(direct.cams, result.cams, rtol=1e-6)
    with pytest.raises(AttributeError):
        result.method = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        result.cams[0, 0, 0, 0] = 1.0


def test_target_layer_by_name_and_module() -> None:
    model = TinyNet()
    x = _slices(3)
    by_attr = attribute_slices(model, x)
    by_name = attribute_slices(model, x, target_layer="features.5")
    by_module = attribute_slices(model, x, target_layer=model.features[5])
    earlier = attribute_slices(model, x, target_layer=model.features[2])
    np.testing.assert_array_equal(by_attr.cams, by_name.cams)
    np.testing.assert_array_equal(by_attr.cams, by_module.cams)
    assert by_attr.target_layer == by_name.target_layer == by_module.target_layer == "features.5"
    assert earlier.target_layer == "features.2"
    assert earlier.map_shape == (16, 16)


def test_bad_method_lists_valid_ones() -> None:
    with pytest.raises(
        AttributionError, match=r"gradcam, gradcam\+\+, xgradcam, hirescam, layercam"
    ):
        attribute_slices(TinyNet(), _slices(2), method="scorecam")
    with pytest.raises(AttributionError, match="auto, numpy, torch"):
        attribute_slices(TinyNet(), _slices(2), weighting="jax")
    with pytest.raises(CbctQaError):
        raw_cam("eigencam", np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32))


def test_empty_inputs_raise() -> None:
    vol = Volume(hu=np.zeros((0, 16, 16), np.float32), spacing=(1.0, 1.0, 1.0), series_uid="9.9")
    with pytest.raises(AttributionError, match=r"9\.9 has 0 slices"):
        attribute_volume(TinyNet(), vol)
    with pytest.raises(AttributionError, match="0 slices"):
        attribute_slices(TinyNet(), torch.zeros(0, 1, 16, 16))


def test_model_without_target_layer_or_preprocess() -> None:
    plain = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    x = _slices(2)
    with pytest.raises(AttributionError, match="no 'target_layer' attribute"):
        attribute_slices(plain, x)
    ok = attribute_slices(plain, x, target_layer="1")
    assert ok.cams.shape == (5, 2, 14, 14)
    with pytest.raises(AttributionError, match="no submodule 'nope'"):
        attribute_slices(plain, x, target_layer="nope")
    with pytest.raises(AttributionError, match="not a submodule"):
        attribute_slices(plain, x, target_layer=nn.ReLU())
    vol = Volume(hu=np.zeros((2, 16, 16), np.float32), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(AttributionError, match="no preprocess"):
        attribute_volume(plain, vol, target_layer="1")


def test_bad_inputs_raise() -> None:
    model = TinyNet()
    with pytest.raises(AttributionError, match=r"\(N, 1, H, W\)"):
        attribute_slices(model, torch.zeros(2, 3, 16, 16))
    with pytest.raises(AttributionError, match="batch_size"):
        attribute_slices(model, _slices(2), batch_size=0)
    with pytest.raises(AttributionError, match="Volume or a tensor"):
        attribute_volume(model, np.zeros((2, 16, 16)))  # type: ignore[arg-type]
    with pytest.raises(AttributionError, match=r"torch\.Tensor"):
        attribute_slices(model, np.zeros((2, 1, 16, 16)))  # type: ignore[arg-type]


def test_target_layer_with_non_tensor_output_raises_and_releases() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()
            self.fc = nn.Linear(1, 5)
            self.target_layer = self.pair

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pair(x)[0].mean(dim=(2, 3)))

    net = Net()
    with pytest.raises(AttributionError, match="returned tuple"):
        attribute_slices(net, _slices(2))
    assert len(net.pair._forward_hooks) == 0


def test_target_layer_off_the_output_path_raises() -> None:
    class SideBranch(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.side = nn.Conv2d(1, 2, 3)

        @property
        def target_layer(self) -> nn.Module:
            return self.side

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.side(x)  # computed, but the scores do not use it
            return super().forward(x)

    model = SideBranch()
    with pytest.raises(AttributionError, match="does not depend on target layer 'side'"):
        attribute_slices(model, _slices(2))
    assert len(model.side._forward_hooks) == 0


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, numpy as np, torch
    from torch import nn
    from qa_core.attribution import attribute_slices
    torch.set_num_threads(1)
    n = int(sys.argv[1])
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 1, 64, 64), dtype=np.float32))
    attribute_slices(model, x[:8], target_layer="6", batch_size=8)  # warm-up allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = attribute_slices(model, x, target_layer="6", batch_size=8)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(r.cams.nbytes, after * 1024, before * 1024)
    """
)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_slices_beyond_result() -> None:
    """400 vs 40 slices (64 x 64 input, batch 8): the process peak RSS may grow only by the
    result and the input tensor. Keeping any per-batch graph or activation alive would add
    ≥ 32 ch × 64² × 4 B = 512 KiB per slice (≈ 180 MiB for 360 more slices)."""
    peaks = {}
    for n in (40, 400):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(n)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,  # generous: importing torch and pytorch-grad-cam on a busy CI
        )
        cams_bytes, peak, _ = (int(v) for v in out.stdout.split())
        peaks[n] = (cams_bytes, peak)
    result_growth = peaks[400][0] - peaks[40][0]  # 5 × 360 × 32² × 4 B ≈ 7 MiB
    input_growth = 360 * 64 * 64 * 4  # ≈ 5.6 MiB
    growth = peaks[400][1] - peaks[40][1]
    slack = 8 * 2**20  # allocator and interpreter noise
    assert growth <= result_growth + input_growth + slack, (growth, result_growth, input_growth)


def test_layers_below_target_run_without_autograd_and_grad_mode_is_restored() -> None:
    """The trunk (layers before the target) runs with grad mode off, as in a forward-only
    pass; the layers after it run with grad mode on; the caller's mode is unchanged."""
    model = TinyNet()
    seen: dict[str, list[bool]] = {"first_conv": [], "fc": []}
    handles = [
        model.features[0].register_forward_hook(
            lambda *_: seen["first_conv"].append(torch.is_grad_enabled())
        ),
        model.fc.register_forward_hook(lambda *_: seen["fc"].append(torch.is_grad_enabled())),
    ]
    try:
        attribute_slices(model, _slices(5), batch_size=2)
        assert seen == {"first_conv": [False] * 3, "fc": [True] * 3}
        assert torch.is_grad_enabled()
        with torch.no_grad():
            result = attribute_slices(model, _slices(2))
            assert not torch.is_grad_enabled()
        assert result.cams.max() > 0  # gradients were still taken inside the call
    finally:
        for h in handles:
            h.remove()


def test_target_layer_run_twice_raises_and_releases() -> None:
    class Twice(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.features(x)
            a = self.features[5](a)  # the target ReLU a second time
            return self.fc(self.pool(a).flatten(1))

    model = Twice().train()
    with pytest.raises(AttributionError, match=r"'features\.5' ran 2 times in one forward pass"):
        attribute_slices(model, _slices(3))
    assert len(model.target_layer._forward_hooks) == 0
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert torch.is_grad_enabled()


def test_non_4d_target_raises() -> None:
    model = TinyNet()
    with pytest.raises(
        AttributionError, match=r"'fc' output has shape \(3, 5\); expected \(B, C, h, w\)"
    ):
        attribute_slices(model, _slices(3), target_layer="fc")
    assert len(model.fc._forward_hooks) == 0
    assert torch.is_grad_enabled()


class _HostSyncInBackward(torch.autograd.Function):
    """Identity whose backward reads a value on the host (``.item()``): fine in a plain
    backward, impossible under vmap, so the batched backward (is_grads_batched) fails."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        scale = 1.0 if float(g.abs().max().item()) >= 0 else 0.0
        return g * scale


def test_failed_batched_backward_raises_clear_error() -> None:
    class NoVmap(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = _HostSyncInBackward.apply(self.features(x))
            return self.fc(self.pool(a).flatten(1))

    model = NoVmap().train()
    x = _slices(2)
    # A plain (unbatched) backward through the same model works: the failure is the vmap.
    leaf = x.clone().requires_grad_()
    model.eval()(leaf)[:, 0].sum().backward()
    assert leaf.grad is not None
    model.zero_grad(set_to_none=True)
    model.train()
    with pytest.raises(
        AttributionError,
        match=r"batched backward from the scores to target layer 'features\.5' failed .*vmap",
    ) as info:
        attribute_slices(model, x)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(model.target_layer._forward_hooks) == 0
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert torch.is_grad_enabled()


def test_default_batch_size_is_per_device_and_used_when_none() -> None:
    assert default_batch_size("cpu") == DEFAULT_BATCH_SIZE["cpu"]
    assert default_batch_size(torch.device("cuda", 0)) == DEFAULT_BATCH_SIZE["cuda"]
    assert default_batch_size("meta") == DEFAULT_BATCH_SIZE["cpu"]  # other types: CPU value
    model = TinyNet()
    x = _slices(DEFAULT_BATCH_SIZE["cpu"] + 3)
    auto = attribute_slices(model, x)
    assert auto.provenance["batch_size"] == DEFAULT_BATCH_SIZE["cpu"]
    explicit = attribute_slices(model, x, batch_size=5)
    assert explicit.provenance["batch_size"] == 5
    np.testing.assert_allclose(auto.cams, explicit.cams, rtol=1e-5, atol=1e-7)
    for bad in (0, -1, 2.5):
        with pytest.raises(AttributionError, match="batch_size must be a positive integer"):
            attribute_slices(model, x, batch_size=bad)  # type: ignore[arg-type]


def test_intra_op_threads_restored_after_call_and_error() -> None:
    """On CPU the layers after the target run with one intra-op thread; the caller's thread
    count comes back after every batch, after the call and after an error."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        model = TinyNet()
        handle = model.fc.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
        first = model.features[0].register_forward_hook(
            lambda *_: seen.append(-torch.get_num_threads())
        )
        attribute_slices(model, _slices(4), batch_size=2)
        handle.remove()
        first.remove()
        assert seen == [-2, 1, -2, 1]  # trunk with 2 threads, head with 1, per batch
        assert torch.get_num_threads() == 2

        class ThreeScores(TinyNet):  # fails after the hook has lowered the threads
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return super().forward(x)[:, :3]

        with pytest.raises(AttributionError, match=r"expected \(2, 5\)"):
            attribute_slices(ThreeScores(), _slices(2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
