"""Tests for qa_core.rtstruct (RTSTRUCT -> masks) and qa_core.synth.rtstruct_writer.

Known answers: the simulator's structure set and one written by an independent tool
(rt-utils, from a known mask) read back within one voxel of the mask; bad structure sets
(other series, other frame of reference, no matching ROI, open contour, empty ROI, between
slices) raise one-line errors naming the ROI or the tag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from qa_core.dicom_series import load_series
from qa_core.dicom_writer import write_series
from qa_core.errors import (
    ConfigurationError,
    DicomError,
    RtStructEmptyError,
    RtStructError,
    RtStructGeometryError,
    RtStructNoMatchingRoiError,
    RtStructOpenContourError,
    RtStructReferenceError,
)
from qa_core.rtstruct import (
    find_rtstructs,
    normalise_roi_name,
    rasterise_polygon,
    read_rtstruct,
    read_structure_set_info,
    roi_table,
)
from qa_core.synth.rtstruct_writer import mask_contours, phantom_roi_masks, write_rtstruct

SPACING = (2.5, 1.25, 1.0)  # anisotropic in-plane on purpose (rows 1.25 mm, columns 1.0 mm)
ORIGIN = (-30.0, -20.0, 40.0)


def _within_one_voxel(got: np.ndarray, want: np.ndarray) -> bool:
    """Every disagreeing voxel touches the boundary of ``want`` (in-plane, 8-neighbourhood)."""
    st = np.zeros((3, 3, 3), dtype=bool)
    st[1] = True
    boundary = ndimage.binary_dilation(want, st) & ~ndimage.binary_erosion(want, st)
    return bool(np.all(boundary[got ^ want]))


def _ellipse(shape: tuple[int, int, int], c: tuple[float, float], r: tuple[float, float],
             z: range) -> np.ndarray:
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    m2 = ((yy - c[0]) / r[0]) ** 2 + ((xx - c[1]) / r[1]) ** 2 <= 1.0
    out = np.zeros(shape, dtype=bool)
    out[list(z)] = m2
    return out


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 10 x 40 x 48 CT series, known masks, and our structure set of them."""
    root = tmp_path_factory.mktemp("rt")
    shape = (10, 40, 48)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = _ellipse(shape, (20, 24), (17, 21), range(10))
    hu[body] = 40.0
    left = _ellipse(shape, (18, 34), (5, 4), range(2, 7))  # patient left = +x = right of image
    right = _ellipse(shape, (18, 13), (5, 4), range(3, 8))
    larynx = _ellipse(shape, (12, 24), (4, 3), range(0, 4))
    larynx[1, 12, 24] = False  # a hole: written as an inner contour, read back by even-odd
    files = write_series(hu, SPACING, root / "ct", origin=ORIGIN, uid_seed="rt-known")
    rois = {"External": body, "Parotid_L": left, "Parotid_R": right, "Larynx": larynx}
    rs = write_rtstruct(files, rois, root / "ct" / "RS.dcm", uid_seed="rt-known")
    volume = load_series(root / "ct")
    return {"root": root, "files": files, "rois": rois, "rs": rs, "volume": volume, "hu": hu}


def _modified(src: Path, dst: Path, change: object) -> Path:
    ds = pydicom.dcmread(src)
    change(ds)  # type: ignore[operator]
    ds.save_as(dst, enforce_file_format=True)
    return dst


# ------------------------------------------------------------------------- round trips


def test_simulator_structure_set_reads_back_exactly(known: dict[str, object]) -> None:
    rois = known["rois"]
    assert isinstance(rois, dict)
    masks = read_rtstruct(known["rs"], known["volume"], aliases={})  # type: ignore[arg-type]
    assert masks.categories == ("parotid", "larynx")
    assert masks.roi_names["parotid"] == ("Parotid_L", "Parotid_R")
    assert masks.body is not None and np.array_equal(masks.body, rois["External"])
    assert np.array_equal(masks.masks["parotid"], rois["Parotid_L"] | rois["Parotid_R"])
    assert np.array_equal(masks.masks["larynx"], rois["Larynx"])  # the hole survives
    assert not masks.masks["larynx"][1, 12, 24]
    assert masks.warnings == ()
    summary = masks.to_dict()
    assert summary["voxels"]["larynx"] == int(rois["Larynx"].sum())


