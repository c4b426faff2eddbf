"""Organ contours in, masks out: a DICOM RTSTRUCT read onto a loaded volume's voxel grid.

Head-and-neck radiotherapy patients carry contoured organs at risk in a DICOM RT Structure
Set (RTSTRUCT), named by AAPM TG-263 (``Parotid_L``, ``Parotid_R``, ``Glnd_Submand_L``,
``Glnd_Submand_R``, ``Larynx``, ``Bone_Mandible``, ``External``) and propagated to the CBCT for
adaptive work. :func:`read_rtstruct` turns one into boolean masks on the grid of a
:class:`~qa_core.volume.Volume` loaded by :func:`~qa_core.dicom_series.load_series`, one
mask per quality category (left and right merged), plus the body (``External``).

Checks (each failure is one line naming the file, the ROI or the DICOM tag, and the fix):

* the file is an RT Structure Set (SOP Class UID 1.2.840.10008.5.1.4.1.1.481.3 or
  Modality ``RTSTRUCT``);
* **frame of reference**: every used ROI's Referenced Frame of Reference UID (3006,0024) is
  the volume's FrameOfReferenceUID (0020,0052);
* **referenced series**: the RT Referenced Series Sequence (3006,0014) names the volume's
  SeriesInstanceUID, and every Contour Image Sequence (3006,0016) item refers to one of the
  volume's SOP instances (when the volume records them, as ``load_series`` does);
* at least one ROI name maps to a category (:data:`TG263_ROIS`, :data:`DEFAULT_ALIASES`,
  and ``CBCTQA_ROI_ALIASES``);
* a used ROI's contours are CLOSED_PLANAR (3006,0042), axial, on the volume's slices, and
  cover at least one voxel.

Rasterisation
-------------
Contour points (patient mm, LPS) become fractional (row, column) indices with the volume's
origin and spacing; a voxel belongs to a contour when its centre lies inside the polygon or
on its boundary (so a contour drawn through boundary voxel centres, as rt-utils and many
planning systems write them, gives back exactly that mask, and one drawn along voxel edges
gives back the voxels it encloses). Several contours of one ROI on one slice combine by
even-odd (XOR), so an inner contour is a hole, as DICOM intends; ROIs of one category
combine by union.

Why plain pydicom and scikit-image rather than rt-utils or highdicom: the product already
depends on both; the reader must check the frame of reference, the referenced series and
instances and the contour type and report each failure with the tag concerned, which
rt-utils does not (it reads masks from a series folder it loads itself, silently) and
highdicom does not address (it implements Segmentation and SR, not RT Structure Sets); and
the masks must land on the grid *after* ``load_series``' reorientation, which only our own
loader knows. rt-utils is used in the tests as an independent writer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from qa_core.categories import CATEGORIES
from qa_core.errors import (
    ConfigurationError,
    RtStructEmptyError,
    RtStructError,
    RtStructGeometryError,
    RtStructNoMatchingRoiError,
    RtStructOpenContourError,
    RtStructReferenceError,
)
from qa_core.volume import Volume

__all__ = [
    "BODY",
    "DEFAULT_ALIASES",
    "RT_STRUCTURE_SET_STORAGE",
    "TG263_ROIS",
    "OrganMasks",
    "StructureSetInfo",
    "find_rtstructs",
    "normalise_roi_name",
    "rasterise_polygon",
    "read_rtstruct",
    "read_structure_set_info",
    "roi_table",
]

#: SOP Class UID of RT Structure Set Storage.
RT_STRUCTURE_SET_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.481.3"

#: Name of the body region in :class:`OrganMasks` and in :data:`TG263_ROIS`.
BODY: Final[str] = "body"

#: TG-263 ROI name -> category (or :data:`BODY`). Left and right merge into one category.
TG263_ROIS: Final[dict[str, str]] = {
    "Parotid_L": "parotid",
    "Parotid_R": "parotid",
    "Parotids": "parotid",
    "Glnd_Submand_L": "submandibular",
    "Glnd_Submand_R": "submandibular",
    "Glnd_Submands": "submandibular",
    "Larynx": "larynx",
    "Bone_Mandible": "mandible",
    "External": BODY,
}


def normalise_roi_name(name: str) -> str:
    """Case- and punctuation-insensitive key of an ROI name: ``"Parotid L"`` -> ``"parotid_l"``.

    Lower case; every run of characters other than letters and digits becomes one ``_``;
    leading and trailing ``_`` are dropped.

    >>> normalise_roi_name(" Glnd-Submand (L) ")
    'glnd_submand_l'
    """
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _sided(organs: Sequence[str], target: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for side, words in (("L", ("l", "lt", "left")), ("R", ("r", "rt", "right"))):
        for organ in organs:
            for w in words:
                out[f"{organ}_{w}"] = f"{target}_{side}"
                out[f"{w}_{organ}"] = f"{target}_{side}"
    return out


#: Common aliases (normalised with :func:`normalise_roi_name`) -> TG-263 name. Planning
#: systems and older protocols write ``Parotid Lt``, ``L_Parotid``, ``SMG_R``,
#: ``Submandibular_Left``, ``Mandible``, ``BODY``, ``Skin`` ... Derived names that TG-263
#: marks as such (``_PRV``, ``z`` prefix, ``opt``) are deliberately not aliases: they are not
#: the organ.
DEFAULT_ALIASES: Final[dict[str, str]] = {
    **_sided(("parotid", "parotid_gland", "parotidgland"), "Parotid"),
    **_sided(
        (
            "glnd_submand",
            "submand",
            "submandibular",
            "submandibular_gland",
            "submandibulargland",
            "smg",
            "submandibular_glnd",
        ),
        "Glnd_Submand",
    ),
    "parotid": "Parotids",
    "parotid_glands": "Parotids",
    "submandibular_glands": "Glnd_Submands",
    "submandibulars": "Glnd_Submands",
    "larynx_sg": "Larynx",
    "larynx_glottic": "Larynx",
    "glottis": "Larynx",
    "supraglottic_larynx": "Larynx",
    "mandible": "Bone_Mandible",
    "mandibula": "Bone_Mandible",
    "bone_mandible": "Bone_Mandible",
    "body": "External",
    "skin": "External",
    "outline": "External",
    "external_contour": "External",
    "body_contour": "External",
    "patient_outline": "External",
}

_CLOSED = "CLOSED_PLANAR"
#: Largest |z| difference (mm) between points of one planar axial contour.
_PLANAR_TOL_MM = 1e-3
#: A contour's z may deviate from its slice centre by this fraction of the slice spacing.
_SLICE_TOL = 0.25
#: Distance (in voxels) under which a voxel centre counts as on a polygon edge.
_EDGE_TOL = 1e-3


def roi_table(aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Normalised ROI name -> category (or :data:`BODY`).

    TG-263 names and :data:`DEFAULT_ALIASES` first, then ``aliases`` (for example from the
    ``CBCTQA_ROI_ALIASES`` setting), whose values may be a TG-263 name (``Parotid_L``), a
    category (``parotid``) or ``body``; an empty value removes a name from the table.

    Raises
    ------
    ConfigurationError
        An alias maps to something that is neither a TG-263 name of :data:`TG263_ROIS`, a
        category, ``body`` nor ``""``.
    """
    table = {normalise_roi_name(k): v for k, v in TG263_ROIS.items()}
    for alias, tg in DEFAULT_ALIASES.items():
        table[alias] = TG263_ROIS[tg]
    by_norm_tg = {normalise_roi_name(k): v for k, v in TG263_ROIS.items()}
    targets = {*CATEGORIES, BODY}
    for alias, target in (aliases or {}).items():
        key = normalise_roi_name(str(alias))
        value = str(target).strip()
        if not key:
            raise ConfigurationError(
                f"CBCTQA_ROI_ALIASES: alias {alias!r} is empty after normalisation; use an ROI name"
            )
        if not value:
            table.pop(key, None)
        elif normalise_roi_name(value) in by_norm_tg:
            table[key] = by_norm_tg[normalise_roi_name(value)]
        elif value.lower() in targets:
            table[key] = value.lower()
        else:
            raise ConfigurationError(
                f"CBCTQA_ROI_ALIASES: {alias!r} maps to {target!r}, which is neither a TG-263 name "
                f"({', '.join(TG263_ROIS)}), a category ({', '.join(CATEGORIES)}) nor 'body'; "
                'fix the JSON, e.g. {"PAROTIDE_SX": "Parotid_L"}'
            )
    return table


