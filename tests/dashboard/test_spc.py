"""The Trends page's control limits (dashboard.spc): known answers on small series."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.spc import MAD_TO_SIGMA, control_limits


def test_median_and_mad_limits_flag_the_outlier_only() -> None:
    x = [10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 30.0]
    lim = control_limits(x)
    assert lim.centre == 10.0
    assert lim.sigma == pytest.approx(MAD_TO_SIGMA * 0.5)  # |x - 10| = 0,1,1,0,.5,.5,20 -> MAD 0.5
    assert lim.lower == pytest.approx(10 - 3 * lim.sigma) and lim.upper == pytest.approx(10 + 3 * lim.sigma)
    assert lim.out.tolist() == [False, False, False, False, False, False, True]
    assert lim.sigma_method == "mad"


def test_one_extreme_value_does_not_widen_its_own_limits() -> None:
    base = np.random.default_rng(0).normal(5.0, 1.0, 200)
    with_outlier = np.append(base, 1e6)
    assert control_limits(with_outlier).upper == pytest.approx(control_limits(base).upper, rel=0.05)
    assert control_limits(with_outlier).out[-1]


def test_mad_zero_falls_back_to_moving_range_then_none() -> None:
    lim = control_limits([2.0, 2.0, 2.0, 2.0, 3.0])
    assert lim.sigma_method == "moving range"
    assert lim.sigma == pytest.approx((1.0 / 4) / 1.128)
    const = control_limits([4.0, 4.0, 4.0])
    assert const.sigma_method == "none" and not const.out.any()


def test_floor_and_nans() -> None:
    lim = control_limits([0.1, 0.2, np.nan, 0.15, 0.12], floor=0.0)
    assert lim.lower >= 0.0
    assert lim.out.shape == (5,) and not lim.out[2]
    empty = control_limits([np.nan, np.nan])
    assert np.isnan(empty.centre) and empty.sigma_method == "none"