def test_simulator_session_rtstruct_within_one_voxel(tmp_path: Path) -> None:
    """A simulated session written as the cohort writer does: phantom organs under TG-263."""
    from qa_core.synth.cohort import simulate_session

    sim = simulate_session(5, 2, slices=8, size=64)
    files = write_series(sim.hu, sim.spacing, tmp_path / "DICOM", uid_seed="sim")
    rois = phantom_roi_masks(sim.labels)
    assert {"External", "Parotid_L", "Parotid_R", "Bone_Mandible"} <= set(rois)
    write_rtstruct(files, rois, tmp_path / "DICOM" / "RS.dcm", uid_seed="sim")
    volume = load_series(tmp_path / "DICOM")
    assert any("RTSTRUCT" in w for w in volume.provenance["warnings"])  # skipped as non-image
    masks = read_rtstruct(tmp_path / "DICOM" / "RS.dcm", volume, aliases={})
    for cat, names in (("parotid", ("Parotid_L", "Parotid_R")), ("mandible", ("Bone_Mandible",))):
        want = np.zeros_like(rois["External"])
        for n in names:
            want |= rois[n]
        assert _within_one_voxel(masks.masks[cat], want), cat
        dice = 2 * (masks.masks[cat] & want).sum() / (masks.masks[cat].sum() + want.sum())
        assert dice > 0.97, (cat, dice)
    assert masks.body is not None and _within_one_voxel(masks.body, rois["External"])


def test_rt_utils_structure_set_reads_back_within_one_voxel(tmp_path: Path) -> None:
    """An independent writer (rt-utils, OpenCV contours through boundary voxel centres)."""
    import rt_utils  # a test dependency (pyproject [test]): never skipped
    shape = (8, 40, 48)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = _ellipse(shape, (20, 24), (17, 21), range(8))
    hu[body] = 30.0
    gland = _ellipse(shape, (25, 30), (6, 5), range(1, 6)) | _ellipse(shape, (25, 15), (6, 5), range(2, 7))
    # rt-utils 1.2.7 scales columns by PixelSpacing[0] (the row spacing), so it is only right
    # for square pixels: give it square pixels (our own writer is tested with 1.25 x 1.0 mm)
    files = write_series(hu, (2.5, 1.1, 1.1), tmp_path / "ct", origin=ORIGIN, uid_seed="rtu")
    rs = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(tmp_path / "ct"))
    # rt-utils wants (rows, cols, slices) in ascending z, slice 0 first, as our volume is
    rs.add_roi(mask=np.transpose(gland, (1, 2, 0)), name="Glnd_Submand_L")
    rs.add_roi(mask=np.transpose(body, (1, 2, 0)), name="BODY")  # an alias of External
    out = tmp_path / "rtu" / "rs.dcm"
    out.parent.mkdir()
    rs.save(str(out))
    volume = load_series(tmp_path / "ct")
    assert len(files) == 8
    masks = read_rtstruct(out, volume, aliases={})
    assert masks.roi_names == {"submandibular": ("Glnd_Submand_L",), "body": ("BODY",)}
    assert _within_one_voxel(masks.masks["submandibular"], gland)
    assert masks.body is not None and _within_one_voxel(masks.body, body)
    # contours through boundary voxel centres: the boundary rule gives the mask back exactly
    assert np.array_equal(masks.masks["submandibular"], gland)


def test_structure_set_references_the_ct_series(known: dict[str, object]) -> None:
    info = read_structure_set_info(known["rs"])  # type: ignore[arg-type]
    ct = pydicom.dcmread(known["files"][0])  # type: ignore[index]
    assert info.referenced_series_uids == (ct.SeriesInstanceUID,)
    assert info.frame_of_reference_uids == (ct.FrameOfReferenceUID,)
    assert info.study_uid == ct.StudyInstanceUID and info.series_uid != ct.SeriesInstanceUID
    assert info.roi_names == ("External", "Parotid_L", "Parotid_R", "Larynx")
    ds = pydicom.dcmread(known["rs"])  # type: ignore[arg-type]
    refs = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    sops = [i.ReferencedSOPInstanceUID for i in refs.RTReferencedSeriesSequence[0].ContourImageSequence]
    assert sops == [pydicom.dcmread(f).SOPInstanceUID for f in known["files"]]  # type: ignore[attr-defined]
    assert ds.Modality == "RTSTRUCT" and ds.PatientID == ct.PatientID
    found = find_rtstructs(known["root"], series_uid=ct.SeriesInstanceUID)  # type: ignore[arg-type]
    assert [f.path for f in found] == [known["rs"]]
    assert find_rtstructs(known["root"], series_uid="1.2.3") == []  # type: ignore[arg-type]


# ------------------------------------------------------------------------- names


