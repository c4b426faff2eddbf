"""Known anomalies injected into simulated sessions, so that alert rules can be measured.

Each anomaly is one small seeded function acting at the stage where the fault arises in a
real department (anatomy or phantom, acquisition settings, or the reconstructed image), and
returns what it did, which :mod:`qa_core.synth.cohort` records under ``"anomaly"`` in
``truth.json``. None of them writes anything into the DICOM files that says "anomaly".

================  ==========  ===============================================================
kind              stage       what it models
================  ==========  ===============================================================
``flip_hf``       image       head-feet flip: slices stored in reverse order (slice 0 is the
                              skull base), positions unchanged
``flip_lr``       image       left-right flip: every slice mirrored along the columns (the
                              patient's left appears on the image's right), header unchanged
``truncated_fov`` settings    reconstructed field of view of 55-85 mm radius instead of
                              112-140 mm: the neck and head are cut off
``body_part``     phantom     a thorax (lungs, heart, ribs) or a pelvis (iliac wings, femoral
                              heads, bladder, bowel gas) imaged instead of the head and neck
``metal``         anatomy     crowns or large amalgam fillings on 16-28 teeth (radius
                              3.5-4.5 mm): severe streaks through the mandible and parotids
``motion``        settings    rigid motion of 8-15 mm and 3-6 degrees during 35-50 % of the
                              views (normal sessions: at most 3 mm and 1.5 degrees)
``hu_calibration`` image      wrong HU calibration ``HU' = a HU + b`` with ``a`` 0.85-1.15 and
                              ``|b|`` 150-300 HU, clipped to the 12-bit range as a scanner does
================  ==========  ===============================================================

Ratings of an anomalous session are those of the image the raters would have seen before the
image-stage fault (a flip or a calibration offset does not change what they rate); for
``body_part`` they are the panel's ratings of the head-and-neck regions in the wrong image
(the organs are not there, so they come out low).

Which sessions are anomalous (:func:`choose_anomaly`) depends on the cohort seed and the
session index only, as every other random choice of the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qa_core.errors import SynthesisError
from qa_core.synth.acquisition import AcquisitionSettings
from qa_core.synth.phantom import GRID_MM, LABELS, Filling, PatientAnatomy, Phantom

__all__ = [
    "ANOMALY_KINDS",
    "ANOMALY_STAGES",
    "InjectedAnomaly",
    "check_anomaly_kinds",
    "choose_anomaly",
    "flip_head_feet",
    "flip_left_right",
    "heavy_metal",
    "miscalibrate_hu",
    "other_body_part",
    "severe_motion",
    "truncate_fov",
]

#: Every anomaly the simulator can inject, in documentation order.
ANOMALY_KINDS: Final[tuple[str, ...]] = (
    "flip_hf",
    "flip_lr",
    "truncated_fov",
    "body_part",
    "metal",
    "motion",
    "hu_calibration",
)
#: Where each anomaly acts: ``anatomy``, ``phantom``, ``settings`` or ``image``.
ANOMALY_STAGES: Final[dict[str, str]] = {
    "flip_hf": "image",
    "flip_lr": "image",
    "truncated_fov": "settings",
    "body_part": "phantom",
    "metal": "anatomy",
    "motion": "settings",
    "hu_calibration": "image",
}

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class InjectedAnomaly:
    """What was injected into one session.

    Attributes
    ----------
    kind:
        One of :data:`ANOMALY_KINDS`.
    stage:
        Where it acted (:data:`ANOMALY_STAGES`).
    params:
        The drawn parameters (JSON-ready), e.g. ``{"slope": 1.1, "intercept_hu": -220.0}``.
    """

    kind: str
    stage: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"kind", "stage", "params"}``."""
        return {"kind": self.kind, "stage": self.stage, "params": dict(self.params)}


