"""Localisation of attribution: does a category's map lie on that category's organ?

Given the raw maps ``L_ks`` of :mod:`qa_core.attribution` and the organ regions of an
RTSTRUCT (:mod:`qa_core.rtstruct`), per category k:

* **energy share** (the energy-based pointing game of Score-CAM, Wang et al. 2020)::

      ae_in_region_k = Σ_s Σ_ij L_ks(i, j) · r_s(i, j)  /  Σ_s Σ_ij L_ks(i, j)

  with ``r_s(i, j)`` in [0, 1] the area-weighted coverage of map cell (i, j) of slice s by
  the region: the fraction of the cell's footprint on the slice that the region's voxels
  cover. Unit: a share, 0-1; higher means more of the evidence sits on the organ. NaN when
  the map is zero everywhere (nothing to localise).
* **chance level** ``region_share_k = |region ∩ body| / |body|`` over the whole volume (voxel
  counts): the share a map spread uniformly over the body would put on the organ. The body
  is the ``External`` ROI when present, else :func:`body_from_image`.
* **ratio** ``ae_in_region / region_share`` (1 = chance; higher is better).
* **pointing game hit rate**: over the slices whose region is not empty (and whose map is
  not all zero), the share in which the map's maximum cell lies inside the region (its
  coverage is at least ``min_coverage``, default 0.5: the cell lies mostly on the organ).
* **organ-restricted AE** ``Σ_s Σ_ij L_ks(i, j) · r_s(i, j)``: AE counted on the organ only
  (same units as AE).

``overall`` uses the body as its region (its chance level is 1).

Alerts
------
:func:`localisation_flags` is the *absolute* rule of one session: a category whose energy
share is below ``min_share`` (``CBCTQA_LOCALISATION_MIN_SHARE``, 0.5) "falls mostly outside
that organ". It is what ``cbctqa score --rtstruct`` reports (one session, no cohort).

:func:`cohort_localisation_flags` is the rule the product alerts on (written by
``flows.scoring.write_outlier_flags``, listed by ``cbctqa validate``). Per category, over the
cohort's sessions with a contour (at least :data:`COHORT_MIN_SESSIONS`):

* if the cohort's median share is ``>= min_share`` (the model normally looks at the organ),
  a session whose share is ``< min_share`` is flagged: its map falls mostly outside the organ
  where this model usually does not;
* otherwise (the model does not localise on this organ for anybody: with the shipped model
  the maps sit on the anterior body surface, a median of about 1 % of the energy in each
  organ against a chance level of about 2 %, so the absolute rule would flag every category
  of every session), only sessions atypical *for this model* are flagged, on the log ratio to
  chance ``x = log((share + ε) / (region_share + ε))`` with ``ε = 1e-3``
  (:data:`COHORT_LOG_EPS`: keeps a share of exactly 0 finite; 0.1 % of the energy is below
  what the maps resolve), and its robust z
  ``z = 0.6745 · (x - median(x)) / MAD(x)`` (the ``1.253314 × mean |x - median|`` scale when
  MAD = 0, no flag when every x is equal: :func:`qa_core.outliers.robust_z`). A session is
  flagged when ``z < -z_cut`` (default 3.5, Iglewicz & Hoaglin): its map lies even further
  from the organ than usual. Only that direction is an alert; a map *closer* to the organ
  than usual is not a fault. The log ratio to chance compares organs of different sizes
  across patients (a small parotid has a smaller chance level).

Geometry
--------
A map cell covers a block of the model's input, which is the slice square-padded (rows and
columns added symmetrically, as :mod:`qa_core.preprocess` does) and resampled; cell (i, j)
of an ``h × w`` map therefore covers ``[i·P/h, (i+1)·P/h) × [j·P/w, (j+1)·P/w)`` of the
``P × P`` padded slice (voxel edges at integers). Coverage is exact area weighting of the
voxels over that block (separable overlap matrices), so it does not depend on any
upsampling of the map. Padding belongs to no region.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qa_core.attribution import AttributionResult
from qa_core.categories import CATEGORIES
from qa_core.errors import AttributionError
from qa_core.volume import Volume

if TYPE_CHECKING:
    from qa_core.rtstruct import OrganMasks

__all__ = [
    "BODY_HU_THRESHOLD",
    "COHORT_LOG_EPS",
    "COHORT_MIN_SESSIONS",
    "COHORT_Z_CUT",
    "CategoryLocalisation",
    "CohortLocalisationFlag",
    "LocalisationFlag",
    "LocalisationReport",
    "body_from_image",
    "cell_coverage",
    "cohort_localisation_flags",
    "energy_share",
    "localisation_flags",
    "localise",
    "localise_rtstruct",
    "pointing_game",
    "region_share",
]

#: HU above which a voxel counts as body when no ``External`` ROI is given.
BODY_HU_THRESHOLD: Final[float] = -500.0
#: Default coverage a map cell needs to count as inside the region (pointing game).
DEFAULT_MIN_COVERAGE: Final[float] = 0.5
#: Fewest sessions with a contour in a category for :func:`cohort_localisation_flags`.
COHORT_MIN_SESSIONS: Final[int] = 8
#: ε of the log ratio to chance in :func:`cohort_localisation_flags` (a share, 0-1).
COHORT_LOG_EPS: Final[float] = 1e-3
#: Default robust-z cut of :func:`cohort_localisation_flags` (flag when z < -cut).
COHORT_Z_CUT: Final[float] = 3.5

F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


def _overlap(n_pix: int, n_cells: int) -> F64:
    """``(n_cells, n_pix)``: fraction of each cell's extent covered by each voxel."""
    edges = np.arange(n_cells + 1, dtype=np.float64) * (n_pix / n_cells)
    lo = np.maximum(edges[:-1, None], np.arange(n_pix, dtype=np.float64)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(1, n_pix + 1, dtype=np.float64)[None, :])
    out: F64 = np.clip(hi - lo, 0.0, None) / (n_pix / n_cells)
    return out