def test_roi_names_tg263_aliases_and_settings() -> None:
    assert normalise_roi_name("Parotid (Lt)") == "parotid_lt"
    table = roi_table({})
    for name, cat in (("Parotid_L", "parotid"), ("L Parotid", "parotid"), ("parotid right", "parotid"),
                      ("SMG_R", "submandibular"), ("Glnd_Submand_L", "submandibular"),
                      ("Larynx", "larynx"), ("Mandible", "mandible"), ("Skin", "body")):
        assert table[normalise_roi_name(name)] == cat, name
    for derived in ("Parotid_L_PRV05", "zParotid_L", "Parotid_L_opt"):
        assert normalise_roi_name(derived) not in table
    custom = roi_table({"PAROTIDE_SX": "Parotid_L", "Kehlkopf": "larynx", "Skin": ""})
    assert custom["parotide_sx"] == "parotid" and custom["kehlkopf"] == "larynx"
    assert "skin" not in custom
    with pytest.raises(ConfigurationError, match=r"PAROTIDE_SX.*neither a TG-263 name"):
        roi_table({"PAROTIDE_SX": "Parotis"})


def test_aliases_from_the_environment(known: dict[str, object], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def rename(ds: pydicom.Dataset) -> None:
        for r in ds.StructureSetROISequence:
            r.ROIName = {"Parotid_L": "PAROTIDE_SX", "Parotid_R": "PAROTIDE_DX"}.get(r.ROIName, "x_" + r.ROIName)

    rs = _modified(known["rs"], tmp_path / "rs.dcm", rename)  # type: ignore[arg-type]
    with pytest.raises(RtStructNoMatchingRoiError, match="PAROTIDE_SX"):
        read_rtstruct(rs, known["volume"])  # type: ignore[arg-type]
    monkeypatch.setenv("CBCTQA_ROI_ALIASES", '{"PAROTIDE_SX": "Parotid_L", "parotide dx": "parotid"}')
    masks = read_rtstruct(rs, known["volume"])  # type: ignore[arg-type]
    assert masks.roi_names == {"parotid": ("PAROTIDE_SX", "PAROTIDE_DX")}
    assert masks.body is None and "x_External" in masks.unmatched


# ------------------------------------------------------------------------- rasterising


def test_rasterise_polygon_known_answers() -> None:
    # through voxel centres: the boundary voxels belong to the region
    sq = rasterise_polygon([1, 1, 4, 4], [1, 4, 4, 1], (6, 6))
    want = np.zeros((6, 6), dtype=bool)
    want[1:5, 1:5] = True
    assert np.array_equal(sq, want)
    # along voxel edges: exactly the voxels enclosed
    edge = rasterise_polygon([0.5, 0.5, 3.5, 3.5], [0.5, 2.5, 2.5, 0.5], (6, 6))
    assert edge.sum() == 6 and edge[1:4, 1:3].all()
    # a long slanted edge through voxel centres: the triangle 0 <= c <= r <= 10, 66 voxels
    tri = rasterise_polygon([0, 10, 10], [0, 10, 0], (12, 12))
    rr, cc = np.nonzero(tri)
    assert tri.sum() == 66 and np.all(cc <= rr) and rr.max() == 10
    # a large simplified contour (few, long edges) on a 512 grid stays exact and fast
    big = rasterise_polygon([10.0, 10.0, 500.0, 500.0], [3.0, 490.0, 490.0, 3.0], (512, 512))
    assert big.sum() == 491 * 488
    # mask -> contours -> mask, with a hole
    m = np.zeros((9, 9), dtype=bool)
    m[1:8, 1:8] = True
    m[4, 4] = False
    back = np.zeros_like(m)
    for c in mask_contours(m):
        back ^= rasterise_polygon(c[:, 0], c[:, 1], m.shape)
    assert np.array_equal(back, m)


# ------------------------------------------------------------------------- bad input


def test_other_series_is_refused(known: dict[str, object], tmp_path: Path) -> None:
    other = write_series(np.asarray(known["hu"]), SPACING, tmp_path / "other", origin=ORIGIN,
                         uid_seed="another-series")
    rs = write_rtstruct(other, {"Parotid_L": known["rois"]["Parotid_L"]}, tmp_path / "rs.dcm")  # type: ignore[index]
    with pytest.raises(RtStructReferenceError, match=r"references series .*\(3006,0014\)\), not the loaded series"):
        read_rtstruct(rs, known["volume"], aliases={})  # type: ignore[arg-type]
    # the same structure set reads on the series it references
    assert read_rtstruct(rs, load_series(tmp_path / "other"), aliases={}).categories == ("parotid",)


def test_other_frame_of_reference_is_refused(known: dict[str, object], tmp_path: Path) -> None:
    def move(ds: pydicom.Dataset) -> None:
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"

    rs = _modified(known["rs"], tmp_path / "for.dcm", move)  # type: ignore[arg-type]
    with pytest.raises(RtStructReferenceError, match=r"frame of reference 1\.2\.3\.4.*\(0020,0052\)"):
        read_rtstruct(rs, known["volume"], aliases={})  # type: ignore[arg-type]

    def move_roi(ds: pydicom.Dataset) -> None:
        ds.StructureSetROISequence[1].ReferencedFrameOfReferenceUID = "1.2.3.5"

    rs2 = _modified(known["rs"], tmp_path / "for2.dcm", move_roi)  # type: ignore[arg-type]
    with pytest.raises(RtStructReferenceError, match=r"ROI 'Parotid_L'.*\(3006,0024\)"):
        read_rtstruct(rs2, known["volume"], aliases={})  # type: ignore[arg-type]


def test_stray_contour_image_is_refused(known: dict[str, object], tmp_path: Path) -> None:
    def stray(ds: pydicom.Dataset) -> None:
        seq = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        seq.RTReferencedSeriesSequence[0].ContourImageSequence[0].ReferencedSOPInstanceUID = "1.2.9"

    rs = _modified(known["rs"], tmp_path / "stray.dcm", stray)  # type: ignore[arg-type]
    with pytest.raises(RtStructReferenceError, match=r"ContourImageSequence \(3006,0016\).*1\.2\.9"):
        read_rtstruct(rs, known["volume"], aliases={})  # type: ignore[arg-type]


def test_no_matching_roi(known: dict[str, object], tmp_path: Path) -> None:
    def rename(ds: pydicom.Dataset) -> None:
        for i, r in enumerate(ds.StructureSetROISequence):
            r.ROIName = f"Structure{i}"

    rs = _modified(known["rs"], tmp_path / "names.dcm", rename)  # type: ignore[arg-type]
    with pytest.raises(RtStructNoMatchingRoiError, match=r"'Structure0', 'Structure1'.*CBCTQA_ROI_ALIASES") as exc:
        read_rtstruct(rs, known["volume"], aliases={})  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)