def check_anomaly_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """Validate anomaly names (comma-split by the command line) and drop repeats.

    Raises
    ------
    SynthesisError
        An unknown name; the message lists the known ones.
    """
    out: list[str] = []
    for raw in kinds:
        name = str(raw).strip()
        if not name:
            continue
        if name not in ANOMALY_KINDS:
            raise SynthesisError(
                f"unknown anomaly {name!r}; choose from {', '.join(ANOMALY_KINDS)}"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def choose_anomaly(
    rng: np.random.Generator, index: int, kinds: Sequence[str], fraction: float
) -> str | None:
    """The anomaly of session ``index`` (1-based), or ``None`` for a normal session.

    The session is anomalous when one uniform draw of ``rng`` is below ``fraction``; its
    kind is ``kinds[(index - 1) % len(kinds)]``, so with ``fraction=1`` every kind gets the
    same number of sessions (within one).

    Raises
    ------
    SynthesisError
        ``fraction`` outside [0, 1], or a fraction > 0 with no kinds.
    """
    if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
        raise SynthesisError(f"anomaly fraction must lie in [0, 1]; got {fraction!r}")
    names = check_anomaly_kinds(kinds)
    if fraction > 0 and not names:
        raise SynthesisError(
            "an anomaly fraction above 0 needs at least one anomaly kind (--anomalies)"
        )
    if not names:
        return None
    draw = float(rng.random())
    if draw >= fraction:
        return None
    return names[(index - 1) % len(names)]


# --------------------------------------------------------------------------- anatomy / settings


def heavy_metal(
    anatomy: PatientAnatomy, rng: np.random.Generator
) -> tuple[PatientAnatomy, dict[str, Any]]:
    """Crowns or large amalgam fillings on 16-28 of the 28 teeth, radius 3.5-4.5 mm.

    Normal patients carry 0-7 fillings of 1.5-3.5 mm (at most about 2 cm³ of metal); this
    gives 5-13 cm³, the dentition of a patient with extensive restorations, whose streaks
    cross the mandible, the tongue and the parotid level.
    """
    n = int(rng.integers(16, 29))
    teeth = sorted(int(t) for t in rng.choice(28, size=n, replace=False))
    fillings = tuple(
        Filling(upper=bool(t >= 14), tooth=int(t % 14), radius_mm=float(rng.uniform(3.5, 4.5)))
        for t in teeth
    )
    out = replace(anatomy, fillings=fillings, missing_teeth=())
    return out, {"n_fillings": n, "radius_mm_max": round(max(f.radius_mm for f in fillings), 3)}


def truncate_fov(
    settings: AcquisitionSettings, rng: np.random.Generator
) -> tuple[AcquisitionSettings, dict[str, Any]]:
    """Reconstructed field of view of radius 55-85 mm (normal: 112-140 mm)."""
    radius = float(rng.uniform(55.0, 85.0))
    return replace(settings, fov_radius_mm=radius), {"fov_radius_mm": round(radius, 3)}


def severe_motion(
    settings: AcquisitionSettings, rng: np.random.Generator
) -> tuple[AcquisitionSettings, dict[str, Any]]:
    """Rigid motion of 8-15 mm and 3-6 degrees during 35-50 % of the views (normal: <= 3 mm, 1.5°)."""
    mm = float(rng.uniform(8.0, 15.0))
    deg = float(rng.uniform(3.0, 6.0)) * float(rng.choice([-1.0, 1.0]))
    frac = float(rng.uniform(0.35, 0.5))
    out = replace(
        settings,
        motion_mm=mm,
        motion_deg=deg,
        motion_fraction=frac,
        motion_start=float(rng.uniform(0.0, 0.5)),
        motion_angle_deg=float(rng.uniform(0.0, 360.0)),
    )
    return out, {
        "motion_mm": round(mm, 3),
        "motion_deg": round(deg, 3),
        "motion_fraction": round(frac, 3),
    }


# --------------------------------------------------------------------------- phantom


def _ellipse(x: F32, y: F32, cx: float, cy: float, ax: float, by: float) -> npt.NDArray[np.bool_]:
    out: npt.NDArray[np.bool_] = ((x - cx) / ax) ** 2 + ((y - cy) / by) ** 2 <= 1.0
    return out


def other_body_part(phantom: Phantom, rng: np.random.Generator) -> tuple[Phantom, dict[str, Any]]:
    """A thorax or a pelvis on the same grid, slices and couch offset as ``phantom``.

    Thorax: body 300-340 x 200-230 mm (wider than any head-and-neck field of view), lungs
    (-850 HU) filling most of it, heart, vertebra with spinal canal, sternum, ribs every
    25 mm. Pelvis: body 320-360 x 210-240 mm, iliac wings, sacrum, femoral heads in the
    lower half, a water-filled bladder and small pockets of bowel gas.
    """
    slices, size, _ = phantom.hu.shape
    part = "thorax" if rng.random() < 0.5 else "pelvis"
    px = GRID_MM / size
    c = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * np.float32(px)
    a = phantom.anatomy
    x = np.broadcast_to(c[None, :] - np.float32(a.offset_x_mm), (size, size))
    y = np.broadcast_to(c[:, None] - np.float32(a.offset_y_mm), (size, size))
    hu = np.full(phantom.hu.shape, -1000.0, dtype=np.float32)
    lab = np.zeros(phantom.hu.shape, dtype=np.uint8)
    zeta = phantom.zeta
    half_w = (
        float(rng.uniform(150.0, 170.0)) if part == "thorax" else float(rng.uniform(160.0, 180.0))
    )
    half_h = (
        float(rng.uniform(100.0, 115.0)) if part == "thorax" else float(rng.uniform(105.0, 120.0))
    )
    fat = float(rng.uniform(5.0, 15.0))
    gas = [
        (float(rng.uniform(-70, 70)), float(rng.uniform(-60, 0)), float(rng.uniform(5, 14)))
        for _ in range(5)
    ]
    for k in range(slices):
        h, lb = hu[k], lab[k]
        body = _ellipse(x, y, 0.0, 0.0, half_w, half_h)
        h[body], lb[body] = -100.0, LABELS["fat"]
        inner = _ellipse(x, y, 0.0, 0.0, half_w - fat, half_h - fat)
        h[inner], lb[inner] = 45.0, LABELS["soft_tissue"]
        spine = _ellipse(x, y, 0.0, half_h - 40.0, 18.0, 16.0)
        h[spine], lb[spine] = 700.0, LABELS["bone"]
        canal = _ellipse(x, y, 0.0, half_h - 40.0, 6.0, 6.0)
        h[canal], lb[canal] = 10.0, LABELS["spinal_canal"]
        if part == "thorax":
            grow = 1.0 + 0.25 * (1.0 - float(zeta[k]))
            for side in (-1.0, 1.0):
                lung = _ellipse(
                    x, y, side * 0.45 * half_w, 0.0, 0.38 * half_w * grow, 0.72 * half_h
                )
                h[lung], lb[lung] = -850.0, LABELS["airway"]
            heart = _ellipse(x, y, 15.0, -25.0, 55.0 * (1.2 - float(zeta[k])), 48.0)
            h[heart], lb[heart] = 40.0, LABELS["soft_tissue"]
            sternum = _ellipse(x, y, 0.0, -half_h + fat + 8.0, 14.0, 6.0)
            h[sternum], lb[sternum] = 600.0, LABELS["bone"]
            if (float(zeta[k]) * 6.0) % 1.0 < 0.35:  # a rib every sixth of the length
                ring = _ellipse(x, y, 0.0, 0.0, half_w - fat - 2.0, half_h - fat - 2.0) & ~_ellipse(
                    x, y, 0.0, 0.0, half_w - fat - 10.0, half_h - fat - 10.0
                )
                h[ring], lb[ring] = 650.0, LABELS["bone"]
        else:
            bladder = _ellipse(x, y, 0.0, -45.0, 45.0, 35.0 * (1.0 - 0.5 * float(zeta[k])))
            h[bladder], lb[bladder] = 10.0, LABELS["soft_tissue"]
            for side in (-1.0, 1.0):
                if zeta[k] > 0.4:
                    wing = _ellipse(x, y, side * 95.0, 20.0, 40.0, 60.0) & ~_ellipse(
                        x, y, side * 95.0, 20.0, 30.0, 50.0
                    )
                    h[wing], lb[wing] = 650.0, LABELS["bone"]
                else:
                    head = _ellipse(x, y, side * 90.0, 0.0, 24.0, 24.0)
                    h[head], lb[head] = 900.0, LABELS["bone"]
            for gx, gy, gr in gas:
                pocket = _ellipse(x, y, gx, gy, gr, gr * 0.7)
                h[pocket], lb[pocket] = -900.0, LABELS["airway"]
    out = Phantom(hu=hu, labels=lab, spacing=phantom.spacing, zeta=phantom.zeta, anatomy=a)
    return out, {
        "body_part": part,
        "half_width_mm": round(half_w, 2),
        "half_height_mm": round(half_h, 2),
    }


# --------------------------------------------------------------------------- image


def _check_volume(hu: F32, what: str) -> None:
    if hu.ndim != 3 or hu.shape[0] < 2:
        raise SynthesisError(
            f"{what} needs a (slices, rows, cols) volume with >= 2 slices; got shape {hu.shape}"
        )


def flip_head_feet(hu: F32, rng: np.random.Generator) -> tuple[F32, dict[str, Any]]:
    """Reverse the slice order: the skull base lands at slice 0, positions stay as they were.

    ``rng`` is accepted for a uniform signature; the flip draws nothing.
    """
    _check_volume(hu, "flip_head_feet")
    return np.ascontiguousarray(hu[::-1]), {"axis": "z"}


def flip_left_right(hu: F32, rng: np.random.Generator) -> tuple[F32, dict[str, Any]]:
    """Mirror every slice along its columns (patient left <-> right), header unchanged."""
    _check_volume(hu, "flip_left_right")
    return np.ascontiguousarray(hu[:, :, ::-1]), {"axis": "x"}


def miscalibrate_hu(hu: F32, rng: np.random.Generator) -> tuple[F32, dict[str, Any]]:
    """``HU' = a HU + b``, ``a`` in 0.85-1.15 and ``|b|`` in 150-300 HU, clipped to [-1024, 3071].

    A wrong water/air calibration of the reconstruction; the clip is the scanner's 12-bit
    output range, so a negative offset pushes air to the floor of the range.
    """
    _check_volume(hu, "miscalibrate_hu")
    slope = float(rng.uniform(0.85, 1.15))
    intercept = float(rng.uniform(150.0, 300.0)) * float(rng.choice([-1.0, 1.0]))
    out = np.clip(hu * np.float32(slope) + np.float32(intercept), -1024.0, 3071.0).astype(
        np.float32
    )
    return out, {"slope": round(slope, 4), "intercept_hu": round(intercept, 2)}
