"""CBCT acquisition model: degradation settings, projection-domain physics, FBP.

Pipeline for one session (every step named after the physical effect it models)
---------------------------------------------------------------------------------
1. **Attenuation**: ``mu = MU_WATER * (1 + HU / 1000)`` (1/mm, effective energy about
   70 keV, air = 0). Metal fillings carry ``mu`` about 25x water.
2. **Patient motion between views** (projection domain): for a contiguous block of views
   the object is rigidly shifted and rotated in-plane (``motion_mm``, ``motion_deg``); a
   second block models **swallowing**: the neck (larynx to submandibular level) is
   displaced cranially by ``swallow_mm`` (approximated, per 2-D slice, by showing that
   slice the anatomy from ``swallow_mm`` lower). Inconsistent views give blur, double
   contours and streaks after FBP.
3. **Forward projection**: 2-D parallel-beam line integrals per axial slice
   (:class:`~qa_core.synth.projector.ParallelBeamProjector`), ``n_views`` views over 180
   degrees; fewer views give view-aliasing streaks. (Approximation: cone-beam CBCT is
   simulated as a stack of independent fan-less 2-D scans; see the projector module.)
4. **Beam hardening** (simplified, water-corrected residual): ``p' = p - bh * p**2``;
   long or dense paths (shoulders) lose attenuation: cupping and dark streaks. The metal
   part of a ray (its own line integral ``p_m``, from the metal voxels alone) hardens
   much more: ``p' -= 0.04 * p_m**2`` (dark streaks between and behind fillings).
5. **Primary intensity**: ``I = N0 * exp(-p')`` with ``N0`` the unattenuated photon count
   per detector bin and view (``dose``; normalised to a 280/256 mm bin, so a dose level
   gives comparable pixel noise at every matrix size - a simulator convention).
6. **Scatter**: a low-frequency additive intensity ``S = 0.2 scatter * N0 * G * (p e^-p)``
   (G: Gaussian, sigma 60 mm across the detector and 20 mm along z; ``p e^-p`` is the
   single-scatter yield of a pencil beam). Not corrected, so it gives cupping, contrast
   loss and streaks between dense objects, as uncorrected scatter does in CBCT.
7. **Detector gain errors**: per-bin relative gain ``1 + N(0, gain_sigma)`` plus a few
   bins off by ``4 gain_sigma``, uncorrected by the flat field: rings.
8. **Quantum and electronic noise**: Poisson counts (a Gaussian with variance ``lambda``
   where ``lambda > 50``, indistinguishable there) plus Gaussian electronic noise,
   clamped at 0.5 counts; photon starvation behind metal and across the shoulders then
   gives streaks by itself.
9. **Log transform** ``p_hat = -ln(counts / N0)`` and **field-of-view truncation**: bins
   beyond ``fov_radius_mm`` are not measured; they are filled by a cosine-tapered
   extrapolation of the edge value (as scanners do) and the image outside the FOV circle
   is set to -1000 HU. The extrapolation decays as cos^2 over the water-equivalent
   half-chord of the edge value (a simplified water-cylinder extrapolation).
10. **FBP** (ramp with Hann window), HU conversion, and **cone-beam blur along z**
    (image-domain approximation): a Gaussian along z of ``z_blur_mm``.

Settings are drawn per session by :func:`sample_settings` from documented distributions
(:data:`SETTING_RANGES`); anatomy-driven effects (shoulder height, metal fillings) come
from the phantom, so categories degrade partly independently: shoulders starve the
larynx level, fillings streak the mandible and parotid levels, swallowing blurs the neck.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qa_core.errors import SynthesisError
from qa_core.synth.phantom import GRID_MM, Phantom, upsample_linear
from qa_core.synth.projector import ParallelBeamProjector

__all__ = [
    "BASE_VIEWS",
    "MU_WATER",
    "SETTING_RANGES",
    "VIEW_CHOICES",
    "AcquisitionSettings",
    "acquire",
    "hu_to_mu",
    "mu_to_hu",
    "sample_settings",
]

#: Linear attenuation of water at the effective energy (1/mm, about 70 keV).
MU_WATER: Final[float] = 0.0193
#: View counts a session can have; all divide :data:`BASE_VIEWS`, so a subset of one
#: cached system matrix serves every session.
VIEW_CHOICES: Final[tuple[int, ...]] = (240, 120, 80, 60, 48, 40)
#: Views in the cached base system matrix.
BASE_VIEWS: Final[int] = 240
#: Scale of the scatter kernel: ``scatter = 1`` gives a scatter-to-primary ratio near 0.45
#: behind the mid-neck (measured on the reference patient).
_SCATTER_YIELD: Final[float] = 0.2
#: Attenuation above which a voxel counts as metal (1/mm; about 9000 HU).
_METAL_MU: Final[float] = 0.2
#: Beam-hardening coefficient of the metal part of a ray, ``p - bh_m * p_metal**2``.
METAL_BEAM_HARDENING: Final[float] = 0.04
#: Detector bin width (mm) at which ``dose`` is stated.
REFERENCE_BIN_MM: Final[float] = GRID_MM / 256.0

#: The per-session distributions of :func:`sample_settings` (recorded in cohort.json).
SETTING_RANGES: Final[dict[str, str]] = {
    "n_views": "choice (240, 120, 80, 60, 48, 40) with p (0.3, 0.25, 0.17, 0.12, 0.1, 0.06)",
    "dose": "log-uniform 4e3-2e5 photons per bin and view (unattenuated)",
    "scatter": "0 with p 0.3, else uniform 0-0.7 (residual scatter amplitude)",
    "beam_hardening": "uniform 0-0.012",
    "electronic_noise": "uniform 1-5 counts",
    "gain_sigma": "log-uniform 1e-4-8e-3 (relative detector gain error)",
    "fov_radius_mm": "uniform 112-140 mm",
    "motion_mm": "0 with p 0.6, else uniform 0.3-3 mm (rigid shift)",
    "motion_deg": "0 when no motion, else uniform -1.5-1.5 degrees",
    "motion_fraction": "uniform 0.15-0.5 of the views (contiguous block)",
    "swallow_mm": "0 with p 0.7, else uniform 3-14 mm (neck displacement)",
    "swallow_fraction": "uniform 0.1-0.4 of the views (contiguous block)",
    "z_blur_mm": "uniform 0.3-2.5 mm (Gaussian sigma along z)",
}


@dataclass(frozen=True)
class AcquisitionSettings:
    """Degradation settings of one simulated CBCT acquisition (see the module docstring)."""

    n_views: int = 240
    """Projections over 180 degrees (one of :data:`VIEW_CHOICES`)."""
    dose: float = 1e5
    """Unattenuated photons per detector bin and view at a 280/256 mm bin."""
    scatter: float = 0.0
    """Scatter amplitude (0 = none; 1 gives a scatter-to-primary ratio near 0.5 mid-neck)."""
    beam_hardening: float = 0.0
    """Residual beam-hardening coefficient ``bh`` in ``p - bh p^2``."""
    electronic_noise: float = 2.0
    """Electronic noise standard deviation in counts."""
    gain_sigma: float = 0.0
    """Relative detector gain error (standard deviation)."""
    fov_radius_mm: float = 140.0
    """Radius of the measured field of view in mm (the grid half-width is 140 mm)."""
    motion_mm: float = 0.0
    """Rigid in-plane displacement during the motion block (mm)."""
    motion_deg: float = 0.0
    """Rigid in-plane rotation during the motion block (degrees)."""
    motion_start: float = 0.5
    """Start of the motion block as a fraction of the acquisition."""
    motion_fraction: float = 0.0
    """Length of the motion block as a fraction of the views."""
    motion_angle_deg: float = 0.0
    """Direction of the rigid displacement in the image plane (degrees from +x)."""
    swallow_mm: float = 0.0
    """Cranial displacement of the neck during the swallow block (mm)."""
    swallow_start: float = 0.3
    """Start of the swallow block as a fraction of the acquisition."""
    swallow_fraction: float = 0.0
    """Length of the swallow block as a fraction of the views."""
    z_blur_mm: float = 0.5
    """Cone-beam blur along z (Gaussian sigma, mm; image-domain approximation)."""
    gain_seed: int = 0
    """Seed of the detector gain pattern."""

    def __post_init__(self) -> None:
        if self.n_views not in VIEW_CHOICES:
            raise SynthesisError(f"n_views must be one of {VIEW_CHOICES}; got {self.n_views}")
        checks: dict[str, tuple[float, float]] = {
            "dose": (10.0, 1e8),
            "scatter": (0.0, 10.0),
            "beam_hardening": (0.0, 0.05),
            "electronic_noise": (0.0, 100.0),
            "gain_sigma": (0.0, 0.2),
            "fov_radius_mm": (40.0, GRID_MM / 2.0),
            "motion_mm": (0.0, 30.0),
            "motion_deg": (-20.0, 20.0),
            "motion_start": (0.0, 1.0),
            "motion_fraction": (0.0, 1.0),
            "swallow_mm": (0.0, 30.0),
            "swallow_start": (0.0, 1.0),
            "swallow_fraction": (0.0, 1.0),
            "z_blur_mm": (0.0, 20.0),
        }
        for name, (lo, hi) in checks.items():
            v = float(getattr(self, name))
            if not (math.isfinite(v) and lo <= v <= hi):
                raise SynthesisError(
                    f"acquisition setting {name}={v!r} is outside [{lo:g}, {hi:g}]; fix the value"
                )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary of the settings."""
        return asdict(self)


