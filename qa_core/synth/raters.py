"""Image-quality measures per category region, latent quality, and simulated radiologists.

Measures (per category, pooled over every voxel of the category's region)
--------------------------------------------------------------------------
The reconstruction is compared with the *reference*: the phantom's true HU (metal clipped
to 3071) blurred in-plane with a Gaussian of :data:`REFERENCE_SIGMA_PX` pixels, the
resolution of an ideal noiseless FBP with the Hann window on this grid, so that the
intrinsic FBP blur is not counted as a defect. Both images are clipped to the category's
display window (:data:`WINDOWS`) first, since a radiologist judges what the window shows.
Metal voxels are excluded.

``error_hu``
    Error of (reconstruction - reference) after removing the region's mean offset (HU):
    noise, streaks (view aliasing, metal, photon starvation, motion), rings, cupping and
    residual blur together. Per slice the RMS is taken; slices are combined by a power
    mean of order 4 (weighted by the region's voxels per slice), so a few badly streaked
    slices (metal, shoulders) weigh more than in a plain RMS, as they do for a reader.
    Lower is better.
``noise_hu``
    Standard deviation of the high-passed error in the soft-tissue window (error minus its 2-pixel Gaussian-like
    blur) over the region's soft tissue, divided by the high-pass gain for white noise, so
    that white noise of standard deviation s reads s. Structured low-frequency errors
    (cupping) are excluded; fine streaks count. Diagnostic (not in the latent formula).
``contrast``
    Local contrast transfer: least-squares slope of the reconstruction on the reference,
    both high-passed (minus an 8 mm Gaussian-like blur made of two box filters, so slow
    cupping does not count here; it counts in ``error_hu``), over the region's
    soft-tissue voxels (reference in [-200, 200] HU). Scatter lowers it below 1. Higher
    is better (ideal 1).
``sharpness``
    Edge transfer: ``sum(grad rec . grad ref) / sum(|grad ref|^2)`` over edge voxels
    (in-plane gradients); noise is uncorrelated with the reference gradient so it averages
    out, while blur (motion, swallowing, z blur) lowers it. Higher is better (ideal 1).

Latent quality (continuous, 1-5)
--------------------------------
``d = C_k * clip(contrast, 0.05, 1) * clip(sharpness, 0.05, 1) / error_hu`` is a
detectability index (``C_k``: nominal task contrast of category ``k`` in HU,
:data:`TASK_CONTRAST_HU`), and

``Q = 1 + 4 / (1 + (d_mid_k / d) ** GAMMA)``

a logistic curve in ``log d`` centred on ``d_mid_k`` (:data:`D_MID`), calibrated so that
a seeded cohort spreads over the whole scale in every category.

Raters
------
Each simulated radiologist has a bias, a noise level, per-category offsets and a weight
(experience). A rating is ``clip(rint(Q + bias + offset_k + noise * N(0, 1)), 1, 5)``;
the consensus is :func:`qa_core.consensus.weighted_consensus` of the ratings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
from qa_core.consensus import weighted_consensus
from qa_core.errors import SynthesisError
from qa_core.synth.phantom import LABELS, Phantom

__all__ = [
    "D_MID",
    "GAMMA",
    "REFERENCE_SIGMA_PX",
    "TASK_CONTRAST_HU",
    "WINDOWS",
    "Rater",
    "RegionQuality",
    "consensus_scores",
    "latent_quality",
    "make_panel",
    "measure_quality",
    "rate_session",
    "reference_image",
]

#: In-plane Gaussian sigma (pixels) of the noiseless FBP (Hann window) point spread.
REFERENCE_SIGMA_PX: Final[float] = 0.95
#: Order of the power mean that combines per-slice RMS errors.
_SLICE_POWER: Final[float] = 4.0
#: Scale (mm) of the high-pass used for the local contrast transfer.
_LOCAL_MM: Final[float] = 8.0
#: Display window (low, high) in HU per category.
WINDOWS: Final[dict[str, tuple[float, float]]] = {
    "parotid": (-160.0, 240.0),
    "submandibular": (-160.0, 240.0),
    "larynx": (-160.0, 240.0),
    "mandible": (-200.0, 1000.0),
    "overall": (-160.0, 240.0),
}
#: Nominal task contrast C_k (HU) in the detectability index.
TASK_CONTRAST_HU: Final[dict[str, float]] = {
    "parotid": 100.0,
    "submandibular": 100.0,
    "larynx": 100.0,
    "mandible": 250.0,
    "overall": 100.0,
}
#: Detectability at which the latent quality is 3 (scale midpoint): the median of ``d``
#: per category over seeded calibration cohorts (seed 11: the mean of the medians of
#: 60 sessions at 128 x 128 x 32 and 14 sessions at 256 x 256 x 64).
D_MID: Final[dict[str, float]] = {
    "parotid": 1.78,
    "submandibular": 1.83,
    "larynx": 1.13,
    "mandible": 1.24,
    "overall": 0.96,
}
#: Steepness of the logistic curve in log d.
GAMMA: Final[float] = 2.6

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RegionQuality:
    """Measured image properties of one category region (see the module docstring)."""

    category: str
    error_hu: float
    noise_hu: float
    contrast: float
    sharpness: float
    detectability: float
    latent: float
    n_voxels: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class Rater:
    """One simulated radiologist.

    Attributes
    ----------
    name:
        Pseudonymous rater ID (``R1`` ...).
    bias:
        Added to every latent score (Likert points; > 0 is lenient).
    noise:
        Standard deviation of the rater's per-case noise (Likert points).
    weight:
        Consensus weight (experience), > 0.
    offsets:
        Per-category extra bias, in :data:`~qa_core.categories.CATEGORIES` order.
    """

    name: str
    bias: float
    noise: float
    weight: float
    offsets: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary (offsets keyed by category)."""
        return {
            "name": self.name,
            "bias": self.bias,
            "noise": self.noise,
            "weight": self.weight,
            "offsets": dict(zip(CATEGORIES, self.offsets, strict=True)),
        }


