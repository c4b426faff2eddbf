"""Tests for qa_core.dicom_series.load_series: geometry round trips and every error class.

Inputs are written with qa_core.dicom_writer.write_series (known geometry and HU) and then
broken on purpose with pydicom; pydicom's bundled CT example checks DICOM written by others.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    RTStructureSetStorage,
    generate_uid,
)

import qa_core
from qa_core.dicom_series import load_series, summarize_series
from qa_core.dicom_writer import write_series
from qa_core.errors import (
    CbctQaError,
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
from qa_core.settings import Settings

SPACING = (2.0, 0.8, 0.6)  # (z, y, x) mm, all different so permutations show
ORIGIN = (-5.0, 10.0, -20.0)  # (x, y, z) mm


def _hu(shape: tuple[int, int, int] = (5, 12, 10), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1000.0, 1500.0, shape).astype(np.float32)


def _series(
    folder: Path, shape: tuple[int, int, int] = (5, 12, 10), seed: int = 0, **kw: Any
) -> tuple[np.ndarray, list[Path]]:
    hu = _hu(shape, seed)
    kw.setdefault("origin", ORIGIN)
    return hu, write_series(hu, kw.pop("spacing", SPACING), folder, **kw)


def _edit(path: Path, **attrs: Any) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        if key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        elif value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def _ipp(path: Path) -> list[float]:
    return [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]


# --------------------------------------------------------------------------- round trips


def test_round_trip_geometry_and_hu(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path / "s")
    vol = load_series(tmp_path / "s")
    assert vol.shape == hu.shape and vol.hu.dtype == np.float32
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.origin == pytest.approx(ORIGIN)
    assert vol.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert (vol.study_uid, vol.series_uid) == (first.StudyInstanceUID, first.SeriesInstanceUID)
    prov = vol.provenance
    assert prov["n_files"] == 5 and prov["modality"] == "CT" and prov["warnings"] == []
    assert prov["rescale"] == {"type": "HU", "slope": 1.0, "intercept": -1024.0, "per_slice": False}
    assert prov["transfer_syntaxes"] == ["1.2.840.10008.1.2.1"]
    assert len(prov["sop_instance_uids_sha256"]) == 64
    assert qa_core.load_series is load_series  # lazy export


def test_order_follows_position_not_file_name_or_instance_number(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path / "s", shape=(7, 6, 5))
    rng = np.random.default_rng(3)
    names = rng.permutation(len(paths))
    instance = rng.permutation(len(paths)) + 1
    for p, n, i in zip(paths, names, instance, strict=True):
        _edit(p, InstanceNumber=int(i))
        p.rename(p.with_name(f"IMG{n:02d}"))  # no .dcm suffix: names carry no order
    vol = load_series(tmp_path / "s")
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    assert vol.origin == pytest.approx(ORIGIN)


def test_negative_z_spacing_and_signed_storage(tmp_path: Path) -> None:
    hu = _hu((4, 6, 6)) - 1500.0  # below -1024 HU: stored signed
    write_series(hu, (1.25, 1.0, 1.0), tmp_path, origin=(0.0, 0.0, -300.0))
    vol = load_series(tmp_path)
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    assert vol.spacing[0] == pytest.approx(1.25) and vol.origin[2] == pytest.approx(-300.0)


def test_per_slice_rescale_is_applied(tmp_path: Path) -> None:
    _, paths = _series(tmp_path, shape=(3, 4, 4))
    raw = pydicom.dcmread(paths[1]).pixel_array.astype(np.float64)
    _edit(paths[1], RescaleSlope="0.5", RescaleIntercept="-100")
    vol = load_series(tmp_path)
    np.testing.assert_allclose(vol.hu[1], raw * 0.5 - 100.0, atol=1e-3)
    assert vol.provenance["rescale"]["per_slice"] is True


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless])
def test_transfer_syntaxes_decoded_by_pydicom(tmp_path: Path, syntax: str) -> None:
    hu, _ = _series(tmp_path, shape=(3, 8, 6), transfer_syntax=syntax)
    vol = load_series(tmp_path)
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    assert vol.provenance["transfer_syntaxes"] == [syntax]


def test_zip_input_in_memory_and_list_input(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path / "s")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, f"../../{p.name}")  # path-traversal names: read in memory, never extracted
        zf.writestr("/abs/readme.txt", "junk")
    vol = load_series(archive)
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    assert vol.spacing == pytest.approx(SPACING) and vol.origin == pytest.approx(ORIGIN)
    assert not (tmp_path.parent.parent / paths[0].name).exists()
    assert vol.provenance["files"][0] == f"{archive}!../../CT0000.dcm"
    assert vol.provenance["sources"] == [str(archive)]
    assert vol.provenance["n_files_scanned"] == len(paths) + 1
    assert any("readme.txt" in w for w in vol.provenance["warnings"])
    listed = load_series([str(p) for p in reversed(paths)])
    assert np.array_equal(listed.hu, vol.hu)


def test_exact_duplicate_file_is_dropped_with_warning(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path)
    shutil.copy(paths[2], tmp_path / "copy_of_slice_2.dcm")
    vol = load_series(tmp_path)
    assert vol.shape == hu.shape
    assert any("same SOPInstanceUID" in w for w in vol.provenance["warnings"])


def test_junk_and_non_image_objects_are_ignored_with_warnings(tmp_path: Path) -> None:
    hu, _ = _series(tmp_path / "s")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    _rtstruct(tmp_path / "s" / "RS.dcm")
    vol = load_series(tmp_path / "s")
    assert vol.shape == hu.shape
    text = " ".join(vol.provenance["warnings"])
    assert ".DS_Store" in text and "RTSTRUCT" in text


def _rtstruct(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "series"])
    ds.StructureSetLabel = "OARs"
    ds.save_as(path, enforce_file_format=True)


def test_series_choice(tmp_path: Path) -> None:
    hu_a, pa = _series(tmp_path / "a", uid_seed="a", series_description="CBCT day 1")
    hu_b, pb = _series(
        tmp_path / "b", seed=1, uid_seed="b", series_description="CBCT day 2", shape=(3, 12, 10)
    )
    with pytest.raises(MultipleSeriesError) as info:
        load_series(tmp_path)
    uid_a = str(pydicom.dcmread(pa[0]).SeriesInstanceUID)
    uid_b = str(pydicom.dcmread(pb[0]).SeriesInstanceUID)
    msg = str(info.value)
    for part in (
        uid_a,
        uid_b,
        "CBCT day 1",
        "CBCT day 2",
        "5 file(s)",
        "3 file(s)",
        "series_uid=",
        "--series",
    ):
        assert part in msg
    vol = load_series(tmp_path, series_uid=uid_b)
    assert np.abs(vol.hu - hu_b).max() <= 0.5 + 1e-3 and vol.series_uid == uid_b
    with pytest.raises(SeriesNotFoundError, match=uid_a):
        load_series(tmp_path, series_uid="1.2.3.999")
    found = {
        s.series_uid: (s.modality, s.description, s.n_files) for s in summarize_series(tmp_path)
    }
    assert found == {uid_a: ("CT", "CBCT day 1", 5), uid_b: ("CT", "CBCT day 2", 3)}
    assert np.abs(load_series(tmp_path, series_uid=uid_a).hu - hu_a).max() <= 0.5 + 1e-3


# --------------------------------------------------------------------------- orientation


def test_flipped_rows_are_reoriented(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path)
    ny, dy = hu.shape[1], SPACING[1]
    for p in paths:  # same physical volume stored with rows running anterior (-y)
        ds = pydicom.dcmread(p)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (ny - 1) * dy, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
        ds.save_as(p, enforce_file_format=True)
    vol = load_series(tmp_path)
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    assert vol.origin == pytest.approx(ORIGIN) and vol.spacing == pytest.approx(SPACING)
    assert any("reoriented" in w for w in vol.provenance["warnings"])


def test_sagittal_series_is_reoriented_to_axial(tmp_path: Path) -> None:
    hu = _hu((4, 6, 5))  # (z, y, x)
    dz, dy, dx = SPACING
    nz = hu.shape[0]
    # Sagittal slice j holds x = j: rows run inferior (-z), columns posterior (+y).
    stored = np.stack([hu[::-1, :, j] for j in range(hu.shape[2])])  # (x, z, y)
    paths = write_series(stored, (dx, dz, dy), tmp_path)
    for j, p in enumerate(paths):
        _edit(
            p,
            ImageOrientationPatient=[0, 1, 0, 0, 0, -1],
            ImagePositionPatient=[ORIGIN[0] + j * dx, ORIGIN[1], ORIGIN[2] + (nz - 1) * dz],
        )
    vol = load_series(tmp_path)
    assert vol.shape == hu.shape
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.origin == pytest.approx(ORIGIN)
    assert vol.provenance["original_orientation"] == [0, 1, 0, 0, 0, -1]


def test_oblique_and_gantry_tilt_are_refused(tmp_path: Path) -> None:
    _, paths = _series(tmp_path / "o")
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    for p in paths:
        _edit(p, ImageOrientationPatient=[1, 0, 0, 0, float(c), float(s)])
    with pytest.raises(ObliqueOrientationError, match=r"oblique.*resample"):
        load_series(tmp_path / "o")
    _, paths = _series(tmp_path / "t")
    for k, p in enumerate(paths):
        x, y, z = _ipp(p)
        _edit(p, ImagePositionPatient=[x, y + 0.7 * k, z])
    with pytest.raises(ObliqueOrientationError, match="gantry"):
        load_series(tmp_path / "t")


# --------------------------------------------------------------------------- slice checks


def test_duplicate_position_different_instance(tmp_path: Path) -> None:
    _, paths = _series(tmp_path)
    dup = tmp_path / "dup.dcm"
    shutil.copy(paths[1], dup)
    _edit(dup, SOPInstanceUID=generate_uid(entropy_srcs=["dup"]))
    with pytest.raises(DuplicateSliceError) as info:
        load_series(tmp_path)
    assert "dup.dcm" in str(info.value) and "CT0001.dcm" in str(info.value)
    assert "remove one copy" in str(info.value)


def test_missing_slice(tmp_path: Path) -> None:
    _, paths = _series(tmp_path, shape=(6, 4, 4))
    paths[3].unlink()
    with pytest.raises(MissingSlicesError) as info:
        load_series(tmp_path)
    msg = str(info.value)
    assert "CT0002.dcm" in msg and "CT0004.dcm" in msg and "1 slice(s) missing" in msg
    assert "re-export" in msg


def test_non_uniform_spacing_tolerance(tmp_path: Path) -> None:
    _, paths = _series(tmp_path, shape=(6, 4, 4))
    x, y, z = _ipp(paths[3])
    _edit(paths[3], ImagePositionPatient=[x, y, z + 0.02 * SPACING[0]])  # 2 %: within 5 %
    assert load_series(tmp_path).spacing[0] == pytest.approx(SPACING[0])
    _edit(paths[3], ImagePositionPatient=[x, y, z + 0.3 * SPACING[0]])
    with pytest.raises(NonUniformSpacingError, match=r"CT0003\.dcm.*CBCTQA_SPACING_TOLERANCE"):
        load_series(tmp_path)
    assert load_series(tmp_path, settings=Settings(spacing_tolerance=0.5)).shape[0] == 6


def test_mixed_matrix_and_pixel_spacing(tmp_path: Path) -> None:
    _, paths = _series(tmp_path / "m", shape=(3, 6, 6))
    extra = write_series(
        _hu((1, 8, 6)),
        (2.0, 0.8, 0.6),
        tmp_path / "m" / "x",
        file_prefix="BIG",
        origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 3 * SPACING[0]),
    )
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    _edit(extra[0], SeriesInstanceUID=uid)
    with pytest.raises(MixedMatrixError, match=r"BIG0000\.dcm.*8x6"):
        load_series(tmp_path / "m")
    _, paths = _series(tmp_path / "p", shape=(3, 6, 6))
    _edit(paths[2], PixelSpacing=[0.5, 0.5])
    with pytest.raises(MixedMatrixError, match=r"CT0002\.dcm"):
        load_series(tmp_path / "p")


# --------------------------------------------------------------------------- file checks


def test_empty_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInputError, match="holds no files"):
        load_series(tmp_path / "empty")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    with pytest.raises(EmptyInputError, match=r"empty\.zip"):
        load_series(tmp_path / "empty.zip")
    with pytest.raises(EmptyInputError, match="empty file list"):
        load_series([])
    with pytest.raises(EmptyInputError, match="does not exist"):
        load_series(tmp_path / "nowhere")
    assert issubclass(EmptyInputError, FileNotFoundError)


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(bytes(300))
    with pytest.raises(NotDicomError) as info:
        load_series(tmp_path)
    assert "notes.txt" in str(info.value) and "DICM" in str(info.value)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(NotDicomError, match=r"bad\.zip.*zip"):
        load_series(tmp_path / "bad.zip")


def test_no_pixel_data(tmp_path: Path) -> None:
    (tmp_path / "rs").mkdir()
    _rtstruct(tmp_path / "rs" / "RS.dcm")
    with pytest.raises(NoPixelDataError, match=r"RTSTRUCT.*RS\.dcm"):
        load_series(tmp_path / "rs")
    _, paths = _series(tmp_path / "ct")
    _edit(paths[2], PixelData=None)
    with pytest.raises(NoPixelDataError, match=r"CT0002\.dcm.*re-export"):
        load_series(tmp_path / "ct")


def test_not_ct(tmp_path: Path) -> None:
    _, paths = _series(tmp_path)
    for p in paths:
        _edit(p, Modality="MR")
    with pytest.raises(NotCTError, match="MR"):
        load_series(tmp_path)
    uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    with pytest.raises(NotCTError, match=uid):
        load_series(tmp_path, series_uid=uid)


def test_colour_image_is_not_ct(tmp_path: Path) -> None:
    _, paths = _series(tmp_path, shape=(2, 4, 4))
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    for p in paths:
        _edit(
            p,
            SamplesPerPixel=3,
            PhotometricInterpretation="RGB",
            PlanarConfiguration=0,
            BitsAllocated=8,
            BitsStored=8,
            HighBit=7,
            PixelRepresentation=0,
            PixelData=rgb.tobytes(),
        )
    with pytest.raises(NotCTError, match=r"CT0000\.dcm.*RGB.*not CT"):
        load_series(tmp_path)


def test_truncated_files(tmp_path: Path) -> None:
    for where in ("pixels", "header"):
        folder = tmp_path / where
        _, paths = _series(folder)
        data = paths[2].read_bytes()
        paths[2].write_bytes(data[: len(data) - 37] if where == "pixels" else data[:700])
        with pytest.raises(TruncatedFileError) as info:
            load_series(folder)
        assert "CT0002.dcm" in str(info.value) and "again" in str(info.value)
    _, paths = _series(tmp_path / "short")
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(TruncatedFileError, match=r"CT0001\.dcm: Pixel Data holds 100 bytes"):
        load_series(tmp_path / "short")


def _fake_jpeg_ls(path: Path) -> None:
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.save_as(path, enforce_file_format=True)


def test_unsupported_transfer_syntax_names_package(tmp_path: Path) -> None:
    _, paths = _series(tmp_path / "private")
    _edit(paths[0], TransferSyntaxUID="1.2.3.4.5")
    with pytest.raises(
        UnsupportedTransferSyntaxError, match=r"CT0000\.dcm.*1\.2\.3\.4\.5.*re-export"
    ):
        load_series(tmp_path / "private")
    # Real JPEG-LS data from pydicom's test files, relabelled CT.
    src = Path(str(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")))
    shutil.copy(src, tmp_path / "jls.dcm")
    _edit(tmp_path / "jls.dcm", Modality="CT")
    if get_decoder(JPEGLSLossless).is_available:  # a JPEG-LS plugin is installed here
        ref = pydicom.dcmread(src)
        vol = load_series(tmp_path / "jls.dcm")
        np.testing.assert_allclose(vol.hu[0], apply_modality_lut(ref.pixel_array, ref))
    else:
        with pytest.raises(UnsupportedTransferSyntaxError) as info:
            load_series(tmp_path / "jls.dcm")
        msg = str(info.value)
        assert "jls.dcm" in msg and "JPEG-LS" in msg and "pylibjpeg" in msg and "pip install" in msg


def test_limits_refuse_before_pixel_data(tmp_path: Path) -> None:
    _, paths = _series(tmp_path / "s")
    _fake_jpeg_ls(paths[0])  # undecodable here: proves the limits fire before pixels are read
    with pytest.raises(InputTooLargeError, match="CBCTQA_MAX_SLICES=4"):
        load_series(tmp_path / "s", settings=Settings(max_slices=4))
    with pytest.raises(InputTooLargeError, match=r"12x10 = 120 pixels.*CBCTQA_MAX_PIXELS=100"):
        load_series(tmp_path / "s", settings=Settings(max_pixels=100))


def test_zip_bomb_refused_from_declared_size(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CT0000.dcm", bytes(8 * 2**20))  # 8 MiB of zeros, ~8 KiB compressed
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(InputTooLargeError, match=r"bomb\.zip declares 8 MiB"):
        load_series(archive, settings=Settings(max_slices=2, max_pixels=64))


def test_errors_share_the_tree() -> None:
    for cls in (NotDicomError, MultipleSeriesError, TruncatedFileError, InputTooLargeError):
        assert issubclass(cls, CbctQaError) and issubclass(cls, ValueError)


# --------------------------------------------------------------------------- data written by others


def test_pydicom_example_ct() -> None:
    from pydicom import examples

    ref = examples.ct
    path = Path(str(get_testdata_file("CT_small.dcm")))
    vol = load_series(path)
    assert vol.shape == (1, ref.Rows, ref.Columns)
    np.testing.assert_allclose(vol.hu[0], apply_modality_lut(ref.pixel_array, ref), atol=1e-4)
    assert vol.spacing[1:] == pytest.approx(tuple(float(v) for v in ref.PixelSpacing))
    assert vol.spacing[0] == pytest.approx(float(ref.SliceThickness))
    assert vol.origin == pytest.approx(tuple(float(v) for v in ref.ImagePositionPatient))
    assert vol.series_uid == ref.SeriesInstanceUID
    assert any("single-slice" in w for w in vol.provenance["warnings"])


def test_pydicom_example_ct_in_zip_and_list(tmp_path: Path) -> None:
    path = Path(str(get_testdata_file("CT_small.dcm")))
    with zipfile.ZipFile(tmp_path / "ct.zip", "w") as zf:
        zf.write(path, "CT_small.dcm")
    a = load_series(tmp_path / "ct.zip")
    b = load_series([path])
    assert np.array_equal(a.hu, b.hu)


@pytest.mark.parametrize(
    ("signed", "expected"), [(1, [-2048, -1, 0, 2047]), (0, [2048, 4095, 0, 2047])]
)
def test_12_bit_stored_values_ignore_high_bits(
    tmp_path: Path, signed: int, expected: list[int]
) -> None:
    """BitsStored 12 with garbage in bits 12-15: masked (unsigned) or sign-extended (signed)."""
    paths = write_series(np.zeros((2, 4, 4)), (1, 1, 1), tmp_path)
    vals = np.array([-2048, -1, 0, 2047] * 4, dtype=np.int16).reshape(4, 4)
    raw = (vals.view(np.uint16) & 0x0FFF) | 0xA000
    for p in paths:
        _edit(
            p,
            PixelData=raw.astype("<u2").tobytes(),
            BitsStored=12,
            HighBit=11,
            PixelRepresentation=signed,
            RescaleIntercept="0",
        )
    vol = load_series(tmp_path)
    ref = pydicom.dcmread(paths[0])
    np.testing.assert_array_equal(vol.hu[0, 0], expected)
    np.testing.assert_array_equal(vol.hu[0], apply_modality_lut(ref.pixel_array, ref))


def test_deflated_transfer_syntax(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path, shape=(3, 6, 5))
    for p in paths:
        _edit(p, TransferSyntaxUID=DeflatedExplicitVRLittleEndian)
    vol = load_series(tmp_path)
    assert np.abs(vol.hu - hu).max() <= 0.5 + 1e-3
    assert vol.provenance["transfer_syntaxes"] == [DeflatedExplicitVRLittleEndian]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken values
def test_every_truncation_point_fails_loudly(tmp_path: Path) -> None:
    """A slice cut anywhere never loads silently (a dropped end slice would go unnoticed)."""
    _, paths = _series(tmp_path, shape=(3, 6, 5))
    whole = paths[2].read_bytes()
    seen: set[type] = set()
    for cut in range(0, len(whole), 5):
        paths[2].write_bytes(whole[:cut])
        with pytest.raises((TruncatedFileError, NotDicomError, NoPixelDataError)) as info:
            load_series(tmp_path)
        assert "CT0002.dcm" in str(info.value)
        seen.add(type(info.value))
    assert TruncatedFileError in seen


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_bytes_raise_only_project_errors(tmp_path: Path) -> None:
    _, paths = _series(tmp_path, shape=(3, 6, 5))
    whole = paths[1].read_bytes()
    rng = np.random.default_rng(11)
    for _ in range(120):
        data = bytearray(whole)
        for i in rng.integers(132, len(data) - 60, size=3):  # header bytes, past the preamble
            data[int(i)] = int(rng.integers(0, 256))
        paths[1].write_bytes(bytes(data))
        try:
            vol = load_series(tmp_path)
        except CbctQaError:
            continue
        assert vol.hu.dtype == np.float32 and vol.hu.ndim == 3


# --------------------------------------------------------------------------- geometry and limits


def _retag(path: Path, tag: int, vr: str, value: Any) -> None:
    """Store ``value`` under ``tag`` with ``vr`` as written (bypasses pydicom's DS checks)."""
    ds = pydicom.dcmread(path)
    if tag in ds:
        del ds[tag]
    ds.add_new(tag, vr, value)
    ds.save_as(path, enforce_file_format=True)


def test_multi_frame_images_are_refused_by_name(tmp_path: Path) -> None:
    from pydicom.uid import EnhancedCTImageStorage

    _, paths = _series(tmp_path / "mf", shape=(3, 6, 6))
    # one file holding all three frames, as a multi-frame export writes it
    ds = pydicom.dcmread(paths[0])
    frames = [pydicom.dcmread(p).pixel_array for p in paths]
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack(frames).astype(frames[0].dtype).tobytes()
    multi = tmp_path / "multi"
    multi.mkdir()
    ds.save_as(multi / "MF.dcm", enforce_file_format=True)
    with pytest.raises(qa_core.errors.DicomError, match=r"MF\.dcm: multi-frame .*single-frame"):
        load_series(multi)
    # the Enhanced CT storage class is named as such even with one frame
    enhanced = tmp_path / "enhanced"
    shutil.copytree(tmp_path / "mf", enhanced)
    for path in sorted(enhanced.glob("*.dcm")):
        edited = pydicom.dcmread(path)
        edited.SOPClassUID = EnhancedCTImageStorage
        edited.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
        edited.save_as(path, enforce_file_format=True)
    with pytest.raises(qa_core.errors.DicomError, match=r"multi-frame \(Enhanced CT\)") as info:
        load_series(enhanced)
    assert "CT0000.dcm" in str(info.value) and isinstance(info.value, CbctQaError)


def test_mixed_orientations_in_one_series(tmp_path: Path) -> None:
    _, paths = _series(tmp_path / "o", shape=(4, 6, 6))
    _edit(paths[2], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])  # a coronal slice
    with pytest.raises(MixedMatrixError, match=r"mixes slice orientations.*CT0002\.dcm"):
        load_series(tmp_path / "o")


