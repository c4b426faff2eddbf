"""Tests for qa_core.overlays: PNG overlays of the top-AE slices per category."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn

from qa_core.attribution import AttributionResult, attribute_volume
from qa_core.categories import CATEGORIES
from qa_core.errors import AttributionError
from qa_core.overlays import top_slices, upsample_map, write_overlays
from qa_core.volume import Volume

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TinyNet(nn.Module):
    """Conv -> ReLU -> pool -> conv -> ReLU (target, 8 x 8 for 16 x 16 input) -> GAP -> linear."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, len(CATEGORIES))
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.hu_window = (-1000.0, 1000.0)

    @property
    def target_layer(self) -> nn.Module:
        return self.features[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """Window to ±1000 HU, square-pad rows 12 -> 16 with air, scale to [-1, 1]."""
        hu = np.clip(volume.hu, -1000, 1000)
        padded = np.pad(hu, ((0, 0), (2, 2), (0, 0)), constant_values=-1000)
        return torch.from_numpy(padded / 1000.0).float()[:, None]


@pytest.fixture(scope="module")
def case() -> tuple[Volume, AttributionResult]:
    rng = np.random.default_rng(11)
    hu = rng.normal(0.0, 250.0, (5, 12, 16)).astype(np.float32)  # non-square: padded to 16 x 16
    hu[:, 2:10, 3:13] += np.linspace(-600, 900, 5, dtype=np.float32)[:, None, None]
    vol = Volume(hu=hu, spacing=(2.0, 0.8, 0.8), series_uid="1.2.826.0.1")
    return vol, attribute_volume(TinyNet(), vol, batch_size=2)


def test_writes_top_k_pngs_per_category(
    case: tuple[Volume, AttributionResult], tmp_path: Path
) -> None:
    vol, result = case
    paths = write_overlays(vol, result, tmp_path / "ov", top_k=2, dpi=40)
    assert len(paths) == 2 * len(CATEGORIES)
    for k, cat in enumerate(CATEGORIES):
        expected = list(np.argsort(-result.slice_ae[k], kind="stable")[:2])
        names = [p.name for p in paths[2 * k : 2 * k + 2]]
        assert names == [f"{cat}_top{r + 1}_slice{s:04d}.png" for r, s in enumerate(expected)]
        assert result.slice_ae[k, expected[0]] >= result.slice_ae[k, expected[1]]
    digests = set()
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        img = imread(p)
        assert img.shape == (176, 200, 4)  # 5 x 4.4 inches at 40 dpi, RGBA
        assert float(img[..., :3].std()) > 0.05  # not blank
        digests.add(hashlib.sha256(data).hexdigest())
    assert len(digests) == len(paths)


def test_overlay_pixels_differ_between_categories_on_same_slice(
    case: tuple[Volume, AttributionResult], tmp_path: Path
) -> None:
    """All 5 slices for every category: the same slice's image differs by category in the
    image area too, not only in the title."""
    vol, result = case
    paths = write_overlays(vol, result, tmp_path, top_k=5, dpi=40)
    assert len(paths) == 5 * len(CATEGORIES)
    by_cat = {
        cat: {p.name.split("slice")[1]: imread(p) for p in paths if p.name.startswith(cat + "_")}
        for cat in CATEGORIES
    }
    a, b = by_cat["parotid"]["0002.png"], by_cat["overall"]["0002.png"]
    centre = (slice(50, 150), slice(30, 150))
    assert np.abs(a[centre] - b[centre]).max() > 0.05


def test_preprocessed_slices_and_top_k_larger_than_volume(
    case: tuple[Volume, AttributionResult], tmp_path: Path
) -> None:
    _, result = case
    x = torch.zeros(5, 1, 16, 16)
    x[:, :, 4:12, 4:12] = 0.5
    paths = write_overlays(x, result, tmp_path, top_k=9, dpi=30)
    assert len(paths) == 5 * len(CATEGORIES)
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in paths)


def test_upsample_map_integer_factor_scales_sum() -> None:
    rng = np.random.default_rng(3)
    cam = rng.random((8, 8)).astype(np.float32)
    up = upsample_map(cam, (32, 32))
    assert up.shape == (32, 32)
    # align_corners=False bilinear with edge clamping: every source cell's weights sum to
    # the factor per axis, so an integer upsampling multiplies the sum by exactly
    # (H·W)/(h·w) (= 16 here; 9 for factor 3), up to float32 rounding.
    assert float(up.sum(dtype=np.float64)) == pytest.approx(
        16 * float(cam.sum(dtype=np.float64)), rel=1e-6
    )
    up3 = upsample_map(cam, (24, 24))
    assert float(up3.sum(dtype=np.float64)) == pytest.approx(
        9 * float(cam.sum(dtype=np.float64)), rel=1e-6
    )
    with pytest.raises(AttributionError, match=r"one \(h, w\) map"):
        upsample_map(cam[None], (32, 32))


def test_top_slices_order_and_errors(case: tuple[Volume, AttributionResult]) -> None:
    _, result = case
    k = CATEGORIES.index("larynx")
    got = top_slices(result, "larynx", 3)
    assert got == [int(i) for i in np.argsort(-result.slice_ae[k], kind="stable")[:3]]
    with pytest.raises(AttributionError, match="unknown category 'tongue'"):
        top_slices(result, "tongue", 1)


def test_errors(case: tuple[Volume, AttributionResult], tmp_path: Path) -> None:
    vol, result = case
    with pytest.raises(AttributionError, match="top_k"):
        write_overlays(vol, result, tmp_path, top_k=0)
    with pytest.raises(AttributionError, match="dpi"):
        write_overlays(vol, result, tmp_path, dpi=0)
    short = Volume(hu=np.zeros((3, 12, 16), np.float32), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(AttributionError, match="3 slices but the attribution result has 5"):
        write_overlays(short, result, tmp_path)
    with pytest.raises(AttributionError, match=r"\(N, 1, H, W\)"):
        write_overlays(torch.zeros(5, 16, 16), result, tmp_path)
    with pytest.raises(AttributionError, match="Volume or preprocessed slices"):
        write_overlays([1, 2, 3], result, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(AttributionError, match="high > low"):
        write_overlays(vol, result, tmp_path, hu_window=(100.0, -100.0))
    blocker = tmp_path / "file.png"
    blocker.write_bytes(b"x")
    with pytest.raises(AttributionError, match="not a folder"):
        write_overlays(vol, result, blocker)