@dataclass(frozen=True)
class StructureSetInfo:
    """Header facts of one RTSTRUCT file (no contours rasterised).

    Attributes
    ----------
    path:
        The file.
    sop_instance_uid, study_uid, series_uid:
        The structure set's own UIDs.
    referenced_series_uids:
        SeriesInstanceUIDs named in the RT Referenced Series Sequence (3006,0014).
    frame_of_reference_uids:
        FrameOfReferenceUIDs of the Referenced Frame of Reference Sequence (3006,0010).
    roi_names:
        ROI Name (3006,0026) of every ROI, in file order.
    label:
        Structure Set Label (3006,0002).
    """

    path: Path
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    referenced_series_uids: tuple[str, ...]
    frame_of_reference_uids: tuple[str, ...]
    roi_names: tuple[str, ...]
    label: str = ""


@dataclass(frozen=True, eq=False)
class OrganMasks:
    """Boolean organ regions on a volume's voxel grid, one per category.

    Attributes
    ----------
    masks:
        Category -> bool ``(slices, rows, cols)``, the union of the category's ROIs (left and
        right merged). Only categories with a matching ROI are present; ``overall`` is never
        here (its region is the body).
    body:
        bool ``(slices, rows, cols)`` from the ``External`` ROI, or ``None`` when the
        structure set has none.
    roi_names:
        Category (or ``body``) -> the ROI names used for it, in file order.
    unmatched:
        ROI names that map to no category (ignored).
    source:
        Path of the RTSTRUCT file (``""`` when built in memory).
    sop_instance_uid, series_uid:
        The structure set's SOPInstanceUID and SeriesInstanceUID.
    warnings:
        Checks that could not run (e.g. the volume records no FrameOfReferenceUID).
    """

    masks: Mapping[str, npt.NDArray[np.bool_]]
    body: npt.NDArray[np.bool_] | None = None
    roi_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unmatched: tuple[str, ...] = ()
    source: str = ""
    sop_instance_uid: str = ""
    series_uid: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories with a region, in contract order."""
        return tuple(c for c in CATEGORIES if c in self.masks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays): ROI names, voxel counts, source, warnings."""
        return {
            "source": self.source,
            "sop_instance_uid": self.sop_instance_uid,
            "series_uid": self.series_uid,
            "roi_names": {k: list(v) for k, v in self.roi_names.items()},
            "voxels": {
                **{c: int(m.sum()) for c, m in self.masks.items()},
                **({BODY: int(self.body.sum())} if self.body is not None else {}),
            },
            "unmatched": list(self.unmatched),
            "warnings": list(self.warnings),
        }


