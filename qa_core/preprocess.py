"""Slice preprocessing for the quality CNN: HU window, square pad, resample, normalise.

The model sees every axial slice of a :class:`~qa_core.volume.Volume` as one sample. A slice
goes through four fixed steps, in this order:

1. **HU window**: clip to ``[low, high]`` HU (values outside carry no extra information for
   the quality categories; metal streaks saturate at ``high``).
2. **Square pad**: a non-square slice is padded symmetrically with ``low`` (air) to a square,
   so resampling never distorts anatomy.
3. **Resample**: bilinear, antialiased resize of the square slice to ``size x size`` pixels.
   The pixel spacing is *not* made isotropic in mm: the network sees the reconstructed field
   of view at a fixed matrix, as a radiologist sees the screen.
4. **Normalise**: map ``[low, high]`` HU linearly to ``[-1, 1]``.

Slices are processed in chunks so that a 400 x 512 x 512 series never needs more than one
chunk of float32 intermediates at the original matrix size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qa_core.errors import ModelContractError
from qa_core.volume import Volume

__all__ = ["normalise_hu", "preprocess_volume"]

#: Slices resampled per chunk (bounds peak memory at the source matrix size).
_CHUNK = 32


def _check_window(hu_window: tuple[float, float]) -> tuple[float, float]:
    low, high = float(hu_window[0]), float(hu_window[1])
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ModelContractError(
            f"HU window must be two finite values with high > low; got {hu_window!r}. "
            "Fix: pass (low, high) in HU, e.g. (-1000.0, 1000.0)."
        )
    return low, high


def normalise_hu(hu: torch.Tensor, hu_window: tuple[float, float]) -> torch.Tensor:
    """Clip HU to the window and map it linearly to ``[-1, 1]``.

    Parameters
    ----------
    hu:
        Tensor of any shape, float, in HU.
    hu_window:
        ``(low, high)`` in HU, ``high > low``.

    Returns
    -------
    torch.Tensor
        Same shape and dtype; ``low`` HU maps to -1, ``high`` HU to +1, values outside the
        window saturate.
    """
    low, high = _check_window(hu_window)
    return (hu.clamp(low, high) - low) * (2.0 / (high - low)) - 1.0


def preprocess_volume(
    volume: Volume, *, size: int, hu_window: tuple[float, float]
) -> torch.Tensor:
    """Turn a volume into the model's input batch, one sample per axial slice.

    Parameters
    ----------
    volume:
        CBCT volume; ``volume.hu`` is float32 ``(slices, rows, cols)`` in HU.
    size:
        Output matrix (pixels per side), e.g. 128.
    hu_window:
        ``(low, high)`` in HU.

    Returns
    -------
    torch.Tensor
        float32 ``(slices, 1, size, size)`` on CPU, values in ``[-1, 1]``.

    Raises
    ------
    ModelContractError
        ``size`` is not a positive integer, the window is invalid, or the volume holds no
        slices or contains non-finite HU values.
    """
    if not isinstance(size, int) or size < 1:
        raise ModelContractError(f"input size must be a positive integer; got {size!r}")
    low, high = _check_window(hu_window)
    n, rows, cols = volume.shape
    if n == 0 or rows == 0 or cols == 0:
        raise ModelContractError(
            f"volume {volume.series_uid or '(no series UID)'} has shape {volume.shape}; "
            "preprocessing needs at least one slice of at least 1 x 1 pixels"
        )
    side = max(rows, cols)
    pad_r, pad_c = side - rows, side - cols
    # (left, right, top, bottom) for the last two dimensions.
    pad = (pad_c // 2, pad_c - pad_c // 2, pad_r // 2, pad_r - pad_r // 2)
    out = torch.empty((n, 1, size, size), dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        chunk = torch.from_numpy(np.array(volume.hu[start : start + _CHUNK], dtype=np.float32))
        if not torch.isfinite(chunk).all():
            raise ModelContractError(
                f"volume {volume.series_uid or '(no series UID)'} holds non-finite HU values "
                f"in slices {start}..{start + chunk.shape[0] - 1}; fix the source series"
            )
        x = chunk.clamp(low, high).unsqueeze(1)
        if pad_r or pad_c:
            x = F.pad(x, pad, mode="constant", value=low)
        if side != size:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size
            )
        out[start : start + x.shape[0]] = normalise_hu(x, (low, high))
    return out
