"""The local XNAT server's REST behaviour over plain HTTP (requests), as XNAT 1.8 answers."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from xnat_plugin.server import FaultConfig, RunningServer

P = "HTTPP"


@pytest.fixture(scope="module")
def http(xnat_server: RunningServer) -> Iterator[requests.Session]:
    session = requests.Session()
    session.auth = (xnat_server.user, xnat_server.password)
    base = xnat_server.url

    def call(method: str, path: str, **kwargs: object) -> requests.Response:
        return session.request(method, base + path, timeout=30, **kwargs)  # type: ignore[arg-type]

    session.call = call  # type: ignore[attr-defined]
    assert call("PUT", f"/data/projects/{P}").status_code == 201
    assert call("PUT", f"/data/projects/{P}/subjects/S1").status_code == 201
    assert call("PUT", f"/data/projects/{P}/subjects/S1/experiments/E1",
                params={"xsiType": "xnat:ctSessionData", "xnat:ctSessionData/date": "2026-02-01"}
                ).status_code == 201
    yield session
    session.close()


def c(http: requests.Session, method: str, path: str, **kwargs: object) -> requests.Response:
    return http.call(method, path, **kwargs)  # type: ignore[attr-defined,no-any-return]


def test_login_flow_jsession_and_auth(xnat_server: RunningServer) -> None:
    anon = requests.Session()
    response = anon.put(f"{xnat_server.url}/data/services/auth",
                        data={"username": xnat_server.user, "password": xnat_server.password},
                        timeout=10)
    assert response.status_code == 200
    token = response.text
    assert anon.cookies.get("JSESSIONID") == token and len(token) == 32
    assert anon.get(f"{xnat_server.url}/data/auth", timeout=10).text == \
        f"User '{xnat_server.user}' is logged in"
    assert anon.get(f"{xnat_server.url}/data/version", timeout=10).status_code == 404
    build = anon.get(f"{xnat_server.url}/xapi/siteConfig/buildInfo?format=json", timeout=10).json()
    assert build["version"].startswith("1.8")
    assert anon.delete(f"{xnat_server.url}/data/JSESSION", timeout=10).status_code == 200
    assert anon.get(f"{xnat_server.url}/data/auth", timeout=10).status_code == 401
    bad = requests.put(f"{xnat_server.url}/data/services/auth",
                       data={"username": xnat_server.user, "password": "x"}, timeout=10)
    assert bad.status_code == 401 and "<html" not in bad.text.lower()


def test_schemas_served(http: requests.Session) -> None:
    names = c(http, "GET", "/xapi/schemas", params={"format": "json"}).json()
    assert names[:1] == ["xnat"] and "cbctqa" in names
    text = c(http, "GET", "/xapi/schemas/cbctqa").text
    assert 'targetNamespace="http://cbctqa.org/xnat/cbctqa"' in text
    assert c(http, "GET", "/xapi/schemas/nosuch").status_code == 404
    fields = c(http, "GET", "/data/search/elements/cbctqa:ratingData",
               params={"format": "json"}).json()["ResultSet"]["Result"]
    assert {"PAROTID", "RATER", "LABEL"} <= {f["FIELD_ID"] for f in fields}


def test_route_aliases_answer_the_same(http: requests.Session) -> None:
    bodies = [c(http, "GET", f"{prefix}/projects/{P}/subjects/S1/experiments/E1",
                params={"format": "json"}).json()
              for prefix in ("/data", "/data/archive", "/REST")]
    assert bodies[0] == bodies[1] == bodies[2]
    item = bodies[0]["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:ctSessionData"
    assert item["data_fields"]["label"] == "E1"


def test_assessor_xml_body_query_override_label_and_null(http: requests.Session) -> None:
    base = f"/data/projects/{P}/subjects/S1/experiments/E1/assessors/A1"
    xml = ('<cbctqa:QAAssessment xmlns:cbctqa="http://cbctqa.org/xnat/cbctqa" '
           'xmlns:xnat="http://nrg.wustl.edu/xnat" label="A1">'
           "<cbctqa:status>running</cbctqa:status><cbctqa:slices>12</cbctqa:slices>"
           "<cbctqa:mandible_score>2</cbctqa:mandible_score></cbctqa:QAAssessment>")
    created = c(http, "PUT", base, data=xml, headers={"Content-Type": "text/xml"},
                params={"cbctqa:qaAssessmentData/status": "queued"})
    assert created.status_code == 201
    aid = created.text
    data = c(http, "GET", f"/data/experiments/E1/assessors/{aid}",
             params={"format": "json"}).json()["items"][0]["data_fields"]
    assert (data["status"], data["slices"], data["mandible_score"]) == ("queued", "12", "2")
    assert data["imageSession_ID"].startswith("XNAT_E")
    # multipart with an .xml part, as pyxnat sends
    multipart = c(http, "PUT", base, params={"allowDataDeletion": "true"},
                  files={"data.xml": ("data.xml", xml.replace("running", "complete"), "text/xml")})
    assert multipart.status_code == 200
    # changing the label is refused
    renamed = c(http, "PUT", base, params={"label": "A2"})
    assert renamed.status_code == 400 and "label" in renamed.text
    moved = c(http, "PUT", base, params={"cbctqa:qaAssessmentData/project": "OTHER"})
    assert moved.status_code == 400
    unknown = c(http, "PUT", base, params={"cbctqa:qaAssessmentData/no_such_field": "1"})
    assert unknown.status_code == 400 and "no_such_field" in unknown.text
    assert c(http, "PUT", base, params={"cbctqa:qaAssessmentData/mandible_score": "NULL"}
             ).status_code == 200
    data = c(http, "GET", base, params={"format": "json"}).json()["items"][0]["data_fields"]
    assert data["status"] == "complete" and "mandible_score" not in data


def test_invalid_write_leaves_nothing_behind(http: requests.Session) -> None:
    base = f"/data/projects/{P}/subjects/S1/experiments/E1/assessors/BAD1"
    response = c(http, "PUT", base, params={
        "xsiType": "cbctqa:qaAssessmentData", "cbctqa:qaAssessmentData/status": "complete",
        "cbctqa:qaAssessmentData/slices": "many"})
    assert response.status_code == 400 and "slices" in response.text
    assert c(http, "GET", base, params={"format": "json"}).status_code == 404


def test_files_zip_and_delete(http: requests.Session, xnat_server: RunningServer) -> None:
    res = f"/data/projects/{P}/subjects/S1/experiments/E1/resources/NOTES"
    assert c(http, "PUT", f"{res}/files/a/one.txt", data=b"one",
             params={"inbody": "true"}).status_code == 201
    assert c(http, "POST", f"{res}/files", files={"f": ("two.txt", b"two")}).status_code in {200, 201}
    rows = c(http, "GET", f"{res}/files", params={"format": "json"}).json()["ResultSet"]["Result"]
    assert {r["Name"]: r["digest"] for r in rows} == {
        "one.txt": hashlib.md5(b"one").hexdigest(), "two.txt": hashlib.md5(b"two").hexdigest()}
    uri = next(r["URI"] for r in rows if r["Name"] == "one.txt")
    assert c(http, "GET", uri).content == b"one"
    archive = zipfile.ZipFile(io.BytesIO(c(http, "GET", f"{res}/files",
                                           params={"format": "zip"}).content))
    assert sorted(n.split("/files/")[1] for n in archive.namelist()) == ["a/one.txt", "two.txt"]
    assert list((xnat_server.data_dir / "files" / "outgoing").iterdir()) == []  # temp zip removed
    escape = c(http, "PUT", f"{res}/files/..%2F..%2Fescape.txt", data=b"x",
               params={"inbody": "true"})
    assert escape.status_code in {400, 404}
    assert c(http, "DELETE", uri).status_code == 200
    assert c(http, "GET", uri).status_code == 404
    assert c(http, "DELETE", res).status_code == 200
    assert c(http, "GET", f"{res}/files", params={"format": "json"}).status_code == 404


def test_import_overwrite_rules_and_scans_all_zip(
        http: requests.Session, tmp_path: Path,
        make_dicom_zip: Callable[..., tuple[bytes, list[Path]]]) -> None:
    payload, files = make_dicom_zip(tmp_path, seed="http")
    params = {"import-handler": "DICOM-zip", "PROJECT_ID": P, "SUBJECT_ID": "S2",
              "EXPT_LABEL": "E2", "dest": "/archive"}
    first = c(http, "POST", "/data/services/import", params=params, data=payload,
              headers={"Content-Type": "application/zip"})
    assert first.status_code == 200
    assert first.text == f"/data/archive/projects/{P}/subjects/S2/experiments/E2\r\n"
    again = c(http, "POST", "/data/services/import", params=params, data=payload)
    assert again.status_code == 409
    append = c(http, "POST", "/data/services/import", params={**params, "overwrite": "append"},
               data=payload)
    assert append.status_code == 200
    zipped = c(http, "GET", f"/data/projects/{P}/subjects/S2/experiments/E2/scans/ALL/files",
               params={"format": "zip"})
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert len(names) == len(files)
    assert all(n.startswith("E2/scans/") for n in names)
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../etc/evil.dcm", b"x")
    refused = c(http, "POST", "/data/services/import", params={**params, "EXPT_LABEL": "E3"},
                data=evil.getvalue())
    assert refused.status_code == 400 and ".." in refused.text
    not_zip = c(http, "POST", "/data/services/import", params={**params, "EXPT_LABEL": "E4"},
                data=b"plain text")
    assert not_zip.status_code == 400


def test_experiments_listing_csv_limit_offset_and_label_wildcard(http: requests.Session) -> None:
    for i in range(3):
        c(http, "PUT", f"/data/projects/{P}/subjects/S1/experiments/L{i}",
          params={"xsiType": "xnat:ctSessionData"})
    page = c(http, "GET", "/data/experiments", params={
        "project": P, "label": "l*", "limit": "2", "offset": "1", "format": "json",
        "columns": "ID,label"}).json()["ResultSet"]
    assert page["totalRecords"] == "3"
    assert [r["label"] for r in page["Result"]] == ["L1", "L2"]
    csv_text = c(http, "GET", f"/data/projects/{P}/experiments",
                 params={"format": "csv", "columns": "ID,label,insert_date"}).text
    header = csv_text.splitlines()[0]
    assert header.startswith("ID,label,insert_date")
    assert "<html" not in csv_text.lower()


def test_search_bundle_with_or_child_set(http: requests.Session) -> None:
    for label, status in (("S_A", "complete"), ("S_B", "failed"), ("S_C", "queued")):
        c(http, "PUT", f"/data/projects/{P}/subjects/S1/experiments/E1/assessors/{label}",
          params={"xsiType": "cbctqa:qaAssessmentData",
                  "cbctqa:qaAssessmentData/status": status})
    bundle = """<xdat:bundle xmlns:xdat="http://nrg.wustl.edu/security" ID="@q">
      <xdat:root_element_name>cbctqa:qaAssessmentData</xdat:root_element_name>
      <xdat:search_field><xdat:element_name>cbctqa:qaAssessmentData</xdat:element_name>
        <xdat:field_ID>LABEL</xdat:field_ID><xdat:sequence>0</xdat:sequence></xdat:search_field>
      <xdat:search_field><xdat:element_name>cbctqa:qaAssessmentData</xdat:element_name>
        <xdat:field_ID>STATUS</xdat:field_ID><xdat:sequence>1</xdat:sequence></xdat:search_field>
      <xdat:search_where method="AND">
        <xdat:criteria><xdat:schema_field>cbctqa:qaAssessmentData/label</xdat:schema_field>
          <xdat:comparison_type>LIKE</xdat:comparison_type><xdat:value>s\\_%</xdat:value></xdat:criteria>
        <xdat:child_set method="OR">
          <xdat:criteria><xdat:schema_field>cbctqa:qaAssessmentData/STATUS</xdat:schema_field>
            <xdat:comparison_type>=</xdat:comparison_type><xdat:value>complete</xdat:value></xdat:criteria>
          <xdat:criteria><xdat:schema_field>cbctqa:qaAssessmentData/status</xdat:schema_field>
            <xdat:comparison_type>=</xdat:comparison_type><xdat:value>failed</xdat:value></xdat:criteria>
        </xdat:child_set>
      </xdat:search_where></xdat:bundle>"""
    rows = c(http, "POST", "/data/search", params={"format": "json"},
             data=bundle).json()["ResultSet"]["Result"]
    assert sorted((r["label"], r["status"]) for r in rows) == [("S_A", "complete"),
                                                               ("S_B", "failed")]
    bad = c(http, "POST", "/data/search", data=b"<not-a-bundle/>")
    assert bad.status_code == 400


def test_roles_members_edit_but_cannot_delete(http: requests.Session,
                                              xnat_server: RunningServer) -> None:
    for login in ("member1", "owner1"):
        created = c(http, "POST", "/xapi/users", data=json.dumps({
            "username": login, "password": f"{login}-pw", "email": f"{login}@example.org",
            "firstName": login, "lastName": "Test", "enabled": True, "verified": True}),
            headers={"Content-Type": "application/json"})
        assert created.status_code == 201
    assert c(http, "PUT", f"/data/projects/{P}/users/Members/member1").status_code == 200
    assert c(http, "PUT", f"/data/projects/{P}/users/Owners/owner1").status_code == 200
    member = requests.Session()
    member.auth = ("member1", "member1-pw")
    url = xnat_server.url + f"/data/projects/{P}/subjects/S1/experiments/E1/assessors/M1"
    made = member.put(url, params={"xsiType": "cbctqa:ratingData",
                                   "cbctqa:ratingData/rater": "member1"}, timeout=10)
    assert made.status_code == 201
    denied = member.delete(url, timeout=10)
    assert denied.status_code == 403 and "member1" in denied.text
    assert member.put(xnat_server.url + f"/data/projects/{P}/users/Owners/member1",
                      timeout=10).status_code == 403
    assert member.post(xnat_server.url + "/xapi/users", json={"username": "x", "password": "y"},
                       timeout=10).status_code == 403
    owner = requests.Session()
    owner.auth = ("owner1", "owner1-pw")
    assert owner.delete(url, timeout=10).status_code == 200
    projects = member.get(xnat_server.url + "/data/projects", params={"format": "json"},
                          timeout=10).json()["ResultSet"]["Result"]
    assert [p["ID"] for p in projects] == [P]


def test_fault_injection_errors_and_drops(xnat_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = xnat_server_factory(faults=FaultConfig(error_rate=0.5, drop_rate=0.2,
                                                    path_regex=r"^/data/projects", seed=3))
    statuses: list[int | str] = []
    for _ in range(30):
        try:
            response = requests.get(f"{server.url}/data/projects", auth=(server.user, server.password),
                                    timeout=10)
            statuses.append(response.status_code)
        except requests.ConnectionError:
            statuses.append("dropped")
    assert statuses.count(503) >= 5 and statuses.count("dropped") >= 2 and statuses.count(200) >= 3
    # paths outside the pattern are untouched
    assert all(requests.get(f"{server.url}/data/auth", auth=(server.user, server.password),
                            timeout=10).status_code == 200 for _ in range(10))
    counts = server.app.faults.counts
    assert sum(counts.values()) == 30


def test_fault_latency(xnat_server_factory) -> None:  # type: ignore[no-untyped-def]
    import time

    server = xnat_server_factory(faults=FaultConfig(latency_ms=150))
    start = time.monotonic()
    requests.get(f"{server.url}/data/auth", auth=(server.user, server.password), timeout=10)
    assert time.monotonic() - start >= 0.15


def test_concurrent_creates_of_one_label_make_one_assessor(http: requests.Session,
                                                           xnat_server: RunningServer) -> None:
    import threading

    url = xnat_server.url + f"/data/projects/{P}/subjects/S1/experiments/E1/assessors/RACE1"
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def create() -> None:
        with requests.Session() as mine:
            mine.auth = (xnat_server.user, xnat_server.password)
            barrier.wait()
            codes.append(mine.put(url, params={"xsiType": "cbctqa:qaAssessmentData",
                                               "cbctqa:qaAssessmentData/status": "queued"},
                                  timeout=30).status_code)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # the first PUT creates (201); the others find the label and update it (200)
    assert sorted(codes) == [200] * 5 + [201]
    rows = c(http, "GET", f"/data/projects/{P}/experiments", params={
        "xsiType": "cbctqa:qaAssessmentData", "label": "RACE1", "format": "json"}
    ).json()["ResultSet"]["Result"]
    assert len(rows) == 1


def test_insert_date_polling_filter(http: requests.Session) -> None:
    listing = {"xsiType": "xnat:ctSessionData", "format": "json", "columns": "ID,label,insert_date"}
    rows = c(http, "GET", "/data/experiments", params=listing).json()["ResultSet"]["Result"]
    # the filter's day is E1's own insert day (UTC), not "today": the test holds across midnight
    inserted = dt.datetime.fromisoformat(next(r["insert_date"] for r in rows if r["label"] == "E1"))
    day = inserted.date()

    def since(d: dt.date) -> set[str]:
        params = listing | {"insert_date": f"{d:%m/%d/%Y}-"}
        return {r["label"] for r in c(http, "GET", "/data/experiments", params=params)
                .json()["ResultSet"]["Result"]}

    assert "E1" in since(day)
    assert "E1" in since(day - dt.timedelta(days=1))
    assert "E1" not in since(day + dt.timedelta(days=1))
    future = c(http, "GET", "/data/experiments", params={
        "xsiType": "xnat:ctSessionData", "insert_date": "01/01/2999-", "format": "json"}
    ).json()["ResultSet"]["Result"]
    assert future == []
    bad = c(http, "GET", "/data/experiments", params={"insert_date": "yesterday"})
    assert bad.status_code == 400
