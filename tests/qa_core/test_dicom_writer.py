"""Tests for qa_core.dicom_writer.write_series (header content, storage, determinism, errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from qa_core.dicom_writer import write_series
from qa_core.errors import CbctQaError, DicomWriteError


def _volume(
    shape: tuple[int, int, int] = (4, 12, 10), lo: float = -1000.0, hi: float = 2000.0
) -> np.ndarray:
    return np.random.default_rng(7).uniform(lo, hi, shape).astype(np.float32)


def test_header_geometry_and_naming(tmp_path: Path) -> None:
    hu = _volume()
    paths = write_series(
        hu, (2.5, 0.75, 0.5), tmp_path, origin=(-12.0, 30.5, 100.0), exposure_mas=20.4
    )
    assert [p.name for p in paths] == ["CT0000.dcm", "CT0001.dcm", "CT0002.dcm", "CT0003.dcm"]
    ds = pydicom.dcmread(paths[2])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.ImagePositionPatient] == [-12.0, 30.5, 105.0]  # z = 100 + 2 x 2.5
    assert [float(v) for v in ds.PixelSpacing] == [0.75, 0.5]  # (row spacing y, column spacing x)
    assert float(ds.SliceThickness) == 2.5 and float(ds.SpacingBetweenSlices) == 2.5
    assert (ds.Rows, ds.Columns) == (12, 10)
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
    assert ds.InstanceNumber == 3 and ds.Exposure == 20
    assert ds.FrameOfReferenceUID and ds.WindowWidth is not None
    assert ds.SeriesInstanceUID == pydicom.dcmread(paths[0]).SeriesInstanceUID


def test_hu_round_trips_within_half_hu_unsigned_and_signed(tmp_path: Path) -> None:
    for name, lo in (("u", -1000.0), ("s", -3000.0)):  # below -1024 HU forces signed storage
        hu = _volume(lo=lo)
        paths = write_series(hu, (1.0, 1.0, 1.0), tmp_path / name)
        ds = pydicom.dcmread(paths[1])
        assert ds.PixelRepresentation == (1 if name == "s" else 0)
        back = apply_modality_lut(ds.pixel_array, ds)
        assert np.abs(back - hu[1]).max() <= 0.5 + 1e-3


def test_uids_are_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    hu = _volume((2, 4, 4))
    a = [pydicom.dcmread(p) for p in write_series(hu, (1, 1, 1), tmp_path / "a", uid_seed="s1")]
    b = [pydicom.dcmread(p) for p in write_series(hu, (1, 1, 1), tmp_path / "b", uid_seed="s1")]
    c = [pydicom.dcmread(p) for p in write_series(hu, (1, 1, 1), tmp_path / "c", uid_seed="s2")]
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].StudyInstanceUID == b[0].StudyInstanceUID != c[0].StudyInstanceUID
    assert a[0].SOPInstanceUID != a[1].SOPInstanceUID
    assert not set(d.SOPInstanceUID for d in a) & set(d.SOPInstanceUID for d in c)
    d = write_series(hu, (1, 1, 1), tmp_path / "d", study_uid="1.2.3", series_uid="1.2.3.4")
    ds = pydicom.dcmread(d[0])
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == ("1.2.3", "1.2.3.4")


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless])
def test_other_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    hu = _volume((2, 8, 6))
    paths = write_series(hu, (1, 1, 1), tmp_path, transfer_syntax=syntax)
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert np.abs(apply_modality_lut(ds.pixel_array, ds) - hu[0]).max() <= 0.5 + 1e-3


@pytest.mark.parametrize(
    ("hu", "spacing", "kwargs", "match"),
    [
        (np.zeros((4, 4)), (1, 1, 1), {}, "3-D"),
        (np.zeros((0, 4, 4)), (1, 1, 1), {}, "non-empty"),
        (np.zeros((2, 4, 4)), (1, 0, 1), {}, "positive"),
        (np.full((2, 4, 4), np.nan), (1, 1, 1), {}, "NaN"),
        (np.full((2, 4, 4), 1e6), (1, 1, 1), {}, "clip"),
        (np.zeros((2, 4, 4)), (1, 1, 1), {"study_date": "2026-01-01"}, "YYYYMMDD"),
        (np.zeros((2, 4, 4)), (1, 1, 1), {"transfer_syntax": "1.2.3"}, "transfer syntax"),
    ],
)
def test_errors_name_output_and_fix(
    tmp_path: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    kwargs: dict[str, str],
    match: str,
) -> None:
    with pytest.raises(DicomWriteError, match=match) as info:
        write_series(hu, spacing, tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, CbctQaError) and isinstance(info.value, ValueError)
    assert str(tmp_path / "out") in str(info.value)
