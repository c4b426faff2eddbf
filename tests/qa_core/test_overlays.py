"""Tests for qa_core.overlays: PNG overlays of the top-AE slices per category."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from PIL import Image
from torch import nn

from qa_core.attribution import AttributionResult, attribute_volume
from qa_core.categories import CATEGORIES
from qa_core.errors import AttributionError
from qa_core.overlays import (
    CONTOUR_COLOR,
    contour_outline,
    render_overlay,
    top_slices,
    upsample_map,
    write_overlays,
)
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
        for rank, (p, s) in enumerate(zip(paths[2 * k : 2 * k + 2], expected, strict=True), 1):
            with Image.open(p) as im:
                meta = dict(im.text)  # the title's numbers, machine-readable
                assert im.info["dpi"] == pytest.approx((40, 40), abs=0.01)
            assert meta["category"] == cat and meta["slice"] == str(s)
            assert meta["rank"] == str(rank)
            assert float(meta["slice_ae"]) == float(result.slice_ae[k, s])
            assert float(meta["volume_ae"]) == result.ae[cat]
            assert float(meta["score"]) == float(result.slice_scores[k, s])
            assert float(meta["map_max"]) == float(result.cams[k].max())
            assert meta["grey_window"] == "HU -160..240" and meta["contour"] == "no"
            assert meta["series_uid"] == "1.2.826.0.1" and meta["method"] == "gradcam"
    digests = set()
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        img = imread(p)
        # 16 x 16 padded slice enlarged 16x to 256 px, plus title above and colour bar right
        assert img.shape[0] > 256 and img.shape[1] > 256 and img.shape[2] == 3
        assert float(img[..., :3].std()) > 0.05  # not blank
        digests.add(hashlib.sha256(data).hexdigest())
    assert len(digests) == len(paths)


def _image_area(path: Path) -> np.ndarray:
    """The slice area of an overlay PNG, located by its ``image_box`` text chunk."""
    with Image.open(path) as im:
        x, y, w, h = (int(v) for v in im.text["image_box"].split())
        img = np.asarray(im.convert("RGB"))
    assert (w, h) == (256, 256)  # 16 x 16 test slices enlarged 16x
    return img[y : y + h, x : x + w]


def test_overlay_pixels_differ_between_categories_on_same_slice(
    case: tuple[Volume, AttributionResult], tmp_path: Path
) -> None:
    """All 5 slices for every category: the same slice's image differs by category in the
    image area too, not only in the title."""
    vol, result = case
    paths = write_overlays(vol, result, tmp_path, top_k=5, dpi=40)
    assert len(paths) == 5 * len(CATEGORIES)
    by_cat = {
        cat: {p.name.split("slice")[1]: p for p in paths if p.name.startswith(cat + "_")}
        for cat in CATEGORIES
    }
    a = _image_area(by_cat["parotid"]["0002.png"]).astype(int)
    b = _image_area(by_cat["overall"]["0002.png"]).astype(int)
    assert np.abs(a - b).max() > 10


def test_render_overlay_known_pixels() -> None:
    """Grey mapping, zero map left grey, full map blended with the LUT's top colour, and
    an outline drawn exactly on the region's border, in its colour."""
    grey = np.array([[-160.0, 40.0, 240.0, 1000.0]] * 4, dtype=np.float32)  # 4 x 4
    cam = np.zeros((2, 2), dtype=np.float32)
    rgb = render_overlay(grey, cam, grey_range=(-160.0, 240.0), map_max=1.0, alpha=0.5)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255, 255])  # map 0: pure grey
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    full = render_overlay(
        np.zeros((4, 4), np.float32), np.ones((2, 2), np.float32), grey_range=(-1.0, 1.0),
        map_max=1.0, alpha=0.5, cmap="jet",
    )  # fmt: skip
    from matplotlib import colormaps

    top = np.round(np.asarray(colormaps["jet"](1.0))[:3] * 255)
    expected = np.floor(127.5 + (top - 127.5) * 0.5 + 0.5)
    np.testing.assert_allclose(full[2, 2], expected, atol=1)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    outlined = render_overlay(
        np.zeros((8, 8), np.float32), np.zeros((2, 2), np.float32), grey_range=(-1.0, 1.0),
        map_max=1.0, contour=mask, contour_color=(1, 2, 3), scale=2,
    )  # fmt: skip
    assert outlined.shape == (16, 16, 3)
    drawn = (outlined == (1, 2, 3)).all(axis=2)
    np.testing.assert_array_equal(drawn, contour_outline(np.kron(mask, np.ones((2, 2), bool))))
    assert drawn.sum() == 28  # the ring of an 8 x 8 square (enlarged 4 x 4 region)


