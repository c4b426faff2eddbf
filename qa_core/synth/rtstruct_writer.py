"""Write organ masks as a DICOM RT Structure Set that references a written CT series.

The simulator writes one RTSTRUCT per session beside its CBCT images, as radiotherapy
exports do: same patient and study, its own series, the CBCT's Frame of Reference, every CT
image referenced in the Contour Image Sequence, and the phantom's organs at risk under AAPM
TG-263 names (:data:`PHANTOM_ROIS`). :func:`qa_core.rtstruct.read_rtstruct` reads it back.

Contours are the iso-0.5 lines of each slice's mask (``skimage.measure.find_contours`` on
the zero-padded mask), which run between voxel centres: filling them by voxel centre gives
the mask back (within a voxel where two regions touch only at a corner). Nested contours
(holes) follow the even-odd rule. Collinear points are dropped (Douglas-Peucker at
0.05 voxel), so files stay small.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from qa_core.errors import DicomWriteError
from qa_core.rtstruct import RT_STRUCTURE_SET_STORAGE
from qa_core.synth.phantom import LABELS

__all__ = ["PHANTOM_ROIS", "mask_contours", "phantom_roi_masks", "write_rtstruct"]

#: TG-263 ROI name -> phantom labels it contours (left/right separately; External = body).
PHANTOM_ROIS: Final[dict[str, tuple[int, ...]]] = {
    "External": tuple(v for v in LABELS.values() if v != 0),
    "Parotid_L": (LABELS["parotid_left"],),
    "Parotid_R": (LABELS["parotid_right"],),
    "Glnd_Submand_L": (LABELS["submandibular_left"],),
    "Glnd_Submand_R": (LABELS["submandibular_right"],),
    "Larynx": (LABELS["larynx"], LABELS["laryngeal_cartilage"]),
    "Bone_Mandible": (LABELS["mandible"],),
}

_COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "External": (0, 255, 0),
    "Parotid_L": (255, 128, 0),
    "Parotid_R": (255, 64, 0),
    "Glnd_Submand_L": (0, 160, 255),
    "Glnd_Submand_R": (0, 96, 255),
    "Larynx": (255, 0, 255),
    "Bone_Mandible": (255, 255, 160),
}
_DETACHED_STUDY_MANAGEMENT: Final[str] = "1.2.840.10008.3.1.2.3.1"


def phantom_roi_masks(labels: npt.NDArray[np.integer]) -> dict[str, npt.NDArray[np.bool_]]:
    """TG-263 ROI name -> bool mask from a phantom label map (:data:`PHANTOM_ROIS`).

    ROIs absent from the volume (e.g. a larynx below the scanned range) are left out.
    """
    out: dict[str, npt.NDArray[np.bool_]] = {}
    for name, values in PHANTOM_ROIS.items():
        mask = np.isin(labels, values)
        if mask.any():
            out[name] = mask
    return out


def mask_contours(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Closed contours ``(n, 2)`` in (row, col) voxel indices around one 2-D mask."""
    from skimage.measure import approximate_polygon, find_contours

    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
        c = c - 1.0  # undo the padding
        if len(c) > 3 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        closed = np.vstack([c, c[:1]])
        simplified = approximate_polygon(closed, tolerance=0.05)[:-1]  # type: ignore[no-untyped-call]
        if len(simplified) >= 3:
            out.append(simplified)
    return out


