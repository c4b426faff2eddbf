"""Statistical process control for the Trends page: a robust individuals chart.

Rule (stated on the page): **individuals chart with MAD-based sigma**. For the values x_i in
acquisition order, the centre line is the median m; the robust sigma is
``σ̂ = 1.4826 · median(|x_i − m|)`` (the MAD scaled to equal the standard deviation for normal
data); the control limits are ``m ± 3 σ̂``. A point outside the limits is out of control.
The median and MAD are not pulled by the outliers they are meant to find (a mean ± 3 SD chart
is: one extreme session widens its own limits). When the MAD is 0 (at least half the values
equal), σ̂ falls back to the mean moving range / 1.128 (the classic individuals-chart
estimate); when that is 0 too, no point is out of control.

Pure numpy; no Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MAD_TO_SIGMA", "RULE", "ControlLimits", "control_limits"]

#: Factor making the MAD a consistent estimate of the normal standard deviation.
MAD_TO_SIGMA = 1.4826
#: The rule in words, shown beside every chart.
RULE = (
    "Individuals chart: centre line = median; σ̂ = 1.4826 × MAD (robust; the mean moving range "
    "/ 1.128 when MAD = 0); control limits = median ± 3σ̂; points outside them are marked."
)


@dataclass(frozen=True)
class ControlLimits:
    """Centre line, robust sigma, limits and the out-of-control mask of one series.

    Attributes
    ----------
    centre, sigma, lower, upper:
        In the series' unit; NaN for an empty series.
    out:
        (n,) bool, True where the value lies outside ``[lower, upper]``.
    sigma_method:
        ``"mad"``, ``"moving range"`` or ``"none"`` (constant series or fewer than 2 values).
    """

    centre: float
    sigma: float
    lower: float
    upper: float
    out: npt.NDArray[np.bool_]
    sigma_method: str


def control_limits(values: npt.ArrayLike, *, k: float = 3.0, floor: float | None = None) -> ControlLimits:
    """Robust individuals-chart limits of ``values`` (acquisition order; NaNs ignored).

    >>> lim = control_limits([1.0, 1.1, 0.9, 1.0, 5.0])
    >>> round(lim.centre, 2), bool(lim.out[-1]), bool(lim.out[0])
    (1.0, True, False)

    ``floor`` raises the lower limit to a physical minimum (0 for AE).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    if not finite.any():
        return ControlLimits(np.nan, np.nan, np.nan, np.nan, np.zeros(x.size, bool), "none")
    xf = x[finite]
    centre = float(np.median(xf))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(xf - centre)))
    method = "mad"
    if sigma == 0.0:
        mr = np.abs(np.diff(xf))
        sigma = float(mr.mean() / 1.128) if mr.size else 0.0
        method = "moving range" if sigma > 0 else "none"
    lower, upper = centre - k * sigma, centre + k * sigma
    if floor is not None:
        lower = max(lower, floor)  # e.g. AE cannot be negative: a limit below 0 can never be crossed
    out = np.zeros(x.size, bool)
    if sigma > 0:
        out[finite] = (xf < lower) | (xf > upper)
    return ControlLimits(centre, sigma, lower, upper, out, method)