def test_contour_outline_known_answer() -> None:
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True  # 5 x 5 square
    ring = contour_outline(mask)
    assert ring.sum() == 16 and not ring[3:6, 3:6].any() and ring[2, 2:7].all()
    thick = contour_outline(mask, width=2)
    assert thick.sum() == 24 and not thick[4, 4] and thick[3, 3]
    edge = np.ones((3, 3), bool)  # the image border counts as outside
    assert contour_outline(edge).sum() == 8
    assert not contour_outline(np.zeros((4, 4), bool)).any()
    with pytest.raises(AttributionError, match="one \\(rows, cols\\) mask"):
        contour_outline(np.zeros((2, 2, 2), bool))
    with pytest.raises(AttributionError, match="width"):
        contour_outline(mask, width=0)


def test_contours_drawn_on_volume_grid_and_per_slice(
    case: tuple[Volume, AttributionResult], tmp_path: Path
) -> None:
    """A 3-D mask on the (non-square, 12 x 16) volume grid for one category and per-slice 2-D
    masks for another: the outline lands where the padded, enlarged region's border is."""
    vol, result = case
    n = result.n_slices
    region = np.zeros((n, 12, 16), bool)
    region[:, 3:8, 5:11] = True
    larynx = {0: region[0], 4: np.zeros((12, 16), bool)}  # slice 4: empty, so no outline
    paths = write_overlays(
        vol, result, tmp_path, top_k=n, contours={"parotid": region, "larynx": larynx},
        contour_color=CONTOUR_COLOR,
    )  # fmt: skip
    for p in paths:
        cat, s = p.name.split("_top")[0], int(p.stem.split("slice")[1])
        with Image.open(p) as im:
            flag = im.text["contour"]
        area = _image_area(p)
        drawn = (area == CONTOUR_COLOR).all(axis=2)
        if cat == "parotid" or (cat == "larynx" and s == 0):
            assert flag == "yes"
            padded = np.pad(region[s], ((2, 2), (0, 0)))  # 12 rows -> 16, as the model sees
            expected = contour_outline(np.kron(padded, np.ones((16, 16), bool)))
            np.testing.assert_array_equal(drawn, expected)
        else:
            assert flag == "no" and not drawn.any()


def test_contour_errors(case: tuple[Volume, AttributionResult], tmp_path: Path) -> None:
    vol, result = case
    good = np.zeros((5, 12, 16), bool)
    with pytest.raises(AttributionError, match="unknown category 'tongue'"):
        write_overlays(vol, result, tmp_path, contours={"tongue": good})
    with pytest.raises(AttributionError, match=r"contours\['parotid'\] has shape \(5, 16, 16\)"):
        write_overlays(vol, result, tmp_path, contours={"parotid": np.zeros((5, 16, 16), bool)})
    with pytest.raises(AttributionError, match=r"slice index 7 is not in 0\.\.4"):
        write_overlays(vol, result, tmp_path, contours={"larynx": {7: good[0]}})
    with pytest.raises(AttributionError, match=r"contours\['larynx'\]\[1\] has shape \(3, 3\)"):
        write_overlays(vol, result, tmp_path, contours={"larynx": {1: np.ones((3, 3), bool)}})
    with pytest.raises(AttributionError, match="must map category names"):
        write_overlays(vol, result, tmp_path, contours=[good])  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.png"))  # nothing written on bad input


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
    # Same interpolation as torch's bilinear (align_corners=False), also for odd sizes.
    for size in ((32, 32), (24, 40), (11, 3), (8, 8)):
        ref = F.interpolate(
            torch.from_numpy(cam)[None, None], size=size, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(upsample_map(cam, size), ref, rtol=1e-5, atol=1e-6)


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
    with pytest.raises(AttributionError, match="scale"):
        write_overlays(vol, result, tmp_path, scale=0)
    with pytest.raises(AttributionError, match="alpha"):
        write_overlays(vol, result, tmp_path, alpha=1.5)
    with pytest.raises(AttributionError, match="unknown colormap 'nope'"):
        write_overlays(vol, result, tmp_path, cmap="nope")
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