def sample_settings(rng: np.random.Generator) -> AcquisitionSettings:
    """Draw one session's degradation settings from :data:`SETTING_RANGES`.

    Parameters
    ----------
    rng:
        Seeded generator.

    Returns
    -------
    AcquisitionSettings
    """
    if not isinstance(rng, np.random.Generator):
        raise SynthesisError(
            f"sample_settings needs a numpy Generator (np.random.default_rng(seed)); got {type(rng).__name__}"
        )
    n_views = int(rng.choice(VIEW_CHOICES, p=(0.3, 0.25, 0.17, 0.12, 0.1, 0.06)))
    dose = float(np.exp(rng.uniform(np.log(4e3), np.log(2e5))))
    scatter = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.0, 0.7))
    moving = rng.random() >= 0.6
    swallowing = rng.random() >= 0.7
    return AcquisitionSettings(
        n_views=n_views,
        dose=dose,
        scatter=scatter,
        beam_hardening=float(rng.uniform(0.0, 0.012)),
        electronic_noise=float(rng.uniform(1.0, 5.0)),
        gain_sigma=float(np.exp(rng.uniform(np.log(1e-4), np.log(8e-3)))),
        fov_radius_mm=float(rng.uniform(112.0, 140.0)),
        motion_mm=float(rng.uniform(0.3, 3.0)) if moving else 0.0,
        motion_deg=float(rng.uniform(-1.5, 1.5)) if moving else 0.0,
        motion_start=float(rng.uniform(0.0, 0.8)),
        motion_fraction=float(rng.uniform(0.15, 0.5)) if moving else 0.0,
        motion_angle_deg=float(rng.uniform(0.0, 360.0)),
        swallow_mm=float(rng.uniform(3.0, 14.0)) if swallowing else 0.0,
        swallow_start=float(rng.uniform(0.0, 0.85)),
        swallow_fraction=float(rng.uniform(0.1, 0.4)) if swallowing else 0.0,
        z_blur_mm=float(rng.uniform(0.3, 2.5)),
        gain_seed=int(rng.integers(0, 2**31 - 1)),
    )


