"""Write a HU volume as a CT Image Storage DICOM series (one file per slice).

The writer is the inverse of :func:`qa_core.dicom_series.load_series`: a volume written
with :func:`write_series` loads back with the same geometry (spacing, origin, slice order)
and HU values within 1 HU (values are rounded to integers on storage).

Header choices (a plausible head-and-neck CBCT series):

* SOP Class CT Image Storage, Modality ``CT``, ImageType ``ORIGINAL\\PRIMARY\\AXIAL``,
  PatientPosition ``HFS``.
* Axial slices: ImageOrientationPatient ``1\\0\\0\\0\\1\\0``; ImagePositionPatient moves
  along +z with increasing slice index, so slice 0 is the most inferior.
* Stored values are 16-bit integers with RescaleIntercept -1024 and RescaleSlope 1
  (RescaleType ``HU``): unsigned (PixelRepresentation 0) when every HU value is
  >= -1024, signed (PixelRepresentation 1) otherwise.
* UIDs are deterministic: derived from ``uid_seed`` with
  :func:`pydicom.uid.generate_uid` (``entropy_srcs``), so re-running a seeded simulation
  reproduces the same Study/Series/SOP Instance UIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from qa_core.errors import DicomWriteError

__all__ = ["RESCALE_INTERCEPT", "RESCALE_SLOPE", "write_series"]

#: HU = stored value x slope + intercept; intercept chosen so air (-1000 HU) is stored >= 0.
RESCALE_INTERCEPT: float = -1024.0
#: Integer HU resolution.
RESCALE_SLOPE: float = 1.0

_UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_U16_MAX = 65535
_I16_MIN, _I16_MAX = -32768, 32767


def _uid(*parts: str) -> UID:
    """Deterministic UID from the given entropy strings (pydicom's UID root)."""
    return generate_uid(entropy_srcs=list(parts))


def _ds_str(value: float) -> str:
    """Format a float for a DS (Decimal String, max 16 chars) element."""
    text = f"{value:.6g}"
    if len(text) > 16:  # pragma: no cover - only for absurd magnitudes
        text = f"{value:.9e}"[:16]
    return text


def _choose_storage(
    hu: npt.NDArray[np.floating], out_dir: Path
) -> tuple[np.dtype[np.integer], int]:
    """Pick uint16/int16 stored values so every HU value is representable after rounding."""
    if not np.all(np.isfinite(hu)):
        raise DicomWriteError(
            f"cannot write DICOM series to {out_dir}: the HU volume contains NaN or infinite "
            "values; replace them (e.g. np.nan_to_num(hu, nan=-1000.0)) before writing"
        )
    lo = float(np.min(hu)) - RESCALE_INTERCEPT
    hi = float(np.max(hu)) - RESCALE_INTERCEPT
    if lo >= -0.5 and hi < _U16_MAX + 0.5:
        return np.dtype(np.uint16), 0
    if lo >= _I16_MIN - 0.5 and hi < _I16_MAX + 0.5:
        return np.dtype(np.int16), 1
    raise DicomWriteError(
        f"cannot write DICOM series to {out_dir}: HU range [{np.min(hu):.1f}, {np.max(hu):.1f}] "
        f"does not fit 16-bit stored values with RescaleIntercept {RESCALE_INTERCEPT:g}; "
        "clip the volume to [-33792, 31743] HU (signed) or [-1024, 64511] HU (unsigned) first"
    )


def write_series(
    hu: npt.NDArray[np.floating],
    spacing: tuple[float, float, float],
    out_dir: str | Path,
    *,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    study_uid: str | None = None,
    series_uid: str | None = None,
    uid_seed: str = "cbctqa",
    patient_id: str = "ANON",
    patient_name: str = "Anonymous^Patient",
    study_description: str = "Head and neck CBCT",
    series_description: str = "CBCT",
    series_number: int = 1,
    study_date: str = "20260101",
    manufacturer: str = "cbctqa simulator",
    kvp: float = 100.0,
    exposure_mas: float | None = None,
    file_prefix: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write ``hu`` as a CT Image Storage series, one DICOM Part 10 file per slice.

    Parameters
    ----------
    hu:
        Volume in Hounsfield units, shape ``(slices, rows, cols)``, any float (or integer)
        dtype. Slice 0 is the most inferior. Values are rounded to integer HU.
    spacing:
        Voxel spacing in mm as ``(z, y, x)``: slice-centre distance, row spacing (between
        rows, i.e. along y), column spacing (along x). All must be positive.
    out_dir:
        Folder to write into (created if missing). Existing files with the same names are
        overwritten.
    origin:
        Patient-coordinate position (mm, ``(x, y, z)`` in DICOM LPS order as stored in
        ImagePositionPatient) of the centre of voxel ``(0, 0, 0)``.
    study_uid, series_uid:
        StudyInstanceUID / SeriesInstanceUID; ``None`` derives them deterministically from
        ``uid_seed`` (the series UID also from ``series_number``).
    uid_seed:
        Entropy for every derived UID (study, series, frame of reference, SOP instances).
        Use one seed per simulated session.
    patient_id, patient_name, study_description, series_description, series_number,
    study_date, manufacturer:
        Header values. ``study_date`` is ``YYYYMMDD``. Use pseudonyms only.
    kvp:
        Peak tube voltage in kV (KVP).
    exposure_mas:
        Exposure in mAs (Exposure, IS: rounded to an integer); omitted when ``None``.
    file_prefix:
        File names are ``{file_prefix}{index:04d}.dcm``.
    transfer_syntax:
        Transfer syntax UID. Uncompressed Explicit/Implicit VR Little Endian are written
        directly; any other syntax is encoded with :meth:`pydicom.dataset.Dataset.compress`
        (RLE Lossless works without extra packages; JPEG-LS / JPEG 2000 need the encoder
        plugins pydicom names in its error).

    Returns
    -------
    list of Path
        The written files in slice order (index 0 first).

    Raises
    ------
    DicomWriteError
        ``hu`` is not 3-D or empty, contains NaN/inf or values outside the 16-bit range,
        ``spacing`` is not three positive numbers, ``study_date`` is not ``YYYYMMDD``, or
        the transfer syntax cannot be encoded here.
    """
    out = Path(out_dir)
    arr = np.asarray(hu)
    if arr.ndim != 3 or 0 in arr.shape:
        raise DicomWriteError(
            f"cannot write DICOM series to {out}: expected a non-empty 3-D HU array "
            f"(slices, rows, cols); got shape {arr.shape}"
        )
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise DicomWriteError(
            f"cannot write DICOM series to {out}: spacing must be three positive mm values "
            f"(z, y, x); got {spacing}"
        )
    if len(study_date) != 8 or not study_date.isdigit():
        raise DicomWriteError(
            f"cannot write DICOM series to {out}: study_date must be YYYYMMDD; got {study_date!r}"
        )
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        raise DicomWriteError(
            f"cannot write DICOM series to {out}: {transfer_syntax!r} is not a transfer syntax "
            "UID; use one of pydicom.uid (e.g. ExplicitVRLittleEndian, RLELossless)"
        )
    stored_dtype, pixel_rep = _choose_storage(arr, out)
    stored = np.rint(arr - RESCALE_INTERCEPT).astype(stored_dtype)

    dz, dy, dx = (float(s) for s in spacing)
    n_slices, rows, cols = (int(n) for n in arr.shape)
    study = UID(study_uid) if study_uid else _uid(uid_seed, "study")
    series = UID(series_uid) if series_uid else _uid(uid_seed, "series", str(series_number))
    frame = _uid(uid_seed, "frame-of-reference", str(series))
    out.mkdir(parents=True, exist_ok=True)

    window_center, window_width = 40.0, 400.0  # soft-tissue window
    paths: list[Path] = []
    for index in range(n_slices):
        sop_uid = _uid(uid_seed, str(series), "sop", str(index))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts not in _UNCOMPRESSED else ts

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = study_date
        ds.SeriesDate = study_date
        ds.ContentDate = study_date
        ds.StudyTime = "120000"
        ds.SeriesTime = "120000"
        ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = "CBCT"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.BodyPartExamined = "HEADNECK"
        ds.SliceThickness = _ds_str(dz)
        ds.SpacingBetweenSlices = _ds_str(dz)
        ds.KVP = _ds_str(kvp)
        if exposure_mas is not None:
            ds.Exposure = round(exposure_mas)
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        z = float(origin[2]) + index * dz
        ds.ImagePositionPatient = [_ds_str(float(origin[0])), _ds_str(float(origin[1])), _ds_str(z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds_str(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [_ds_str(dy), _ds_str(dx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = pixel_rep
        ds.WindowCenter = _ds_str(window_center)
        ds.WindowWidth = _ds_str(window_width)
        ds.RescaleIntercept = _ds_str(RESCALE_INTERCEPT)
        ds.RescaleSlope = _ds_str(RESCALE_SLOPE)
        ds.RescaleType = "HU"
        # Little-endian bytes; PixelData VR OW for 16-bit uncompressed data.
        ds.PixelData = (
            np.ascontiguousarray(stored[index]).astype(stored_dtype.newbyteorder("<")).tobytes()
        )
        ds["PixelData"].VR = "OW"
        if ts not in _UNCOMPRESSED:
            try:
                ds.compress(ts, encoding_plugin="")
            except (RuntimeError, ValueError, NotImplementedError) as exc:
                raise DicomWriteError(
                    f"cannot encode slice {index} for {out} with transfer syntax {ts.name}: "
                    f"{exc}; write uncompressed (ExplicitVRLittleEndian) or install the "
                    "encoder pydicom names above"
                ) from exc
        path = out / f"{file_prefix}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