def cell_coverage(region: npt.ArrayLike, map_shape: tuple[int, int]) -> F64:
    """Area-weighted coverage of every map cell by a region.

    Parameters
    ----------
    region:
        bool ``(slices, rows, cols)`` on the volume's grid (or ``(rows, cols)`` for one slice).
    map_shape:
        ``(h, w)`` of the raw maps.

    Returns
    -------
    numpy.ndarray
        float64 ``(slices, h, w)`` (or ``(h, w)``) in [0, 1]: the share of each cell's
        footprint on the square-padded slice that the region covers.
    """
    arr = np.asarray(region, dtype=bool)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3:
        raise AttributionError(f"region must be (slices, rows, cols); got shape {arr.shape}")
    h, w = (int(v) for v in map_shape)
    if h < 1 or w < 1:
        raise AttributionError(f"map_shape must be two positive integers; got {map_shape}")
    _, rows, cols = arr.shape
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    wr = _overlap(side, h)[:, top : top + rows]
    wc = _overlap(side, w)[:, left : left + cols]
    cov: F64 = np.einsum("hr,nrc,wc->nhw", wr, arr.astype(np.float64), wc, optimize=True)
    np.clip(cov, 0.0, 1.0, out=cov)
    return cov[0] if single else cov


def energy_share(cams: npt.ArrayLike, coverage: npt.ArrayLike) -> float:
    """``Σ L·r / Σ L`` over all slices and cells; NaN when ``Σ L`` is 0.

    Parameters
    ----------
    cams:
        Raw maps ``(slices, h, w)`` (non-negative).
    coverage:
        :func:`cell_coverage` of the region, same shape.
    """
    lmap = np.asarray(cams, dtype=np.float64)
    r = np.asarray(coverage, dtype=np.float64)
    if lmap.shape != r.shape:
        raise AttributionError(f"maps {lmap.shape} and coverage {r.shape} differ in shape")
    total = float(lmap.sum())
    if total <= 0.0:
        return math.nan
    return float(np.sum(lmap * r)) / total


def region_share(region: npt.ArrayLike, body: npt.ArrayLike) -> float:
    """Chance level: voxels of ``region ∩ body`` over voxels of ``body`` (NaN for no body)."""
    reg = np.asarray(region, dtype=bool)
    bod = np.asarray(body, dtype=bool)
    if reg.shape != bod.shape:
        raise AttributionError(f"region {reg.shape} and body {bod.shape} differ in shape")
    n_body = int(bod.sum())
    return math.nan if n_body == 0 else int(np.count_nonzero(reg & bod)) / n_body


