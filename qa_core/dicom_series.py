"""Load one CT/CBCT DICOM series into a :class:`~qa_core.volume.Volume`.

:func:`load_series` accepts a folder (searched recursively), a ``.zip`` archive, a single
file, or a list of any of these. It works in two passes so that hostile or broken input
fails early and cheaply:

1. **Headers.** Every file's header is read with ``stop_before_pixels`` (large values
   deferred), the Pixel Data element's position and length are noted, and the file is
   grouped by SeriesInstanceUID. A file is DICOM when it carries the Part 10 marker
   (``DICM`` at byte 128); other files (``.DS_Store``, notes) are skipped with a warning
   recorded in the provenance, except files named ``*.dcm``, which are refused as
   truncated copies. A DICOM file that ends inside its header or pixel data is refused
   (pydicom itself reads a file cut at an element boundary without complaint, so the
   loader checks that the last element ends where the parse stopped). DICOMDIR and
   non-image objects (RTSTRUCT, SR, ...) are skipped with a warning.
2. **Checks, then pixels.** The CT series is chosen (or the one asked for), its slices
   are checked (limits, matrix, orientation, duplicates, gaps, spacing) and sorted along
   the slice normal; only then is pixel data read, once per file, straight into one
   pre-allocated float32 array, with each slice's Rescale Slope/Intercept applied.

Uncompressed little-endian 16-bit pixel data (the common case) is read directly from the
file at the recorded offset; everything else (compressed transfer syntaxes, other bit
depths, big endian, deflated) is decoded by pydicom with whatever pixel-data handlers are
installed.

Geometry conventions: the returned array is ``(z, y, x)`` = ``(slices, rows, cols)`` in
axial order, slice 0 the most inferior (smallest patient z). Series stored in another
axis-aligned orientation (flipped rows or columns, sagittal or coronal slices) are
reoriented into that order with a warning; oblique series are refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from qa_core.errors import (
    CbctQaError,
    DicomError,
    DuplicateSliceError,
    EmptyInputError,
    InputTooLargeError,
    MissingSlicesError,
    MixedMatrixError,
    MultipleSeriesError,
    NonUniformSpacingError,
    NoPixelDataError,
    NotCTError,
    NotDicomError,
    ObliqueOrientationError,
    SeriesNotFoundError,
    TruncatedFileError,
    UnsupportedTransferSyntaxError,
)
from qa_core.settings import Settings, get_settings
from qa_core.volume import Volume

__all__ = ["AXIS_TOLERANCE", "SeriesSummary", "load_series", "summarize_series"]

logger = logging.getLogger(__name__)

#: Largest deviation of a direction cosine from 0 or +-1 for the orientation to count as
#: axis-aligned (about 0.06 degrees); anything else is oblique and refused.
AXIS_TOLERANCE: float = 1e-3

#: Slices closer than this along the normal (mm) are at the same position.
_DUPLICATE_TOLERANCE_MM = 0.01
#: Gap (in median spacings) above which slices count as missing (issue #2: 1.5).
_MISSING_GAP_FACTOR = 1.5
#: Header values larger than this are not read during the header pass.
_DEFER_SIZE = 4 * 1024 * 1024
#: Header-size allowance (bytes) per file when budgeting a zip archive.
_HEADER_ALLOWANCE = 1024 * 1024
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, _PIXEL_DATA}
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_FAST_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_MAX_LISTED = 4
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# ---------------------------------------------------------------------------------------
# Sources: files on disk or zip members, opened on demand
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One input file: a path on disk or a member of an open zip archive."""

    name: str
    size: int
    opener: Callable[[], IO[bytes]]


def _disk_source(path: Path) -> _Source:
    return _Source(str(path), path.stat().st_size, lambda: path.open("rb"))