def make_panel(seed: int, n_raters: int = 4) -> tuple[Rater, ...]:
    """The cohort's rater panel, drawn from the cohort seed alone.

    Parameters
    ----------
    seed:
        Cohort seed.
    n_raters:
        Panel size, at least 3.

    Returns
    -------
    tuple of Rater
        Names ``R1..Rn``; experience 2-25 years gives ``weight = 0.5 + years / 20``;
        bias ~ N(0, 0.25), noise ~ U(0.3, 0.6), per-category offsets ~ N(0, 0.15).
    """
    if n_raters < 3:
        raise SynthesisError(f"a rater panel needs at least 3 raters; got {n_raters}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A7E]))
    panel = []
    for i in range(n_raters):
        years = float(rng.uniform(2.0, 25.0))
        panel.append(
            Rater(
                name=f"R{i + 1}",
                bias=round(float(rng.normal(0.0, 0.25)), 4),
                noise=round(float(rng.uniform(0.3, 0.6)), 4),
                weight=round(0.5 + years / 20.0, 3),
                offsets=tuple(round(float(v), 4) for v in rng.normal(0.0, 0.15, len(CATEGORIES))),
            )
        )
    return tuple(panel)


def reference_image(phantom: Phantom) -> F32:
    """The noiseless reference the reconstruction is compared with.

    Parameters
    ----------
    phantom:
        True HU ``(slices, size, size)``.

    Returns
    -------
    numpy.ndarray
        float32, same shape: true HU clipped to [-1000, 3071], Gaussian-blurred in-plane
        with sigma :data:`REFERENCE_SIGMA_PX` pixels.
    """
    ref = np.clip(phantom.hu, -1000.0, 3071.0)
    return np.asarray(
        ndimage.gaussian_filter(ref, (0.0, REFERENCE_SIGMA_PX, REFERENCE_SIGMA_PX), mode="nearest"),
        dtype=np.float32,
    )


def latent_quality(
    category: str, error_hu: float, contrast: float, sharpness: float
) -> tuple[float, float]:
    """Detectability index and latent quality of a region (formula in the module docstring).

    Parameters
    ----------
    category:
        One of :data:`~qa_core.categories.CATEGORIES`.
    error_hu:
        RMS error in HU (> 0).
    contrast, sharpness:
        Contrast and edge transfer (ideal 1).

    Returns
    -------
    (d, Q)
        Detectability index and latent quality in [1, 5].
    """
    if category not in CATEGORIES:
        raise SynthesisError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if not (math.isfinite(error_hu) and math.isfinite(contrast) and math.isfinite(sharpness)):
        raise SynthesisError(
            f"quality measures of {category} must be finite; got error={error_hu}, "
            f"contrast={contrast}, sharpness={sharpness}"
        )
    err = max(error_hu, 1.0)
    d = (
        TASK_CONTRAST_HU[category]
        * min(max(contrast, 0.05), 1.0)
        * min(max(sharpness, 0.05), 1.0)
        / err
    )
    q = 1.0 + 4.0 / (1.0 + (D_MID[category] / d) ** GAMMA)
    return float(d), float(q)


def measure_quality(
    recon_hu: F32,
    reference: F32,
    labels: npt.NDArray[np.uint8],
    regions: dict[str, npt.NDArray[np.bool_]],
    fov: npt.NDArray[np.bool_] | None = None,
    *,
    pixel_mm: float,
) -> dict[str, RegionQuality]:
    """Measure every category region of a reconstruction.

    Parameters
    ----------
    recon_hu:
        float32 ``(slices, rows, cols)`` reconstructed HU.
    reference:
        float32, same shape, from :func:`reference_image`.
    labels:
        uint8 label map, same shape.
    regions:
        Category -> bool region (:func:`qa_core.synth.phantom.category_regions`).
    fov:
        bool ``(rows, cols)`` measured field of view; ``None`` = everywhere.
    pixel_mm:
        In-plane pixel size (mm).

    Returns
    -------
    dict
        Category -> :class:`RegionQuality`, in contract order.

    Raises
    ------
    SynthesisError
        Shapes differ, or a category region is missing or empty.
    """
    if recon_hu.shape != reference.shape or recon_hu.shape != labels.shape:
        raise SynthesisError(
            f"reconstruction {recon_hu.shape}, reference {reference.shape} and labels "
            f"{labels.shape} must have the same shape"
        )
    keep = labels != LABELS["metal"]
    if fov is not None:
        keep &= fov[None, :, :]
    if not (pixel_mm > 0 and math.isfinite(pixel_mm)):
        raise SynthesisError(f"pixel_mm must be a positive number of mm; got {pixel_mm}")
    # Whole-volume intermediates, computed once and shared by the categories.
    hp_rec = recon_hu - _smooth(recon_hu, _LOCAL_MM / pixel_mm)
    hp_ref = reference - _smooth(reference, _LOCAL_MM / pixel_mm)
    soft_all = (reference > -200.0) & (reference < 200.0)
    lo_s, hi_s = WINDOWS["overall"]
    noise_diff = np.clip(recon_hu, lo_s, hi_s) - np.clip(reference, lo_s, hi_s)
    noise_hp = noise_diff - _smooth(noise_diff, _NOISE_SIGMA_PX)
    del noise_diff
    windowed: dict[tuple[float, float], _Windowed] = {}
    missing = [c for c in CATEGORIES if c not in regions]
    if missing:
        raise SynthesisError(
            f"no region for categories {missing}; pass the output of category_regions(...)"
        )
    out: dict[str, RegionQuality] = {}
    for cat in CATEGORIES:
        zr = _zrange(np.asarray(regions[cat].any(axis=(1, 2))))  # work on the region's slices only
        valid = regions[cat][zr] & keep[zr]
        n = int(valid.sum())
        if n < 20:
            raise SynthesisError(
                f"region of category {cat!r} has {n} measurable voxels; the phantom must contain "
                "the organ inside the field of view (use more slices or a larger FOV)"
            )
        win = WINDOWS[cat]
        if win not in windowed:
            zw = _zrange(
                np.any(
                    [regions[c].any(axis=(1, 2)) for c in CATEGORIES if WINDOWS[c] == win], axis=0
                )
            )
            windowed[win] = _Windowed.compute(recon_hu, reference, win, zw)
        full = windowed[win]
        lo, hi = win
        rel = slice(zr.start - full.zs.start, zr.stop - full.zs.start)
        w = _Windowed(zr, full.diff[rel], full.g2[rel], full.gdot[rel])
        soft_cat = soft_all[zr]
        hp_rec_c = hp_rec[zr]
        hp_ref_c = hp_ref[zr]
        # error: per-slice RMS about the region's mean offset, power mean over slices
        offset = float(w.diff[valid].mean())
        counts = valid.sum(axis=(1, 2))
        sq = np.where(valid, (w.diff - offset) ** 2, 0.0).sum(axis=(1, 2))
        has = counts > 0
        mse = sq[has] / counts[has]
        wts = counts[has] / counts[has].sum()
        error = float(np.sum(wts * mse ** (_SLICE_POWER / 2.0)) ** (1.0 / _SLICE_POWER))
        # local contrast transfer on soft tissue (cupping removed by the high-pass)
        soft = valid & soft_cat
        x = hp_ref_c[soft].astype(np.float64)
        if x.size >= 20 and np.var(x) > 1.0:
            y = hp_rec_c[soft].astype(np.float64)
            contrast = float(np.cov(x, y)[0, 1] / np.var(x, ddof=1))
        else:
            contrast = 1.0
        # edge transfer
        edge = valid & (w.g2 > (0.02 * (hi - lo)) ** 2)
        if edge.sum() >= 10:
            sharp = float(
                np.sum(w.gdot[edge], dtype=np.float64) / np.sum(w.g2[edge], dtype=np.float64)
            )
        else:
            sharp = 1.0
        # noise: high-passed error over soft tissue, white-noise gain removed
        soft_w = soft & valid
        noise_sel = noise_hp[w.zs][soft_w]
        noise = float(np.std(noise_sel) / _HP_GAIN) if noise_sel.size >= 10 else float("nan")
        d, q = latent_quality(cat, error, contrast, sharp)
        out[cat] = RegionQuality(cat, error, noise, contrast, sharp, d, q, n)
    return out


def _smooth(img: F32, sigma_px: float) -> F32:
    """In-plane Gaussian-like low-pass: two box filters of width 2.45 sigma per axis.

    Two passes give a triangle kernel with the standard deviation ``sigma_px``.
    """
    width = max(round(2.45 * sigma_px), 1)
    out = img
    for axis in (1, 2):
        for _ in range(2):
            out = ndimage.uniform_filter1d(out, width, axis=axis, mode="nearest")
    return np.asarray(out, dtype=np.float32)


def _hp_gain(sigma_px: float) -> float:
    """Standard-deviation gain of ``x - _smooth(x)`` for white noise (from the impulse response)."""
    n = 8 * max(round(2.0 * sigma_px), 1) + 1
    delta = np.zeros((1, n, n), dtype=np.float32)
    delta[0, n // 2, n // 2] = 1.0
    h = delta - _smooth(delta, sigma_px)
    return float(np.sqrt(np.sum(h.astype(np.float64) ** 2)))


#: Scale (pixels) of the high-pass used for ``noise_hu``, and its white-noise gain.
_NOISE_SIGMA_PX: Final[float] = 2.0
_HP_GAIN: Final[float] = _hp_gain(_NOISE_SIGMA_PX)


def _zrange(has: npt.NDArray[np.bool_]) -> slice:
    idx = np.nonzero(has)[0]
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


@dataclass(frozen=True, eq=False)
class _Windowed:
    """Window-clipped difference and gradients of one display window over a z range."""

    zs: slice
    diff: F32
    g2: F32
    gdot: F32

    @classmethod
    def compute(
        cls, recon_hu: F32, reference: F32, win: tuple[float, float], zs: slice
    ) -> _Windowed:
        lo, hi = win
        rec = np.clip(recon_hu[zs], lo, hi)
        ref = np.clip(reference[zs], lo, hi)
        gy_ref, gx_ref = _grad(ref)
        gy_rec, gx_rec = _grad(rec)
        g2 = gy_ref**2 + gx_ref**2
        gdot = gy_rec * gy_ref + gx_rec * gx_ref
        diff = rec - ref
        return cls(zs, diff, g2, gdot)


def _grad(img: F32) -> tuple[F32, F32]:
    """Central-difference in-plane gradients (rows, cols), zero at the border."""
    gy = np.zeros_like(img)
    gx = np.zeros_like(img)
    gy[:, 1:-1, :] = 0.5 * (img[:, 2:, :] - img[:, :-2, :])
    gx[:, :, 1:-1] = 0.5 * (img[:, :, 2:] - img[:, :, :-2])
    return gy, gx


def rate_session(
    latent: dict[str, float], panel: tuple[Rater, ...], rng: np.random.Generator
) -> dict[str, dict[str, int]]:
    """Every rater's integer Likert score per category.

    Parameters
    ----------
    latent:
        Category -> latent quality (1-5).
    panel:
        The raters (:func:`make_panel`).
    rng:
        Seeded generator for the raters' per-case noise.

    Returns
    -------
    dict
        Rater name -> category -> score in 1..5.
    """
    missing = [c for c in CATEGORIES if c not in latent]
    if missing:
        raise SynthesisError(f"latent quality lacks categories {missing}")
    out: dict[str, dict[str, int]] = {}
    for r in panel:
        scores: dict[str, int] = {}
        for k, cat in enumerate(CATEGORIES):
            v = latent[cat] + r.bias + r.offsets[k] + r.noise * float(rng.standard_normal())
            scores[cat] = int(np.clip(np.rint(v), LIKERT_MIN, LIKERT_MAX))
        out[r.name] = scores
    return out


def consensus_scores(
    ratings: dict[str, dict[str, int]], weights: dict[str, float]
) -> dict[str, float]:
    """Weighted consensus per category (:func:`qa_core.consensus.weighted_consensus`).

    Parameters
    ----------
    ratings:
        Rater -> category -> score.
    weights:
        Rater -> weight.

    Returns
    -------
    dict
        Category -> consensus on the 1-5 scale.
    """
    names = sorted(ratings)
    if set(names) != set(weights):
        raise SynthesisError(f"ratings raters {names} and weights raters {sorted(weights)} differ")
    return {
        cat: weighted_consensus([ratings[n][cat] for n in names], [weights[n] for n in names])
        for cat in CATEGORIES
    }