def pointing_game(
    cams: npt.ArrayLike,
    coverage: npt.ArrayLike,
    region_slices: npt.ArrayLike,
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> tuple[float, int, int]:
    """Share of region slices whose map maximum lies in the region.

    Parameters
    ----------
    cams:
        Raw maps ``(slices, h, w)``.
    coverage:
        Cell coverage of the region, same shape.
    region_slices:
        bool ``(slices,)``: the slices that contain the region.
    min_coverage:
        A cell is inside the region when its coverage is at least this (0 < value <= 1).

    Returns
    -------
    (hit_rate, hits, slices)
        ``hits / slices`` over the region slices whose map is not all zero (the first cell
        in row-major order wins ties); NaN when there is none.
    """
    if not (0.0 < min_coverage <= 1.0):
        raise AttributionError(f"min_coverage must be in (0, 1]; got {min_coverage}")
    lmap = np.asarray(cams, dtype=np.float64)
    r = np.asarray(coverage, dtype=np.float64)
    sl = np.asarray(region_slices, dtype=bool)
    if lmap.shape != r.shape or lmap.ndim != 3 or sl.shape != (lmap.shape[0],):
        raise AttributionError(
            f"pointing_game needs maps and coverage (slices, h, w) and region_slices (slices,); "
            f"got {lmap.shape}, {r.shape}, {sl.shape}"
        )
    hits = used = 0
    for s in np.flatnonzero(sl):
        m = lmap[s]
        if not m.max() > 0.0:
            continue
        used += 1
        if r[s].ravel()[int(np.argmax(m))] >= min_coverage - 1e-12:
            hits += 1
    return (hits / used if used else math.nan), hits, used


def body_from_image(volume: Volume, *, threshold_hu: float = BODY_HU_THRESHOLD) -> Mask:
    """Body mask from the image: voxels above ``threshold_hu``, largest 3-D component, holes
    (airway, sinuses) filled slice by slice. Empty when nothing exceeds the threshold."""
    above = np.asarray(volume.hu) > threshold_hu
    labels, n = ndimage.label(above)
    if n == 0:
        return np.zeros(volume.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body: Mask = labels == int(np.argmax(sizes))
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


@dataclass(frozen=True)
class CategoryLocalisation:
    """Localisation of one category's map (see the module docstring for the formulas).

    Attributes
    ----------
    category:
        Category name.
    ae_in_region:
        Energy share inside the region, 0-1 (NaN for an all-zero map).
    region_share:
        Chance level ``|region ∩ body| / |body|``, 0-1.
    ratio:
        ``ae_in_region / region_share`` (1 = chance; NaN when either is NaN or 0).
    pointing_hit_rate:
        Pointing-game hit rate over :attr:`pointing_slices` slices (NaN when none).
    pointing_hits, pointing_slices:
        Hits and slices counted.
    region_slices:
        Slices that contain the region.
    region_voxels:
        Voxels of the region.
    organ_ae:
        ``Σ L·r``: AE restricted to the organ (AE units).
    ae:
        ``Σ L``: the category's AE, for reference.
    roi_names:
        ROI names the region came from (``("External",)`` or ``("image",)`` for overall).
    """

    category: str
    ae_in_region: float
    region_share: float
    ratio: float
    pointing_hit_rate: float
    pointing_hits: int
    pointing_slices: int
    region_slices: int
    region_voxels: int
    organ_ae: float
    ae: float
    roi_names: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "ae_in_region": clean(self.ae_in_region),
            "region_share": clean(self.region_share),
            "ratio": clean(self.ratio),
            "pointing_hit_rate": clean(self.pointing_hit_rate),
            "pointing_hits": self.pointing_hits,
            "pointing_slices": self.pointing_slices,
            "region_slices": self.region_slices,
            "region_voxels": self.region_voxels,
            "organ_ae": clean(self.organ_ae),
            "ae": clean(self.ae),
            "roi_names": list(self.roi_names),
        }


@dataclass(frozen=True)
class LocalisationReport:
    """Localisation of every category with a region.

    Attributes
    ----------
    categories:
        Category -> :class:`CategoryLocalisation` (contract order; categories without a
        region are absent).
    body_source:
        ``"External"`` (from the RTSTRUCT) or ``"image"`` (:func:`body_from_image`).
    min_coverage:
        Pointing-game threshold used.
    map_shape:
        ``(h, w)`` of the maps.
    provenance:
        RTSTRUCT source and ROI names, method.
    """

    categories: Mapping[str, CategoryLocalisation]
    body_source: str
    min_coverage: float
    map_shape: tuple[int, int]
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "categories": {c: v.to_dict() for c, v in self.categories.items()},
            "body_source": self.body_source,
            "min_coverage": self.min_coverage,
            "map_shape": list(self.map_shape),
            "provenance": self.provenance,
        }