@pytest.mark.parametrize(
    ("keyword", "match"),
    [
        ("ImagePositionPatient", r"CT0001\.dcm lack\(s\) ImageOrientationPatient or ImagePositionPatient"),
        ("ImageOrientationPatient", r"CT0001\.dcm lack\(s\) ImageOrientationPatient or ImagePositionPatient"),
        ("PixelSpacing", r"CT0001\.dcm lack\(s\) Rows, Columns or PixelSpacing"),
    ],
)
def test_missing_geometry_tags_name_the_file(tmp_path: Path, keyword: str, match: str) -> None:
    _, paths = _series(tmp_path / "g", shape=(3, 6, 6))
    _edit(paths[1], **{keyword: None})
    with pytest.raises(qa_core.errors.DicomError, match=match):
        load_series(tmp_path / "g")


def test_single_slice_without_geometry_loads_with_a_warning(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path / "one", shape=(1, 6, 6))
    _edit(paths[0], ImagePositionPatient=None, ImageOrientationPatient=None)
    volume = load_series(tmp_path / "one")
    assert volume.hu.shape == (1, 6, 6)
    np.testing.assert_allclose(volume.hu, hu, atol=1.0)
    assert any("assumed axial" in w for w in volume.provenance["warnings"])


@pytest.mark.parametrize(
    ("tag", "vr", "value", "match"),
    [
        (0x00280030, "LO", "0.8\\abc", r"CT0001\.dcm: PixelSpacing value .* is not numeric"),
        (0x00200032, "LO", "1\\2", r"CT0001\.dcm: ImagePositionPatient has 2 value\(s\), expected 3"),
        (0x00200037, "LO", "1\\0\\0\\0\\x\\0", r"CT0001\.dcm: ImageOrientationPatient value .* is not numeric"),
        (0x00281053, "LO", "steep", r"CT0001\.dcm: RescaleSlope value 'steep' is not a number"),
        (0x00180050, "LO", "thin", r"CT0001\.dcm: SliceThickness value 'thin' is not a number"),
    ],
)
def test_non_numeric_geometry_names_file_and_tag(
    tmp_path: Path, tag: int, vr: str, value: str, match: str
) -> None:
    _, paths = _series(tmp_path / "n", shape=(3, 6, 6))
    _retag(paths[1], tag, vr, value)
    with pytest.raises(qa_core.errors.DicomError, match=match) as info:
        load_series(tmp_path / "n")
    assert len(str(info.value).splitlines()) == 1  # one line, naming file and tag


def test_file_count_limits_for_folders_zips_and_lists(tmp_path: Path) -> None:
    settings = Settings(max_slices=1)  # scan limit: 4 x 1 + 1024 files
    limit = 4 * settings.max_slices + 1024
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    for i in range(limit + 1):
        (crowded / f"f{i:04d}.txt").write_bytes(b"x")
    with pytest.raises(InputTooLargeError, match=rf"holds more than {limit} files.*CBCTQA_MAX_SLICES=1"):
        load_series(crowded, settings=settings)
    archive = tmp_path / "crowded.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(limit + 1):
            zf.writestr(f"f{i:04d}.dcm", b"x")
    with pytest.raises(InputTooLargeError, match=rf"crowded\.zip holds {limit + 1} files, more than the {limit}"):
        load_series(archive, settings=settings)
    listed = sorted(crowded.iterdir())
    with pytest.raises(InputTooLargeError, match=r"file list of 1029 path\(s\) holds more than"):
        load_series(listed, settings=settings)
    # at the limit the files are scanned (and here refused for what they are, not their count)
    (crowded / f"f{limit:04d}.txt").unlink()
    with pytest.raises(NotDicomError):
        load_series(crowded, settings=settings)
