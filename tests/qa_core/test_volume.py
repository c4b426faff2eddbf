from __future__ import annotations

import numpy as np
import pytest

from qa_core.volume import Volume


def test_volume_is_frozen_and_read_only() -> None:
    hu = np.zeros((3, 4, 5), dtype=np.float64)
    v = Volume(hu=hu, spacing=(2.0, 0.5, 0.5))
    assert v.hu.dtype == np.float32
    assert v.shape == (3, 4, 5)
    assert v.n_slices == 3
    with pytest.raises(ValueError):
        v.hu[0, 0, 0] = 1.0
    with pytest.raises(AttributeError):
        v.spacing = (1.0, 1.0, 1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("shape", "spacing", "match"),
    [((4, 5), (1.0, 1.0, 1.0), "3-D"), ((2, 4, 5), (0.0, 1.0, 1.0), "positive"), ((2, 4, 5), (1.0, 1.0), "three")],
)
def test_volume_rejects_bad_geometry(shape: tuple[int, ...], spacing: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Volume(hu=np.zeros(shape, dtype=np.float32), spacing=spacing)  # type: ignore[arg-type]
