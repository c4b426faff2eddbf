from __future__ import annotations

import pytest

from qa_core.consensus import weighted_consensus
from qa_core.errors import StatisticsError


def test_weighted_mean_known_answer() -> None:
    # (3*1 + 4*2 + 5*1) / 4 = 4.0
    assert weighted_consensus([3, 4, 5], [1, 2, 1]) == pytest.approx(4.0)
    assert weighted_consensus([2, 5], [0.0, 1.0]) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("scores", "weights"),
    [([], []), ([3, 4], [1]), ([3, 4], [0, 0]), ([3, 4], [-1, 2]), ([3, 4], [float("nan"), 1])],
)
def test_bad_weights_raise(scores: list[float], weights: list[float]) -> None:
    with pytest.raises(StatisticsError):
        weighted_consensus(scores, weights)
