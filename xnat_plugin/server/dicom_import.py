"""DICOM zip import for the local XNAT server (XNAT's ``DICOM-zip`` import handler).

The zip is unpacked safely (no absolute or ``..`` member paths, bounded member count, total size
and compression ratio), each member's header is read with pydicom (``stop_before_pixels``), and
the files are grouped by SeriesInstanceUID into scans, as XNAT's archiver does:

- session (``xnat:ctSessionData`` for CT): ``UID`` = StudyInstanceUID, ``date``/``time`` from
  StudyDate/StudyTime, ``modality``, ``scanner`` = StationName, ``scanner/manufacturer``,
  ``scanner/model``, ``dcmPatientId``, ``dcmPatientName``, ``dcmAccessionNumber``;
- one scan per series (``xnat:ctScanData`` for CT): ``ID`` = SeriesNumber (made unique;
  characters other than letters, digits, ``_`` and ``-`` become ``_``),
  ``type`` and ``series_description`` = SeriesDescription, ``UID``, ``frames`` = number of files,
  ``modality``, voxel resolution from PixelSpacing/SliceThickness, ``parameters/kvp``.

Non-image objects of the same study (an RTSTRUCT of the organs at risk, for instance) become
scans of their own (``xnat:otherDicomScanData`` with their ``modality``), as XNAT files them; the
session's type and fields come from its first CT or MR file. Files that are not DICOM are
skipped and counted, like XNAT's ``Ignore-Unparsable``.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any

from qa_core.errors import CbctQaError

from .resources import ZipLimits, clean_relative_path, safe_zip_members

__all__ = ["DicomImportError", "ImportedScan", "ImportedSession", "read_dicom_zip"]

_SESSION_TYPES = {"CT": ("xnat:ctSessionData", "xnat:ctScanData"),
                  "MR": ("xnat:mrSessionData", "xnat:mrScanData")}


class DicomImportError(CbctQaError, ValueError):
    """The uploaded archive cannot be imported (not a zip, no DICOM, unsafe member)."""


@dataclass
class ImportedScan:
    """One series of the archive: its scan fields and ``(file name, zip member)`` list."""

    scan_id: str
    xsi_type: str
    fields: dict[str, str]
    members: list[tuple[str, zipfile.ZipInfo]] = field(default_factory=list)


@dataclass
class ImportedSession:
    """What the archive describes: session type and fields, subject hint, scans."""

    xsi_type: str
    fields: dict[str, str]
    patient_id: str
    patient_name: str
    study_label: str
    scans: list[ImportedScan]
    skipped: int


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, None)
    if value is None:
        return ""
    return str(value).strip()


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 and value[:8].isdigit() else ""


def _time(value: str) -> str:
    digits = value.split(".")[0]
    if len(digits) >= 6 and digits[:6].isdigit():
        return f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}"
    return ""


def read_dicom_zip(source: IO[bytes], limits: ZipLimits) -> tuple[ImportedSession, zipfile.ZipFile]:
    """Read the headers of every DICOM file of a zip and group them into series.

    Parameters
    ----------
    source : binary file object
        The uploaded zip (seekable).
    limits : ZipLimits
        Member count, total size and ratio limits.

    Returns
    -------
    (ImportedSession, ZipFile)
        The session description and the open archive (the caller copies members from it and
        closes it).

    Raises
    ------
    DicomImportError
        When the body is not a zip, a member path is unsafe, or no member is DICOM.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise DicomImportError(
            "import body is not a zip archive; send a zip of DICOM files with import-handler=DICOM-zip"
        ) from exc
    try:
        try:
            members = safe_zip_members(archive, limits, "DICOM zip")
        except CbctQaError as exc:
            raise DicomImportError(str(exc)) from exc
        series: dict[str, ImportedScan] = {}
        order: list[str] = []
        first: Any = None
        skipped = 0
        used_names: dict[str, set[str]] = {}
        for member in members:
            clean_name = clean_relative_path(member.filename, "DICOM zip member")
            with archive.open(member) as handle:
                try:
                    ds = pydicom.dcmread(handle, stop_before_pixels=True)
                except (InvalidDicomError, EOFError, ValueError, OSError):
                    skipped += 1
                    continue
            if "SOPInstanceUID" not in ds and "SeriesInstanceUID" not in ds:
                skipped += 1
                continue
            # the session describes the images: an RTSTRUCT (or other non-image object) met
            # first must not make a CT session an "other DICOM" one
            if first is None or (
                _text(first, "Modality") not in _SESSION_TYPES and _text(ds, "Modality") in _SESSION_TYPES
            ):
                first = ds
            uid = _text(ds, "SeriesInstanceUID") or "unknown-series"
            if uid not in series:
                modality = _text(ds, "Modality") or "OT"
                scan_type = _SESSION_TYPES.get(modality, ("", "xnat:otherDicomScanData"))[1]
                description = _text(ds, "SeriesDescription") or _text(ds, "ProtocolName")
                fields = {
                    "UID": uid,
                    "type": description or modality,
                    "series_description": description,
                    "modality": modality,
                }
                spacing = ds.get("PixelSpacing", None)
                if spacing is not None and len(spacing) == 2:
                    fields["parameters/voxelRes/x"] = f"{float(spacing[1]):g}"
                    fields["parameters/voxelRes/y"] = f"{float(spacing[0]):g}"
                    fields["parameters/voxelRes/units"] = "mm"
                thickness = _text(ds, "SliceThickness")
                if thickness:
                    fields["parameters/voxelRes/z"] = thickness
                kvp = _text(ds, "KVP")
                if kvp:
                    fields["parameters/kvp"] = kvp
                for keyword, target in (("Manufacturer", "scanner/manufacturer"),
                                        ("ManufacturerModelName", "scanner/model"),
                                        ("StationName", "scanner")):
                    value = _text(ds, keyword)
                    if value:
                        fields[target] = value
                # the scan ID goes into URIs and zip member names: keep it a plain name
                # (a crafted SeriesNumber such as '../../x' must not become a path)
                number = re.sub(r"[^A-Za-z0-9_-]", "_", _text(ds, "SeriesNumber"))[:64] \
                    or str(len(order) + 1)
                series[uid] = ImportedScan(scan_id=number, xsi_type=scan_type, fields=fields)
                order.append(uid)
                used_names[uid] = set()
            # the normalised path's last part: a raw name could keep '\\..\\' parts
            name = PurePosixPath(clean_name).name
            if name in used_names[uid]:
                name = f"{len(used_names[uid])}_{name}"
            used_names[uid].add(name)
            series[uid].members.append((name, member))
        if first is None:
            raise DicomImportError(
                f"the zip holds {len(members)} files and none is DICOM; nothing to import"
            )
        # unique scan IDs, in the order series were met
        taken: set[str] = set()
        scans = [series[u] for u in order]
        for scan in scans:
            base = scan.scan_id
            candidate, n = base, 1
            while candidate in taken:
                n += 1
                candidate = f"{base}-{n}"
            scan.scan_id = candidate
            taken.add(candidate)
            scan.fields["frames"] = str(len(scan.members))
        modality = _text(first, "Modality") or "OT"
        session_type = _SESSION_TYPES.get(modality, ("xnat:otherDicomSessionData", ""))[0]
        fields = {
            "UID": _text(first, "StudyInstanceUID"),
            "modality": modality,
            "date": _date(_text(first, "StudyDate")),
            "time": _time(_text(first, "StudyTime")),
            "scanner": _text(first, "StationName"),
            "scanner/manufacturer": _text(first, "Manufacturer"),
            "scanner/model": _text(first, "ManufacturerModelName"),
            "dcmPatientId": _text(first, "PatientID"),
            "dcmPatientName": _text(first, "PatientName"),
            "dcmAccessionNumber": _text(first, "AccessionNumber"),
            "study_id": _text(first, "StudyID"),
        }
        session = ImportedSession(
            xsi_type=session_type,
            fields={k: v for k, v in fields.items() if v},
            patient_id=_text(first, "PatientID"),
            patient_name=_text(first, "PatientName"),
            study_label=_text(first, "StudyID") or _text(first, "AccessionNumber"),
            scans=scans,
            skipped=skipped,
        )
    except BaseException:
        archive.close()
        raise
    return session, archive