def localise(
    result: AttributionResult,
    regions: Mapping[str, npt.ArrayLike],
    *,
    body: npt.ArrayLike | None = None,
    volume: Volume | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    roi_names: Mapping[str, tuple[str, ...]] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> LocalisationReport:
    """Energy share, chance level, ratio, pointing game and organ AE per category.

    Parameters
    ----------
    result:
        The attribution of the volume (raw maps ``(K, N, h, w)``).
    regions:
        Category -> bool ``(slices, rows, cols)`` on the volume's grid (e.g.
        :attr:`qa_core.rtstruct.OrganMasks.masks`). ``overall`` uses the body.
    body:
        The body mask (the ``External`` ROI); ``None`` derives it from ``volume``.
    volume:
        The attributed volume; needed when ``body`` is ``None``.
    min_coverage:
        Pointing-game threshold (see :func:`pointing_game`).
    roi_names:
        Category -> ROI names, recorded in the report.
    provenance:
        Extra provenance (e.g. the RTSTRUCT path and SOP instance UID).

    Raises
    ------
    AttributionError
        Unknown category, masks whose slice count differs from the result's, no body and no
        volume, or an empty body.
    """
    source = "External"
    if body is None:
        if volume is None:
            raise AttributionError(
                "localise needs the body (External ROI) or the volume to derive it from the image"
            )
        body_mask = body_from_image(volume)
        source = "image"
    else:
        body_mask = np.asarray(body, dtype=bool)
    if body_mask.ndim != 3 or body_mask.shape[0] != result.n_slices:
        raise AttributionError(
            f"body mask {body_mask.shape} does not match the attributed volume's "
            f"{result.n_slices} slices; pass masks on the volume's grid"
        )
    if not body_mask.any():
        raise AttributionError(
            "the body mask is empty (no External ROI voxels, or no voxel above "
            f"{BODY_HU_THRESHOLD:g} HU); check the RTSTRUCT or the volume"
        )
    unknown = sorted(set(regions) - set(CATEGORIES))
    if unknown:
        raise AttributionError(f"unknown categories {unknown}; expected some of {list(CATEGORIES)}")
    names = dict(roi_names or {})
    all_regions: dict[str, Mask] = {}
    for cat in CATEGORIES:
        if cat == "overall":
            all_regions[cat] = body_mask
            names.setdefault(cat, ("External",) if source == "External" else ("image",))
        elif cat in regions:
            mask = np.asarray(regions[cat], dtype=bool)
            if mask.shape != body_mask.shape:
                raise AttributionError(
                    f"{cat} region {mask.shape} and body {body_mask.shape} differ in shape; pass "
                    "masks on the attributed volume's grid"
                )
            all_regions[cat] = mask
    out: dict[str, CategoryLocalisation] = {}
    for cat, mask in all_regions.items():
        k = result.categories.index(cat)
        cams = np.asarray(result.cams[k], dtype=np.float64)
        cov = cell_coverage(mask, result.map_shape)
        total = float(cams.sum())
        organ_ae = float(np.sum(cams * cov))
        share = organ_ae / total if total > 0 else math.nan
        chance = region_share(mask, body_mask)
        ratio = share / chance if (chance > 0 and not math.isnan(share)) else math.nan
        present = mask.any(axis=(1, 2))
        rate, hits, used = pointing_game(cams, cov, present, min_coverage=min_coverage)
        out[cat] = CategoryLocalisation(
            category=cat,
            ae_in_region=share,
            region_share=chance,
            ratio=ratio,
            pointing_hit_rate=rate,
            pointing_hits=hits,
            pointing_slices=used,
            region_slices=int(present.sum()),
            region_voxels=int(mask.sum()),
            organ_ae=organ_ae,
            ae=total,
            roi_names=tuple(names.get(cat, ())),
        )
    return LocalisationReport(
        categories=out,
        body_source=source,
        min_coverage=float(min_coverage),
        map_shape=(int(result.map_shape[0]), int(result.map_shape[1])),
        provenance={"method": result.method, **dict(provenance or {})},
    )


@dataclass(frozen=True)
class LocalisationFlag:
    """A category whose map falls mostly outside its organ.

    Attributes
    ----------
    category:
        Category name.
    reason:
        Plain-language reason (what was measured and the limit it missed).
    ae_in_region, region_share:
        The measured share and its chance level.
    """

    category: str
    reason: str
    ae_in_region: float
    region_share: float


def localisation_flags(
    report: LocalisationReport,
    *,
    min_share: float | None = None,
) -> list[LocalisationFlag]:
    """Flag categories whose map puts less than ``min_share`` of its energy on the organ.

    The rule reads "the map for this category falls mostly outside that organ". ``overall``
    (region = body) is flagged the same way: its map then lies mostly outside the patient.

    Parameters
    ----------
    report:
        :func:`localise` output.
    min_share:
        Smallest acceptable energy share (0-1); default the ``CBCTQA_LOCALISATION_MIN_SHARE``
        setting.

    Returns
    -------
    list of LocalisationFlag
        In category order; categories with an undefined share (all-zero map) are not flagged.
    """
    if min_share is None:
        from qa_core.settings import get_settings

        min_share = get_settings().localisation_min_share
    if not (0.0 <= min_share <= 1.0):
        raise AttributionError(f"min_share must be in [0, 1]; got {min_share}")
    flags: list[LocalisationFlag] = []
    for cat, loc in report.categories.items():
        share = loc.ae_in_region
        if math.isnan(share) or share >= min_share:
            continue
        organ = "the body" if cat == "overall" else f"the contoured {cat} ({', '.join(loc.roi_names)})"
        flags.append(
            LocalisationFlag(
                category=cat,
                reason=(
                    f"attribution map falls mostly outside {organ}: {share:.0%} of the map's energy "
                    f"inside (limit {min_share:.0%}; chance level {loc.region_share:.0%})"
                ),
                ae_in_region=share,
                region_share=loc.region_share,
            )
        )
    return flags


@dataclass(frozen=True)
class CohortLocalisationFlag:
    """One session's category flagged by :func:`cohort_localisation_flags`.

    Attributes
    ----------
    session:
        Session identifier (the key of the input).
    category:
        Category name.
    reason:
        One plain sentence with the numbers.
    rule:
        ``"mostly_outside"`` (the model usually localises on this organ and this map does
        not) or ``"atypical"`` (the model never localises on it; this map is further away
        than usual).
    ae_in_region, region_share:
        The session's share and its chance level (0-1).
    value:
        The statistic compared with the limit: the share (``mostly_outside``) or the robust z
        of the log ratio to chance (``atypical``).
    """

    session: str
    category: str
    reason: str
    rule: str
    ae_in_region: float
    region_share: float
    value: float


def cohort_localisation_flags(
    shares: Mapping[str, Mapping[str, tuple[float, float]]],
    *,
    min_share: float | None = None,
    z_cut: float = COHORT_Z_CUT,
) -> list[CohortLocalisationFlag]:
    """Localisation alerts of a cohort: maps that fall outside the organ *for this model*.

    The rule and why are in the module docstring (section Alerts): per category, when the
    cohort's median energy share is ``>= min_share``, sessions below ``min_share`` are flagged
    (``mostly_outside``); else, when the median share is at least the median chance level
    (the maps do favour the organ), sessions whose robust z of
    ``log((share + ε) / (chance + ε))`` is below ``-z_cut`` (``atypical``); a category whose
    maps sit on the organ less than a uniform map would raises no per-case alert (for such a
    model every case is "outside", which is a finding about the model, not the case). A
    category with fewer than
    :data:`COHORT_MIN_SESSIONS` sessions with a contour raises nothing.

    Parameters
    ----------
    shares:
        Session -> category -> ``(ae_in_region, region_share)`` of the cohort's complete
        assessments; a NaN in either (no contour, or an all-zero map) leaves that session
        out of that category.
    min_share:
        Share (0-1) under which a map falls mostly outside its organ; default the
        ``CBCTQA_LOCALISATION_MIN_SHARE`` setting.
    z_cut:
        Robust-z cut (> 0) of the ``atypical`` rule.

    Returns
    -------
    list of CohortLocalisationFlag
        In category order (:data:`qa_core.categories.CATEGORIES`), then input session order.

    Raises
    ------
    AttributionError
        ``min_share`` outside [0, 1] or ``z_cut`` not positive.
    """
    from qa_core.outliers import robust_z

    if min_share is None:
        from qa_core.settings import get_settings

        min_share = get_settings().localisation_min_share
    if not (0.0 <= min_share <= 1.0):
        raise AttributionError(f"min_share must be in [0, 1]; got {min_share}")
    if not (z_cut > 0.0 and math.isfinite(z_cut)):
        raise AttributionError(f"z_cut must be a positive number; got {z_cut}")
    eps = COHORT_LOG_EPS
    cats = list(CATEGORIES) + sorted({c for v in shares.values() for c in v} - set(CATEGORIES))
    flags: list[CohortLocalisationFlag] = []
    for cat in cats:
        rows = [
            (str(session), float(per[cat][0]), float(per[cat][1]))
            for session, per in shares.items()
            if cat in per
            and math.isfinite(float(per[cat][0]))
            and math.isfinite(float(per[cat][1]))
        ]
        if len(rows) < COHORT_MIN_SESSIONS:
            continue
        share = np.array([r[1] for r in rows], dtype=np.float64)
        chance = np.array([r[2] for r in rows], dtype=np.float64)
        organ = "the body" if cat == "overall" else f"the contoured {cat}"
        usual = float(np.median(share))
        if usual >= min_share:
            for session, s, c in rows:
                if s < min_share:
                    flags.append(
                        CohortLocalisationFlag(
                            session, cat,
                            f"attribution map falls mostly outside {organ}: {s:.0%} of the map's "
                            f"energy inside, where this model usually puts {usual:.0%} "
                            f"(limit {min_share:.0%})",
                            "mostly_outside", s, c, s,
                        )
                    )  # fmt: skip
            continue
        if usual < float(np.median(chance)):
            # the model puts less of its map on this organ than a uniform map would: its maps
            # carry no organ information, so how far one case sits from the organ says nothing
            # about that case (a model-level finding: cbctqa validate and the report state it)
            continue
        x = np.log((share + eps) / (np.clip(chance, 0.0, None) + eps))
        rz = robust_z(x, name=f"{cat} log energy share over chance")
        if rz.method == "none":
            continue
        for (session, s, c), z in zip(rows, rz.z, strict=True):
            if z < -z_cut:
                flags.append(
                    CohortLocalisationFlag(
                        session, cat,
                        f"attribution map lies even further from {organ} than usual for this "
                        f"model: {s:.1%} of the map's energy inside (chance level {c:.1%}), "
                        f"where this model usually puts {usual:.1%} (robust z {z:.1f}, "
                        f"limit -{z_cut:g})",
                        "atypical", s, c, float(z),
                    )
                )  # fmt: skip
    return flags


def localise_rtstruct(
    result: AttributionResult,
    volume: Volume,
    rtstruct: str | os.PathLike[str],
    *,
    aliases: Mapping[str, str] | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> tuple[LocalisationReport, OrganMasks]:
    """Read an RTSTRUCT onto ``volume`` (:func:`qa_core.rtstruct.read_rtstruct`) and
    :func:`localise` ``result`` in its organs; the body is its ``External`` ROI when present,
    else derived from the image.

    Raises
    ------
    RtStructError
        As :func:`qa_core.rtstruct.read_rtstruct`.
    AttributionError
        As :func:`localise`.
    """
    from qa_core.rtstruct import read_rtstruct

    masks = read_rtstruct(rtstruct, volume, aliases=aliases)
    report = localise(
        result,
        masks.masks,
        body=masks.body,
        volume=volume,
        min_coverage=min_coverage,
        roi_names={k: v for k, v in masks.roi_names.items() if k in CATEGORIES},
        provenance={"rtstruct": masks.to_dict()},
    )
    return report, masks
