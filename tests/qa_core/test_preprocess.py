from __future__ import annotations

import numpy as np
import pytest
import torch

from qa_core.errors import ModelContractError
from qa_core.preprocess import normalise_hu, preprocess_volume
from qa_core.volume import Volume


def _volume(hu: np.ndarray) -> Volume:
    return Volume(hu=hu.astype(np.float32), spacing=(2.0, 1.0, 1.0), series_uid="1.2.3")


def test_window_maps_low_high_to_minus_one_plus_one() -> None:
    hu = torch.tensor([-3000.0, -1000.0, 0.0, 500.0, 1000.0, 3071.0])
    out = normalise_hu(hu, (-1000.0, 1000.0))
    assert out.tolist() == pytest.approx([-1.0, -1.0, 0.0, 0.5, 1.0, 1.0])


def test_shape_dtype_and_range() -> None:
    rng = np.random.default_rng(0)
    vol = _volume(rng.normal(0.0, 800.0, size=(7, 64, 64)))
    x = preprocess_volume(vol, size=32, hu_window=(-1000.0, 1000.0))
    assert x.shape == (7, 1, 32, 32)
    assert x.dtype == torch.float32
    assert x.device.type == "cpu"
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_constant_slice_known_value_after_resampling() -> None:
    # 40 HU everywhere: (40 + 1000) / 2000 * 2 - 1 = 0.04 at every pixel, whatever the resize.
    vol = _volume(np.full((2, 50, 50), 40.0))
    x = preprocess_volume(vol, size=128, hu_window=(-1000.0, 1000.0))
    assert torch.allclose(x, torch.full_like(x, 0.04), atol=1e-6)


def test_integer_downsample_is_block_average() -> None:
    # antialiased bilinear by exactly 2 is a symmetric triangle filter centred on each 2 x 2
    # block, so on a linear ramp it equals the block mean away from the borders
    ramp = np.tile(np.arange(8, dtype=np.float32) * 100.0 - 400.0, (8, 1))
    vol = _volume(ramp[None])
    x = preprocess_volume(vol, size=4, hu_window=(-1000.0, 1000.0))
    blocks = ramp.reshape(4, 2, 4, 2).mean(axis=(1, 3))
    expected = (np.clip(blocks, -1000, 1000) + 1000) / 1000 - 1
    np.testing.assert_allclose(x[0, 0, :, 1:3].numpy(), expected[:, 1:3], atol=1e-5)


def test_non_square_slice_is_padded_with_air_not_stretched() -> None:
    # 4 rows x 8 cols of soft tissue (0 HU): padded to 8 x 8 with air (-1000 HU -> -1)
    vol = _volume(np.zeros((1, 4, 8)))
    x = preprocess_volume(vol, size=8, hu_window=(-1000.0, 1000.0))[0, 0]
    assert torch.all(x[:2] == -1.0) and torch.all(x[-2:] == -1.0)
    assert torch.all(x[2:6] == 0.0)


@pytest.mark.parametrize("window", [(1000.0, -1000.0), (0.0, 0.0), (float("nan"), 1.0)])
def test_bad_window_raises(window: tuple[float, float]) -> None:
    with pytest.raises(ModelContractError, match="HU window"):
        preprocess_volume(_volume(np.zeros((1, 4, 4))), size=4, hu_window=window)


def test_bad_size_raises() -> None:
    with pytest.raises(ModelContractError, match="input size"):
        preprocess_volume(_volume(np.zeros((1, 4, 4))), size=0, hu_window=(-1000.0, 1000.0))


def test_non_finite_hu_raises_naming_series_and_slice() -> None:
    hu = np.zeros((3, 4, 4), dtype=np.float32)
    hu[2, 1, 1] = np.nan
    with pytest.raises(ModelContractError, match=r"1\.2\.3.*slices 0\.\.2"):
        preprocess_volume(_volume(hu), size=4, hu_window=(-1000.0, 1000.0))