def test_open_contour_names_roi_and_tag(known: dict[str, object], tmp_path: Path) -> None:
    def open_it(ds: pydicom.Dataset) -> None:
        ds.ROIContourSequence[2].ContourSequence[0].ContourGeometricType = "OPEN_PLANAR"

    rs = _modified(known["rs"], tmp_path / "open.dcm", open_it)  # type: ignore[arg-type]
    with pytest.raises(RtStructOpenContourError, match=r"ROI 'Parotid_R' contour 1 is OPEN_PLANAR .*\(3006,0042\)"):
        read_rtstruct(rs, known["volume"], aliases={})  # type: ignore[arg-type]


def test_empty_roi(known: dict[str, object], tmp_path: Path) -> None:
    def empty(ds: pydicom.Dataset) -> None:
        del ds.ROIContourSequence[3].ContourSequence

    rs = _modified(known["rs"], tmp_path / "empty.dcm", empty)  # type: ignore[arg-type]
    with pytest.raises(RtStructEmptyError, match=r"ROI 'Larynx' has no contours.*\(3006,0040\)"):
        read_rtstruct(rs, known["volume"], aliases={})  # type: ignore[arg-type]

    def degenerate(ds: pydicom.Dataset) -> None:
        for c in ds.ROIContourSequence[3].ContourSequence:
            pts = [float(v) for v in c.ContourData]
            c.ContourData = [str(v) for v in pts[:3] * (len(pts) // 3)]  # all points equal

    rs2 = _modified(known["rs"], tmp_path / "degenerate.dcm", degenerate)  # type: ignore[arg-type]
    with pytest.raises(RtStructEmptyError, match=r"ROI 'Larynx'.*cover no voxel"):
        read_rtstruct(rs2, known["volume"], aliases={})  # type: ignore[arg-type]


def test_contours_off_the_slices(known: dict[str, object], tmp_path: Path) -> None:
    def shift(ds: pydicom.Dataset) -> None:
        c = ds.ROIContourSequence[1].ContourSequence[0]
        pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        pts[:, 2] += SPACING[0] / 2  # halfway between two slices
        c.ContourData = [f"{v:.4f}" for v in pts.ravel()]

    rs = _modified(known["rs"], tmp_path / "between.dcm", shift)  # type: ignore[arg-type]
    with pytest.raises(RtStructGeometryError, match=r"ROI 'Parotid_L' contour 1 lies at z = .* between slices"):
        read_rtstruct(rs, known["volume"], aliases={})  # type: ignore[arg-type]


def test_not_an_rtstruct_and_missing(known: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(RtStructError, match=r"not an RT Structure Set .*\(0008,0016\)"):
        read_rtstruct(known["files"][0], known["volume"])  # type: ignore[index,arg-type]
    with pytest.raises(RtStructError, match="does not exist") as exc:
        read_rtstruct(tmp_path / "nope.dcm", known["volume"])  # type: ignore[arg-type]
    assert isinstance(exc.value, DicomError)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(RtStructError, match=r"junk.dcm is not a readable DICOM file"):
        read_rtstruct(tmp_path / "junk.dcm", known["volume"])  # type: ignore[arg-type]
