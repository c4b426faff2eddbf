"""The gateway against the local server in strict mode: only what XNAT would answer.

In strict mode listings carry only XNAT's default keys, requested columns come back under
XNAT's names (``subject_ID``, ``cbctqa:qaassessmentdata/status``) and a bare name that is
neither a shortcut nor an xpath is left out; so a gateway that leans on this server's extras
fails here, not on a hospital's XNAT.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
import xnat
from pyxnat import Interface

from qa_core.categories import CATEGORIES
from qa_core.dicom_writer import write_series
from xnat_plugin.gateway import AssessmentRecord, CategoryAssessment, XnatGateway
from xnat_plugin.server import RunningServer

MODEL = "2.0.0"


def _record(scan_id: str, score: float) -> AssessmentRecord:
    cats = {c: CategoryAssessment(score=score + 0.25 * i, ae=100.0 + i, ae_per_voxel=0.5 + i / 8,
                                  outlier=(c == "larynx"),
                                  outlier_reason="robust z 3.9" if c == "larynx" else "")
            for i, c in enumerate(CATEGORIES)}
    return AssessmentRecord(
        status="complete", scan_id=scan_id, model_version=MODEL,  # type: ignore[arg-type]
        series_uid="1.2.826.0.1.3680043.8.498.7", slices=3, spacing=(2.0, 0.5, 0.5),
        model_name="cbctqa-cnn", model_sha256="0" * 64, cam_method="gradcam",
        target_layer="layer4", package_version="0.1.0", duration_s=1.0, categories=cats)


def _import(server: RunningServer, tmp: Path, project: str, label: str) -> None:
    rng = np.random.default_rng(3)
    folder = tmp / label
    write_series(rng.normal(0.0, 200.0, (3, 12, 10)).astype(np.float32), (2.0, 0.5, 0.5),
                 folder / "1", uid_seed=label, series_number=1)
    archive = tmp / f"{label}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*.dcm")):
            zf.write(f, f.relative_to(folder).as_posix())
    answer = requests.post(f"{server.url}/data/services/import",
                           params={"import-handler": "DICOM-zip", "PROJECT_ID": project,
                                   "SUBJECT_ID": "SUBJ", "EXPT_LABEL": label},
                           data=archive.read_bytes(), auth=(server.user, server.password),
                           timeout=30)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def strict_server(xnat_server_factory: Callable[..., RunningServer]) -> RunningServer:
    return xnat_server_factory(strict=True)


def test_strict_listings_hold_only_xnat_keys(strict_server: RunningServer, tmp_path: Path) -> None:
    auth = (strict_server.user, strict_server.password)
    url = strict_server.url
    assert requests.put(f"{url}/data/projects/SK", auth=auth, timeout=10).status_code == 201
    _import(strict_server, tmp_path, "SK", "E1")
    rows = requests.get(f"{url}/data/experiments", auth=auth, timeout=10,
                        params={"project": "SK", "format": "json"}).json()["ResultSet"]["Result"]
    assert list(rows[0]) == ["ID", "project", "date", "xsiType", "label", "insert_date", "URI"]
    rows = requests.get(f"{url}/data/projects/SK/experiments", auth=auth, timeout=10,
                        params={"format": "json"}).json()["ResultSet"]["Result"]
    assert list(rows[0]) == ["ID", "project", "date", "xsiType", "label", "insert_date",
                             "xnat:subjectassessordata/id", "URI"]
    rows = requests.get(f"{url}/data/experiments", auth=auth, timeout=10, params={
        "xsiType": "xnat:ctSessionData", "format": "json",
        "columns": "ID,xnat:subjectAssessorData/subject_id,xnat:ctSessionData/modality"},
    ).json()["ResultSet"]["Result"]
    assert list(rows[0]) == ["ID", "subject_ID", "xnat:ctsessiondata/modality",
                             "xnat:ctsessiondata/id", "xsiType", "URI"]
    csv_text = requests.get(f"{url}/data/experiments/{rows[0]['ID']}/scans", auth=auth,
                            timeout=10, params={"format": "csv"}).text
    assert csv_text.splitlines()[0] == ("xnat_imagescandata_id,ID,type,quality,xsiType,note,"
                                        "series_description,URI")
    # a bare name that is neither a shortcut nor an xpath is left out, as XNAT does
    rows = requests.get(f"{url}/data/experiments", auth=auth, timeout=10,
                        params={"format": "json", "columns": "ID,status"}).json()["ResultSet"]["Result"]
    assert list(rows[0]) == ["ID", "xsiType", "URI"]
    # subjects and projects have no xsiType in XNAT
    rows = requests.get(f"{url}/data/projects/SK/subjects", auth=auth, timeout=10,
                        params={"format": "json"}).json()["ResultSet"]["Result"]
    assert list(rows[0]) == ["ID", "project", "label", "insert_date", "insert_user", "URI"]
    rows = requests.get(f"{url}/data/projects", auth=auth, timeout=10,
                        params={"format": "json", "columns": "ID,name,xsiType"}).json()["ResultSet"]["Result"]
    assert list(rows[0]) == ["ID", "name", "URI"]


def test_gateway_reads_and_writes_against_strict_server(strict_server: RunningServer,
                                                        tmp_path: Path) -> None:
    with XnatGateway.connect(strict_server.url, strict_server.user, strict_server.password,
                             backoff=0.001, max_backoff=0.01, seed=0) as gw:
        gw.xnat.put("/data/projects/STRICT")
        for label in ("S1", "S2"):
            _import(strict_server, tmp_path, "STRICT", label)
        sessions = {s.label: s for s in gw.list_sessions("STRICT")}
        assert sorted(sessions) == ["S1", "S2"]
        assert all(s.subject == "SUBJ" and s.subject_id for s in sessions.values())
        assert all(s.insert_date is not None for s in sessions.values())
        todo = gw.find_sessions_to_score("STRICT", model_version=MODEL)
        assert [s.label for s in todo] == ["S1", "S2"]
        overlay = tmp_path / "overlay_parotid.png"
        overlay.write_bytes(b"\x89PNG" + b"x" * 64)
        gw.write_assessment(sessions["S1"], _record("1", 2.5),
                            resources={"OVERLAYS": [overlay]})
        gw.mark_failed(sessions["S2"], "1", MODEL, "no slices")
        todo = gw.find_sessions_to_score("STRICT", model_version=MODEL)
        assert [s.label for s in todo] == ["S2"]  # failed once: scored again
        stored = gw.read_assessments("STRICT")
        assert [(a.session_label, a.record.status) for a in stored] == [
            ("S1", "complete"), ("S2", "failed")]
        assert stored[0].record == _record("1", 2.5)
        gw.write_rating(sessions["S1"], gw.user, {"overall": 4, "parotid": 2}, comments="ok")
        (rating,) = gw.read_ratings("STRICT")
        assert rating.scores == {"overall": 4, "parotid": 2} and rating.comments == "ok"
        assert rating.session_label == "S1" and rating.rater == gw.user
        folder = gw.download_scan(sessions["S1"], dest_dir=tmp_path / "dl")
        assert len(list(folder.glob("*.dcm"))) == 3
        volume = gw.load_session_volume(sessions["S2"])
        assert volume.shape == (3, 12, 10)


def test_xnatpy_and_pyxnat_walk_a_strict_server(strict_server: RunningServer, tmp_path: Path,
                                                make_dicom_zip: Callable[..., tuple[bytes, list[Path]]]
                                                ) -> None:
    """The real clients, which work with a real XNAT, need nothing strict mode leaves out."""
    data, _ = make_dicom_zip(tmp_path / "zip", seed="strict", patient="P1")
    user, password = strict_server.user, strict_server.password
    with xnat.connect(strict_server.url, user=user, password=password, loglevel="ERROR") as x:
        x.put("/data/projects/SX")
        x.post("/data/services/import", data=data, query={
            "import-handler": "DICOM-zip", "PROJECT_ID": "SX", "SUBJECT_ID": "S1",
            "EXPT_LABEL": "E1"})
        project = x.projects["SX"]
        assert [s.label for s in project.subjects.values()] == ["S1"]
        session = project.experiments["E1"]
        assert sorted(session.scans.keys()) == ["1", "2"]
        assert len(session.scans["1"].resources["DICOM"].files) == 4
        session_id = session.id
    central = Interface(server=strict_server.url, user=user, password=password)
    try:
        assert central.select.project("SX").experiments().get() == [session_id]
        rows = central.array.scans(project_id="SX", experiment_type="xnat:ctSessionData",
                                   scan_type="xnat:ctScanData").data
        assert sorted(r["xnat:ctscandata/id"] for r in rows) == ["1", "2"]
    finally:
        central.disconnect()
