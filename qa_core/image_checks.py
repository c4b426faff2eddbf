"""Image-level sanity checks of a CBCT volume, independent of the ratings and of the model.

Each check is a pure function of the loaded :class:`~qa_core.volume.Volume` (and, for the
left-right check, a reference body mask from the structure set). It measures one physical
quantity, compares it with a fixed limit set well outside the range of normal head-and-neck
CBCT (measured on simulated cohorts; see ``benchmarks/bench_alerts.py``), and returns an
:class:`ImageCheck` whose ``reason`` is one plain sentence a QA physicist can act on.

=====================  ======================================================================
check                  what it measures (flagged when)
=====================  ======================================================================
``hu_calibration``     median HU of the air around the patient (expected -1000) and of the
                       soft tissue inside (about -100 to +60 on CBCT): either off the limits
``field_of_view``      the reconstructed field of view (radius of the region the scanner
                       filled with its padding value) is too small to hold a head, or the
                       neck and head are cut by its edge
``head_feet``          where the dense bone (teeth, mandible, > 1200 HU) sits along the slice
                       axis: in a head-and-neck scan stored inferior-first it sits in the
                       upper part; in the lower part the slices are stored head-first
``left_right``         with a reference body mask from the structure set (``External``): the
                       image's body overlaps the reference better when mirrored left-right
``body_part``          a trunk: the patient spans the field of view from side to side in most
                       slices up to the top one, or lungs / bowel gas fill the body
``metal``              volume of voxels at the top of the 12-bit range (>= 3000 HU, metal)
``motion``             ghosts of the body outline: smoothed intensity in the band 5-20 mm
                       outside the body surface, where a still patient leaves air
=====================  ======================================================================

Conventions: ``Volume.hu`` is ``(slices, rows, cols)``, slice 0 the most inferior *by its
position*; rows run posterior, columns run to the patient's left (DICOM LPS with the
standard axial orientation). Nothing here reads XNAT, files or the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qa_core.errors import CbctQaError
from qa_core.volume import Volume

__all__ = [
    "CHECK_NAMES",
    "LIMITS",
    "ImageCheck",
    "ImageCheckReport",
    "ImageMeasurements",
    "check_body_part",
    "check_field_of_view",
    "check_head_feet",
    "check_hu_calibration",
    "check_image",
    "check_left_right",
    "check_metal",
    "check_motion",
    "measure_image",
]

#: Names of the checks, in the order they run.
CHECK_NAMES: Final[tuple[str, ...]] = (
    "hu_calibration",
    "field_of_view",
    "head_feet",
    "left_right",
    "body_part",
    "metal",
    "motion",
)

#: Limits of every check (units in the key). Set outside the range measured on 64 normal
#: simulated sessions with a margin (see the module notes and ``benchmarks/bench_alerts.py``).
LIMITS: Final[dict[str, float]] = {
    "air_hu_max_deviation": 20.0,
    "tissue_hu_low": -150.0,
    "tissue_hu_high": 150.0,
    "fov_radius_mm_min": 100.0,
    "fov_cut_rim_share": 0.35,
    "fov_cut_slice_share": 0.5,
    "dense_bone_z_min": 0.45,
    "left_right_margin": 0.01,
    "lung_share_max": 0.12,
    "trunk_slice_share": 0.8,
    "metal_cm3_max": 8.0,
    "ghost_hu_max": -850.0,
}

F32 = npt.NDArray[np.float32]
B = npt.NDArray[np.bool_]
_SLICE = np.zeros((3, 3, 3), dtype=bool)
_SLICE[1] = ndimage.generate_binary_structure(2, 1)


class ImageCheckError(CbctQaError, ValueError):
    """A check cannot run on this input (wrong shape of a reference mask, ...)."""


@dataclass(frozen=True)
class ImageCheck:
    """The result of one image check.

    Attributes
    ----------
    name:
        One of :data:`CHECK_NAMES`.
    assessed:
        False when the check could not be made (no reference, nothing to measure); then
        ``flagged`` is False and ``note`` says why.
    flagged:
        True when the measurement is beyond the limit.
    value:
        The main measurement (unit in ``unit``); NaN when not assessed.
    unit:
        Unit of ``value`` (``"HU"``, ``"mm"``, ``"cm3"``, ``"fraction"``).
    limit:
        The limit in words, e.g. ``"< 100 mm"`` (flagged side).
    reason:
        One plain sentence when flagged, else ``""``.
    note:
        Why not assessed, or a remark; ``""`` otherwise.
    details:
        Further measurements (JSON-ready floats).
    """

    name: str
    assessed: bool
    flagged: bool
    value: float
    unit: str
    limit: str
    reason: str = ""
    note: str = ""
    details: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping (NaN as ``None``)."""
        return {
            "name": self.name,
            "assessed": self.assessed,
            "flagged": self.flagged,
            "value": None if not math.isfinite(self.value) else float(self.value),
            "unit": self.unit,
            "limit": self.limit,
            "reason": self.reason,
            "note": self.note,
            "details": {
                k: (None if not math.isfinite(v) else float(v)) for k, v in self.details.items()
            },
        }


