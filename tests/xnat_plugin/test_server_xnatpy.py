"""The local XNAT server driven over HTTP by the real xnatpy 0.8 client (no mocking)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
import xnat
from xnat.exceptions import XNATResponseError

from xnat_plugin.server import RunningServer

PROJECT = "CBCTQA"


@pytest.fixture(scope="module")
def session(xnat_server: RunningServer) -> Iterator[Any]:
    with xnat.connect(xnat_server.url, user=xnat_server.user, password=xnat_server.password,
                      loglevel="ERROR") as connection:
        connection.put(f"/data/projects/{PROJECT}")
        connection.clearcache()
        yield connection


@pytest.fixture(scope="module")
def imported(session: Any, tmp_path_factory: pytest.TempPathFactory,
             make_dicom_zip: Callable[..., tuple[bytes, list[Path]]]) -> Any:
    """A CT session imported from a DICOM zip through xnatpy's import service."""
    payload, _ = make_dicom_zip(tmp_path_factory.mktemp("dicom"))
    return session.services.import_(data=payload, project=PROJECT, subject="SUBJ1",
                                    experiment="SESS1", content_type="application/zip",
                                    import_handler="DICOM-zip")


def test_connect_reads_version_schemas_and_builds_cbctqa_classes(session: Any) -> None:
    assert session.xnat_version == "1.8.10"
    assert session.logged_in_user == "admin"
    assert hasattr(session.classes, "CbctqaQaAssessmentData")
    assert hasattr(session.classes, "CbctqaRatingData")
    assert "cbctqa:qaAssessmentData" in session.inspect.datatypes()
    fields = session.inspect.datafields("cbctqa:qaAssessmentData")
    assert "cbctqa:qaAssessmentData/PAROTID_SCORE" in fields


def test_import_builds_ct_session_with_one_scan_per_series(imported: Any, session: Any) -> None:
    assert imported.__xsi_type__ == "xnat:ctSessionData"
    assert imported.label == "SESS1"
    assert imported.modality == "CT"
    assert str(imported.date) == "2026-03-15"
    scans = imported.scans
    assert sorted(scans.keys()) == ["1", "2"]
    cbct = scans["1"]
    assert cbct.__xsi_type__ == "xnat:ctScanData"
    assert cbct.series_description == "CBCT HN"
    assert cbct.frames == 4
    assert cbct.uid.startswith("1.2.")
    assert [r.label for r in cbct.resources.values()] == ["DICOM"]
    dicom = cbct.resources["DICOM"]
    assert dicom.file_count == 4
    subject = session.projects[PROJECT].subjects["SUBJ1"]
    assert "SESS1" in [e.label for e in subject.experiments.values()]


def test_walk_download_and_digest(imported: Any, tmp_path: Path) -> None:
    resource = imported.scans["1"].resources["DICOM"]
    names = sorted(resource.files.keys())
    assert names == ["CT0000.dcm", "CT0001.dcm", "CT0002.dcm", "CT0003.dcm"]
    target = tmp_path / "one.dcm"
    resource.files["CT0002.dcm"].download(str(target), verbose=False)
    ds = pydicom.dcmread(target)
    assert int(ds.InstanceNumber) == 3
    listing = imported.xnat_session.get_json(resource.uri + "/files")["ResultSet"]["Result"]
    digests = {row["Name"]: row["digest"] for row in listing}
    assert digests["CT0002.dcm"] == hashlib.md5(target.read_bytes()).hexdigest()
    # the whole session as XNAT's zip layout
    imported.download_dir(str(tmp_path / "all"), verbose=False)
    got = sorted(p.name for p in (tmp_path / "all").rglob("*.dcm"))
    assert len(got) == 6


def test_qa_assessment_create_update_and_read_back(imported: Any, session: Any) -> None:
    cls = session.classes.CbctqaQaAssessmentData
    label = "SESS1_cbctqa_1_v1"
    assessment = cls(parent=imported, label=label)
    assessment.mset({"status": "running", "scan_id": "1", "slices": 4, "model_version": "v1"})
    assessment.mset({"status": "complete", "parotid_score": 3.25, "parotid_ae": 1234.5,
                     "parotid_outlier": "true", "overall_score": 4.0})
    session.clearcache()
    again = session.projects[PROJECT].experiments["SESS1"].assessors[label]
    assert isinstance(again, cls)
    assert again.status == "complete"
    assert again.parotid_score == pytest.approx(3.25)
    assert again.parotid_ae == pytest.approx(1234.5)
    assert again.parotid_outlier is True
    assert again.slices == 4
    assert again.image_session_id == imported.id
    # the server refuses what xnatpy's own checks would (mset bypasses them) with 400
    with pytest.raises(XNATResponseError, match="400"):
        again.mset({"status": "finished"})
    # deleting a field with NULL
    again.del_("overall_score")
    session.clearcache()
    assert session.projects[PROJECT].experiments["SESS1"].assessors[label].overall_score is None


def test_rating_create_and_range_check(imported: Any, session: Any) -> None:
    cls = session.classes.CbctqaRatingData
    rating = cls(parent=imported, label="SESS1_rating_admin", rater="admin")
    rating.mset({"parotid": 4, "larynx": 2, "comments": "noisy larynx"})
    session.clearcache()
    back = session.projects[PROJECT].experiments["SESS1"].assessors["SESS1_rating_admin"]
    assert (back.rater, back.parotid, back.larynx, back.comments) == ("admin", 4, 2, "noisy larynx")
    with pytest.raises(XNATResponseError, match="400"):
        back.mset({"parotid": 6})


