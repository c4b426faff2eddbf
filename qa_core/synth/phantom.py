"""Procedural, seeded head-and-neck phantom in Hounsfield units, with a label map.

The phantom covers the anatomy from the top of the shoulders (slice 0, inferior) to the
skull base (last slice, superior). Every structure is an analytic shape (ellipses,
elliptical annuli, ellipsoids) whose parameters are functions of the normalised height
``zeta`` in [0, 1] (0 = most inferior, 1 = most superior), so a volume with any number of
slices samples the *same* anatomy: the slice count only changes the z sampling. The
in-plane grid is ``size x size`` pixels over a fixed field of :data:`GRID_MM` mm.

Patients vary (:func:`sample_anatomy`): lateral and antero-posterior size, neck length,
position (offset and yaw on the couch), fat thickness, tissue HU, how high the shoulders
ride (which decides how much of the larynx is projected through them), cervical lordosis,
missing teeth and metal fillings.

Coordinates: image columns run along +x (patient left, DICOM LPS), rows along +y
(posterior); anterior is at the top of the image (row 0), patient right on the left.

Labels (uint8, :data:`LABELS`)::

    0 background (outside the body)    9 parotid_right          17 vessel
    1 soft_tissue (muscle, tongue)    10 parotid_left
    2 fat                             11 submandibular_right
    3 airway (internal air)           12 submandibular_left
    4 bone (spine, hyoid, skull ...)  13 larynx (laryngeal soft tissue)
    5 spinal_canal (CSF and cord)     14 laryngeal_cartilage
    6 mandible (cortex and marrow)    15 thyroid
    7 teeth                           16 shoulder (shoulder soft tissue)
    8 metal (dental fillings)

HU values are the *true* material values used by the acquisition model; metal fillings
carry an attenuation-equivalent value far above the 12-bit CT range (the scanner output
is clipped later, as a real one is).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qa_core.categories import CATEGORIES
from qa_core.errors import SynthesisError

__all__ = [
    "CATEGORY_LABELS",
    "GRID_MM",
    "LABELS",
    "METAL_HU",
    "Filling",
    "PatientAnatomy",
    "Phantom",
    "build_phantom",
    "category_regions",
    "sample_anatomy",
    "upsample_linear",
]

#: In-plane extent of the square grid in mm (pixel size = GRID_MM / size).
GRID_MM: Final[float] = 280.0
#: Attenuation-equivalent HU of amalgam fillings (mu ~ 1.2 /mm at the effective energy).
METAL_HU: Final[float] = 60000.0

#: Label name -> integer value in the label map.
LABELS: Final[dict[str, int]] = {
    "background": 0,
    "soft_tissue": 1,
    "fat": 2,
    "airway": 3,
    "bone": 4,
    "spinal_canal": 5,
    "mandible": 6,
    "teeth": 7,
    "metal": 8,
    "parotid_right": 9,
    "parotid_left": 10,
    "submandibular_right": 11,
    "submandibular_left": 12,
    "larynx": 13,
    "laryngeal_cartilage": 14,
    "thyroid": 15,
    "shoulder": 16,
    "vessel": 17,
}

#: Labels whose union (plus a margin) is each category's region; ``overall`` = whole body.
CATEGORY_LABELS: Final[dict[str, tuple[int, ...]]] = {
    "parotid": (LABELS["parotid_right"], LABELS["parotid_left"]),
    "submandibular": (LABELS["submandibular_right"], LABELS["submandibular_left"]),
    "larynx": (LABELS["larynx"], LABELS["laryngeal_cartilage"]),
    "mandible": (LABELS["mandible"], LABELS["teeth"], LABELS["metal"]),
    "overall": tuple(v for v in LABELS.values() if v != 0),
}

B = npt.NDArray[np.bool_]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Filling:
    """One metal dental filling.

    Attributes
    ----------
    upper:
        True for the maxillary arch, False for the mandibular arch.
    tooth:
        Tooth position 0-13 along the arch (0 and 13 are the last molars).
    radius_mm:
        In-plane radius in mm.
    """

    upper: bool
    tooth: int
    radius_mm: float


@dataclass(frozen=True)
class PatientAnatomy:
    """The parameters that make one simulated patient.

    All lengths are in mm, positions in the patient frame before the couch offset.
    """

    lateral_scale: float = 1.0
    """Left-right size factor (0.85-1.15)."""
    ap_scale: float = 1.0
    """Antero-posterior size factor (0.85-1.15)."""
    length_mm: float = 160.0
    """Cranio-caudal extent covered by the scan, shoulders to skull base (145-175 mm)."""
    offset_x_mm: float = 0.0
    """Couch offset of the patient centre along +x (mm)."""
    offset_y_mm: float = 0.0
    """Couch offset of the patient centre along +y (mm)."""
    yaw_deg: float = 0.0
    """Head rotation about the z axis (degrees)."""
    fat_mm: float = 6.0
    """Subcutaneous fat thickness (mm)."""
    fat_hu: float = -100.0
    """Fat attenuation (HU)."""
    muscle_hu: float = 50.0
    """Muscle / soft tissue attenuation (HU)."""
    parotid_hu: float = 5.0
    """Parotid parenchyma (fatty gland; HU)."""
    submandibular_hu: float = 40.0
    """Submandibular parenchyma (HU)."""
    cartilage_hu: float = 250.0
    """Laryngeal cartilage, partly calcified (HU)."""
    cortical_hu: float = 1500.0
    """Mandibular cortex (HU)."""
    shoulder_top: float = 0.2
    """Height (normalised zeta) where the shoulders end; higher shoulders overlap the larynx."""
    shoulder_scale: float = 1.0
    """Size factor of the shoulders (0.8-1.2)."""
    lordosis_mm: float = 5.0
    """Anterior bowing of the cervical spine at mid-neck (mm)."""
    vertebra_phase: float = 0.0
    """Phase (0-1) of the vertebra/disc pattern along z."""
    missing_teeth: tuple[int, ...] = ()
    """Missing tooth positions; lower arch 0-13, upper arch 14-27."""
    fillings: tuple[Filling, ...] = ()
    """Metal fillings (none for most patients)."""
    texture_seed: int = 0
    """Seed of the smooth tissue texture field."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary (fillings as dictionaries)."""
        d = asdict(self)
        d["missing_teeth"] = list(self.missing_teeth)
        d["fillings"] = [asdict(f) for f in self.fillings]
        return d