def _ds(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")  # 1 um: far below a voxel
    return "0" if text in ("-0", "") else text


def write_rtstruct(
    ct_files: Sequence[str | os.PathLike[str]],
    rois: Mapping[str, npt.NDArray[np.bool_]],
    out_path: str | os.PathLike[str],
    *,
    uid_seed: str = "cbctqa-rtstruct",
    series_number: int = 901,
    label: str = "OARs",
    series_description: str = "RTSTRUCT organs at risk (TG-263)",
    interpreted_types: Mapping[str, str] | None = None,
) -> Path:
    """Write ``rois`` as an RTSTRUCT referencing the CT series in ``ct_files``.

    Parameters
    ----------
    ct_files:
        The CT series' files in slice order (as :func:`qa_core.dicom_writer.write_series`
        returns them): axial, slice ``k`` of every mask lies in ``ct_files[k]``.
    rois:
        ROI name -> bool ``(slices, rows, cols)`` on the CT grid (row = +y, column = +x).
    out_path:
        The file to write.
    uid_seed:
        Entropy for the structure set's UIDs (deterministic for a seeded simulation).
    series_number, label, series_description:
        Header values of the structure set.
    interpreted_types:
        ROI name -> RT ROI Interpreted Type; default ``EXTERNAL`` for ``External`` and
        ``ORGAN`` otherwise.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    DicomWriteError
        No CT file, files that are not one axial series, or masks of the wrong shape.
    """
    out = Path(out_path)
    if not ct_files:
        raise DicomWriteError(f"cannot write RTSTRUCT {out}: no CT file given to reference")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_files]
    first = headers[0]
    series_uids = {str(h.SeriesInstanceUID) for h in headers}
    if len(series_uids) != 1:
        raise DicomWriteError(
            f"cannot write RTSTRUCT {out}: the CT files belong to {len(series_uids)} series; pass one series"
        )
    iop = [float(v) for v in first.ImageOrientationPatient]
    if not np.allclose(iop, [1, 0, 0, 0, 1, 0], atol=1e-4):
        raise DicomWriteError(f"cannot write RTSTRUCT {out}: the CT series is not axial ({iop})")
    shape = (len(headers), int(first.Rows), int(first.Columns))
    dy, dx = (float(v) for v in first.PixelSpacing)
    for name, mask in rois.items():
        if mask.shape != shape:
            raise DicomWriteError(
                f"cannot write RTSTRUCT {out}: ROI {name!r} mask has shape {mask.shape}, the CT "
                f"series {shape}"
            )

    def uid(*parts: str) -> str:
        return str(generate_uid(entropy_srcs=[uid_seed, *parts]))

    sop_uid = uid("rtstruct", "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RT_STRUCTURE_SET_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    for kw in (
        "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "Manufacturer",
    ):  # fmt: skip
        setattr(ds, kw, first.get(kw, ""))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = uid("rtstruct", "series")
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = ds.StructureSetDate = str(first.get("StudyDate", ""))
    ds.SeriesTime = ds.StructureSetTime = str(first.get("StudyTime", ""))
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label
    ds.StructureSetName = label
    ds.OperatorsName = ""
    frame_uid = str(first.FrameOfReferenceUID)

    contour_images = DicomSequence()
    for h in headers:
        item = Dataset()
        item.ReferencedSOPClassUID = h.SOPClassUID
        item.ReferencedSOPInstanceUID = h.SOPInstanceUID
        contour_images.append(item)
    ser = Dataset()
    ser.SeriesInstanceUID = first.SeriesInstanceUID
    ser.ContourImageSequence = contour_images
    study = Dataset()
    study.ReferencedSOPClassUID = _DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([ser])
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = frame_uid
    ref_for.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref_for])

    roi_seq, contour_seq, obs_seq = DicomSequence(), DicomSequence(), DicomSequence()
    types = dict(interpreted_types or {})
    for number, (name, mask) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_seq.append(roi)
        contours = DicomSequence()
        for k, h in enumerate(headers):
            ipp = [float(v) for v in h.ImagePositionPatient]
            for poly in mask_contours(np.asarray(mask[k], dtype=bool)):
                xs = ipp[0] + poly[:, 1] * dx
                ys = ipp[1] + poly[:, 0] * dy
                data = np.column_stack([xs, ys, np.full(len(poly), ipp[2])]).ravel()
                img = Dataset()
                img.ReferencedSOPClassUID = h.SOPClassUID
                img.ReferencedSOPInstanceUID = h.SOPInstanceUID
                c = Dataset()
                c.ContourImageSequence = DicomSequence([img])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                c.ContourData = [_ds(v) for v in data]
                contours.append(c)
        rc = Dataset()
        rc.ROIDisplayColor = list(_COLOURS.get(name, (255, 0, 0)))
        rc.ReferencedROINumber = number
        rc.ContourSequence = contours
        contour_seq.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = types.get(name, "EXTERNAL" if name == "External" else "ORGAN")
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    ds.ApprovalStatus = "UNAPPROVED"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out