@dataclass(frozen=True)
class ImageCheckReport:
    """Every image check of one volume.

    Attributes
    ----------
    checks:
        One :class:`ImageCheck` per check run, in :data:`CHECK_NAMES` order.
    """

    checks: tuple[ImageCheck, ...]

    @property
    def flagged(self) -> tuple[ImageCheck, ...]:
        """The checks that fired."""
        return tuple(c for c in self.checks if c.flagged)

    @property
    def reasons(self) -> tuple[str, ...]:
        """The plain reasons of the checks that fired."""
        return tuple(c.reason for c in self.flagged)

    def get(self, name: str) -> ImageCheck | None:
        """The check called ``name``, or ``None`` when it did not run."""
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, object]:
        """``{"flagged": [names], "checks": {name: check}}``."""
        return {
            "flagged": [c.name for c in self.flagged],
            "checks": {c.name: c.to_dict() for c in self.checks},
        }


@dataclass(frozen=True, eq=False)
class ImageMeasurements:
    """Masks and numbers shared by the checks (computed once by :func:`measure_image`).

    Attributes
    ----------
    hu:
        The volume's HU, ``(slices, rows, cols)`` float32.
    pixel_mm, slice_mm:
        In-plane pixel size and slice spacing (mm).
    padding_hu:
        The value the scanner wrote outside its field of view (from the corners), or NaN
        when the corners are not constant (no padding: the field of view is the grid).
    fov:
        ``(rows, cols)`` bool, inside the reconstructed field of view.
    fov_radius_mm:
        Radius of a circle with the field of view's area.
    tissue:
        ``(slices, rows, cols)`` bool, HU > -400 inside the field of view.
    body:
        ``(slices, rows, cols)`` bool, the patient: ``tissue`` with the holes of each slice
        filled (airway, lungs, bowel gas count as inside).
    """

    hu: F32
    pixel_mm: float
    slice_mm: float
    padding_hu: float
    fov: B
    fov_radius_mm: float
    tissue: B
    body: B


def measure_image(volume: Volume) -> ImageMeasurements:
    """Compute the masks the checks share.

    Raises
    ------
    ImageCheckError
        Fewer than 4 slices or slices smaller than 32 x 32 pixels.
    """
    hu = np.asarray(volume.hu, dtype=np.float32)
    n, rows, cols = hu.shape
    if n < 4 or rows < 32 or cols < 32:
        raise ImageCheckError(
            f"image checks need at least 4 slices of 32 x 32 pixels; series {volume.series_uid or '?'} "
            f"has shape {hu.shape}"
        )
    pixel_mm = float(math.sqrt(volume.spacing[1] * volume.spacing[2]))
    corners = np.concatenate([hu[:, 0, 0], hu[:, 0, -1], hu[:, -1, 0], hu[:, -1, -1]])
    if float(np.ptp(corners)) == 0.0:
        padding = float(corners[0])
        fov = ~np.all(hu == np.float32(padding), axis=0)
        # Keep the connected region around the centre (air clipped at the padding value
        # inside the field of view would otherwise punch holes into it).
        fov = ndimage.binary_fill_holes(fov)
    else:
        padding = math.nan
        fov = np.ones((rows, cols), dtype=bool)
    fov_radius = float(math.sqrt(float(fov.sum()) / math.pi) * pixel_mm)
    tissue = (hu > -400.0) & fov[None]
    tissue = ndimage.binary_opening(tissue, structure=_SLICE)
    body = np.empty_like(tissue)
    for k in range(n):
        body[k] = ndimage.binary_fill_holes(tissue[k])
    return ImageMeasurements(
        hu=hu,
        pixel_mm=pixel_mm,
        slice_mm=float(volume.spacing[0]),
        padding_hu=padding,
        fov=np.asarray(fov, dtype=bool),
        fov_radius_mm=fov_radius,
        tissue=np.asarray(tissue, dtype=bool),
        body=body,
    )