@dataclass(frozen=True, eq=False)
class Phantom:
    """A voxelised phantom.

    Attributes
    ----------
    hu:
        float32 ``(slices, size, size)``, true HU (metal above 3071).
    labels:
        uint8 ``(slices, size, size)``, see :data:`LABELS`.
    spacing:
        ``(z, y, x)`` in mm.
    zeta:
        float64 ``(slices,)``, normalised height of each slice centre.
    anatomy:
        The parameters the phantom was built from.
    """

    hu: F32
    labels: npt.NDArray[np.uint8]
    spacing: tuple[float, float, float]
    zeta: npt.NDArray[np.float64]
    anatomy: PatientAnatomy = field(default_factory=PatientAnatomy)


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    """Draw one patient.

    Parameters
    ----------
    rng:
        Seeded generator; the same state gives the same patient.

    Returns
    -------
    PatientAnatomy
        Shoulder height ``U(0.04, 0.34)`` (the larynx spans zeta 0.12-0.42), fillings in
        about half of the patients (1-7 of radius 1.5-3.5 mm, 8 mm tall), 0-3 missing teeth, sizes and
        positions as documented on :class:`PatientAnatomy`.
    """
    if not isinstance(rng, np.random.Generator):
        raise SynthesisError(
            f"sample_anatomy needs a numpy Generator (np.random.default_rng(seed)); got {type(rng).__name__}"
        )
    n_fill = 0 if rng.random() < 0.45 else int(rng.integers(1, 8))
    teeth = rng.choice(28, size=n_fill, replace=False) if n_fill else np.array([], dtype=int)
    fillings = tuple(
        Filling(upper=bool(t >= 14), tooth=int(t % 14), radius_mm=float(rng.uniform(1.5, 3.5)))
        for t in sorted(int(v) for v in teeth)
    )
    filled = {int(t) for t in teeth}
    candidates = [t for t in range(28) if t not in filled]
    n_missing = int(rng.integers(0, 4))
    missing = tuple(sorted(int(t) for t in rng.choice(candidates, size=n_missing, replace=False)))
    return PatientAnatomy(
        lateral_scale=float(rng.uniform(0.87, 1.13)),
        ap_scale=float(rng.uniform(0.87, 1.13)),
        length_mm=float(rng.uniform(145.0, 175.0)),
        offset_x_mm=float(rng.normal(0.0, 5.0)),
        offset_y_mm=float(rng.normal(0.0, 6.0)),
        yaw_deg=float(rng.normal(0.0, 3.0)),
        fat_mm=float(rng.uniform(3.0, 11.0)),
        fat_hu=float(rng.uniform(-115.0, -85.0)),
        muscle_hu=float(rng.uniform(42.0, 58.0)),
        parotid_hu=float(rng.uniform(-15.0, 20.0)),
        submandibular_hu=float(rng.uniform(30.0, 50.0)),
        cartilage_hu=float(rng.uniform(150.0, 500.0)),
        cortical_hu=float(rng.uniform(1300.0, 1750.0)),
        shoulder_top=float(rng.uniform(0.04, 0.34)),
        shoulder_scale=float(rng.uniform(0.85, 1.2)),
        lordosis_mm=float(rng.uniform(2.0, 9.0)),
        vertebra_phase=float(rng.random()),
        missing_teeth=missing,
        fillings=fillings,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# --------------------------------------------------------------------------- helpers


class _Canvas:
    """Mutable HU and label volumes plus the patient-frame coordinates of every pixel."""

    def __init__(self, anatomy: PatientAnatomy, slices: int, size: int) -> None:
        self.a = anatomy
        self.px = GRID_MM / size
        self.zeta = (np.arange(slices, dtype=np.float64) + 0.5) / slices
        centre = (size - 1) / 2.0
        c = (np.arange(size, dtype=np.float64) - centre) * self.px
        x = c[None, :] - anatomy.offset_x_mm
        y = c[:, None] - anatomy.offset_y_mm
        yaw = math.radians(anatomy.yaw_deg)
        # Patient frame, scaled to the reference patient (so shapes are written once).
        self.x = ((math.cos(yaw) * x + math.sin(yaw) * y) / anatomy.lateral_scale).astype(
            np.float32
        )
        self.y = ((-math.sin(yaw) * x + math.cos(yaw) * y) / anatomy.ap_scale).astype(np.float32)
        self.hu = np.full((slices, size, size), -1000.0, dtype=np.float32)
        self.lab = np.zeros((slices, size, size), dtype=np.uint8)

    def zrange(self, z0: float, z1: float) -> slice:
        idx = np.nonzero((self.zeta >= z0) & (self.zeta <= z1))[0]
        if idx.size == 0:
            return slice(0, 0)
        return slice(int(idx[0]), int(idx[-1]) + 1)

    def zcol(self, zs: slice) -> npt.NDArray[np.float64]:
        return self.zeta[zs][:, None, None]

    def ellipse(
        self,
        zs: slice,
        cx: float | npt.NDArray[np.float64],
        cy: float | npt.NDArray[np.float64],
        ax: float | npt.NDArray[np.float64],
        by: float | npt.NDArray[np.float64],
        angle_deg: float = 0.0,
    ) -> B:
        """Boolean (k, N, N) mask of an ellipse (parameters scalars or (k,1,1) arrays)."""
        x = self.x[None] - np.asarray(cx, dtype=np.float32)
        y = self.y[None] - np.asarray(cy, dtype=np.float32)
        if angle_deg:
            t = math.radians(angle_deg)
            x, y = math.cos(t) * x + math.sin(t) * y, -math.sin(t) * x + math.cos(t) * y
        axa = np.maximum(np.asarray(ax, dtype=np.float32), 1e-3)
        bya = np.maximum(np.asarray(by, dtype=np.float32), 1e-3)
        k = zs.stop - zs.start
        out: B = np.broadcast_to((x / axa) ** 2 + (y / bya) ** 2 <= 1.0, (k, *self.x.shape))
        return out

    def paint(self, zs: slice, mask: B, hu: float | F32, label: int) -> None:
        if zs.stop <= zs.start:
            return
        sub_hu = self.hu[zs]
        sub_lab = self.lab[zs]
        if isinstance(hu, np.ndarray):
            sub_hu[mask] = np.broadcast_to(hu, mask.shape)[mask]
        else:
            sub_hu[mask] = hu
        sub_lab[mask] = label


def _interp(
    zeta: npt.NDArray[np.float64], knots: tuple[float, ...], values: tuple[float, ...]
) -> npt.NDArray[np.float64]:
    return np.interp(zeta, knots, values)


def _profile(zcol: npt.NDArray[np.float64], zc: float, hz: float) -> npt.NDArray[np.float64]:
    """Ellipsoid cross-section factor sqrt(1 - ((z - zc) / hz)^2), 0 outside."""
    r = 1.0 - ((zcol - zc) / hz) ** 2
    return np.sqrt(np.clip(r, 0.0, None))


def _texture(anatomy: PatientAnatomy, zeta: npt.NDArray[np.float64], size: int) -> F32:
    """Smooth unit-variance texture, fixed in patient space (independent of the sampling).

    A 40 x 64 x 64 lattice of Gaussian noise (about 4.4 mm in-plane, 4 mm in z) smoothed
    with sigma = 1 lattice cell, interpolated linearly to the slice positions and the grid.
    """
    rng = np.random.default_rng(anatomy.texture_seed)
    lat = ndimage.gaussian_filter(rng.standard_normal((40, 64, 64)), 1.0, mode="wrap")
    lat /= lat.std()
    zpos = zeta * (lat.shape[0] - 1)
    z0 = np.clip(np.floor(zpos).astype(int), 0, lat.shape[0] - 2)
    fz = (zpos - z0)[:, None, None]
    planes = (1 - fz) * lat[z0] + fz * lat[z0 + 1]
    out = upsample_linear(upsample_linear(planes.astype(np.float32), size, axis=1), size, axis=2)
    return np.asarray(out, dtype=np.float32)


def upsample_linear(a: npt.NDArray[np.float32], n_out: int, axis: int) -> npt.NDArray[np.float32]:
    """Linear interpolation of ``a`` along ``axis`` to ``n_out`` samples (pixel centres aligned).

    Element-wise (no BLAS call), so it stays fast when many processes share few cores.

    Parameters
    ----------
    a:
        float32 array with at least 2 samples along ``axis``.
    n_out:
        Output samples along ``axis``.
    axis:
        Axis to resample.

    Returns
    -------
    numpy.ndarray
        float32, ``a.shape`` with ``n_out`` along ``axis``; sample ``i`` sits at input
        coordinate ``(i + 0.5) * n_in / n_out - 0.5`` (clamped to the edge samples).
    """
    n_in = a.shape[axis]
    if n_in < 2 or n_out < 1:
        raise SynthesisError(
            f"upsample_linear needs >= 2 input samples and >= 1 output sample along axis {axis}; "
            f"got {n_in} -> {n_out}"
        )
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1.0)
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    shape = [1] * a.ndim
    shape[axis] = n_out
    frac = (pos - lo).astype(np.float32).reshape(shape)
    lo_v = np.take(a, lo, axis=axis)
    hi_v = np.take(a, lo + 1, axis=axis)
    return np.asarray(lo_v + frac * (hi_v - lo_v), dtype=np.float32)