def test_assessor_resource_upload_download_digest(imported: Any, session: Any, tmp_path: Path) -> None:
    assessment = session.classes.CbctqaQaAssessmentData(parent=imported, label="SESS1_files")
    resource = assessment.create_resource("GRADCAM")
    payload = bytes(range(256)) * 40
    resource.upload_data(payload, "maps/overlay.png")
    resource.upload_data(b"slice,ae\n0,1.5\n", "ae.csv")
    session.clearcache()
    again = session.create_object(assessment.uri).resources["GRADCAM"]
    assert sorted(again.files.keys()) == ["ae.csv", "maps/overlay.png"]
    target = tmp_path / "overlay.png"
    again.files["maps/overlay.png"].download(str(target), verbose=False)
    assert target.read_bytes() == payload
    rows = session.get_json(again.uri + "/files")["ResultSet"]["Result"]
    digest = {r["Name"]: r["digest"] for r in rows}["overlay.png"]
    assert digest == hashlib.md5(payload).hexdigest()
    # the same upload again without overwrite: reported as duplicate, content kept
    response = session.put(again.uri + "/files/ae.csv", data=b"other", query={"inbody": "true"})
    assert response.json() == {"duplicates": ["ae.csv"]}
    resource.upload_data(b"slice,ae\n0,2.5\n", "ae.csv", overwrite=True)
    assert session.get(again.uri + "/files/ae.csv").content == b"slice,ae\n0,2.5\n"


def test_experiments_listing_filters_columns_and_search(imported: Any, session: Any) -> None:
    # this test makes the assessments it lists (it must pass alone and in any order)
    session.classes.CbctqaQaAssessmentData(parent=imported, label="SESS1_cbctqa_3_list").mset(
        {"status": "complete", "scan_id": "1"})
    session.classes.CbctqaQaAssessmentData(parent=imported, label="SESS1_cbctqa_2_v1").mset(
        {"status": "failed", "failure_reason": "no slices"})
    rows = session.get_json("/data/experiments", query={
        "xsiType": "cbctqa:qaassessmentdata", "project": PROJECT,
        "columns": "ID,label,cbctqa:qaassessmentdata/status,xnat:experimentData/meta/last_modified",
    })["ResultSet"]["Result"]
    status = {r["label"]: r["cbctqa:qaassessmentdata/status"] for r in rows}
    assert status["SESS1_cbctqa_3_list"] == "complete"
    assert status["SESS1_cbctqa_2_v1"] == "failed"
    # XNAT answers an xpath that matches one of its shortcuts under the shortcut's name
    assert all(r["last_modified"] for r in rows)
    sessions = session.get_json("/data/experiments", query={
        "xsiType": "xnat:ctSessionData", "date": "03/01/2026-03/31/2026",
        "columns": "ID,label,insert_date"})["ResultSet"]["Result"]
    assert [r["label"] for r in sessions] == ["SESS1"]
    none = session.get_json("/data/experiments", query={
        "xsiType": "xnat:ctSessionData", "date": "04/01/2026-04/30/2026"})["ResultSet"]
    assert none["Result"] == [] and none["totalRecords"] == "0"
    cls = session.classes.CbctqaQaAssessmentData
    found = cls.query().view(cls.ID, cls.LABEL, cls.STATUS).filter(cls.STATUS == "complete") \
        .tabulate_dict()
    assert {r["label"] for r in found} >= {"SESS1_cbctqa_3_list"}
    assert "SESS1_cbctqa_2_v1" not in {r["label"] for r in found}
    assert all(r["status"] == "complete" for r in found)


def test_permissions_401_and_403(xnat_server: RunningServer, session: Any, imported: Any) -> None:
    response = requests.get(f"{xnat_server.url}/data/projects", auth=("admin", "wrong"), timeout=10)
    assert response.status_code == 401
    with pytest.raises(xnat.exceptions.XNATLoginFailedError):
        xnat.connect(xnat_server.url, user="admin", password="wrong", loglevel="CRITICAL")
    session.post("/xapi/users", json={"username": "reader", "password": "reader-pw",
                                      "email": "r@example.org", "firstName": "R",
                                      "lastName": "Eader", "enabled": True, "verified": True})
    session.put(f"/data/projects/{PROJECT}/users/Collaborators/reader")
    session.put("/data/projects/HIDDEN")
    with xnat.connect(xnat_server.url, user="reader", password="reader-pw",
                      loglevel="ERROR") as reader:
        assert list(reader.projects.keys()) == [PROJECT]
        experiment = reader.projects[PROJECT].experiments["SESS1"]
        assert experiment.label == "SESS1"
        with pytest.raises(XNATResponseError, match="403"):
            reader.classes.CbctqaRatingData(parent=experiment, label="SESS1_rating_reader",
                                            rater="reader")
        with pytest.raises(XNATResponseError, match="403"):
            reader.get("/data/projects/HIDDEN")
        # restrictUserListAccessToAdmins (on by default): only site admins list users
        with pytest.raises(XNATResponseError, match="403"):
            reader.get("/data/users")
        assert "reader" in session.users
        project_users = reader.projects[PROJECT].users
        assert project_users["reader"].access_level == "Collaborators"


def test_restart_keeps_everything(xnat_server: RunningServer, imported: Any, session: Any) -> None:
    session_id = imported.id
    session.classes.CbctqaQaAssessmentData(parent=imported, label="SESS1_cbctqa_1_restart").mset(
        {"status": "complete", "parotid_score": 3.25})
    xnat_server.restart()
    with xnat.connect(xnat_server.url, user=xnat_server.user, password=xnat_server.password,
                      loglevel="ERROR") as fresh:
        experiment = fresh.experiments[session_id]
        assert experiment.label == "SESS1"
        assessment = experiment.assessors["SESS1_cbctqa_1_restart"]
        assert assessment.status == "complete"
        assert assessment.parotid_score == pytest.approx(3.25)
        assert experiment.scans["1"].resources["DICOM"].file_count == 4
