"""Security regressions of the local XNAT server: header injection through file names, bodies
from anonymous clients, and malformed framing."""

from __future__ import annotations

import base64
import io
import re
import socket
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from xnat_plugin.server import RunningServer
from xnat_plugin.server.app import AppConfig, Request, XnatApp
from xnat_plugin.server.resources import UnsafePathError, clean_relative_path
from xnat_plugin.server.search import compare

P = "SECP"


@pytest.fixture(scope="module")
def admin(xnat_server: RunningServer) -> Iterator[requests.Session]:
    session = requests.Session()
    session.auth = (xnat_server.user, xnat_server.password)
    assert session.put(f"{xnat_server.url}/data/projects/{P}", timeout=10).status_code == 201
    yield session
    session.close()


def _raw(server: RunningServer, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a fresh socket and return what the server answers first."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        return sock.recv(4096)


def test_crlf_in_file_name_is_refused(admin: requests.Session, xnat_server: RunningServer) -> None:
    base = f"{xnat_server.url}/data/projects/{P}/resources/R/files/"
    bad = admin.put(base + "a%0d%0aSet-Cookie:%20evil=1", data=b"x", timeout=10)
    assert bad.status_code == 400 and "control characters" in bad.text
    listing = admin.get(f"{xnat_server.url}/data/projects/{P}/resources/R/files",
                        params={"format": "json"}, timeout=10)
    assert "evil" not in listing.text
    for name in ("a\rb", "a\nb", "x/\tb", "del\x7f"):
        with pytest.raises(UnsafePathError, match="control characters"):
            clean_relative_path(name, "test")


def test_non_ascii_file_name_downloads_with_safe_header(admin: requests.Session,
                                                        xnat_server: RunningServer) -> None:
    base = f"{xnat_server.url}/data/projects/{P}/resources/U/files/"
    name = 'sch\u00e4del "\u4e2d".txt'
    assert admin.put(base + requests.utils.quote(name), data=b"abc", timeout=10).status_code == 201
    uri = admin.get(f"{xnat_server.url}/data/projects/{P}/resources/U/files",
                    params={"format": "json"}, timeout=10).json()["ResultSet"]["Result"][0]["URI"]
    got = admin.get(xnat_server.url + uri, timeout=10)
    assert got.status_code == 200 and got.content == b"abc"
    disposition = got.headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=\"sch_del ___.txt\"; filename*=UTF-8''")
    assert requests.utils.unquote(disposition.split("UTF-8''", 1)[1]) == name


def test_anonymous_body_is_refused_before_it_is_read(xnat_server: RunningServer) -> None:
    # a 100 GB upload announced without credentials: answered at once, nothing is read
    head = _raw(xnat_server, b"PUT /data/projects/X/resources/R/files/big HTTP/1.1\r\n"
                             b"Host: x\r\nContent-Length: 100000000000\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    forged = _raw(xnat_server, b"POST /data/services/import?PROJECT_ID=X HTTP/1.1\r\nHost: x\r\n"
                               b"Cookie: JSESSIONID=0123456789ABCDEF0123456789ABCDEF\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n")
    assert forged.startswith(b"HTTP/1.1 401")
    # the login form itself is capped
    login = _raw(xnat_server, b"PUT /data/services/auth HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: 10000000\r\n\r\n")
    assert login.startswith(b"HTTP/1.1 413")


def test_logged_in_body_still_accepted(admin: requests.Session,
                                       xnat_server: RunningServer) -> None:
    url = f"{xnat_server.url}/data/projects/{P}/resources/B/files/b.bin"
    assert admin.put(url, data=b"\0" * 70_000, timeout=10).status_code == 201
    token = admin.get(f"{xnat_server.url}/data/JSESSION", timeout=10).text
    by_cookie = requests.put(url, params={"overwrite": "true"}, data=b"y",
                             cookies={"JSESSIONID": token}, timeout=10)
    assert by_cookie.status_code == 200
    assert admin.get(url, timeout=10).content == b"y"