# --------------------------------------------------------------------------- anatomy


def build_phantom(anatomy: PatientAnatomy, *, slices: int, size: int) -> Phantom:
    """Voxelise a patient.

    Parameters
    ----------
    anatomy:
        The patient (see :func:`sample_anatomy`).
    slices:
        Number of axial slices (>= 1); slice ``k`` is centred at
        ``zeta = (k + 0.5) / slices`` of the anatomy, index 0 most inferior.
    size:
        Pixels per side of the square grid over :data:`GRID_MM` mm (>= 16).

    Returns
    -------
    Phantom
        True HU (float32) and labels (uint8), both ``(slices, size, size)``, spacing
        ``(length_mm / slices, GRID_MM / size, GRID_MM / size)`` mm.
    """
    if slices < 1 or size < 16:
        raise SynthesisError(
            f"phantom needs slices >= 1 and size >= 16; got slices={slices}, size={size}"
        )
    a = anatomy
    cv = _Canvas(a, slices, size)
    lab = LABELS
    tex = _texture(a, cv.zeta, size)
    z_all = slice(0, slices)
    zc = cv.zcol(z_all)

    # ---- body outline (neck -> lower face -> head) and shoulders
    bx = _interp(zc, (0.0, 0.25, 0.45, 0.55, 0.65, 0.8, 1.0), (64, 58, 60, 66, 71, 74, 74))
    by = _interp(zc, (0.0, 0.25, 0.45, 0.55, 0.65, 0.8, 1.0), (66, 60, 68, 84, 93, 95, 95))
    bcy = _interp(zc, (0.0, 0.25, 0.45, 0.55, 0.65, 0.8, 1.0), (8, 8, 2, -8, -8, -5, -2))
    body = cv.ellipse(z_all, 0.0, bcy, bx, by)
    inner = cv.ellipse(z_all, 0.0, bcy, bx - a.fat_mm, by - a.fat_mm)
    cv.paint(z_all, body, a.fat_hu, lab["fat"])
    cv.paint(z_all, inner, a.muscle_hu, lab["soft_tissue"])

    zs = cv.zrange(0.0, a.shoulder_top)
    if zs.stop > zs.start:
        g = np.sqrt(np.clip((a.shoulder_top - cv.zcol(zs)) / a.shoulder_top, 0.0, 1.0))
        s = a.shoulder_scale
        # trapezius bridge joining the shoulders to the back of the neck
        bridge_a = (62.0 + 52.0 * g) * s
        bridge = cv.ellipse(zs, 0.0, 26.0, bridge_a, 20.0 + 12.0 * g)
        bridge_in = cv.ellipse(zs, 0.0, 26.0, bridge_a - a.fat_mm, 20.0 + 12.0 * g - a.fat_mm)
        cv.paint(zs, bridge & (cv.lab[zs] == 0), a.fat_hu, lab["fat"])
        cv.paint(zs, bridge_in & (cv.lab[zs] != lab["soft_tissue"]), a.muscle_hu, lab["shoulder"])
        for side in (-1.0, 1.0):
            cxs = side * (62.0 + 52.0 * g) * s
            outer = cv.ellipse(zs, cxs, 18.0, (22.0 + 60.0 * g) * s, (30.0 + 26.0 * g) * s)
            core = cv.ellipse(
                zs, cxs, 18.0, (22.0 + 60.0 * g) * s - a.fat_mm, (30.0 + 26.0 * g) * s - a.fat_mm
            )
            cv.paint(zs, outer & (cv.lab[zs] == 0), a.fat_hu, lab["fat"])
            cv.paint(zs, core & (cv.lab[zs] != lab["soft_tissue"]), a.muscle_hu, lab["shoulder"])
            # clavicle (anterior, sloping) and humeral head / scapula (lateral, posterior)
            clav = cv.ellipse(
                zs, side * (58.0 + 40.0 * g) * s, -16.0, 10.0 + 32.0 * g, 6.0, side * 12.0
            )
            cv.paint(zs, clav & (g > 0.25), 800.0, lab["bone"])
            hum = cv.ellipse(zs, side * 122.0 * s, 26.0, 22.0 * g, 24.0 * g)
            cv.paint(zs, hum & (g > 0.45), 550.0, lab["bone"])
            scap = cv.ellipse(zs, side * 92.0 * s, 52.0, 28.0 * g, 5.0, side * -20.0)
            cv.paint(zs, scap & (g > 0.35), 650.0, lab["bone"])

    # ---- neck fat compartments, vessels, sternocleidomastoid
    zs = cv.zrange(0.04, 0.55)
    for side in (-1.0, 1.0):
        cv.paint(zs, cv.ellipse(zs, side * 40.0, 16.0, 15.0, 13.0), a.fat_hu + 10.0, lab["fat"])
        cv.paint(zs, cv.ellipse(zs, side * 27.0, -6.0, 10.0, 10.0), a.fat_hu + 10.0, lab["fat"])
        cv.paint(zs, cv.ellipse(zs, side * 24.0, -8.0, 3.5, 3.5), 40.0, lab["vessel"])
        cv.paint(zs, cv.ellipse(zs, side * 31.0, -4.0, 5.0, 4.5), 40.0, lab["vessel"])
    zs = cv.zrange(0.03, 0.82)
    zcs = cv.zcol(zs)
    for side in (-1.0, 1.0):
        scx = side * _interp(zcs, (0.0, 0.82), (22.0, 52.0))
        scy = _interp(zcs, (0.0, 0.82), (-34.0, 30.0))
        cv.paint(
            zs,
            cv.ellipse(zs, scx, scy, 7.0, 12.0, side * -35.0),
            a.muscle_hu + 3.0,
            lab["soft_tissue"],
        )

    # ---- cervical spine: vertebral bodies with discs, canal, posterior elements
    zs = cv.zrange(0.0, 0.97)
    zcs = cv.zcol(zs)
    vy = 30.0 - a.lordosis_mm * np.sin(np.pi * zcs)
    zmm = zcs * a.length_mm
    disc = (((zmm / 18.0) + a.vertebra_phase) % 1.0) < 0.2
    vb = cv.ellipse(zs, 0.0, vy, 13.0, 10.0)
    vb_in = cv.ellipse(zs, 0.0, vy, 11.3, 8.3)
    cv.paint(zs, vb & ~disc, 800.0, lab["bone"])
    cv.paint(zs, vb_in & ~disc, 240.0, lab["bone"])
    cv.paint(zs, vb & disc, 85.0, lab["soft_tissue"])
    arch = cv.ellipse(zs, 0.0, vy + 21.0, 12.5, 12.0) & ~cv.ellipse(zs, 0.0, vy + 10.0, 13.0, 8.0)
    cv.paint(zs, arch & ~disc, 650.0, lab["bone"])
    cv.paint(zs, cv.ellipse(zs, 0.0, vy + 36.0, 3.0, 9.0) & ~disc, 650.0, lab["bone"])
    cv.paint(zs, cv.ellipse(zs, 0.0, vy + 20.0, 8.5, 8.0), 12.0, lab["spinal_canal"])
    cv.paint(zs, cv.ellipse(zs, 0.0, vy + 20.0, 5.5, 5.0), 35.0, lab["spinal_canal"])

    # ---- thyroid gland and trachea
    zs = cv.zrange(0.0, 0.14)
    prof = np.clip(1.0 - np.abs(cv.zcol(zs) - 0.07) / 0.09, 0.2, 1.0)
    for side in (-1.0, 1.0):
        cv.paint(
            zs, cv.ellipse(zs, side * 15.0, -30.0, 8.0 * prof, 12.0 * prof), 95.0, lab["thyroid"]
        )
    cv.paint(zs, cv.ellipse(zs, 0.0, -28.0, 10.0, 10.0), 140.0, lab["soft_tissue"])
    cv.paint(zs, cv.ellipse(zs, 0.0, -28.0, 7.5, 7.5), -1000.0, lab["airway"])

    # ---- larynx: soft tissue, cricoid and thyroid cartilage, paraglottic fat, airway
    zs = cv.zrange(0.12, 0.42)
    zcs = cv.zcol(zs)
    cv.paint(zs, cv.ellipse(zs, 0.0, -24.0, 19.0, 18.0), 35.0, lab["larynx"])
    zsc = cv.zrange(0.13, 0.24)
    cric = cv.ellipse(zsc, 0.0, -24.0, 14.0, 14.0) & ~cv.ellipse(zsc, 0.0, -25.5, 11.0, 11.0)
    cv.paint(zsc, cric, a.cartilage_hu, lab["laryngeal_cartilage"])
    zst = cv.zrange(0.25, 0.42)
    thy = cv.ellipse(zst, 0.0, -22.0, 19.0, 19.0) & ~cv.ellipse(zst, 0.0, -22.0, 16.0, 16.0)
    thy &= cv.y[None] < -24.0
    cv.paint(zst, thy, a.cartilage_hu, lab["laryngeal_cartilage"])
    zsp = cv.zrange(0.28, 0.40)
    for side in (-1.0, 1.0):
        cv.paint(zsp, cv.ellipse(zsp, side * 9.0, -25.0, 3.5, 6.5), a.fat_hu + 20.0, lab["larynx"])
    glottis = 1.0 - 0.6 * np.exp(-(((zcs - 0.27) / 0.025) ** 2))
    cv.paint(zs, cv.ellipse(zs, 0.0, -25.0, 6.5 * glottis, 9.5), -1000.0, lab["airway"])
    # epiglottis and hyoid
    zse = cv.zrange(0.40, 0.49)
    epi = cv.ellipse(zse, 0.0, -4.0, 13.0, 13.0) & ~cv.ellipse(zse, 0.0, -3.0, 11.0, 11.0)
    cv.paint(zse, epi & (cv.y[None] < -10.0), 120.0, lab["laryngeal_cartilage"])
    zsh = cv.zrange(0.43, 0.465)
    hyo = cv.ellipse(zsh, 0.0, -18.0, 22.0, 17.0) & ~cv.ellipse(zsh, 0.0, -18.0, 19.0, 14.0)
    cv.paint(zsh, hyo & (cv.y[None] < -12.0), 600.0, lab["bone"])
    # hypopharynx / piriform sinuses, oro- and nasopharynx
    zsp = cv.zrange(0.33, 0.44)
    for side in (-1.0, 1.0):
        cv.paint(zsp, cv.ellipse(zsp, side * 12.0, -10.0, 3.5, 4.0), -1000.0, lab["airway"])
    zs = cv.zrange(0.42, 0.78)
    cv.paint(zs, cv.ellipse(zs, 0.0, -1.0, 15.0, 6.0), -1000.0, lab["airway"])
    zs = cv.zrange(0.78, 0.95)
    cv.paint(zs, cv.ellipse(zs, 0.0, -8.0, 13.0, 8.0), -1000.0, lab["airway"])

    # ---- submandibular glands in their fat envelope
    zs = cv.zrange(0.43, 0.61)
    prof = _profile(cv.zcol(zs), 0.52, 0.09)
    for side, name in ((-1.0, "submandibular_right"), (1.0, "submandibular_left")):
        cx, cy = side * 36.0, -30.0
        cv.paint(
            zs,
            cv.ellipse(zs, cx, cy, 13.0 * prof + 5.0, 10.0 * prof + 5.0) & (prof > 0.15),
            a.fat_hu,
            lab["fat"],
        )
        gland = cv.ellipse(zs, cx, cy, 13.0 * prof, 10.0 * prof)
        cv.paint(zs, gland, a.submandibular_hu + 6.0 * tex[zs], lab[name])

    # ---- mandible: arch (body) and rami, cortical shell and marrow
    zs = cv.zrange(0.52, 0.665)
    ant = cv.y[None] < 12.0
    outer = cv.ellipse(zs, 0.0, -4.0, 45.0, 62.0)
    inner = cv.ellipse(zs, 0.0, -4.0, 35.0, 52.0)
    cv.paint(zs, outer & ~inner & ant, a.cortical_hu, lab["mandible"])
    marrow = cv.ellipse(zs, 0.0, -4.0, 43.2, 60.2) & ~cv.ellipse(zs, 0.0, -4.0, 36.8, 53.8)
    cv.paint(zs, marrow & (cv.y[None] < 10.0), 350.0, lab["mandible"])
    zs = cv.zrange(0.60, 0.90)
    for side in (-1.0, 1.0):
        cv.paint(
            zs,
            cv.ellipse(zs, side * 45.0, 16.0, 5.0, 16.0, side * 12.0),
            a.cortical_hu,
            lab["mandible"],
        )
        cv.paint(
            zs, cv.ellipse(zs, side * 45.0, 16.0, 2.5, 13.0, side * 12.0), 350.0, lab["mandible"]
        )

    # ---- maxilla, hard palate, maxillary sinuses, skull base, mastoids
    zs = cv.zrange(0.745, 0.80)
    mx = cv.ellipse(zs, 0.0, -6.0, 43.0, 60.0) & ~cv.ellipse(zs, 0.0, -6.0, 35.0, 52.0)
    cv.paint(zs, mx & (cv.y[None] < 8.0), 900.0, lab["bone"])
    zs = cv.zrange(0.765, 0.785)
    cv.paint(zs, cv.ellipse(zs, 0.0, -28.0, 30.0, 32.0), 750.0, lab["bone"])
    zs = cv.zrange(0.80, 1.0)
    for side in (-1.0, 1.0):
        cv.paint(zs, cv.ellipse(zs, side * 28.0, -48.0, 17.0, 19.0), 700.0, lab["bone"])
        cv.paint(zs, cv.ellipse(zs, side * 28.0, -48.0, 15.0, 17.0), -1000.0, lab["airway"])
        cv.paint(zs, cv.ellipse(zs, side * 7.0, -62.0, 4.0, 22.0), -1000.0, lab["airway"])
    zs = cv.zrange(0.86, 1.0)
    for side in (-1.0, 1.0):
        cv.paint(zs, cv.ellipse(zs, side * 58.0, 42.0, 10.0, 13.0), 650.0, lab["bone"])
        cv.paint(zs, cv.ellipse(zs, side * 58.0, 42.0, 5.0, 7.0), -600.0, lab["bone"])
    zs = cv.zrange(0.91, 1.0)
    occ = cv.ellipse(zs, 0.0, 12.0, 66.0, 74.0) & ~cv.ellipse(zs, 0.0, 12.0, 60.0, 68.0)
    cv.paint(zs, occ & (cv.y[None] > 40.0), 1200.0, lab["bone"])
    cv.paint(zs, cv.ellipse(zs, 0.0, 14.0, 9.0, 14.0), 900.0, lab["bone"])

    # ---- parotid glands: superficial and deep lobe, lobulated by the texture
    zs = cv.zrange(0.61, 0.96)
    zcs = cv.zcol(zs)
    prof = _profile(zcs, 0.79, 0.17)
    prof_d = _profile(zcs, 0.80, 0.10)
    for side, name in ((-1.0, "parotid_right"), (1.0, "parotid_left")):
        lobes: list[tuple[float, float, float, float, npt.NDArray[np.float64]]] = [
            (side * 58.0, 12.0, 11.0, 21.0, prof),  # superficial lobe
            (side * 40.0, 10.0, 7.0, 9.0, prof_d),  # deep lobe
        ]
        for lx, ly, lax, lby, pr in lobes:
            x = (cv.x[None] - lx) / np.maximum(lax * pr, 1e-3)
            y = (cv.y[None] - ly) / np.maximum(lby * pr, 1e-3)
            gland = (x**2 + y**2 <= 1.0 + 0.22 * tex[zs]) & (pr > 0.1)
            cv.paint(zs, gland, a.parotid_hu + 12.0 * tex[zs], lab[name])

    # ---- teeth (lower and upper arch) and metal fillings
    _paint_teeth(cv, a)

    # ---- soft-tissue texture (fixed in patient space)
    soft = (cv.hu > -500.0) & (cv.hu < 150.0) & (cv.lab != lab["spinal_canal"])
    cv.hu[soft] += 5.0 * tex[soft]
    dz = a.length_mm / slices
    return Phantom(
        hu=cv.hu,
        labels=cv.lab,
        spacing=(dz, cv.px, cv.px),
        zeta=cv.zeta,
        anatomy=a,
    )


