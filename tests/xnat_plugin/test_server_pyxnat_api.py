"""pyxnat 1.6's select paths and array helpers, unmodified, against the local server.

pyxnat reads listing columns under the keys XNAT answers them with (``subject_ID`` for
``xnat:subjectAssessorData/subject_id``, ``xnat:ctscandata/id`` for ``xnat:ctScanData/ID``);
each test builds the objects it uses, so any one runs alone.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyxnat import Interface

from xnat_plugin.server import RunningServer


@pytest.fixture(scope="module")
def interface(xnat_server: RunningServer) -> Iterator[Any]:
    central = Interface(server=xnat_server.url, user=xnat_server.user,
                        password=xnat_server.password)
    yield central
    central.disconnect()


@pytest.fixture
def project(interface: Any) -> tuple[str, Any]:
    """A fresh project with subject S1, CT session E1 (scans 1: CBCT, 2: SCOUT)."""
    pid = f"PA{uuid.uuid4().hex[:8].upper()}"
    interface.select.project(pid).create()
    exp = interface.select.project(pid).subject("S1").experiment(f"{pid}_E1")
    exp.create(experiments="xnat:ctSessionData", **{"xnat:ctSessionData/date": "2026-03-16"})
    exp.scan("1").create(scans="xnat:ctScanData", **{"xnat:ctScanData/type": "CBCT"})
    exp.scan("2").create(scans="xnat:ctScanData", **{"xnat:ctScanData/type": "SCOUT"})
    return pid, exp


def test_project_experiments_get(interface: Any, project: tuple[str, Any]) -> None:
    pid, exp = project
    ids = interface.select.project(pid).experiments().get()
    assert ids == [exp.id()]
    assert interface.select.project(pid).subjects().get() == [
        interface.select.project(pid).subject("S1").id()]
    # the object pyxnat builds from /data/projects/P/experiments/ID resolves its subject
    walked = interface.select(f"/projects/{pid}/experiments/{exp.id()}")
    assert walked.exists()
    assert walked.label() == f"{pid}_E1"


def test_array_experiments_keys_and_typed_call(interface: Any, project: tuple[str, Any]) -> None:
    pid, exp = project
    rows = interface.array.experiments(project_id=pid).data
    assert [r["ID"] for r in rows] == [exp.id()]
    assert rows[0]["subject_ID"] == interface.select.project(pid).subject("S1").id()
    assert rows[0]["xnat:subjectassessordata/id"] == exp.id()
    typed = interface.array.experiments(project_id=pid, experiment_type="xnat:ctSessionData",
                                        columns=["xnat:ctSessionData/date"]).data
    assert [r["ID"] for r in typed] == [exp.id()]
    # an xpath that is not exactly a shortcut's comes back whole, in lower case
    assert typed[0]["xnat:ctsessiondata/date"] == "2026-03-16"
    assert typed[0]["xnat:ctsessiondata/id"] == exp.id()
    assert interface.array.experiments(project_id=pid,
                                       experiment_type="xnat:mrSessionData").data == []
    by_label = interface.array.experiments(project_id=pid, subject_label="S1",
                                           experiment_type="xnat:ctSessionData").data
    assert [r["ID"] for r in by_label] == [exp.id()]


def test_array_scans_joins_scan_rows(interface: Any, project: tuple[str, Any]) -> None:
    pid, exp = project
    scans = interface.array.scans(project_id=pid, experiment_type="xnat:ctSessionData",
                                  scan_type="xnat:ctScanData",
                                  columns=["xnat:ctScanData/type"]).data
    assert sorted((r["xnat:ctscandata/id"], r["xnat:ctscandata/type"]) for r in scans) == [
        ("1", "CBCT"), ("2", "SCOUT")]
    assert {r["ID"] for r in scans} == {exp.id()}


def test_array_search_experiments(interface: Any, project: tuple[str, Any]) -> None:
    pid, _exp = project
    table = interface.array.search_experiments(project_id=pid,
                                               experiment_type="xnat:ctSessionData",
                                               columns=["xnat:ctSessionData/LABEL"])
    assert [r["label"] for r in table.data] == [f"{pid}_E1"]


def test_attrs_exists_datatype_delete(interface: Any, project: tuple[str, Any]) -> None:
    pid, exp = project
    assert exp.exists() and exp.datatype() == "xnat:ctSessionData"
    exp.attrs.set("xnat:ctSessionData/note", "metal artefact")
    assert exp.attrs.mget(["xnat:ctSessionData/date", "xnat:ctSessionData/note"]) == [
        "2026-03-16", "metal artefact"]
    assert exp.scan("1").attrs.get("xnat:ctScanData/type") == "CBCT"
    assert exp.scan("1").datatype() == "xnat:ctScanData"
    assert not interface.select.project(pid).subject("S1").experiment("nope").exists()
    exp.scan("2").delete()
    assert exp.scans().get() == ["1"]
    exp.delete()
    assert not exp.exists()
    assert interface.select.project(pid).experiments().get() == []


def test_file_insert_get_and_delete(project: tuple[str, Any], tmp_path: Path) -> None:
    _pid, exp = project
    source = tmp_path / "ae.csv"
    source.write_bytes(b"slice,ae\n0,1.5\n")
    resource = exp.resource("QA")
    resource.file("ae.csv").insert(str(source))
    assert resource.files().get() == ["ae.csv"]
    back = Path(resource.file("ae.csv").get(str(tmp_path / "back.csv")))
    assert hashlib.md5(back.read_bytes()).hexdigest() == hashlib.md5(source.read_bytes()).hexdigest()
    resource.file("ae.csv").delete()
    assert resource.files().get() == []