def _zip_sources(path: Path, stack: ExitStack, settings: Settings) -> list[_Source]:
    """List the members of a zip archive without extracting anything to disk.

    Members are read in memory only, so member names (``../../etc``, absolute paths) can
    never write outside. The declared uncompressed sizes are checked against a budget
    derived from the slice and pixel limits before anything is decompressed (zip bombs);
    :mod:`zipfile` itself never returns more bytes than a member declares.
    """
    try:
        zf = stack.enter_context(zipfile.ZipFile(path))
    except (zipfile.BadZipFile, OSError) as exc:
        raise NotDicomError(
            f"{path} is not a readable zip archive ({exc}); re-create the archive or pass "
            "the folder of DICOM files instead"
        ) from exc
    infos = [i for i in zf.infolist() if not i.is_dir()]
    max_files = _max_files(settings)
    if len(infos) > max_files:
        raise InputTooLargeError(
            f"zip archive {path} holds {len(infos)} files, more than the {max_files} allowed "
            f"for CBCTQA_MAX_SLICES={settings.max_slices}; zip only the series to load or "
            "raise CBCTQA_MAX_SLICES"
        )
    budget = settings.max_slices * (settings.max_pixels * 8 + _HEADER_ALLOWANCE)
    declared = sum(i.file_size for i in infos)
    if declared > budget:
        raise InputTooLargeError(
            f"zip archive {path} declares {declared / 2**20:.0f} MiB uncompressed, more than "
            f"the {budget / 2**20:.0f} MiB allowed by CBCTQA_MAX_SLICES={settings.max_slices} "
            f"and CBCTQA_MAX_PIXELS={settings.max_pixels}; zip only the series to load or "
            "raise the limits"
        )

    def opener(info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
        return lambda: zf.open(info)

    return [_Source(f"{path}!{i.filename}", i.file_size, opener(i)) for i in infos]


def _max_files(settings: Settings) -> int:
    """Largest number of input files scanned (the series plus other objects beside it)."""
    return 4 * settings.max_slices + 1024


def _collect(
    source: Any, stack: ExitStack, settings: Settings
) -> tuple[list[_Source], str, list[str]]:
    """Expand ``source`` into input files.

    Returns the files, a description of the input for messages, and the inputs as given
    (folder, archive or file paths) for the provenance.
    """
    items: Sequence[Any]
    if isinstance(source, (str, os.PathLike)):
        items = [source]
        label = str(source)
    elif isinstance(source, Sequence):
        items = list(source)
        label = f"file list of {len(items)} path(s)"
        if not items:
            raise EmptyInputError(
                "load_series got an empty file list; pass a folder, a zip file or DICOM file paths"
            )
    else:
        raise TypeError(
            f"load_series source must be a path, a zip file or a list of paths; got {type(source).__name__}"
        )
    out: list[_Source] = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise EmptyInputError(
                f"{path} does not exist; check the path (and the mount) and retry"
            )
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            if not files and len(items) == 1:
                raise EmptyInputError(
                    f"folder {path} holds no files; point at the folder that holds the "
                    "exported DICOM series"
                )
            out.extend(_disk_source(p) for p in files)
        elif path.suffix.lower() == ".zip" or (zipfile.is_zipfile(path) and not _has_dicm(path)):
            members = _zip_sources(path, stack, settings)
            if not members and len(items) == 1:
                raise EmptyInputError(
                    f"zip archive {path} holds no files; re-create it with the DICOM series inside"
                )
            out.extend(members)
        else:
            out.append(_disk_source(path))
        if len(out) > _max_files(settings):
            raise InputTooLargeError(
                f"{label} holds more than {_max_files(settings)} files (the scan limit for "
                f"CBCTQA_MAX_SLICES={settings.max_slices}); point at the one series' folder "
                "or raise CBCTQA_MAX_SLICES"
            )
    if not out:
        raise EmptyInputError(
            f"{label} holds no files; pass the folder, zip or files of one DICOM series"
        )
    return out, label, [str(i) for i in items]


def _has_dicm(path: Path) -> bool:
    with path.open("rb") as fp:
        head = fp.read(132)
    return head[128:132] == b"DICM"


# ---------------------------------------------------------------------------------------
# Header pass
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PixelInfo:
    """Where the Pixel Data element's value lies in the file (uncompressed syntaxes)."""

    tag: int
    value_offset: int
    length: int  # 0xFFFFFFFF = undefined (encapsulated)


@dataclass
class _Header:
    """The header fields the loader needs, copied out while the file is open."""

    source: _Source
    transfer_syntax: UID
    sop_class: str
    sop_uid: str
    modality: str
    series_uid: str
    study_uid: str
    series_description: str
    manufacturer: str
    rows: int | None
    cols: int | None
    pixel_spacing: tuple[float, float] | None
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    slope: float | None
    intercept: float | None
    rescale_type: str
    modality_lut: bool
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    samples_per_pixel: int
    photometric: str
    frames: int
    pixel: _PixelInfo | None
    pixel_known: bool  # False when the header pass cannot tell (deflated data)
    pixel_padding_value: float | None
    frame_of_reference_uid: str = ""


def _get(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """Header value or ``default`` when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return value


def _floats(ds: Dataset, keyword: str, n: int, name: str) -> tuple[float, ...] | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    try:
        values = tuple(
            float(v)
            for v in (
                value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
            )
        )
    except (TypeError, ValueError) as exc:
        raise DicomError(
            f"{name}: {keyword} value {value!r} is not numeric; fix the header (or re-export the series)"
        ) from exc
    if len(values) != n:
        raise DicomError(
            f"{name}: {keyword} has {len(values)} value(s), expected {n}; fix the header "
            "(or re-export the series)"
        )
    return values


def _number(ds: Dataset, keyword: str, name: str, kind: type[float] | type[int] = float) -> Any:
    value = _get(ds, keyword)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise DicomError(
            f"{name}: {keyword} value {value!r} is not a number; fix the header (or re-export)"
        ) from exc


def _peek_pixel(fp: IO[bytes], offset: int, ts: UID) -> _PixelInfo | None:
    """Parse the element header at ``offset`` (where pydicom stopped before pixels)."""
    fp.seek(offset)
    head = fp.read(12)
    if len(head) < 8:
        return None
    group, elem = struct.unpack("<HH", head[:4])
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        return None
    if ts.is_implicit_VR:
        (length,) = struct.unpack("<I", head[4:8])
        return _PixelInfo(tag, offset + 8, length)
    if head[4:6] in _LONG_VRS and len(head) == 12:
        (length,) = struct.unpack("<I", head[8:12])
        return _PixelInfo(tag, offset + 12, length)
    (length,) = struct.unpack("<H", head[6:8])
    return _PixelInfo(tag, offset + 8, length)


def _truncated_header(ds: Dataset, stop: int, size: int) -> bool:
    """True when the header parse ended inside an element (a truncated file).

    pydicom stops silently at a short read. After ``stop_before_pixels`` the stream sits
    at ``stop``: the start of Pixel Data, or the end of the file. Either way the last
    top-level element read must end exactly there and inside the file.
    """
    if len(ds) == 0:
        return True
    last = ds.get_item(max(ds.keys()))
    value_tell = getattr(last, "value_tell", None)
    length = getattr(last, "length", None)
    if value_tell is None or length is None or length == 0xFFFFFFFF:
        return False
    end = int(value_tell) + int(length)
    return end != stop or end > size


_PARSE_ERRORS = (
    ValueError,
    NotImplementedError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    OverflowError,
)
_READ_ERRORS = (
    OSError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
)  # RuntimeError: encrypted zip


def _read_header(src: _Source) -> _Header | None:
    """Read one file's header; ``None`` (a warning for the caller) if it is not DICOM.

    A file is DICOM when it carries the Part 10 marker ``DICM`` at byte 128; once it does,
    any failure to parse it is an error (truncated or corrupt), never a silent skip.
    """
    try:
        with src.opener() as fp:
            if fp.read(132)[128:132] != b"DICM":
                if Path(src.name).suffix.lower() in (".dcm", ".dicom"):
                    raise NotDicomError(
                        f"{src.name} is named like a DICOM file but has no DICOM header "
                        f"({src.size} bytes; 'DICM' missing at byte 128): an empty or truncated "
                        "copy, or not DICOM; copy it again or remove it"
                    )
                return None
            fp.seek(0)
            return _parse_header(fp, src)
    except CbctQaError:
        raise
    except InvalidDicomError as exc:
        raise TruncatedFileError(
            f"{src.name} has the DICOM marker but its File Meta Information is incomplete "
            f"({exc}); the file is truncated or corrupt: copy or export it again"
        ) from exc
    except (EOFError, struct.error, BytesLengthException) as exc:
        raise TruncatedFileError(
            f"{src.name} ends unexpectedly or has an element shorter than its type needs "
            f"({' '.join(str(exc).split())[:160]}): the file is truncated or corrupt; copy or "
            "export it again"
        ) from exc
    except _READ_ERRORS as exc:
        raise DicomError(
            f"cannot read {src.name}: {exc}; check the file's permissions and storage, or "
            "re-create the archive"
        ) from exc
    except _PARSE_ERRORS as exc:
        raise DicomError(
            f"{src.name} is a corrupt DICOM file: its header cannot be parsed "
            f"({' '.join(str(exc).split())[:200]}); re-export the series or remove the file"
        ) from exc


def _parse_header(fp: IO[bytes], src: _Source) -> _Header:
    ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=_DEFER_SIZE)
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)))
    known = ts.is_transfer_syntax
    pixel_known = known and ts.is_little_endian and not ts.is_deflated
    stop = fp.tell()
    if not (known and ts.is_deflated) and _truncated_header(ds, stop, src.size):
        raise TruncatedFileError(
            f"{src.name} ends inside its DICOM header ({src.size} bytes): the file "
            "is truncated (incomplete copy or transfer); copy or export it again"
        )
    pixel = _peek_pixel(fp, stop, ts) if pixel_known else None
    if (
        pixel is not None
        and pixel.length != 0xFFFFFFFF
        and pixel.value_offset + pixel.length > src.size
    ):
        raise TruncatedFileError(
            f"{src.name} is truncated: Pixel Data declares {pixel.length} bytes but the "
            f"file ends after {max(src.size - pixel.value_offset, 0)}; copy or export "
            "the file again"
        )
    header = _header_from(ds, src, ts, pixel, pixel_known)
    if (
        pixel is None
        and pixel_known
        and header.sop_class in (CTImageStorage, EnhancedCTImageStorage)
    ):
        absent = [
            k
            for k, v in (
                ("SeriesInstanceUID", header.series_uid),
                ("Rows", header.rows),
                ("Columns", header.cols),
                ("ImagePositionPatient", header.position),
            )
            if not v
        ]
        if absent:  # a CT image cut at an element boundary: pydicom reads it without complaint
            raise TruncatedFileError(
                f"{src.name} is a CT image file but ends after {src.size} bytes without "
                f"{', '.join(absent)} or Pixel Data: the file is truncated or stripped; copy "
                "or export it again"
            )
    return header


def _header_from(
    ds: Dataset, src: _Source, ts: UID, pixel: _PixelInfo | None, pixel_known: bool
) -> _Header:
    name = src.name
    ps = _floats(ds, "PixelSpacing", 2, name)
    sop_class = str(_get(ds, "SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    return _Header(
        source=src,
        transfer_syntax=ts,
        sop_class=sop_class,
        sop_uid=str(_get(ds, "SOPInstanceUID", "")),
        modality=str(_get(ds, "Modality", "")).upper(),
        series_uid=str(_get(ds, "SeriesInstanceUID", "")),
        study_uid=str(_get(ds, "StudyInstanceUID", "")),
        series_description=str(_get(ds, "SeriesDescription", "")),
        manufacturer=str(_get(ds, "Manufacturer", "")),
        rows=_number(ds, "Rows", name, int),
        cols=_number(ds, "Columns", name, int),
        pixel_spacing=(ps[0], ps[1]) if ps else None,
        orientation=_floats(ds, "ImageOrientationPatient", 6, name),
        position=_floats(ds, "ImagePositionPatient", 3, name),
        slice_thickness=_number(ds, "SliceThickness", name),
        spacing_between_slices=_number(ds, "SpacingBetweenSlices", name),
        slope=_number(ds, "RescaleSlope", name),
        intercept=_number(ds, "RescaleIntercept", name),
        rescale_type=str(_get(ds, "RescaleType", "")),
        modality_lut="ModalityLUTSequence" in ds,
        bits_allocated=_number(ds, "BitsAllocated", name, int),
        bits_stored=_number(ds, "BitsStored", name, int),
        pixel_representation=_number(ds, "PixelRepresentation", name, int),
        samples_per_pixel=_number(ds, "SamplesPerPixel", name, int) or 1,
        photometric=str(_get(ds, "PhotometricInterpretation", "")),
        frames=_number(ds, "NumberOfFrames", name, int) or 1,
        pixel=pixel,
        pixel_known=pixel_known,
        pixel_padding_value=_number(ds, "PixelPaddingValue", name),
        frame_of_reference_uid=str(_get(ds, "FrameOfReferenceUID", "")),
    )


# ---------------------------------------------------------------------------------------
# Series choice
# ---------------------------------------------------------------------------------------


def _names(items: Sequence[Any], limit: int = _MAX_LISTED) -> str:
    """``a, b, c and N more`` for error messages."""
    names = [getattr(i, "name", None) or str(i) for i in items]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def _is_image(h: _Header) -> bool:
    """Has pixel data, or claims to be a CT image (so a missing Pixel Data is an error)."""
    if h.pixel is not None or not h.pixel_known:
        return True
    return h.modality == "CT" or h.sop_class in (CTImageStorage, EnhancedCTImageStorage)


@dataclass(frozen=True)
class SeriesSummary:
    """One image series found in an input (see :func:`summarize_series`).

    Attributes
    ----------
    series_uid, modality, description:
        SeriesInstanceUID, Modality and SeriesDescription.
    n_files:
        Number of image files (slices) in the series.
    """

    series_uid: str
    modality: str
    description: str
    n_files: int


def _summaries(groups: dict[str, list[_Header]]) -> list[SeriesSummary]:
    out = []
    for uid, hs in sorted(groups.items()):
        modalities = sorted({h.modality or "?" for h in hs})
        out.append(SeriesSummary(uid, "/".join(modalities), hs[0].series_description, len(hs)))
    return out


def _describe(groups: dict[str, list[_Header]]) -> str:
    return "; ".join(
        f"{s.series_uid or '<no SeriesInstanceUID>'} ({s.modality}, {s.description or 'no description'!s}, "
        f"{s.n_files} file(s))"
        for s in _summaries(groups)
    )


@dataclass
class _Scan:
    """Result of the header pass over all inputs."""

    label: str
    inputs: list[str]
    groups: dict[str, list[_Header]]
    warnings: list[str]
    n_scanned: int  # files looked at (all series, junk included)


def _scan(source: Any, stack: ExitStack, settings: Settings) -> _Scan:
    sources, label, inputs = _collect(source, stack, settings)
    warnings: list[str] = []
    not_dicom: list[_Source] = []
    non_image: list[_Header] = []
    groups: dict[str, list[_Header]] = {}
    for src in sources:
        h = _read_header(src)
        if h is None:
            not_dicom.append(src)
            continue
        if h.sop_class == MediaStorageDirectoryStorage or Path(src.name).name.upper() == "DICOMDIR":
            warnings.append(f"ignored DICOMDIR {src.name}")
            continue
        if not _is_image(h):
            non_image.append(h)
            continue
        groups.setdefault(h.series_uid, []).append(h)
    if not_dicom:
        if not groups and not non_image:
            raise NotDicomError(
                f"no DICOM file in {label}: {_names(not_dicom)} lack the DICOM Part 10 header "
                "('DICM' at byte 128); point at the exported DICOM series, or re-save files "
                "without the header with pydicom.dcmread(f, force=True).save_as(f, enforce_file_format=True)"
            )
        warnings.append(f"ignored {len(not_dicom)} non-DICOM file(s): {_names(not_dicom)}")
    if non_image:
        kinds = Counter(h.modality or "?" for h in non_image)
        if not groups:
            raise NoPixelDataError(
                f"{label} holds DICOM objects without pixel data only "
                f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}: {_names([h.source for h in non_image])}); "
                "add the CT image series to the input"
            )
        warnings.append(
            "ignored non-image DICOM object(s): "
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            + f" ({_names([h.source for h in non_image])})"
        )
    return _Scan(label, inputs, groups, warnings, len(sources))


def _choose(scan: _Scan, series_uid: str | None) -> list[_Header]:
    groups = scan.groups
    if series_uid is not None:
        if series_uid not in groups:
            raise SeriesNotFoundError(
                f"series {series_uid} is not in {scan.label}; image series found: "
                f"{_describe(groups)}; pass one of these UIDs (series_uid= / --series)"
            )
        chosen = groups[series_uid]
        modalities = sorted({h.modality or "?" for h in chosen})
        if modalities != ["CT"]:
            raise NotCTError(
                f"series {series_uid} in {scan.label} has Modality {'/'.join(modalities)}, "
                f"not CT ({_names([h.source for h in chosen])}); choose a CT/CBCT series: {_describe(groups)}"
            )
    else:
        ct = {uid: hs for uid, hs in groups.items() if all(h.modality == "CT" for h in hs)}
        if not ct:
            raise NotCTError(
                f"{scan.label} holds no CT series; image series found: {_describe(groups)}; "
                "pass the CBCT/CT series (Modality CT)"
            )
        if len(ct) > 1:
            raise MultipleSeriesError(
                f"{scan.label} holds {len(ct)} CT series: {_describe(ct)}; choose one with "
                "series_uid=<SeriesInstanceUID> (command line: --series UID)"
            )
        ((series_uid, chosen),) = ct.items()
        others = {uid: hs for uid, hs in groups.items() if uid != series_uid}
        if others:
            scan.warnings.append(f"ignored other image series: {_describe(others)}")
    return chosen


def summarize_series(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    settings: Settings | None = None,
) -> list[SeriesSummary]:
    """List the image series in ``source`` from headers only (no pixel data is read).

    Parameters
    ----------
    source:
        Folder, zip archive, single file, or list of these (as for :func:`load_series`).
    settings:
        Limits; default :func:`qa_core.settings.get_settings`.

    Returns
    -------
    list of SeriesSummary
        One entry per SeriesInstanceUID with pixel data, sorted by UID.

    Raises
    ------
    EmptyInputError, NotDicomError, NoPixelDataError, TruncatedFileError, InputTooLargeError
        As :func:`load_series` for the input as a whole.
    """
    settings = settings or get_settings()
    with ExitStack() as stack:
        scan = _scan(source, stack, settings)
    return _summaries(scan.groups)


# ---------------------------------------------------------------------------------------
# Geometry checks
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    order: list[int]  # indices into the chosen headers, sorted along the normal
    spacing_z: float
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    orientation: tuple[float, ...]
    origin: tuple[float, float, float]


def _axis_of(v: npt.NDArray[np.float64]) -> tuple[int, int] | None:
    """(patient axis 0..2, sign) of an axis-aligned unit vector, else None."""
    a = int(np.argmax(np.abs(v)))
    if abs(abs(v[a]) - 1.0) > AXIS_TOLERANCE or np.delete(np.abs(v), a).max() > AXIS_TOLERANCE:
        return None
    return a, 1 if v[a] > 0 else -1


def _check_matrix(hs: list[_Header], settings: Settings) -> tuple[int, int, tuple[float, float]]:
    """Limits, pixel data presence and one matrix/pixel spacing; returns rows, cols, spacing."""
    uid = hs[0].series_uid
    if len(hs) > settings.max_slices:
        raise InputTooLargeError(
            f"series {uid} has {len(hs)} slices, more than CBCTQA_MAX_SLICES="
            f"{settings.max_slices} ({_names([h.source for h in hs])}); raise the limit if "
            "the series is genuine"
        )
    missing = [h for h in hs if h.pixel is None and h.pixel_known]
    if missing:
        raise NoPixelDataError(
            f"{len(missing)} file(s) of CT series {uid} have no Pixel Data: "
            f"{_names([h.source for h in missing])}; re-export the series with its images "
            "(not a header-only or structure-set export)"
        )
    multi = [h for h in hs if h.frames > 1 or h.sop_class == EnhancedCTImageStorage]
    if multi:
        raise DicomError(
            f"{_names([h.source for h in multi])}: multi-frame (Enhanced CT) images are not "
            "supported; export the series as single-frame CT Image Storage (one file per slice)"
        )
    colour = [
        h
        for h in hs
        if h.samples_per_pixel != 1
        or (h.photometric and not h.photometric.startswith("MONOCHROME"))
    ]
    if colour:
        raise NotCTError(
            f"{_names([h.source for h in colour])}: PhotometricInterpretation "
            f"{colour[0].photometric or '?'} with {colour[0].samples_per_pixel} sample(s) per pixel "
            "is a colour or screenshot image, not CT data; choose the CT series (MONOCHROME2)"
        )
    incomplete = [h for h in hs if h.rows is None or h.cols is None or h.pixel_spacing is None]
    if incomplete:
        raise DicomError(
            f"{_names([h.source for h in incomplete])} lack(s) Rows, Columns or PixelSpacing, so "
            "the image size or voxel size is unknown; re-export the series with a complete "
            "Image Pixel / Image Plane module"
        )
    first = hs[0]
    rows, cols, ps = int(first.rows or 0), int(first.cols or 0), first.pixel_spacing or (0.0, 0.0)
    if rows < 1 or cols < 1 or min(ps) <= 0:
        raise DicomError(
            f"{first.source.name}: Rows x Columns {rows}x{cols} and PixelSpacing {ps} must be "
            "positive; fix the header or re-export the series"
        )
    if rows * cols > settings.max_pixels:
        raise InputTooLargeError(
            f"{first.source.name}: {rows}x{cols} = {rows * cols} pixels per slice, more than "
            f"CBCTQA_MAX_PIXELS={settings.max_pixels}; raise the limit if the series is genuine"
        )
    odd = [
        h
        for h in hs
        if (h.rows, h.cols) != (rows, cols)
        or not np.allclose(h.pixel_spacing or (0.0, 0.0), ps, rtol=1e-4, atol=1e-6)
    ]
    if odd:
        raise MixedMatrixError(
            f"series {uid} mixes matrix sizes or pixel spacings: {first.source.name} is "
            f"{rows}x{cols} at {ps} mm but {_names([h.source for h in odd])} differ(s) (e.g. "
            f"{odd[0].rows}x{odd[0].cols} at {odd[0].pixel_spacing} mm); remove the "
            "scout/localiser or resampled images, or choose the right series"
        )
    return rows, cols, (float(ps[0]), float(ps[1]))


def _check_orientation(hs: list[_Header], warnings: list[str]) -> npt.NDArray[np.float64]:
    """One axis-aligned orientation for all slices; returns its 6 direction cosines."""
    uid = hs[0].series_uid
    no_geom = [h for h in hs if h.orientation is None or h.position is None]
    if no_geom and len(hs) > 1:
        raise DicomError(
            f"{_names([h.source for h in no_geom])} lack(s) ImageOrientationPatient or "
            "ImagePositionPatient, so slices cannot be ordered; re-export the series with "
            "its geometry (Image Plane module)"
        )
    if no_geom:
        warnings.append(
            f"{hs[0].source.name} has no ImageOrientationPatient/ImagePositionPatient; assumed "
            "axial orientation with origin (0, 0, 0)"
        )
    iop = np.array(hs[0].orientation or _AXIAL, dtype=np.float64)
    mixed = [
        h
        for h in hs
        if h.orientation is not None and not np.allclose(h.orientation, iop, atol=AXIS_TOLERANCE)
    ]
    if mixed:
        raise MixedMatrixError(
            f"series {uid} mixes slice orientations: {hs[0].source.name} has {tuple(iop)} but "
            f"{_names([h.source for h in mixed])} differ(s); remove the localiser/reformatted "
            "images or choose the right series"
        )
    r, c = iop[:3], iop[3:]
    if _axis_of(r) is None or _axis_of(c) is None or _axis_of(np.cross(r, c)) is None:
        raise ObliqueOrientationError(
            f"series {uid} is oblique: ImageOrientationPatient "
            f"{tuple(round(float(v), 6) for v in iop)} in {hs[0].source.name} is not "
            f"axis-aligned (tolerance {AXIS_TOLERANCE}); resample it to an axial grid "
            "(e.g. in the treatment-planning system) before loading"
        )
    return iop


def _order_slices(
    hs: list[_Header], normal: npt.NDArray[np.float64], warnings: list[str]
) -> tuple[list[int], npt.NDArray[np.float64]]:
    """Sort by position along the slice normal; drop repeated instances, refuse duplicates.

    Returns the kept indices into ``hs`` (ascending position) and their positions (mm).
    """
    pos = np.array([h.position or (0.0, 0.0, 0.0) for h in hs], dtype=np.float64)
    along = pos @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    keep = [order[0]]
    for i in order[1:]:
        prev = keep[-1]
        if along[i] - along[prev] >= _DUPLICATE_TOLERANCE_MM:
            keep.append(i)
            continue
        a, b = hs[prev], hs[i]
        if a.sop_uid and a.sop_uid == b.sop_uid:
            warnings.append(f"ignored {b.source.name}: same SOPInstanceUID as {a.source.name}")
            continue
        raise DuplicateSliceError(
            f"{a.source.name} and {b.source.name} are both at {along[i]:.3f} mm along the "
            f"slice normal (SOPInstanceUIDs {a.sop_uid} and {b.sop_uid}); the series holds "
            "two acquisitions or a duplicate export: remove one copy or choose one series"
        )
    if len(keep) > 1:  # in-plane drift = gantry tilt or a sheared stack
        inplane = pos[keep] - np.outer(along[keep], normal)
        drift = float(np.abs(inplane - inplane[0]).max())
        min_ps = min(hs[0].pixel_spacing or (1.0, 1.0))
        if drift > 0.5 * min_ps:
            raise ObliqueOrientationError(
                f"series {hs[0].series_uid}: slice positions drift {drift:.2f} mm in-plane "
                f"between {hs[keep[0]].source.name} and {hs[keep[-1]].source.name} (gantry "
                "tilt or sheared stack); resample to an orthogonal grid before loading"
            )
    return keep, along[keep]


def _slice_spacing(
    hs: list[_Header],
    order: list[int],
    along: npt.NDArray[np.float64],
    settings: Settings,
    warnings: list[str],
) -> float:
    """Distance between slice centres (mm), after the gap and uniformity checks."""
    if len(order) == 1:
        h = hs[order[0]]
        thickness = h.spacing_between_slices or h.slice_thickness
        if thickness is not None and thickness > 0:
            warnings.append(
                f"single-slice series: z spacing {thickness:g} mm taken from the header"
            )
            return float(thickness)
        warnings.append("single-slice series without SliceThickness: z spacing set to 1.0 mm")
        return 1.0
    uid = hs[0].series_uid
    steps = np.diff(along)
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > _MISSING_GAP_FACTOR * median)
    if gaps.size:
        g = int(gaps[0])
        lo, hi = hs[order[g]], hs[order[g + 1]]
        n_missing = round(float(steps[g]) / median) - 1
        raise MissingSlicesError(
            f"series {uid} has {gaps.size} gap(s) larger than {_MISSING_GAP_FACTOR} x the "
            f"median spacing {median:.3f} mm: e.g. {steps[g]:.3f} mm between {lo.source.name} "
            f"and {hi.source.name} (about {n_missing} slice(s) missing); re-export or "
            "re-transfer the complete series"
        )
    dev = np.abs(steps - median) / median
    if float(dev.max()) > settings.spacing_tolerance:
        g = int(np.argmax(dev))
        raise NonUniformSpacingError(
            f"series {uid} has non-uniform slice spacing: {steps.min():.4f} to "
            f"{steps.max():.4f} mm (median {median:.4f}; e.g. {steps[g]:.4f} mm between "
            f"{hs[order[g]].source.name} and {hs[order[g + 1]].source.name}), beyond "
            f"CBCTQA_SPACING_TOLERANCE={settings.spacing_tolerance}; resample the series "
            "to uniform spacing or raise the tolerance"
        )
    return float((along[-1] - along[0]) / (len(order) - 1))


def _check_geometry(hs: list[_Header], settings: Settings, warnings: list[str]) -> _Geometry:
    """Run every series check (header values only) and return the slice order and grid."""
    rows, cols, ps = _check_matrix(hs, settings)
    iop = _check_orientation(hs, warnings)
    order, along = _order_slices(hs, np.cross(iop[:3], iop[3:]), warnings)
    spacing_z = _slice_spacing(hs, order, along, settings, warnings)
    first = hs[order[0]].position or (0.0, 0.0, 0.0)
    origin = (float(first[0]), float(first[1]), float(first[2]))
    return _Geometry(order, spacing_z, rows, cols, ps, tuple(float(v) for v in iop), origin)


def _reorient(
    hu: npt.NDArray[np.float32], geom: _Geometry, warnings: list[str]
) -> tuple[npt.NDArray[np.float32], tuple[float, float, float], tuple[float, float, float]]:
    """Transpose/flip an axis-aligned stack into axial (z, y, x) order.

    Array axes (slice k, row i, column j) run along (normal, column cosine, row cosine)
    with spacings (dz, row spacing, column spacing). The output's axes run along patient
    +z, +y, +x (LPS), so slice 0 is the most inferior, rows go anterior to posterior and
    columns right to left, as in a standard axial CT.
    """
    iop = np.array(geom.orientation)
    r, c = iop[:3], iop[3:]
    dirs = [np.cross(r, c), c, r]
    steps = [geom.spacing_z, geom.pixel_spacing[0], geom.pixel_spacing[1]]
    axis_sign = [_axis_of(d) for d in dirs]
    assert all(a is not None for a in axis_sign)
    axes = [a for a, _ in axis_sign]  # type: ignore[misc]
    signs = [s for _, s in axis_sign]  # type: ignore[misc]
    origin = np.array(geom.origin, dtype=np.float64)
    if axes == [2, 1, 0] and signs == [1, 1, 1]:
        return hu, (geom.spacing_z, geom.pixel_spacing[0], geom.pixel_spacing[1]), geom.origin
    # Output axis o (0=z,1=y,2=x) corresponds to patient axis 2-o.
    perm = [axes.index(2 - o) for o in range(3)]
    out = np.transpose(hu, perm)
    for o, a in enumerate(perm):
        if signs[a] < 0:
            out = np.flip(out, axis=o)
            origin = origin + dirs[a] * steps[a] * (hu.shape[a] - 1)
    spacing = (steps[perm[0]], steps[perm[1]], steps[perm[2]])
    warnings.append(
        f"reoriented from ImageOrientationPatient {tuple(round(v, 6) for v in geom.orientation)} "
        f"to axial (z, y, x): array axes (slice, row, col) -> {tuple(perm)} "
        f"flipped {[o for o, a in enumerate(perm) if signs[a] < 0]}"
    )
    return (
        np.ascontiguousarray(out),
        spacing,
        (float(origin[0]), float(origin[1]), float(origin[2])),
    )


# ---------------------------------------------------------------------------------------
# Pixel pass
# ---------------------------------------------------------------------------------------


def _fast_path(h: _Header) -> bool:
    p = h.pixel
    return (
        h.transfer_syntax in _FAST_SYNTAXES
        and p is not None
        and p.tag == _PIXEL_DATA
        and p.length != 0xFFFFFFFF
        and h.bits_allocated == 16
        and h.samples_per_pixel == 1
        and h.pixel_representation in (0, 1)
        and not (h.modality_lut and h.slope is None)
    )


def _read_fast(h: _Header, out: npt.NDArray[np.float32]) -> None:
    """Read uncompressed little-endian 16-bit pixels at the recorded offset into ``out``."""
    assert h.pixel is not None
    n = out.size
    if h.pixel.length < 2 * n:
        raise TruncatedFileError(
            f"{h.source.name}: Pixel Data holds {h.pixel.length} bytes but {h.rows}x{h.cols} "
            f"16-bit pixels need {2 * n}; the file is truncated or its header is wrong: "
            "copy or export it again"
        )
    with h.source.opener() as fp:
        fp.seek(h.pixel.value_offset)
        buf = fp.read(2 * n)
    if len(buf) < 2 * n:
        raise TruncatedFileError(
            f"{h.source.name} is truncated: {len(buf)} of {2 * n} pixel bytes present; "
            "copy or export the file again"
        )
    signed = h.pixel_representation == 1
    raw = np.frombuffer(buf, dtype="<i2" if signed else "<u2", count=n).reshape(out.shape)
    bits = h.bits_stored or 16
    if bits < 16:
        if signed:  # sign-extend from bit (bits - 1); bits above HighBit are not pixel data
            raw = np.left_shift(raw, 16 - bits).astype(np.int16) >> (16 - bits)
        else:
            raw = raw & np.uint16((1 << bits) - 1)
    slope = 1.0 if h.slope is None else h.slope
    intercept = 0.0 if h.intercept is None else h.intercept
    np.multiply(raw, np.float32(slope), out=out, casting="unsafe")
    if intercept:
        out += np.float32(intercept)


def _read_general(h: _Header, out: npt.NDArray[np.float32]) -> None:
    """Decode with pydicom's pixel handlers (compressed, other depths, big endian)."""
    try:
        with h.source.opener() as fp:
            ds = pydicom.dcmread(fp)
        if not any(t in ds for t in _PIXEL_TAGS):
            raise NoPixelDataError(
                f"{h.source.name} has no Pixel Data; re-export the series with its images"
            )
        arr = ds.pixel_array
        if arr.shape != out.shape:
            raise MixedMatrixError(
                f"{h.source.name}: decoded pixel array {arr.shape} does not match Rows x "
                f"Columns {out.shape}; the header is inconsistent: re-export the series"
            )
        out[...] = apply_modality_lut(arr, ds)
    except CbctQaError:
        raise
    except (RuntimeError, NotImplementedError) as exc:
        raise _unsupported(h, exc) from exc
    except (EOFError, struct.error, BytesLengthException, *_PARSE_ERRORS) as exc:
        raise _decode_error(h, exc) from exc


def _unsupported(h: _Header, exc: Exception) -> DicomError:
    """Map pydicom's "no decoder" errors to :class:`UnsupportedTransferSyntaxError`.

    pydicom's message lists each candidate plugin and the packages it needs (e.g.
    ``pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1``); it is quoted.
    """
    ts = h.transfer_syntax
    text = " ".join(str(exc).split())
    if not ts.is_transfer_syntax:
        return UnsupportedTransferSyntaxError(
            f"{h.source.name}: transfer syntax {ts} is not a DICOM transfer syntax pydicom knows "
            "(private or corrupt); re-export the series uncompressed (Explicit VR Little Endian)"
        )
    if (
        "missing dependencies" in text
        or "not supported" in text
        or "no pixel data decoders" in text
    ):
        return UnsupportedTransferSyntaxError(
            f"{h.source.name}: pixel data compressed as {ts.name} ({ts}) and no installed "
            f"handler decodes it. pydicom says: {text}. Fix: pip install the packages named "
            "there (gdcm is pip's python-gdcm; e.g. pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg), or re-export the series uncompressed"
        )
    return _decode_error(h, exc)


def _decode_error(h: _Header, exc: Exception) -> DicomError:
    text = " ".join(str(exc).split())
    if isinstance(exc, (EOFError, struct.error)) or any(
        k in text.lower() for k in ("less than expected", "end of", "truncat", "insufficient")
    ):
        return TruncatedFileError(
            f"{h.source.name}: pixel data is incomplete ({text}); the file is truncated: "
            "copy or export it again"
        )
    return DicomError(
        f"{h.source.name}: pixel data in {h.transfer_syntax.name} cannot be decoded ({text}); "
        "re-export the series uncompressed"
    )


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


def load_series(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    series_uid: str | None = None,
    settings: Settings | None = None,
) -> Volume:
    """Load one CT/CBCT DICOM series as a float32 HU volume.

    Parameters
    ----------
    source:
        A folder (searched recursively), a ``.zip`` archive (read in memory, never
        extracted), a single DICOM file, or a list of files/folders/archives.
    series_uid:
        SeriesInstanceUID to load when the input holds several series; ``None`` picks the
        only CT series.
    settings:
        Limits (``max_slices``, ``max_pixels``) and ``spacing_tolerance`` (relative);
        default :func:`qa_core.settings.get_settings` (``CBCTQA_*`` variables).

    Returns
    -------
    Volume
        ``hu``: float32 ``(slices, rows, cols)`` in HU (Rescale Slope/Intercept applied per
        slice), axial order, slice 0 the most inferior; ``spacing`` ``(z, y, x)`` mm with z
        the mean distance between slice centres; ``origin`` patient position (mm) of voxel
        ``(0, 0, 0)``; ``orientation`` ``(1, 0, 0, 0, 1, 0)`` after any reorientation;
        Study/Series UIDs; ``provenance`` with keys ``sources``, ``files``, ``n_files``,
        ``n_files_scanned``, ``sop_instance_uids_sha256``, ``transfer_syntaxes``, ``modality``,
        ``series_description``, ``manufacturer``, ``rescale``, ``original_orientation``,
        ``pixel_padding_value``, ``frame_of_reference_uid``, ``sop_instance_uids`` (in the
        order the files were read, which is slice order unless the series was reoriented;
        RTSTRUCT reading checks references against them) and ``warnings`` (list of str).

    Raises
    ------
    EmptyInputError
        The path does not exist, or the folder, zip or list holds no files.
    NotDicomError
        No input file is DICOM (Part 10), or a ``.zip`` is unreadable.
    NoPixelDataError
        Only non-image objects (RTSTRUCT, SR, ...), or CT files without Pixel Data.
    NotCTError
        No CT series, or the chosen series is not CT.
    MultipleSeriesError
        Several CT series and ``series_uid`` is ``None`` (the message lists them).
    SeriesNotFoundError
        ``series_uid`` is not in the input.
    DuplicateSliceError, MissingSlicesError, NonUniformSpacingError
        Two distinct slices at one position; a gap > 1.5 x the median spacing; spacing
        deviating from the median by more than ``spacing_tolerance``.
    MixedMatrixError
        Slices differ in Rows/Columns, PixelSpacing or orientation.
    ObliqueOrientationError
        Orientation not axis-aligned, or slices drift in-plane (gantry tilt).
    TruncatedFileError
        A file ends inside its header or pixel data.
    InputTooLargeError
        More slices than ``max_slices``, more pixels per slice than ``max_pixels``, too
        many files, or a zip declaring more bytes than the limits allow; raised before any
        pixel data is read.
    UnsupportedTransferSyntaxError
        Compressed pixel data without an installed decoder (the message names the packages).
    DicomError
        Other unusable headers (missing geometry, multi-frame images, bad values).
    """
    settings = settings or get_settings()
    with ExitStack() as stack:
        scan = _scan(source, stack, settings)
        chosen = _choose(scan, series_uid)
        warnings = scan.warnings
        geom = _check_geometry(chosen, settings, warnings)
        headers = [chosen[i] for i in geom.order]
        hu = np.empty((len(headers), geom.rows, geom.cols), dtype=np.float32)
        for k, h in enumerate(headers):
            try:
                (_read_fast if _fast_path(h) else _read_general)(h, hu[k])
            except _READ_ERRORS as exc:  # the file vanished or the archive is damaged
                raise DicomError(
                    f"cannot read pixel data of {h.source.name}: {exc}; check the file and "
                    "its storage, or re-create the archive"
                ) from exc
    for h in headers:
        if h.slope is None and h.intercept is None and not h.modality_lut:
            warnings.append(
                f"{h.source.name} has no RescaleSlope/RescaleIntercept; stored values taken as HU"
            )
            break
    hu, spacing, origin = _reorient(hu, geom, warnings)
    for w in warnings:
        logger.info("%s: %s", scan.label, w)
    first = headers[0]
    sop_uids = sorted(h.sop_uid for h in headers)
    provenance: dict[str, Any] = {
        "sources": scan.inputs,
        "files": [h.source.name for h in headers],
        "n_files": len(headers),
        "n_files_scanned": scan.n_scanned,
        "sop_instance_uids_sha256": hashlib.sha256("\n".join(sop_uids).encode()).hexdigest(),
        "transfer_syntaxes": sorted({str(h.transfer_syntax) for h in headers}),
        "modality": first.modality,
        "series_description": first.series_description,
        "manufacturer": first.manufacturer,
        "rescale": _rescale_summary(headers),
        "original_orientation": list(geom.orientation),
        "pixel_padding_value": first.pixel_padding_value,
        "frame_of_reference_uid": first.frame_of_reference_uid,
        "sop_instance_uids": [h.sop_uid for h in headers],
        "warnings": list(warnings),
    }
    return Volume(
        hu=hu,
        spacing=spacing,
        origin=origin,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        provenance=provenance,
    )


def _rescale_summary(headers: list[_Header]) -> dict[str, Any]:
    slopes = sorted({1.0 if h.slope is None else h.slope for h in headers})
    intercepts = sorted({0.0 if h.intercept is None else h.intercept for h in headers})
    types = sorted({h.rescale_type for h in headers if h.rescale_type})
    summary: dict[str, Any] = {"type": types[0] if len(types) == 1 else (types or "HU")}
    if len(slopes) == 1 and len(intercepts) == 1:
        summary.update(slope=slopes[0], intercept=intercepts[0], per_slice=False)
    else:
        summary.update(slopes=slopes, intercepts=intercepts, per_slice=True)
    return summary
