"""The local XNAT server driven over HTTP by the real pyxnat 1.6 client (no mocking)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyxnat import Interface
from pyxnat.core.errors import DatabaseError

from xnat_plugin.server import RunningServer

PROJECT = "PYX"

# no XML declaration: pyxnat 1.6 parses the document as str, which lxml refuses with one
QA_XML = """<cbctqa:QAAssessment xmlns:cbctqa="http://cbctqa.org/xnat/cbctqa"
    xmlns:xnat="http://nrg.wustl.edu/xnat" project="PYX" label="ignored">
  <xnat:date>2026-03-16</xnat:date>
  <cbctqa:status>complete</cbctqa:status>
  <cbctqa:scan_id>1</cbctqa:scan_id>
  <cbctqa:model_version>v2</cbctqa:model_version>
  <cbctqa:larynx_score>2.5</cbctqa:larynx_score>
  <cbctqa:larynx_outlier>false</cbctqa:larynx_outlier>
</cbctqa:QAAssessment>
"""


@pytest.fixture(scope="module")
def interface(xnat_server: RunningServer) -> Iterator[Any]:
    central = Interface(server=xnat_server.url, user=xnat_server.user,
                        password=xnat_server.password)
    yield central
    central.disconnect()


@pytest.fixture(scope="module")
def experiment(interface: Any) -> Any:
    interface.select.project(PROJECT).create()
    exp = interface.select.project(PROJECT).subject("PS1").experiment("PE1")
    exp.create(experiments="xnat:ctSessionData", **{"xnat:ctSessionData/date": "2026-03-16"})
    exp.scan("1").create(scans="xnat:ctScanData", **{"xnat:ctScanData/type": "CBCT"})
    return exp


def test_connect_and_list_projects(interface: Any, experiment: Any) -> None:
    assert PROJECT in interface.select.projects().get()
    assert "cbctqa:qaAssessmentData" in interface.inspect.datatypes()


def test_walk_to_scans_and_attributes(interface: Any, experiment: Any) -> None:
    assert experiment.exists()
    assert experiment.datatype() == "xnat:ctSessionData"
    subject = interface.select.project(PROJECT).subject("PS1")
    assert subject.label() == "PS1"
    assert [e.label() for e in subject.experiments()] == ["PE1"]
    assert experiment.scans().get() == ["1"]
    assert experiment.attrs.get("xnat:ctSessionData/date") == "2026-03-16"
    experiment.attrs.set("xnat:ctSessionData/note", "bright artefact")
    assert experiment.attrs.get("xnat:ctSessionData/note") == "bright artefact"


def test_file_upload_and_download(experiment: Any, tmp_path: Path) -> None:
    source = tmp_path / "ae.csv"
    source.write_bytes(b"slice,ae\n0,1.0\n1,2.0\n")
    resource = experiment.scan("1").resource("QA")
    resource.file("ae.csv").put(str(source))
    assert resource.files().get() == ["ae.csv"]
    target = tmp_path / "back.csv"
    resource.file("ae.csv").get(str(target))
    assert hashlib.md5(target.read_bytes()).hexdigest() == hashlib.md5(source.read_bytes()).hexdigest()
    resource.file("ae.csv").delete()
    assert resource.files().get() == []


def test_create_assessor_from_xml(experiment: Any, interface: Any, tmp_path: Path) -> None:
    xml_path = tmp_path / "qa.xml"
    xml_path.write_text(QA_XML)
    assessor = experiment.assessor("PE1_cbctqa_1_v2")
    assessor.create(xml=str(xml_path))
    assert assessor.exists()
    assert assessor.datatype() == "cbctqa:qaAssessmentData"
    assert assessor.label() == "PE1_cbctqa_1_v2"
    assert assessor.attrs.get("cbctqa:qaAssessmentData/larynx_score") == "2.5"
    assert assessor.attrs.get("cbctqa:qaAssessmentData/status") == "complete"
    # query parameters update fields of an existing assessor
    assessor.attrs.mset({"cbctqa:qaAssessmentData/status": "failed",
                         "cbctqa:qaAssessmentData/failure_reason": "rerun"})
    assert assessor.attrs.get("cbctqa:qaAssessmentData/failure_reason") == "rerun"


def test_search_where(experiment: Any, interface: Any) -> None:
    rating = experiment.assessor("PE1_rating_admin")
    rating.create(assessors="cbctqa:ratingData", **{"cbctqa:ratingData/rater": "admin",
                                                    "cbctqa:ratingData/overall": "3"})
    table = interface.select("cbctqa:ratingData",
                             ["cbctqa:ratingData/ID", "cbctqa:ratingData/rater",
                              "cbctqa:ratingData/overall"]).where(
        [("cbctqa:ratingData/overall", ">=", "3"), ("cbctqa:ratingData/rater", "=", "admin"),
         "AND"])
    rows = list(table)
    assert len(rows) == 1
    assert rows[0]["rater"] == "admin" and rows[0]["overall"] == "3"
    none = interface.select("cbctqa:ratingData", ["cbctqa:ratingData/ID"]).where(
        [("cbctqa:ratingData/overall", ">", "3"), "AND"])
    assert list(none) == []


def test_wrong_password_is_refused(xnat_server: RunningServer) -> None:
    intruder = Interface(server=xnat_server.url, user=xnat_server.user, password="nope")
    # pyxnat's collection listings swallow errors (they return []), its raw calls do not
    assert intruder.select.projects().get() == []
    with pytest.raises(DatabaseError, match="status code: 401"):
        intruder._exec("/data/projects?format=json")


def test_assessor_out_resources(experiment: Any, tmp_path: Path) -> None:
    # its own assessor: the test passes alone and in any order
    assessor = experiment.assessor("PE1_cbctqa_1_maps")
    assessor.create(assessors="cbctqa:qaAssessmentData",
                    **{"cbctqa:qaAssessmentData/status": "complete"})
    assert assessor.datatype() == "cbctqa:qaAssessmentData"
    source = tmp_path / "map.npz"
    source.write_bytes(b"\x00\x01raw-map")
    assessor.out_resource("MAPS").file("map.npz").put(str(source))
    assert assessor.out_resource("MAPS").files().get() == ["map.npz"]
    target = tmp_path / "back.npz"
    assessor.out_resource("MAPS").file("map.npz").get(str(target))
    assert target.read_bytes() == source.read_bytes()
    # the same files appear under the assessor's resources
    assert assessor.resource("MAPS").files().get() == ["map.npz"]