def _tooth_centre(k: int, upper: bool) -> tuple[float, float, float]:
    """(x, y, radius) in mm of tooth ``k`` (0-13) on the reference arch."""
    phi = np.pi * (0.1 + 0.8 * k / 13.0)
    ax, by, cy = (39.0, 56.0, -4.0) if not upper else (39.5, 56.0, -6.0)
    x = ax * math.cos(phi)
    y = cy - by * math.sin(phi)
    radius = 5.0 if (k <= 2 or k >= 11) else (3.8 if (k <= 4 or k >= 9) else 2.8)
    return float(x), float(y), radius


def _paint_teeth(cv: _Canvas, a: PatientAnatomy) -> None:
    lab = LABELS
    for upper, (z0, z1) in ((False, (0.64, 0.705)), (True, (0.705, 0.77))):
        zs = cv.zrange(z0, z1)
        if zs.stop <= zs.start:
            continue
        for k in range(14):
            if (k + 14 * upper) in a.missing_teeth:
                continue
            x, y, r = _tooth_centre(k, upper)
            cv.paint(zs, cv.ellipse(zs, x, y, r, r * 0.9), 2200.0, lab["teeth"])
    for f in a.fillings:
        z0, z1 = (0.705, 0.755) if f.upper else (0.655, 0.705)
        zs = cv.zrange(z0, z1)
        if zs.stop <= zs.start:
            continue
        x, y, _ = _tooth_centre(f.tooth, f.upper)
        cv.paint(zs, cv.ellipse(zs, x, y, f.radius_mm, f.radius_mm), METAL_HU, lab["metal"])