def test_malformed_content_length_and_chunk_size_answer_400(xnat_server: RunningServer) -> None:
    auth = b"Authorization: Basic " + base64.b64encode(
        f"{xnat_server.user}:{xnat_server.password}".encode()) + b"\r\n"
    bad_length = _raw(xnat_server, b"PUT /data/projects/Y HTTP/1.1\r\nHost: x\r\n" + auth
                      + b"Content-Length: abc\r\n\r\n")
    assert bad_length.startswith(b"HTTP/1.1 400")
    bad_chunk = _raw(xnat_server, b"PUT /data/projects/Y HTTP/1.1\r\nHost: x\r\n" + auth
                     + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert bad_chunk.startswith(b"HTTP/1.1 400")



def test_dicom_import_stores_normalised_member_names(
        admin: requests.Session, xnat_server: RunningServer, tmp_path: Path,
        make_dicom_zip: Callable[..., tuple[bytes, list[Path]]]) -> None:
    # Windows-style member names with '..' parts: stored (and zipped back) by their plain name
    _, files = make_dicom_zip(tmp_path, seed="sec1", patient="SECPAT")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i, path in enumerate(files):
            archive.write(path, f"dir\\..\\x{i}.dcm")
    made = admin.post(f"{xnat_server.url}/data/services/import",
                      params={"PROJECT_ID": P, "SUBJECT_ID": "SECS", "EXPT_LABEL": "SECE"},
                      data=buf.getvalue(), timeout=30)
    assert made.status_code == 200
    base = f"{xnat_server.url}/data/projects/{P}/experiments/SECE/scans/ALL/files"
    names = {row["Name"] for row in admin.get(base, params={"format": "json"},
                                              timeout=10).json()["ResultSet"]["Result"]}
    assert names == {f"x{i}.dcm" for i in range(len(files))}
    download = admin.get(base, params={"format": "zip"}, timeout=30)
    members = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert len(members) == len(files)
    assert not any("\\" in m or ".." in m.split("/") for m in members)


def test_bodies_read_into_memory_are_capped(tmp_path: Path) -> None:
    app = XnatApp(AppConfig(data_dir=tmp_path, admin_user="admin", admin_password="pw",
                            max_buffered_body_bytes=1000))
    auth = {"authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}

    def call(method: str, path: str, body: bytes, **headers: str) -> tuple[int, str]:
        req = Request(method=method, path=path, query={}, headers={**auth, **headers},
                      body=io.BytesIO(body), body_size=len(body))
        resp = app.handle(req)
        return resp.status, resp.body.decode()

    try:
        assert call("PUT", "/data/projects/CAP", b"")[0] == 201
        status, text = call("POST", "/data/search", b"<x/>" * 500)
        assert status == 413 and "/data/search" in text
        status, _ = call("PUT", "/data/projects/CAP/resources/R/files/a.xml", b"<a/>" * 500,
                         **{"content-type": "multipart/form-data; boundary=zz"})
        assert status == 413
        # a raw file body is streamed to disk, not read into memory: no cap
        assert call("PUT", "/data/projects/CAP/resources/R/files/big.bin", b"\0" * 5000,
                    **{"content-type": "application/octet-stream"})[0] == 201
    finally:
        app.close()


def test_crafted_series_number_does_not_become_a_path(
        admin: requests.Session, xnat_server: RunningServer, tmp_path: Path,
        make_dicom_zip: Callable[..., tuple[bytes, list[Path]]]) -> None:
    _, files = make_dicom_zip(tmp_path, seed="sec2", patient="SECPAT2")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i, path in enumerate(files):
            ds = pydicom.dcmread(path)
            del ds.SeriesNumber
            ds.add_new(0x00200011, "LO", "../../../evil")  # explicit VR: read back as text
            out = io.BytesIO()
            ds.save_as(out)
            archive.writestr(f"f{i}.dcm", out.getvalue())
    made = admin.post(f"{xnat_server.url}/data/services/import",
                      params={"PROJECT_ID": P, "SUBJECT_ID": "SECS2", "EXPT_LABEL": "SECE2"},
                      data=buf.getvalue(), timeout=30)
    assert made.status_code == 200
    base = f"{xnat_server.url}/data/projects/{P}/experiments/SECE2/scans"
    scan_ids = [row["ID"] for row in admin.get(base, params={"format": "json"},
                                              timeout=10).json()["ResultSet"]["Result"]]
    assert scan_ids and all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in scan_ids)
    download = admin.get(base + "/ALL/files", params={"format": "zip"}, timeout=30)
    members = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert members and all(m.startswith("SECE2/scans/") and ".." not in m.split("/")
                           for m in members)


@pytest.mark.parametrize("path", ["/data/projects/..", f"/data/projects/{P}/subjects/..",
                                  f"/data/projects/{P}/resources/./files/x"])
def test_dot_labels_are_refused(xnat_server: RunningServer, admin: requests.Session,
                                path: str) -> None:
    # requests would resolve the dot segments itself: send the request line as written
    auth = base64.b64encode(f"{xnat_server.user}:{xnat_server.password}".encode())
    answer = _raw(xnat_server, f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                               "Authorization: Basic ".encode() + auth + b"\r\n\r\nx")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_corrupt_zip_answers_400_and_leaves_no_files(
        admin: requests.Session, xnat_server: RunningServer, tmp_path: Path,
        make_dicom_zip: Callable[..., tuple[bytes, list[Path]]]) -> None:
    _, files = make_dicom_zip(tmp_path, seed="sec3", patient="SECPAT3")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for i, path in enumerate(files):
            archive.write(path, f"f{i}.dcm")
    data = bytearray(buf.getvalue())
    # flip a byte near the end of the last member's data (past the DICOM header): its CRC fails
    last = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[-1]
    data[last.header_offset + 30 + len(last.filename) + last.compress_size - 5] ^= 0xFF
    made = admin.post(f"{xnat_server.url}/data/services/import",
                      params={"PROJECT_ID": P, "SUBJECT_ID": "SECS3", "EXPT_LABEL": "SECE3"},
                      data=bytes(data), timeout=30)
    assert made.status_code == 400 and "corrupt" in made.text
    extracted = admin.put(f"{xnat_server.url}/data/projects/{P}/resources/Z/files/a.zip",
                          params={"extract": "true"}, data=bytes(data), timeout=30)
    assert extracted.status_code == 400 and "corrupt" in extracted.text
    incoming = xnat_server.data_dir / "files" / "incoming"  # made by the first staged upload
    assert not incoming.exists() or [p.name for p in incoming.iterdir()] == []


def test_site_level_label_resolves_to_the_readable_project(
        admin: requests.Session, xnat_server: RunningServer) -> None:
    url = xnat_server.url
    for project in ("SECQ", "SECR"):  # SECQ (no access for the reader) gets the lower row
        assert admin.put(f"{url}/data/projects/{project}", timeout=10).status_code == 201
        assert admin.put(f"{url}/data/projects/{project}/subjects/SAMES", timeout=10).status_code == 201
        assert admin.put(f"{url}/data/projects/{project}/subjects/SAMES/experiments/SAMEE",
                         params={"xsiType": "xnat:ctSessionData"}, timeout=10).status_code == 201
    assert admin.post(f"{url}/xapi/users", json={"username": "secreader", "password": "sr-pw"},
                      timeout=10).status_code == 201
    assert admin.put(f"{url}/data/projects/SECR/users/Collaborators/secreader",
                     timeout=10).status_code == 200
    reader = requests.Session()
    reader.auth = ("secreader", "sr-pw")
    for path in ("/data/experiments/SAMEE", "/data/subjects/SAMES"):
        got = reader.get(url + path, params={"format": "json"}, timeout=10)
        assert got.status_code == 200, (path, got.text)
        assert got.json()["items"][0]["data_fields"]["project"] == "SECR"
    other = admin.get(f"{url}/data/projects/SECQ/experiments/SAMEE", params={"format": "json"},
                      timeout=10).json()["items"][0]["data_fields"]["ID"]
    assert reader.get(f"{url}/data/experiments/{other}", timeout=10).status_code == 403


def test_disabling_a_user_ends_its_sessions(admin: requests.Session,
                                            xnat_server: RunningServer) -> None:
    url = xnat_server.url
    assert admin.post(f"{url}/xapi/users", json={"username": "secgone", "password": "sg-pw"},
                      timeout=10).status_code == 201
    assert admin.put(f"{url}/data/projects/{P}/users/Members/secgone", timeout=10).status_code == 200
    user = requests.Session()
    assert user.put(f"{url}/data/services/auth", data={"username": "secgone", "password": "sg-pw"},
                    timeout=10).status_code == 200
    assert user.get(f"{url}/data/projects/{P}", timeout=10).status_code == 200
    disabled = admin.put(f"{url}/xapi/users/secgone", json={"enabled": False}, timeout=10)
    assert disabled.status_code == 200
    assert user.get(f"{url}/data/projects/{P}", timeout=10).status_code == 401
    assert requests.get(f"{url}/data/projects/{P}", auth=("secgone", "sg-pw"),
                        timeout=10).status_code == 401


def _like_regex(pattern: str) -> str:
    """Reference LIKE semantics as a regular expression (fine for short inputs only)."""
    out, escaped = [], False
    for ch in pattern:
        if escaped:
            out.append(re.escape(ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        else:
            out.append({"%": ".*", "_": "."}.get(ch, re.escape(ch)))
    return "".join(out)


def test_search_like_is_linear_and_keeps_like_semantics() -> None:
    # was a backtracking regular expression: this pattern pinned a CPU for minutes
    started = time.monotonic()
    assert not compare("a" * 200, "LIKE", "%a" * 40 + "%b")
    assert compare("a" * 200 + "b", "LIKE", "%a" * 40 + "%b")
    assert time.monotonic() - started < 1.0
    rng = np.random.default_rng(11)
    for _ in range(3000):
        value = "".join(rng.choice(list("ab%_\\"), size=int(rng.integers(0, 7))))
        pattern = "".join(rng.choice(list("ab%_\\"), size=int(rng.integers(0, 6))))
        expected = re.fullmatch(_like_regex(pattern), value, flags=re.S) is not None
        assert compare(value, "LIKE", pattern) is expected, (value, pattern)
        assert compare(value, "NOT LIKE", pattern) is not expected


def test_extract_streams_zip_members_instead_of_reading_them_into_memory(tmp_path: Path) -> None:
    app = XnatApp(AppConfig(data_dir=tmp_path, admin_user="admin", admin_password="pw"))
    auth = {"authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
    buf = io.BytesIO()
    payload = np.random.default_rng(5).bytes(24 * 1024 * 1024)  # incompressible, 24 MiB
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("big.bin", payload)
    body = buf.getvalue()
    del buf
    try:
        made = app.handle(Request(method="PUT", path="/data/projects/EXT", query={},
                                  headers=dict(auth), body=io.BytesIO(), body_size=0))
        assert made.status == 201
        tracemalloc.start()
        try:
            resp = app.handle(Request(
                method="PUT", path="/data/projects/EXT/resources/R/files/a.zip",
                query={"extract": "true"},
                headers={**auth, "content-type": "application/octet-stream"},
                body=io.BytesIO(body), body_size=len(body)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert resp.status == 201, resp.body
        assert peak < 8 * 1024 * 1024, f"extract peaked at {peak / 2**20:.1f} MiB of memory"
        stored = list((tmp_path / "files").rglob("*"))
        assert any(p.is_file() and p.stat().st_size == len(payload) for p in stored)
    finally:
        app.close()


@pytest.mark.parametrize("body", ["[]", '"admin"', "3"])
def test_user_body_that_is_not_an_object_answers_400(admin: requests.Session,
                                                     xnat_server: RunningServer, body: str) -> None:
    answer = admin.post(f"{xnat_server.url}/xapi/users", data=body,
                        headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400 and "JSON object" in answer.text


@pytest.mark.parametrize("flag", ["enabled", "verified"])
def test_user_flags_must_be_json_booleans(admin: requests.Session, xnat_server: RunningServer,
                                          flag: str) -> None:
    # "false" as a string used to enable the account (bool("false") is True)
    answer = admin.post(f"{xnat_server.url}/xapi/users",
                        json={"username": f"flag_{flag}", "password": "pw-123456", flag: "false"},
                        timeout=10)
    assert answer.status_code == 400 and flag in answer.text
    ok = admin.post(f"{xnat_server.url}/xapi/users",
                    json={"username": f"flag_{flag}", "password": "pw-123456", flag: False},
                    timeout=10)
    assert ok.status_code == 201