def hu_to_mu(hu: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """HU -> linear attenuation (1/mm): ``MU_WATER * (1 + HU / 1000)``, air and below -> 0."""
    return np.asarray(MU_WATER * (1.0 + np.maximum(hu, -1000.0) / 1000.0), dtype=np.float32)


def mu_to_hu(mu: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Linear attenuation (1/mm) -> HU: ``1000 * (mu / MU_WATER - 1)`` (inverse of :func:`hu_to_mu`)."""
    return (1000.0 * (mu / MU_WATER - 1.0)).astype(np.float32)


@lru_cache(maxsize=4)
def _projector(size: int) -> ParallelBeamProjector:
    return ParallelBeamProjector(size, GRID_MM / size, BASE_VIEWS)


def _block(n: int, start: float, fraction: float) -> npt.NDArray[np.bool_]:
    """Boolean mask of a contiguous (wrapping) block of ``fraction * n`` of ``n`` views."""
    out = np.zeros(n, dtype=bool)
    m = round(fraction * n)
    if m <= 0:
        return out
    i0 = int(start * n) % n
    out[(i0 + np.arange(min(m, n))) % n] = True
    return out


def _rigid(
    mu: npt.NDArray[np.float32], px: float, s: AcquisitionSettings
) -> npt.NDArray[np.float32]:
    """Rotate every slice by ``motion_deg`` about the grid centre and shift it by ``motion_mm``."""
    n = mu.shape[1]
    t = math.radians(s.motion_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    ang = math.radians(s.motion_angle_deg)
    shift_px = np.array([math.sin(ang), math.cos(ang)]) * s.motion_mm / px  # (row, col)
    centre = np.array([(n - 1) / 2.0, (n - 1) / 2.0])
    offset = centre - rot @ (centre + shift_px)
    out = np.empty_like(mu)
    for k in range(mu.shape[0]):
        ndimage.affine_transform(mu[k], rot, offset=offset, output=out[k], order=1, mode="constant")
    return out


def _swallow_weight(zeta: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """How much each slice takes part in swallowing: 1 over zeta 0.14-0.58, ramps to 0."""
    return np.clip(np.minimum((zeta - 0.08) / 0.06, (0.64 - zeta) / 0.06), 0.0, 1.0)


def _metal_projection(
    proj: ParallelBeamProjector,
    obj: npt.NDArray[np.float32],
    metal_slices: npt.NDArray[np.intp],
    views: npt.NDArray[np.int64],
    *,
    cache: bool = True,
) -> npt.NDArray[np.float32]:
    """Line integrals through the metal voxels alone, for the slices that hold metal."""
    if metal_slices.size == 0:
        return np.zeros((views.size, proj.n_det, 0), dtype=np.float32)
    sub = obj[metal_slices]
    metal = np.where(sub > _METAL_MU, sub, 0.0).astype(np.float32)
    return proj.forward(metal, views, cache=cache)


def _swallow(
    mu: npt.NDArray[np.float32],
    phantom: Phantom,
    s: AcquisitionSettings,
    cols: npt.NDArray[np.intp],
) -> npt.NDArray[np.float32]:
    """Slices ``cols`` of the object during a swallow.

    The neck (zeta 0.14-0.58, tapering to 0.08 and 0.64) moves cranially by
    ``swallow_mm``: slice ``z`` shows the anatomy found ``swallow_mm`` lower, linearly
    interpolated along z (edge slices repeat at the volume's ends).
    """
    dz = phantom.spacing[0]
    n = mu.shape[0]
    src = np.clip(cols.astype(np.float64) - s.swallow_mm / dz, 0.0, n - 1.0)
    lo = np.minimum(np.floor(src).astype(np.intp), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    f = (src - lo).astype(np.float32)[:, None, None]
    shifted = (1.0 - f) * mu[lo] + f * mu[hi]
    w = _swallow_weight(phantom.zeta[cols]).astype(np.float32)[:, None, None]
    return np.asarray((1.0 - w) * mu[cols] + w * shifted, dtype=np.float32)


def acquire(
    phantom: Phantom, settings: AcquisitionSettings, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], dict[str, float]]:
    """Simulate one CBCT acquisition and reconstruction of a phantom.

    Parameters
    ----------
    phantom:
        The object (true HU, ``(slices, size, size)``).
    settings:
        Degradation settings.
    rng:
        Seeded generator for the quantum and electronic noise.

    Returns
    -------
    hu:
        float32 ``(slices, size, size)`` reconstructed HU, clipped to [-1024, 3071],
        -1000 outside the field of view.
    fov:
        bool ``(size, size)``: pixels inside the measured field of view.
    diagnostics:
        ``scatter_to_primary`` (median over the central detector bins of the mid-neck
        slices), ``min_counts`` (1st percentile of detected counts), ``n_motion_views``,
        ``n_swallow_views``.
    """
    if (
        phantom.hu.ndim != 3
        or phantom.hu.shape[1] != phantom.hu.shape[2]
        or phantom.hu.shape[1] < 16
    ):
        raise SynthesisError(
            f"acquire needs a phantom of square slices >= 16 pixels, shaped (slices, N, N); "
            f"got {phantom.hu.shape}; build it with build_phantom(...)"
        )
    slices, size, _ = phantom.hu.shape
    proj = _projector(size)
    px = GRID_MM / size
    step = BASE_VIEWS // settings.n_views
    views = np.arange(0, BASE_VIEWS, step)
    n_v = views.size
    mu = hu_to_mu(phantom.hu)

    # --- static object for every view; each moved object is projected for its own block
    # of views (a one-off view-subset matrix) and replaces those rows.
    moving = settings.motion_mm > 0 or settings.motion_deg != 0
    moved = (
        _block(n_v, settings.motion_start, settings.motion_fraction)
        if moving
        else np.zeros(n_v, bool)
    )
    swal = (
        _block(n_v, settings.swallow_start, settings.swallow_fraction)
        if settings.swallow_mm > 0
        else np.zeros(n_v, bool)
    )
    group = moved.astype(np.int8) + 2 * swal.astype(np.int8)
    metal_slices = np.nonzero((mu > _METAL_MU).any(axis=(1, 2)))[0]
    sino = proj.forward(mu, views)
    metal_sino = _metal_projection(proj, mu, metal_slices, views)
    neck = np.nonzero(_swallow_weight(phantom.zeta) > 0)[0]
    bins = np.arange(proj.n_det)
    for g in (1, 2, 3):
        rows = np.nonzero(group == g)[0]
        cols = np.arange(slices) if g & 1 else neck
        if rows.size == 0 or cols.size == 0:
            continue
        obj = _swallow(mu, phantom, settings, cols) if g & 2 else mu[cols]
        if g & 1:
            obj = _rigid(obj, px, settings)
        sino[np.ix_(rows, bins, cols)] = proj.forward(
            np.ascontiguousarray(obj), views[rows], cache=False
        )
        msl = np.nonzero(np.isin(cols, metal_slices))[0]
        if msl.size:
            where = np.searchsorted(metal_slices, cols[msl])
            metal_sino[np.ix_(rows, bins, where)] = _metal_projection(
                proj, obj, msl, views[rows], cache=False
            )
    del mu

    # --- beam hardening, primary, scatter, gains, noise, log
    p = sino
    n0 = settings.dose * (REFERENCE_BIN_MM / px) ** 2
    if settings.beam_hardening > 0:
        p = p - np.float32(settings.beam_hardening) * p * p
    if metal_slices.size:
        # metal hardens the beam far more than tissue: dark streaks along metal paths
        p = np.array(p, copy=True) if p is sino else p
        p[:, :, metal_slices] -= np.float32(METAL_BEAM_HARDENING) * metal_sino * metal_sino
    primary = np.float32(n0) * np.exp(-p)
    diag: dict[str, float] = {}
    if settings.scatter > 0:
        scatter = np.float32(_SCATTER_YIELD * settings.scatter * n0) * _scatter_kernel(
            sino, px, phantom.spacing[0]
        )
    else:
        scatter = np.zeros_like(primary)
    centre = slice(proj.n_det // 2 - 3, proj.n_det // 2 + 4)
    mid = slice(int(0.2 * slices), max(int(0.5 * slices), int(0.2 * slices) + 1))
    diag["scatter_to_primary"] = float(
        np.median(scatter[:, centre, mid] / np.maximum(primary[:, centre, mid], 1e-6))
    )
    del sino
    grng = np.random.default_rng(settings.gain_seed)
    gain = 1.0 + grng.normal(0.0, settings.gain_sigma, proj.n_det)
    bad = grng.choice(proj.n_det, size=4, replace=False)
    gain[bad] += 4.0 * settings.gain_sigma * grng.choice([-1.0, 1.0], size=4)
    lam = (primary + scatter) * gain.astype(np.float32)[None, :, None]
    del primary, scatter
    counts = _noisy_counts(lam, settings.electronic_noise, rng)
    diag["min_counts"] = float(np.percentile(counts, 1.0))
    p_hat = -np.log(counts / np.float32(n0))
    del counts, lam

    # --- field-of-view truncation with cosine-tapered extrapolation
    t = np.abs(proj.detector_mm)
    outside = t > settings.fov_radius_mm
    if outside.any():
        inside_idx = np.nonzero(~outside)[0]
        lo, hi = int(inside_idx[0]), int(inside_idx[-1])
        left = np.arange(0, lo)
        right = np.arange(hi + 1, proj.n_det)
        edge_l = p_hat[:, lo : lo + 3, :].mean(axis=1, keepdims=True)
        edge_r = p_hat[:, hi - 2 : hi + 1, :].mean(axis=1, keepdims=True)
        p_hat[:, left, :] = edge_l * _taper((lo - left) * px, edge_l)
        p_hat[:, right, :] = edge_r * _taper((right - hi) * px, edge_r)

    # --- reconstruction, HU, cone-beam z blur, FOV mask
    rec = proj.fbp(p_hat, views, window="hann")
    hu = mu_to_hu(rec)
    del rec
    sigma_z = settings.z_blur_mm / phantom.spacing[0]
    if sigma_z > 0.05:
        hu = ndimage.gaussian_filter1d(hu, sigma_z, axis=0, mode="nearest")
    c = (np.arange(size) - (size - 1) / 2.0) * px
    fov = (c[None, :] ** 2 + c[:, None] ** 2) <= settings.fov_radius_mm**2
    hu[:, ~fov] = -1000.0
    np.clip(hu, -1024.0, 3071.0, out=hu)
    diag["n_motion_views"] = float(moved.sum())
    diag["n_swallow_views"] = float(swal.sum())
    return hu.astype(np.float32, copy=False), fov, diag


def _scatter_kernel(sino: npt.NDArray[np.float32], px: float, dz: float) -> npt.NDArray[np.float32]:
    """Single-scatter yield ``p e^-p`` blurred by the scatter kernel (60 mm across, 20 mm in z).

    The kernel is much wider than a bin, so the yield is averaged over blocks of about
    10 mm, blurred at that resolution, and interpolated back linearly (same result as the
    full-resolution blur to well under 1 %, an order of magnitude faster).
    """
    n_v, n_det, n_s = sino.shape
    f = max(1, int(10.0 / px))
    nb = -(-n_det // f)
    pad = nb * f - n_det
    src = sino * np.exp(-sino)
    if pad:
        src = np.concatenate([src, np.zeros((n_v, pad, n_s), np.float32)], axis=1)
    dec = src.reshape(n_v, nb, f, n_s).mean(axis=2)
    dec = ndimage.gaussian_filter1d(dec, 60.0 / (px * f), axis=1, mode="constant", truncate=3.0)
    dec = ndimage.gaussian_filter1d(dec, max(20.0 / dz, 0.3), axis=2, mode="nearest", truncate=3.0)
    if nb < 2:
        return np.broadcast_to(dec, (n_v, n_det, n_s)).astype(np.float32)
    up = upsample_linear(dec.astype(np.float32), nb * f, axis=1)
    return np.ascontiguousarray(up[:, :n_det, :], dtype=np.float32)


def _taper(
    dist_mm: npt.NDArray[np.float64], edge: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Cosine-squared decay over the water-equivalent half-chord ``edge / (2 mu_w)`` (20-150 mm)."""
    length = np.clip(np.maximum(edge, 0.0) / (2.0 * MU_WATER), 20.0, 150.0)  # (V, 1, S)
    frac = np.clip(dist_mm[None, :, None] / length, 0.0, 1.0)
    return (np.cos(frac * (np.pi / 2.0)) ** 2).astype(np.float32)


def _noisy_counts(
    lam: npt.NDArray[np.float32], sigma_e: float, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Poisson counts (Gaussian approximation above 50) plus electronic noise, >= 0.5."""
    lam = np.maximum(lam, 0.0)
    out = lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32)
    low = lam < 50.0
    if low.any():
        out[low] = rng.poisson(lam[low]).astype(np.float32)
    if sigma_e > 0:
        out += np.float32(sigma_e) * rng.standard_normal(lam.shape, dtype=np.float32)
    np.maximum(out, 0.5, out=out)
    return np.asarray(out, dtype=np.float32)