# --------------------------------------------------------------------------- regions


def category_regions(
    labels: npt.NDArray[np.uint8],
    spacing: tuple[float, float, float],
    *,
    margin_mm: float = 10.0,
) -> dict[str, B]:
    """Boolean region of every category: its organ(s) plus a margin of surroundings.

    Parameters
    ----------
    labels:
        uint8 ``(slices, rows, cols)`` label map (:data:`LABELS`).
    spacing:
        ``(z, y, x)`` voxel spacing in mm.
    margin_mm:
        Surroundings included around the organ, in mm (Euclidean, anisotropic spacing
        honoured). ``overall`` is the whole body (no margin needed).

    Returns
    -------
    dict
        Category (in :data:`~qa_core.categories.CATEGORIES` order) -> bool array shaped like
        ``labels``, restricted to the body (label > 0). A category whose organ is absent
        from the volume gets an all-False mask.
    """
    if labels.ndim != 3:
        raise SynthesisError(
            f"label map must be 3-D (slices, rows, cols); got shape {labels.shape}"
        )
    if len(spacing) != 3 or min(spacing) <= 0:
        raise SynthesisError(f"spacing must be three positive mm values (z, y, x); got {spacing}")
    if not (margin_mm >= 0 and math.isfinite(margin_mm)):
        raise SynthesisError(f"margin_mm must be a finite value >= 0; got {margin_mm}")
    body = labels > 0
    out: dict[str, B] = {}
    for cat in CATEGORIES:
        if cat == "overall":
            out[cat] = body.copy()
            continue
        organ = np.isin(labels, CATEGORY_LABELS[cat])
        region = np.zeros_like(body)
        if organ.any():
            pad = [math.ceil(margin_mm / s) + 1 for s in spacing]
            nz = np.nonzero(organ)
            box = tuple(
                slice(max(int(ix.min()) - p, 0), min(int(ix.max()) + p + 1, n))
                for ix, p, n in zip(nz, pad, labels.shape, strict=True)
            )
            dist = ndimage.distance_transform_edt(~organ[box], sampling=spacing)
            region[box] = np.asarray(dist) <= margin_mm
        out[cat] = region & body
    return out