def _not_assessed(name: str, unit: str, limit: str, note: str) -> ImageCheck:
    return ImageCheck(name, False, False, math.nan, unit, limit, note=note)


def _rim(m: ImageMeasurements, width_px: int = 3) -> B:
    inner = ndimage.binary_erosion(m.fov, iterations=width_px, border_value=0)
    return np.asarray(m.fov & ~inner, dtype=bool)


def _rim_share(m: ImageMeasurements) -> npt.NDArray[np.float64]:
    """Per slice: share of the field of view's rim covered by tissue."""
    rim = _rim(m)
    n_rim = max(int(rim.sum()), 1)
    return np.asarray(m.tissue[:, rim].sum(axis=1) / n_rim, dtype=np.float64)


def _orthogonal_hull(mask: B) -> B:
    """Per slice: pixels with ``mask`` on both sides in their row *and* in their column.

    An orthogonally convex hull: it closes cavities that the field of view's edge opens
    (lungs cut by a small field of view), which hole filling cannot.
    """

    def between(axis: int) -> B:
        fwd = np.maximum.accumulate(mask, axis=axis)
        bwd = np.flip(np.maximum.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
        return np.asarray(fwd & bwd, dtype=bool)

    return between(1) & between(2)


# --------------------------------------------------------------------------- checks


def check_hu_calibration(m: ImageMeasurements) -> ImageCheck:
    """Air around the patient near -1000 HU and soft tissue near water.

    Air: median HU of the voxels inside the field of view farther than 15 mm from the body
    (reconstruction noise and streaks average out; clipped air at -1024 counts as air).
    Soft tissue: median HU of the body voxels between -450 and 600 HU at least 8 mm inside
    the surface (muscle, glands; fat pulls it slightly down). Flagged when the air is more
    than 20 HU off -1000, or the tissue median is outside -150 to 150 HU. On 64 normal
    simulated sessions the air read -1006 to -996 HU (the scanner's air calibration holds
    outside the patient) while the tissue read -106 to +54 HU (scatter cupping lowers
    it), hence the tight air and loose tissue limits; a negative offset shows as air at the
    floor of the 12-bit range (-1024).
    """
    name, unit = "hu_calibration", "HU"
    lim = LIMITS
    limit = (
        f"air off -1000 by > {lim['air_hu_max_deviation']:g} HU, or soft tissue outside "
        f"{lim['tissue_hu_low']:g} to {lim['tissue_hu_high']:g} HU"
    )
    far = round(15.0 / m.pixel_mm)
    near_body = np.empty_like(m.body)
    for k in range(m.body.shape[0]):
        near_body[k] = (
            ndimage.binary_dilation(m.body[k], iterations=far) if m.body[k].any() else m.body[k]
        )
    air = (~near_body) & m.fov[None]
    deep = round(8.0 / m.pixel_mm)
    inside = ndimage.binary_erosion(m.body, structure=_SLICE, iterations=deep)
    soft = inside & (m.hu > -450.0) & (m.hu < 600.0)
    if int(air.sum()) < 500 or int(soft.sum()) < 500:
        return _not_assessed(
            name, unit, limit, "too little air around the patient or soft tissue to measure"
        )
    air_hu = float(np.median(m.hu[air]))
    tissue_hu = float(np.median(m.hu[soft]))
    air_off = air_hu + 1000.0
    bad_air = abs(air_off) > lim["air_hu_max_deviation"]
    bad_tissue = not (lim["tissue_hu_low"] <= tissue_hu <= lim["tissue_hu_high"])
    reason = ""
    if bad_air or bad_tissue:
        parts = []
        if bad_air:
            parts.append(
                f"air around the patient reads {air_hu:.0f} HU instead of "
                f"-1000 ± {lim['air_hu_max_deviation']:g}"
            )
        if bad_tissue:
            parts.append(
                f"soft tissue reads {tissue_hu:.0f} HU (expected {lim['tissue_hu_low']:g} to "
                f"{lim['tissue_hu_high']:g} on CBCT)"
            )
        reason = (
            "HU calibration looks wrong: "
            + " and ".join(parts)
            + ". Check the scanner's HU calibration (rescale slope/intercept) before trusting the scores"
        )
    return ImageCheck(
        name,
        True,
        bad_air or bad_tissue,
        air_off if bad_air or not bad_tissue else tissue_hu,
        unit,
        limit,
        reason=reason,
        details={"air_hu": air_hu, "soft_tissue_hu": tissue_hu},
    )


def check_field_of_view(m: ImageMeasurements) -> ImageCheck:
    """Is the field of view large enough, and is the neck/head inside it?

    Flagged when the field of view's radius is under 100 mm (a head does not fit), or when
    in more than half of the upper 60 % of slices over 35 % of the field of view's rim is
    covered by tissue (the patient is cut all around).
    """
    name, unit = "field_of_view", "mm"
    lim = LIMITS
    limit = f"radius < {lim['fov_radius_mm_min']:g} mm, or the patient cut by its edge"
    share = _rim_share(m)
    n = share.size
    upper = share[int(0.4 * n) :]
    cut = float(np.mean(upper > lim["fov_cut_rim_share"])) if upper.size else 0.0
    small = m.fov_radius_mm < lim["fov_radius_mm_min"]
    cut_flag = cut > lim["fov_cut_slice_share"]
    reason = ""
    if small:
        reason = (
            f"field of view is only {2 * m.fov_radius_mm:.0f} mm across (head and neck needs about 200 mm or more): "
            "anatomy outside it is missing and the scores do not cover it"
        )
    elif cut_flag:
        reason = (
            f"the patient is cut by the edge of the {2 * m.fov_radius_mm:.0f} mm field of view in "
            f"{100 * cut:.0f}% of the neck and head slices: anatomy is missing"
        )
    return ImageCheck(
        name,
        True,
        small or cut_flag,
        m.fov_radius_mm,
        unit,
        limit,
        reason=reason,
        details={
            "fov_radius_mm": m.fov_radius_mm,
            "cut_slice_share": cut,
            "max_rim_share": float(share.max()),
        },
    )


def check_head_feet(m: ImageMeasurements) -> ImageCheck:
    """Dense bone (teeth, mandible) should lie in the upper part of the stack.

    Measures the centre of mass along the slice axis (0 = first slice, most inferior by
    position; 1 = last) of the voxels above 1200 HU inside the body, excluding metal
    (>= 3000 HU). In head-and-neck CBCT stored inferior-first this lies at 0.6-0.8 (the
    teeth and mandible are above the shoulders' bones, which are less dense). Flagged below
    0.45: the slices are stored head-first (a head-feet flip).
    """
    name, unit = "head_feet", "fraction"
    limit = f"dense-bone centre < {LIMITS['dense_bone_z_min']:g} of the stack"
    dense = m.body & (m.hu > 1200.0) & (m.hu < 3000.0)
    per_slice = dense.sum(axis=(1, 2)).astype(np.float64)
    total = float(per_slice.sum())
    voxel_cm3 = m.pixel_mm**2 * m.slice_mm / 1000.0
    if total * voxel_cm3 < 0.5:
        return _not_assessed(
            name, unit, limit, "too little dense bone (teeth, mandible) to tell head from feet"
        )
    n = per_slice.size
    z = (np.arange(n) + 0.5) / n
    centre = float(np.sum(z * per_slice) / total)
    flagged = centre < LIMITS["dense_bone_z_min"]
    reason = (
        f"the teeth and mandible lie in the lower part of the stack (dense-bone centre at {100 * centre:.0f}% "
        "of its height, expected 60-80%): the slices appear stored head-first (head-feet flip). "
        "Check the series' orientation before trusting the scores"
        if flagged
        else ""
    )
    return ImageCheck(
        name,
        True,
        flagged,
        centre,
        unit,
        limit,
        reason=reason,
        details={"dense_bone_cm3": total * voxel_cm3},
    )


def check_left_right(m: ImageMeasurements, reference_body: B | None) -> ImageCheck:
    """Does the image's body match a reference body mask better when mirrored left-right?

    Head-and-neck anatomy is nearly symmetric, so a mirrored image cannot be recognised
    from the image alone; the structure set (``External``, contoured on the planning CT
    and propagated to this CBCT) is the reference. With Dice ``D`` of the image's body and
    the reference, and ``D_m`` of the mirrored body, flagged when ``D_m - D`` exceeds 0.01.
    Not assessed without a reference.
    """
    name, unit = "left_right", "fraction"
    limit = (
        f"mirrored image fits the structure set better by > {LIMITS['left_right_margin']:g} (Dice)"
    )
    if reference_body is None:
        return _not_assessed(name, unit, limit, "no reference body contour (External) given")
    ref = np.asarray(reference_body, dtype=bool)
    if ref.shape != m.body.shape:
        raise ImageCheckError(
            f"reference body mask has shape {ref.shape}, the volume {m.body.shape}; "
            "give the External contour rasterised on the volume's grid"
        )
    ref = ref & m.fov[None]
    if int(ref.sum()) < 100:
        return _not_assessed(
            name,
            unit,
            limit,
            "the reference body contour is (almost) empty inside the field of view",
        )

    def dice(a: B, b: B) -> float:
        return float(2.0 * np.sum(a & b) / max(int(a.sum()) + int(b.sum()), 1))

    d = dice(m.body, ref)
    d_m = dice(m.body[:, :, ::-1] & m.fov[None], ref)
    gain = d_m - d
    flagged = gain > LIMITS["left_right_margin"]
    reason = (
        f"the image matches the structure set's body contour better mirrored left-right (Dice {d_m:.3f} vs {d:.3f}): "
        "left and right appear swapped. Check the series' orientation"
        if flagged
        else ""
    )
    return ImageCheck(
        name,
        True,
        flagged,
        gain,
        unit,
        limit,
        reason=reason,
        details={"dice": d, "dice_mirrored": d_m},
    )


def check_body_part(m: ImageMeasurements) -> ImageCheck:
    """Is this a head and neck?

    Two signs of a trunk: the patient spans the field of view from side to side (tissue
    extent over 90 % of the field of view's width) in at least 80 % of the slices, up to
    the top ones (in a head and neck only the shoulder slices at the bottom do; the neck
    and head are narrower than any field of view of 200 mm or more); or air enclosed by the
    patient (lungs, bowel gas: below -500 HU inside the tissue's row-and-column hull, which
    also closes lungs opened by the field of view's edge) over more than 12 % of the hull
    (a head and neck has only the airway and sinuses, a few per cent).
    """
    name, unit = "body_part", "fraction"
    lim = LIMITS
    limit = (
        f"spans the field of view in >= {lim['trunk_slice_share']:.0%} of slices, "
        f"or enclosed air > {lim['lung_share_max']:g} of the body"
    )
    body_vox = int(m.body.sum())
    if body_vox < 1000:
        return _not_assessed(name, unit, limit, "no body found in the image")
    hull = _orthogonal_hull(m.tissue)
    enclosed_air = hull & ~m.tissue & (m.hu < -500.0)
    air_share = float(enclosed_air.sum() / max(int(hull.sum()), 1))
    fov_cols = np.flatnonzero(m.fov.any(axis=0))
    fov_width = float(fov_cols[-1] - fov_cols[0] + 1) if fov_cols.size else 1.0
    extent = np.zeros(m.tissue.shape[0])
    for k in range(m.tissue.shape[0]):
        cols = np.flatnonzero(m.tissue[k].any(axis=0))
        if cols.size:
            extent[k] = (cols[-1] - cols[0] + 1) / fov_width
    wide = float(np.mean(extent > 0.9))
    lungs = air_share > lim["lung_share_max"]
    trunk = wide >= lim["trunk_slice_share"] and m.fov_radius_mm >= lim["fov_radius_mm_min"]
    reason = ""
    if trunk:
        reason = (
            f"the patient spans the whole {2 * m.fov_radius_mm:.0f} mm field of view from side to side in "
            f"{100 * wide:.0f}% of the slices, up to the top: this looks like a trunk (thorax, abdomen "
            "or pelvis), not a head and neck. Check that the right series or patient was sent"
        )
    elif lungs:
        reason = (
            f"air fills {100 * air_share:.0f}% of the body (lungs or bowel gas): this does not look like a "
            "head and neck. Check that the right series or patient was sent"
        )
    return ImageCheck(
        name,
        True,
        lungs or trunk,
        wide,
        unit,
        limit,
        reason=reason,
        details={"enclosed_air_share": air_share, "wide_slice_share": wide},
    )


def check_metal(m: ImageMeasurements) -> ImageCheck:
    """Volume of metal: voxels at or above 3000 HU (the top of the 12-bit range) in the body.

    Dental fillings of normal patients (up to about 2 cm³ of amalgam) read up to 6.1 cm³ at
    this threshold on 64 normal simulated sessions (blur and bright streaks add voxels);
    flagged above 8 cm³: extensive restorations whose streaks cross the mandible, the tongue
    and the parotid level.
    """
    name, unit = "metal", "cm3"
    limit = f"> {LIMITS['metal_cm3_max']:g} cm3 at >= 3000 HU"
    grown = ndimage.binary_dilation(m.body, structure=_SLICE, iterations=2)
    metal = grown & (m.hu >= 3000.0)
    cm3 = float(metal.sum()) * m.pixel_mm**2 * m.slice_mm / 1000.0
    flagged = cm3 > LIMITS["metal_cm3_max"]
    reason = (
        f"{cm3:.1f} cm³ of metal in the image (a few dental fillings read up to about 6 cm³): streaks are likely "
        "through the mandible and parotid levels, so their scores and maps are unreliable"
        if flagged
        else ""
    )
    return ImageCheck(name, True, flagged, cm3, unit, limit, reason=reason)


def check_motion(m: ImageMeasurements) -> ImageCheck:
    """Ghosts of the body outline, the trace of a patient who moved during the scan.

    The image is smoothed (Gaussian, sigma 3 mm, which removes noise and thin streaks) and
    the 90th percentile of the HU in the band 5-20 mm outside the body surface (inside the
    field of view) is taken per slice; the median over slices is compared with -850 HU.
    A still patient leaves air there (-1000 plus noise); a displaced copy of the body
    leaves a faint tissue ghost.
    """
    name, unit = "motion", "HU"
    limit = f"> {LIMITS['ghost_hu_max']:g} HU ghost outside the body"
    sigma = 3.0 / m.pixel_mm
    smooth = ndimage.gaussian_filter(m.hu, (0.0, sigma, sigma))
    near = round(5.0 / m.pixel_mm)
    far = round(20.0 / m.pixel_mm)
    rim_guard = ndimage.binary_erosion(m.fov, iterations=far, border_value=0)
    values = []
    for k in range(m.body.shape[0]):
        if not m.body[k].any():
            continue
        outer = ndimage.binary_dilation(m.body[k], iterations=far)
        inner = ndimage.binary_dilation(m.body[k], iterations=near)
        band = outer & ~inner & rim_guard
        if int(band.sum()) < 50:
            continue
        values.append(float(np.percentile(smooth[k][band], 90)))
    if len(values) < 3:
        return _not_assessed(
            name,
            unit,
            limit,
            "no air around the patient inside the field of view to look for ghosts",
        )
    ghost = float(np.median(values))
    flagged = ghost > LIMITS["ghost_hu_max"]
    reason = (
        f"faint copies of the body outline appear outside it ({ghost:.0f} HU where air should read about -1000): "
        "the patient probably moved during the scan, so every score is affected"
        if flagged
        else ""
    )
    return ImageCheck(
        name,
        True,
        flagged,
        ghost,
        unit,
        limit,
        reason=reason,
        details={"slices_measured": float(len(values))},
    )


def check_image(volume: Volume, *, reference_body: B | None = None) -> ImageCheckReport:
    """Run every image check on one volume.

    Parameters
    ----------
    volume:
        The loaded series.
    reference_body:
        Optional ``(slices, rows, cols)`` bool mask of the patient from the structure set
        (``External``) on the volume's grid; enables the left-right check.

    Returns
    -------
    ImageCheckReport
        When the body-part check finds a trunk, the checks that assume a head and neck
        (HU calibration, field of view, head-feet, motion) are reported as not assessed.

    Raises
    ------
    ImageCheckError
        A volume too small to check, or a reference mask of the wrong shape.
    """
    m = measure_image(volume)
    body = check_body_part(m)
    if body.flagged:
        # The other checks assume a head and neck; their findings would only mislead.
        note = "not assessed: the image does not look like a head and neck (see body_part)"
        units = {
            "hu_calibration": "HU",
            "field_of_view": "mm",
            "head_feet": "fraction",
            "motion": "HU",
        }
        skipped = {
            n: ImageCheck(n, False, False, math.nan, u, "", note=note) for n, u in units.items()
        }
        checks = [
            skipped["hu_calibration"],
            skipped["field_of_view"],
            skipped["head_feet"],
            check_left_right(m, reference_body),
            body,
            check_metal(m),
            skipped["motion"],
        ]
    else:
        checks = [
            check_hu_calibration(m),
            check_field_of_view(m),
            check_head_feet(m),
            check_left_right(m, reference_body),
            body,
            check_metal(m),
            check_motion(m),
        ]
    return ImageCheckReport(tuple(checks))