def _read(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise RtStructError(f"RTSTRUCT {path} does not exist; pass the structure set file (RS*.dcm)") from exc
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
        raise RtStructError(
            f"RTSTRUCT {path} is not a readable DICOM file ({type(exc).__name__}: {exc}); "
            "pass the structure set exported from the planning or contouring system"
        ) from exc
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if sop_class != RT_STRUCTURE_SET_STORAGE and modality != "RTSTRUCT":
        raise RtStructError(
            f"{path} is not an RT Structure Set (SOPClassUID (0008,0016) {sop_class or 'missing'}, "
            f"Modality (0008,0060) {modality or 'missing'}); pass the RTSTRUCT file, not an image"
        )
    return ds


def _seq(ds: Dataset, keyword: str) -> list[Dataset]:
    value = ds.get(keyword)
    return list(value) if value else []


def _referenced(ds: Dataset) -> tuple[tuple[str, ...], tuple[str, ...], set[str]]:
    """(referenced series UIDs, frame-of-reference UIDs, referenced SOP instance UIDs)."""
    series: list[str] = []
    frames: list[str] = []
    sops: set[str] = set()
    for ref_for in _seq(ds, "ReferencedFrameOfReferenceSequence"):
        uid = str(ref_for.get("FrameOfReferenceUID", ""))
        if uid:
            frames.append(uid)
        for study in _seq(ref_for, "RTReferencedStudySequence"):
            for ser in _seq(study, "RTReferencedSeriesSequence"):
                s_uid = str(ser.get("SeriesInstanceUID", ""))
                if s_uid:
                    series.append(s_uid)
                for img in _seq(ser, "ContourImageSequence"):
                    sops.add(str(img.get("ReferencedSOPInstanceUID", "")))
    return tuple(dict.fromkeys(series)), tuple(dict.fromkeys(frames)), sops


def read_structure_set_info(path: str | os.PathLike[str]) -> StructureSetInfo:
    """Read an RTSTRUCT's references and ROI names (no rasterisation).

    Raises
    ------
    RtStructError
        Not a readable DICOM file, or not an RT Structure Set.
    """
    p = Path(path)
    ds = _read(p)
    series, frames, _ = _referenced(ds)
    return StructureSetInfo(
        path=p,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        referenced_series_uids=series,
        frame_of_reference_uids=frames,
        roi_names=tuple(str(r.get("ROIName", "")) for r in _seq(ds, "StructureSetROISequence")),
        label=str(ds.get("StructureSetLabel", "")),
    )


def find_rtstructs(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    series_uid: str | None = None,
) -> list[StructureSetInfo]:
    """RT Structure Sets among the files of ``source`` (folder searched recursively, or files).

    Only files with the DICOM Part 10 marker are opened, headers only. With ``series_uid``,
    only structure sets that reference that series are returned. Sorted by path.
    """
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(f for f in sorted(p.rglob("*")) if f.is_file())
        elif p.is_file():
            files.append(p)
    found: list[StructureSetInfo] = []
    for f in files:
        try:
            with f.open("rb") as fh:
                fh.seek(128)
                if fh.read(4) != b"DICM":
                    continue
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError):
            continue
        if str(ds.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE and str(
            ds.get("Modality", "")
        ).upper() != "RTSTRUCT":
            continue
        try:
            info = read_structure_set_info(f)
        except RtStructError:
            continue
        if series_uid is None or series_uid in info.referenced_series_uids:
            found.append(info)
    return found


def _edge_centres(
    r0: float, c0: float, r1: float, c1: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Voxel centres (integer row, column) lying on the segment, found by stepping along its
    longer axis: O(length), however long and slanted the edge."""
    dr, dc = r1 - r0, c1 - c0
    if abs(dr) >= abs(dc):
        if abs(dr) <= _EDGE_TOL:  # degenerate: a point
            rr = np.array([round(r0)]) if abs(r0 - round(r0)) <= _EDGE_TOL else np.empty(0)
            cc = np.array([round(c0)]) if rr.size and abs(c0 - round(c0)) <= _EDGE_TOL else np.empty(0)
            return rr[: cc.size].astype(np.int64), cc.astype(np.int64)
        major = np.arange(np.ceil(min(r0, r1) - _EDGE_TOL), np.floor(max(r0, r1) + _EDGE_TOL) + 1)
        minor = c0 + (major - r0) * (dc / dr)
        keep = np.abs(minor - np.round(minor)) <= _EDGE_TOL
        return major[keep].astype(np.int64), np.round(minor[keep]).astype(np.int64)
    major = np.arange(np.ceil(min(c0, c1) - _EDGE_TOL), np.floor(max(c0, c1) + _EDGE_TOL) + 1)
    minor = r0 + (major - c0) * (dr / dc)
    keep = np.abs(minor - np.round(minor)) <= _EDGE_TOL
    return np.round(minor[keep]).astype(np.int64), major[keep].astype(np.int64)


def rasterise_polygon(
    rows: npt.ArrayLike, cols: npt.ArrayLike, shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """Voxels whose centre is inside the closed polygon or on its boundary.

    Parameters
    ----------
    rows, cols:
        Fractional row and column indices of the vertices (voxel centres at integers); the
        polygon closes itself.
    shape:
        ``(rows, cols)`` of the slice.

    Returns
    -------
    numpy.ndarray
        bool ``shape``.
    """
    from skimage.draw import polygon as fill_polygon

    r = np.asarray(rows, dtype=np.float64)
    c = np.asarray(cols, dtype=np.float64)
    mask = np.zeros(shape, dtype=bool)
    if r.size == 0:
        return mask
    rr, cc = fill_polygon(r, c, shape=shape)  # type: ignore[no-untyped-call]
    mask[rr, cc] = True
    # centres exactly on an edge (contours drawn through boundary voxel centres)
    n = r.size
    for i in range(n):
        er, ec = _edge_centres(r[i], c[i], r[(i + 1) % n], c[(i + 1) % n])
        inside = (er >= 0) & (er < shape[0]) & (ec >= 0) & (ec < shape[1])
        mask[er[inside], ec[inside]] = True
    return mask


def _check_axial(volume: Volume, where: str) -> None:
    if tuple(round(v, 6) for v in volume.orientation) != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
        raise RtStructGeometryError(
            f"{where}: the volume's orientation {volume.orientation} is not axial (1,0,0,0,1,0); "
            "load it with qa_core.load_series, which reorients axis-aligned series"
        )


def _check_references(
    ds: Dataset, volume: Volume, path_text: str, warnings: list[str]
) -> tuple[set[str], str]:
    """Frame of reference and referenced series / instances; returns (volume SOPs, FoR)."""
    series, frames, sops = _referenced(ds)
    vprov = volume.provenance or {}
    vol_for = str(vprov.get("frame_of_reference_uid") or "")
    vol_sops = {str(u) for u in vprov.get("sop_instance_uids") or ()}
    if volume.series_uid:
        if not series:
            raise RtStructReferenceError(
                f"RTSTRUCT {path_text} names no series in RTReferencedSeriesSequence (3006,0014); "
                f"it must reference the CBCT series {volume.series_uid}: export the structure set "
                "for that series"
            )
        if volume.series_uid not in series:
            raise RtStructReferenceError(
                f"RTSTRUCT {path_text} references series {', '.join(series)} "
                f"(RTReferencedSeriesSequence (3006,0014)), not the loaded series {volume.series_uid}; "
                "propagate the contours to this CBCT and export its structure set"
            )
    else:
        warnings.append("the volume has no SeriesInstanceUID: referenced series not checked")
    if vol_for:
        if frames and vol_for not in frames:
            raise RtStructReferenceError(
                f"RTSTRUCT {path_text} is in frame of reference {', '.join(frames)} "
                f"(ReferencedFrameOfReferenceSequence (3006,0010)), the volume in {vol_for} "
                "(FrameOfReferenceUID (0020,0052)); register and propagate the contours to this CBCT"
            )
    else:
        warnings.append("the volume records no FrameOfReferenceUID: frame of reference not checked")
    if vol_sops:
        stray = sorted(u for u in sops if u and u not in vol_sops)
        if stray:
            raise RtStructReferenceError(
                f"RTSTRUCT {path_text}: {len(stray)} ContourImageSequence (3006,0016) item(s) refer to "
                f"image instances not in series {volume.series_uid} (e.g. {stray[0]}); the structure "
                "set belongs to another copy of the series: export it again from this series"
            )
    else:
        warnings.append("the volume records no SOPInstanceUIDs: referenced instances not checked")
    return vol_sops, vol_for


def _contour_points(item: Dataset, roi: str, number: int, path_text: str) -> npt.NDArray[np.float64]:
    data = item.get("ContourData")
    if data is None or len(data) == 0:
        raise RtStructEmptyError(
            f"RTSTRUCT {path_text}: ROI {roi!r} contour {number} has no ContourData (3006,0050); "
            "re-export the structure set"
        )
    try:
        pts = np.asarray([float(v) for v in data], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RtStructError(
            f"RTSTRUCT {path_text}: ROI {roi!r} contour {number} has non-numeric ContourData "
            "(3006,0050); re-export the structure set"
        ) from exc
    if pts.size % 3 != 0 or not np.all(np.isfinite(pts)):
        raise RtStructError(
            f"RTSTRUCT {path_text}: ROI {roi!r} contour {number} ContourData (3006,0050) holds "
            f"{pts.size} values, not finite (x, y, z) triplets; re-export the structure set"
        )
    return pts.reshape(-1, 3)


def read_rtstruct(
    path: str | os.PathLike[str],
    volume: Volume,
    *,
    aliases: Mapping[str, str] | None = None,
    check_references: bool = True,
) -> OrganMasks:
    """Read an RTSTRUCT into boolean category masks on ``volume``'s voxel grid.

    Parameters
    ----------
    path:
        The RT Structure Set file.
    volume:
        The CBCT volume as :func:`~qa_core.dicom_series.load_series` returns it (axial,
        provenance with ``frame_of_reference_uid`` and ``sop_instance_uids``).
    aliases:
        Extra ROI name -> TG-263 name / category / ``body`` entries (see :func:`roi_table`);
        default the ``CBCTQA_ROI_ALIASES`` setting.
    check_references:
        Check the frame of reference, referenced series and instances (default). Turn off
        only for contours known to be registered to the volume by other means.

    Returns
    -------
    OrganMasks
        One mask per category with a matching ROI (left and right merged), the body from
        ``External`` when present.

    Raises
    ------
    RtStructError
        Not readable or not an RT Structure Set.
    RtStructReferenceError
        Another frame of reference, another series, or contour images of another series.
    RtStructNoMatchingRoiError
        No ROI name maps to a category.
    RtStructOpenContourError
        A used ROI holds an OPEN_PLANAR, OPEN_NONPLANAR or POINT contour.
    RtStructEmptyError
        A used ROI has no contours, or they cover no voxel.
    RtStructGeometryError
        A contour is not axial, lies between slices or outside the volume.
    """
    p = Path(path)
    path_text = str(p)
    ds = _read(p)
    if aliases is None:
        from qa_core.settings import get_settings

        aliases = get_settings().roi_aliases
    table = roi_table(aliases)
    _check_axial(volume, f"RTSTRUCT {path_text}")
    warnings: list[str] = []
    vol_for = str((volume.provenance or {}).get("frame_of_reference_uid") or "")
    if check_references:
        _, vol_for = _check_references(ds, volume, path_text, warnings)

    rois = _seq(ds, "StructureSetROISequence")
    if not rois:
        raise RtStructNoMatchingRoiError(
            f"RTSTRUCT {path_text} has no ROI (StructureSetROISequence (3006,0020) is empty); "
            "export the structure set with its organs"
        )
    names: dict[int, str] = {}
    roi_for: dict[int, str] = {}
    for r in rois:
        try:
            number = int(r.get("ROINumber"))
        except (TypeError, ValueError) as exc:
            raise RtStructError(
                f"RTSTRUCT {path_text}: ROI {r.get('ROIName', '?')!r} has no valid ROINumber (3006,0022)"
            ) from exc
        names[number] = str(r.get("ROIName", "")).strip()
        roi_for[number] = str(r.get("ReferencedFrameOfReferenceUID", ""))
    used = {n: table[normalise_roi_name(nm)] for n, nm in names.items() if normalise_roi_name(nm) in table}
    if not any(t != BODY for t in used.values()):
        from_aliases = ", ".join(sorted(TG263_ROIS))
        raise RtStructNoMatchingRoiError(
            f"RTSTRUCT {path_text}: no ROI maps to a category; ROI names found: "
            f"{', '.join(repr(v) for v in names.values()) or 'none'}; expected TG-263 names "
            f"({from_aliases}) or a common alias; map others with CBCTQA_ROI_ALIASES, e.g. "
            '\'{"PAROTIDE_SX": "Parotid_L"}\''
        )
    if check_references and vol_for:
        for number in used:
            ref = roi_for.get(number, "")
            if ref and ref != vol_for:
                raise RtStructReferenceError(
                    f"RTSTRUCT {path_text}: ROI {names[number]!r} is in frame of reference {ref} "
                    f"(ReferencedFrameOfReferenceUID (3006,0024)), the volume in {vol_for}; "
                    "register and propagate the contours to this CBCT"
                )

    contours_by_roi: dict[int, list[Dataset]] = {}
    for rc in _seq(ds, "ROIContourSequence"):
        try:
            ref_number = int(rc.get("ReferencedROINumber"))
        except (TypeError, ValueError):
            continue
        contours_by_roi.setdefault(ref_number, []).extend(_seq(rc, "ContourSequence"))

    n_sl, n_r, n_c = volume.shape
    dz, dy, dx = (float(s) for s in volume.spacing)
    ox, oy, oz = (float(v) for v in volume.origin)
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    body: npt.NDArray[np.bool_] | None = None
    used_names: dict[str, list[str]] = {}
    for number, target in used.items():
        roi = names[number]
        items = contours_by_roi.get(number, [])
        if not items:
            raise RtStructEmptyError(
                f"RTSTRUCT {path_text}: ROI {roi!r} has no contours (no ContourSequence (3006,0040) "
                "in its ROIContourSequence item); contour it, or remove it from the structure set"
            )
        roi_mask = np.zeros((n_sl, n_r, n_c), dtype=bool)
        for i, item in enumerate(items, start=1):
            kind = str(item.get("ContourGeometricType", "")).upper()
            if kind != _CLOSED:
                raise RtStructOpenContourError(
                    f"RTSTRUCT {path_text}: ROI {roi!r} contour {i} is {kind or 'untyped'} "
                    "(ContourGeometricType (3006,0042)); organ contours must be CLOSED_PLANAR: "
                    "close the contour in the contouring system and export again"
                )
            pts = _contour_points(item, roi, i, path_text)
            z = pts[:, 2]
            if float(np.ptp(z)) > _PLANAR_TOL_MM:
                raise RtStructGeometryError(
                    f"RTSTRUCT {path_text}: ROI {roi!r} contour {i} is not axial (z from {z.min():.3f} "
                    f"to {z.max():.3f} mm); only axial contours are supported: export axial contours"
                )
            k_f = (float(z[0]) - oz) / dz
            k = round(k_f)
            if not (0 <= k < n_sl) or abs(k_f - k) > _SLICE_TOL:
                raise RtStructGeometryError(
                    f"RTSTRUCT {path_text}: ROI {roi!r} contour {i} lies at z = {z[0]:.3f} mm, "
                    f"{'outside the volume' if not (0 <= k < n_sl) else 'between slices'} (slices at "
                    f"{oz:.3f} + k * {dz:.4g} mm, k = 0..{n_sl - 1}); propagate the contours to this CBCT"
                )
            cols_f = (pts[:, 0] - ox) / dx
            rows_f = (pts[:, 1] - oy) / dy
            roi_mask[k] ^= rasterise_polygon(rows_f, cols_f, (n_r, n_c))
        if not roi_mask.any():
            raise RtStructEmptyError(
                f"RTSTRUCT {path_text}: ROI {roi!r} has {len(items)} contour(s) but they cover no voxel "
                "of the volume (degenerate or outside the field of view); check the contours"
            )
        used_names.setdefault(target, []).append(roi)
        if target == BODY:
            body = roi_mask if body is None else (body | roi_mask)
        else:
            masks[target] = roi_mask if target not in masks else (masks[target] | roi_mask)
    unmatched = tuple(nm for n, nm in names.items() if n not in used)
    ordered = {c: masks[c] for c in CATEGORIES if c in masks}
    return OrganMasks(
        masks=ordered,
        body=body,
        roi_names={k: tuple(v) for k, v in used_names.items()},
        unmatched=unmatched,
        source=path_text,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        warnings=tuple(warnings),
    )
