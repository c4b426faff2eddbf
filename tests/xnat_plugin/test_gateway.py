"""XnatGateway against the real local XNAT server over HTTP, with the real xnatpy client.

Nothing is mocked: requests are counted with a ``requests`` response hook on the xnatpy
session's ``interface`` (client side) and with the server's access log (server side).
Each test uses its own project so the module can share one server.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest
import requests

from qa_core.categories import CATEGORIES
from qa_core.dicom_writer import write_series
from xnat_plugin.gateway import (
    AssessmentRecord,
    CategoryAssessment,
    SessionRef,
    XnatAuthenticationError,
    XnatConfigurationError,
    XnatConnectionError,
    XnatGateway,
    XnatGatewayClosedError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatScanSelectionError,
    XnatServerError,
    XnatValidationError,
    assessment_label,
)
from xnat_plugin.server import FaultConfig, RunningServer
from xnat_plugin.server.faults import FaultDecision

MODEL = "1.2.0"


# ---------------------------------------------------------------------- helpers


def _connect(server: RunningServer, **kwargs: Any) -> XnatGateway:
    kwargs.setdefault("backoff", 0.001)
    kwargs.setdefault("max_backoff", 0.01)
    kwargs.setdefault("seed", 0)
    return XnatGateway.connect(server.url, server.user, server.password, **kwargs)


class Requests:
    """Client-side record of every HTTP answer the gateway's xnatpy session receives."""

    def __init__(self, gw: XnatGateway) -> None:
        self.calls: list[tuple[str, str, int, dict[str, list[str]]]] = []
        self._lock = threading.Lock()
        gw.xnat.interface.hooks["response"].append(self._hook)

    def _hook(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        parts = urlsplit(str(resp.request.url))
        with self._lock:
            self.calls.append(
                (
                    str(resp.request.method),
                    unquote(parts.path),
                    resp.status_code,
                    parse_qs(parts.query),
                )
            )

    def __len__(self) -> int:
        return len(self.calls)

    def clear(self) -> None:
        self.calls.clear()


def _chain_text(exc: BaseException) -> str:
    """Messages and reprs of an exception and of every exception chained to it."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [
            str(seen),
            repr(seen),
            repr(seen.args),
            "".join(traceback.format_exception_only(seen)),
        ]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _server_requests(caplog: pytest.LogCaptureFixture, prefix: str = "") -> list[str]:
    """Requests the server logged (``METHOD path -> status``) starting with ``prefix``.

    The server logs a request just after answering it, so wait until the log is quiet.
    """

    def lines() -> list[str]:
        return [
            m
            for r in list(caplog.records)
            if r.name == "xnat_plugin.server"
            and " -> " in (m := r.getMessage())
            and m.startswith(prefix)
        ]

    seen, quiet = lines(), 0
    while quiet < 5:
        time.sleep(0.02)
        now = lines()
        quiet = quiet + 1 if len(now) == len(seen) else 0
        seen = now
    return seen


def _make_sessions(gw: XnatGateway, project: str, labels: list[str]) -> list[SessionRef]:
    x = gw.xnat
    x.put(f"/data/projects/{project}")
    x.put(f"/data/projects/{project}/subjects/SUBJ")
    for label in labels:
        x.put(
            f"/data/projects/{project}/subjects/SUBJ/experiments/{label}",
            query={"xsiType": "xnat:ctSessionData"},
        )
    by_label = {ref.label: ref for ref in gw.list_sessions(project)}
    return [by_label[label] for label in labels]


def _record(
    scan_id: str = "1", *, score: float = 3.25, status: str = "complete", version: str = MODEL
) -> AssessmentRecord:
    cats = {
        c: CategoryAssessment(score=score + 0.25 * i, ae=100.0 + i, ae_per_voxel=0.5 + i / 8, outlier=(c == "larynx"),
                              outlier_reason="robust z 3.9" if c == "larynx" else "")
        for i, c in enumerate(CATEGORIES)
    }  # fmt: skip
    return AssessmentRecord(
        status=status, scan_id=scan_id, model_version=version, series_uid="1.2.826.0.1.3680043.8.498.1",  # type: ignore[arg-type]
        slices=4, spacing=(2.0, 0.5, 0.5), model_name="cbctqa-cnn", model_sha256="0" * 64, cam_method="gradcam",
        target_layer="layer4", package_version="0.1.0", duration_s=1.5, categories=cats,
    )  # fmt: skip


def _resource_files(tmp: Path, tag: str) -> dict[str, list[Path]]:
    tmp.mkdir(parents=True, exist_ok=True)
    png = tmp / "overlay_parotid.png"
    png.write_bytes(b"\x89PNG" + tag.encode() * 50)
    csv = tmp / "slice_ae.csv"
    csv.write_text(f"slice,parotid\n0,{tag}\n")
    npz = tmp / "raw_maps.npz"
    np.savez_compressed(npz, maps=np.arange(12, dtype=np.float32).reshape(3, 2, 2))
    return {"OVERLAYS": [png], "AE_SLICES": [csv], "MAPS": [npz]}


def _assessors(gw: XnatGateway, session: SessionRef) -> list[dict[str, str]]:
    rows = gw.xnat.get_json(f"/data/experiments/{session.session_id}/assessors")["ResultSet"][
        "Result"
    ]
    return [r for r in rows if r.get("xsiType", "").lower() == "cbctqa:qaassessmentdata"]


@pytest.fixture
def gw(xnat_server: RunningServer) -> Iterator[XnatGateway]:
    with _connect(xnat_server) as gateway:
        yield gateway


# ---------------------------------------------------------------------- lifecycle and credentials


def test_context_manager_closes_the_xnat_session(xnat_server: RunningServer) -> None:
    with _connect(xnat_server, project="LIFE") as gw:
        session = gw.xnat
        token = session.jsession
        assert session.interface is not None
        assert "LIFE" in repr(gw) and "open" in repr(gw)
    assert gw.closed and "closed" in repr(gw)
    assert session.interface is None  # xnatpy's requests session is closed
    # the server forgot the JSESSION: the old cookie no longer authenticates
    resp = requests.get(
        f"{xnat_server.url}/data/projects?format=json", cookies={"JSESSIONID": token}, timeout=10
    )
    assert resp.status_code == 401
    with pytest.raises(XnatGatewayClosedError, match="closed"):
        gw.read_assessments("LIFE")
    gw.close()  # idempotent


def test_closes_even_when_the_block_raises(xnat_server: RunningServer) -> None:
    with pytest.raises(KeyError), _connect(xnat_server) as gw:
        session = gw.xnat
        raise KeyError("boom")
    assert session.interface is None


def test_credentials_from_environment_and_netrc(
    xnat_server: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("XNATPY_HOST", "XNATPY_USER", "XNATPY_PASS", "XNAT_USER", "XNAT_PASS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XNAT_HOST", xnat_server.url)
    monkeypatch.setenv("XNAT_USER", xnat_server.user)
    monkeypatch.setenv("XNAT_PASS", xnat_server.password)
    with XnatGateway.connect() as gw:
        assert gw.user == xnat_server.user and gw.xnat.logged_in_user == xnat_server.user
    monkeypatch.delenv("XNAT_USER")
    monkeypatch.delenv("XNAT_PASS")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {urlsplit(xnat_server.url).netloc} login {xnat_server.user} "
                     f"password {xnat_server.password}\n")  # fmt: skip
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with XnatGateway.connect() as gw:
        assert gw.xnat.logged_in_user == xnat_server.user


def test_password_never_appears_in_errors_logs_or_reprs(
    xnat_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ng-s3cret-pw"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(XnatAuthenticationError) as info:
        XnatGateway.connect(xnat_server.url, xnat_server.user, wrong, backoff=0.001)
    exc = info.value
    assert exc.status == 401 and "admin" in str(exc) and xnat_server.url in str(exc)
    assert wrong not in _chain_text(exc)
    assert wrong not in caplog.text
    # after a successful login: an error, the gateway's repr, results and all logs stay clean
    with _connect(xnat_server, project="HYG") as gw:
        token = gw.xnat.jsession
        ghost = SessionRef(
            project="HYG",
            subject="s",
            session_id="NOPE_E1",
            label="GHOST",
            uri="/data/experiments/NOPE_E1",
        )
        with pytest.raises(XnatNotFoundError) as missing:
            gw.download_scan(ghost, "1", dest_dir=xnat_server.data_dir / "dl")
        err = missing.value
        assert (
            err.status == 404
            and "GHOST" in str(err)
            and "NOPE_E1" in str(err)
            and err.attempts == 1
        )
        everything = _chain_text(err) + repr(gw) + repr(ghost) + caplog.text
        assert xnat_server.password not in everything
        assert token not in everything  # the session cookie is a credential too
        assert xnat_server.password not in repr(gw.request_counts)


# ---------------------------------------------------------------------- discovery


def test_find_sessions_to_score_uses_constant_requests(gw: XnatGateway) -> None:
    sessions = _make_sessions(gw, "DISC", [f"S{i:02d}" for i in range(6)])
    gw.write_assessment(sessions[0], _record())  # done for MODEL
    gw.write_assessment(sessions[1], _record(status="running"))  # still running
    gw.write_assessment(sessions[2], _record(version="0.9.0"))  # older model only
    gw.mark_failed(sessions[3], "1", MODEL, "RuntimeError: CUDA out of memory")
    log = Requests(gw)
    todo = gw.find_sessions_to_score("DISC", model_version=MODEL)
    assert [s.label for s in todo] == ["S01", "S02", "S03", "S04", "S05"]
    assert len(log) == 2
    assert all(method == "GET" and path == "/data/experiments" for method, path, _, _ in log.calls)
    first = todo[0]
    assert (first.project, first.subject, first.session_id) == (
        "DISC",
        "SUBJ",
        sessions[1].session_id,
    )
    assert first.insert_date is not None and first.last_modified is not None
    # more sessions, same number of requests
    _make_sessions(gw, "DISC", [f"T{i:02d}" for i in range(20)])
    log.clear()
    assert len(gw.find_sessions_to_score("DISC", model_version=MODEL)) == 25
    assert len(log) == 2
    assert gw.find_sessions_to_score("DISC", model_version="0.9.0")[0].label == "S00"


def test_discovery_errors(gw: XnatGateway) -> None:
    with pytest.raises(XnatValidationError, match="model_version is empty"):
        gw.find_sessions_to_score("DISC", model_version="")
    with pytest.raises(XnatValidationError, match="modality 'PET' is not supported"):
        gw.find_sessions_to_score("DISC", model_version=MODEL, modality="PET")
    with pytest.raises(XnatConfigurationError, match="no project given"):
        gw.find_sessions_to_score(model_version=MODEL)
    _make_sessions(gw, "GETS", ["ONE"])
    assert gw.get_session("ONE", "GETS").label == "ONE"
    with pytest.raises(XnatNotFoundError, match="'TWO'"):
        gw.get_session("TWO", "GETS")


# ---------------------------------------------------------------------- download and load


def _import_series(
    gw: XnatGateway, tmp: Path, project: str, label: str, series: list[tuple[int, np.ndarray]]
) -> None:
    folder = tmp / label
    for number, hu in series:
        write_series(
            hu, (2.0, 0.5, 0.5), folder / str(number), uid_seed=label, series_number=number
        )
    archive = tmp / f"{label}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*.dcm")):
            zf.write(f, f.relative_to(folder).as_posix())
    gw.xnat.services.import_(path=str(archive), project=project, subject="SUBJ", experiment=label,
                             import_handler="DICOM-zip")  # fmt: skip


def test_download_picks_the_largest_ct_scan_and_loads_it(
    xnat_server: RunningServer, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    small = rng.normal(0.0, 200.0, (3, 12, 10)).astype(np.float32)
    large = rng.normal(40.0, 300.0, (5, 12, 10)).astype(np.float32)
    # xnatpy's services.import_ returns an object, which needs xnatpy's model
    with _connect(xnat_server, parse_model=True) as gw:
        gw.xnat.put("/data/projects/DL")
        _import_series(gw, tmp_path, "DL", "CBCT01", [(1, small), (2, large)])
        session = gw.get_session("CBCT01", "DL")
        scans = gw.list_scans(session)
        assert sorted((s.scan_id, s.frames) for s in scans) == [("1", 3), ("2", 5)]
        log = Requests(gw)
        folder = gw.download_scan(session, dest_dir=tmp_path / "dl")
        assert len(log) == 2  # session document (choose the scan) + one zip
        assert folder == tmp_path / "dl" / "CBCT01" / "2"
        assert len(list(folder.glob("*.dcm"))) == 5
        volume = gw.load_session_volume(session)
        assert volume.shape == (5, 12, 10) and volume.spacing == (2.0, 0.5, 0.5)
        np.testing.assert_array_equal(volume.hu, np.round(large))  # written as integer HU
        assert volume.series_uid == gw.select_scan(session).series_uid
        explicit = gw.load_session_volume(session, "1", dest_dir=tmp_path / "dl")
        np.testing.assert_array_equal(explicit.hu, np.round(small))
        # downloading again replaces the folder atomically
        assert gw.download_scan(session, "2", dest_dir=tmp_path / "dl") == folder
        with pytest.raises(XnatScanSelectionError, match=r"CBCT01 .* has no scan '9'"):
            gw.select_scan(session, "9")
        with pytest.raises(XnatNotFoundError, match=r"scan 9 of session CBCT01 .*HTTP 404"):
            gw.download_scan(session, "9", dest_dir=tmp_path / "dl")
        with pytest.raises(XnatNotFoundError, match="scan 1 of session CBCT01") as info:
            gw.download_scan(session, "1", dest_dir=tmp_path / "dl", resource="NIFTI")
        assert info.value.status == 404
        empty = _make_sessions(gw, "DL", ["EMPTY"])[0]
        with pytest.raises(XnatScanSelectionError, match=r"EMPTY .* has no CT scan"):
            gw.download_scan(empty, dest_dir=tmp_path / "dl")


# ---------------------------------------------------------------------- idempotent writes


def test_repeated_writes_update_one_assessor(gw: XnatGateway, tmp_path: Path) -> None:
    session = _make_sessions(gw, "IDEM", ["S1"])[0]
    first = gw.write_assessment(
        session, _record(score=2.0), resources=_resource_files(tmp_path / "a", "a")
    )
    second = gw.write_assessment(
        session, _record(score=4.0), resources=_resource_files(tmp_path / "b", "b")
    )
    third = gw.write_assessment(session, _record(score=4.5))
    assert first == second == third
    rows = _assessors(gw, session)
    assert [r["label"] for r in rows] == [assessment_label("S1", "1", MODEL)]
    stored = gw.read_assessments("IDEM")
    assert len(stored) == 1 and stored[0].assessor_id == first
    assert stored[0].record == _record(score=4.5)
    # the resources of the second write replaced the first's
    csv = gw.xnat.get(
        f"/data/experiments/{session.session_id}/assessors/{first}/resources/AE_SLICES/files/slice_ae.csv"
    )
    assert csv.text == "slice,parotid\n0,b\n"
    # a failure then a success: the failure reason is cleared
    assert gw.mark_failed(session, "1", MODEL, "DicomError: truncated file") == first
    assert gw.read_assessments("IDEM")[0].record.status == "failed"
    assert gw.read_assessments("IDEM")[0].record.failure_reason == "DicomError: truncated file"
    gw.write_assessment(session, _record())
    assert gw.read_assessments("IDEM")[0].record.failure_reason == ""


def test_stale_resource_files_are_removed(gw: XnatGateway, tmp_path: Path) -> None:
    session = _make_sessions(gw, "STALE", ["S1"])[0]
    (tmp_path / "x").mkdir()
    old = [tmp_path / "x" / "a.png", tmp_path / "x" / "b.png"]
    for f in old:
        f.write_bytes(f.name.encode())
    aid = gw.write_assessment(session, _record(), resources={"OVERLAYS": old})
    gw.write_assessment(session, _record(), resources={"OVERLAYS": old[:1]})
    rows = gw.xnat.get_json(
        f"/data/experiments/{session.session_id}/assessors/{aid}/resources/OVERLAYS/files"
    )
    assert [r["Name"] for r in rows["ResultSet"]["Result"]] == ["a.png"]


def test_resource_validation_happens_before_any_request(gw: XnatGateway, tmp_path: Path) -> None:
    session = _make_sessions(gw, "RVAL", ["S1"])[0]
    log = Requests(gw)
    with pytest.raises(XnatValidationError, match="does not exist"):
        gw.write_assessment(session, _record(), resources={"MAPS": [tmp_path / "missing.npz"]})
    with pytest.raises(XnatValidationError, match="must match"):
        gw.write_assessment(session, _record(), resources={"bad label": [tmp_path]})
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    for d in ("d1", "d2"):
        (tmp_path / d / "same.png").write_bytes(b"x")
    with pytest.raises(XnatValidationError, match=r"two files named same\.png"):
        gw.write_assessment(session, _record(), resources={"OVERLAYS": [tmp_path / "d1" / "same.png",
                                                                         tmp_path / "d2" / "same.png"]})  # fmt: skip
    with pytest.raises(XnatValidationError, match="mark_failed for session S1: reason is empty"):
        gw.mark_failed(session, "1", MODEL, "")
    assert len(log) == 0


def test_resources_are_uploaded_before_status_complete(gw: XnatGateway, tmp_path: Path) -> None:
    session = _make_sessions(gw, "ORDER", ["S1"])[0]
    log = Requests(gw)
    aid = gw.write_assessment(session, _record(), resources=_resource_files(tmp_path, "o"))
    status_key = "cbctqa:qaAssessmentData/status"
    events = []
    for method, path, _status, query in log.calls:
        if method == "PUT" and "/resources/" in path:
            events.append("upload")
        elif method == "PUT" and status_key in query:
            events.append(query[status_key][0])
    assert events == ["running", "upload", "upload", "upload", "complete"]
    for label, name in (("OVERLAYS", "overlay_parotid.png"), ("MAPS", "raw_maps.npz")):
        body = gw.xnat.get(
            f"/data/experiments/{session.session_id}/assessors/{aid}/resources/{label}/files/{name}"
        )
        assert body.content == (tmp_path / name).read_bytes()


def test_failed_upload_leaves_the_assessment_running(xnat_server_factory: Callable[..., RunningServer],
                                                     tmp_path: Path) -> None:  # fmt: skip
    server = xnat_server_factory(faults=FaultConfig(error_rate=1.0, path_regex=r"/resources/MAPS/"))
    with _connect(server, retries=2) as gw:
        session = _make_sessions(gw, "HALF", ["S1"])[0]
        with pytest.raises(
            XnatServerError, match=r"resource MAPS file raw_maps.npz.*HTTP 503 after 3 attempt"
        ) as info:
            gw.write_assessment(session, _record(), resources=_resource_files(tmp_path, "h"))
        assert info.value.attempts == 3 and "S1" in str(info.value)
        stored = gw.read_assessments("HALF")
        # never "complete" without its maps
        assert len(stored) == 1 and stored[0].record.status == "running"


def test_concurrent_writes_end_with_one_assessor(
    xnat_server: RunningServer, tmp_path: Path
) -> None:
    with _connect(xnat_server) as gw:
        session = _make_sessions(gw, "RACE", ["S1"])[0]
    n_threads = 6
    # a timeout: one worker failing before the barrier breaks it for all instead of hanging
    barrier = threading.Barrier(n_threads, timeout=60)
    ids: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with _connect(xnat_server, seed=i) as mine:  # separate workers, separate sessions
                files = _resource_files(tmp_path / f"w{i}", f"w{i}")
                barrier.wait()
                ids.append(
                    mine.write_assessment(session, _record(score=1.0 + i / 2), resources=files)
                )
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    # daemon threads: a stuck worker fails this test, it cannot keep the test run alive
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer is still running after 120 s"
    assert not errors, errors
    assert len(set(ids)) == 1
    with _connect(xnat_server) as gw:
        assert len(_assessors(gw, session)) == 1
        stored = gw.read_assessments("RACE")
        assert len(stored) == 1 and stored[0].record.status == "complete"
        assert stored[0].record in [_record(score=1.0 + i / 2) for i in range(n_threads)]
        # one gateway shared by threads: same-label writes are serialised in-process
        shared_ids: list[str] = []
        pool = [threading.Thread(target=lambda: shared_ids.append(gw.write_assessment(session, _record())),
                                 daemon=True)
                for _ in range(4)]  # fmt: skip
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        assert not any(t.is_alive() for t in pool), "a shared-gateway writer is still running"
        assert shared_ids == [ids[0]] * 4 and len(_assessors(gw, session)) == 1


# ---------------------------------------------------------------------- bulk reads and ratings


def _populate(gw: XnatGateway, project: str, n: int) -> list[SessionRef]:
    sessions = _make_sessions(gw, project, [f"S{i:03d}" for i in range(n)])
    for i, s in enumerate(sessions):
        gw.write_assessment(s, _record(score=1.0 + (i % 4)))
        gw.write_rating(
            s, "dr_a", {c: 1 + (i + j) % 5 for j, c in enumerate(CATEGORIES)}, on_behalf_of=True
        )
        gw.write_rating(
            s, "dr_b", {"overall": 1 + i % 5}, comments=f"case {i}", scan_id="1", on_behalf_of=True
        )
    return sessions


def test_bulk_reads_use_one_request_whatever_the_project_size(
    gw: XnatGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xnat_plugin.server")
    counts = {}
    for project, n in (("BULK3", 3), ("BULK15", 15)):
        _populate(gw, project, n)
        log = Requests(gw)
        before = len(_server_requests(caplog, "GET /data/experiments ->"))
        assessments = gw.read_assessments(project)
        ratings = gw.read_ratings(project)
        counts[n] = (len(log), len(_server_requests(caplog, "GET /data/experiments ->")) - before)
        assert len(assessments) == n and len(ratings) == 2 * n
        assert assessments[2].session_label == "S002" and assessments[2].record == _record(
            score=3.0
        )
        by_rater = {(r.session_label, r.rater): r for r in ratings}
        assert by_rater[("S002", "dr_a")].scores == {
            c: 1 + (2 + j) % 5 for j, c in enumerate(CATEGORIES)
        }
        assert by_rater[("S002", "dr_b")].scores == {"overall": 3}
        assert (
            by_rater[("S002", "dr_b")].comments == "case 2"
            and by_rater[("S002", "dr_b")].scan_id == "1"
        )
    assert counts[3] == counts[15] == (2, 2)  # one request each, counted by client and by server


def test_one_session_lookups_are_filtered_listings(gw: XnatGateway) -> None:
    """A scoring run looks up one session and its assessments: filtered listings (XNAT filters
    on a listing's columns), not the whole project's, whatever the project size."""
    sessions = _populate(gw, "LOOK", 12)
    target = sessions[7]
    log = Requests(gw)
    found = gw.get_session(target.session_id, "LOOK")  # by accession ID: one request
    assert (found.session_id, found.label, found.subject) == (target.session_id, target.label,
                                                             target.subject)  # fmt: skip
    assert [(m, q.get("ID")) for m, _, _, q in log.calls] == [("GET", [target.session_id])]
    log.calls.clear()
    assert gw.get_session(target.label, "LOOK").session_id == target.session_id  # by label: two
    assert [q.get("label") for _, _, _, q in log.calls] == [None, [target.label]]
    log.calls.clear()
    (mine,) = gw.read_assessments("LOOK", session_id=target.session_id)
    assert mine.session_label == target.label and mine.record == _record(score=1.0 + 7 % 4)
    assert [q.get("session_ID") for _, _, _, q in log.calls] == [[target.session_id]]
    assert gw.read_assessments("LOOK", session_id="XNAT_E99999") == []
    log.calls.clear()
    with pytest.raises(XnatNotFoundError, match="'S999'"):
        gw.get_session("S999", "LOOK")
    assert len(log.calls) == 3  # ID, label, then the whole listing


def test_rating_validation_and_replacement(gw: XnatGateway) -> None:
    session = _make_sessions(gw, "RATE", ["S1"])[0]
    log = Requests(gw)
    with pytest.raises(XnatValidationError, match="session 'S1', category 'larynx': 7 is outside"):
        gw.write_rating(session, gw.user, {"parotid": 3, "larynx": 7})
    with pytest.raises(XnatValidationError, match=r"'mandible': 2\.5 is not an integer"):
        gw.write_rating(session, gw.user, {"mandible": 2.5})  # type: ignore[dict-item]
    with pytest.raises(XnatValidationError, match="rater 'dr_c' is not the logged-in user"):
        gw.write_rating(session, "dr_c", {"overall": 4})
    assert len(log) == 0  # nothing sent
    first = gw.write_rating(session, gw.user, {"parotid": 2, "overall": 4}, comments="noisy")
    again = gw.write_rating(session, gw.user, {"overall": 5})
    assert first == again
    (rating,) = gw.read_ratings("RATE")
    assert rating.scores == {"overall": 5} and rating.comments == "" and rating.rater == gw.user


# ---------------------------------------------------------------------- retries


def test_retries_on_503_and_dropped_connections(
    xnat_server_factory: Callable[..., RunningServer],
) -> None:
    server = xnat_server_factory()
    with _connect(server) as gw:
        _populate(gw, "FLAKY", 3)
    for faults in (FaultConfig(error_rate=0.5, path_regex=r"^/data/experiments", seed=3),
                   FaultConfig(drop_rate=0.5, path_regex=r"^/data/experiments", seed=4)):  # fmt: skip
        server.restart(faults=faults)
        with _connect(server, retries=10) as gw:
            for _ in range(4):
                assert len(gw.read_assessments("FLAKY")) == 3
                assert len(gw.find_sessions_to_score("FLAKY", model_version="9")) == 3
            counts = gw.request_counts
            injected = server.app.faults.counts
            assert counts.retries > 0
            assert counts.retries == sum(v for k, v in injected.items() if k.value != "pass")
            assert counts.attempts == 12 + counts.retries


def test_gives_up_after_the_retry_budget_and_never_retries_4xx(
    xnat_server_factory: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = xnat_server_factory(
        faults=FaultConfig(error_rate=1.0, path_regex=r"^/data/experiments$")
    )
    caplog.set_level(logging.INFO, logger="xnat_plugin.server")
    with _connect(server, retries=3) as gw:
        with pytest.raises(
            XnatServerError, match=r"XNAT answered HTTP 503 after 4 attempt"
        ) as info:
            gw.read_ratings("ANY")
        assert info.value.status == 503 and info.value.attempts == 4
        assert len(_server_requests(caplog, "GET /data/experiments -> 503")) == 4
        ghost = SessionRef(
            project="ANY", subject="s", session_id="XNAT_E99999", label="GHOST", uri="/x"
        )
        with pytest.raises(XnatNotFoundError) as missing:
            gw.list_scans(ghost)
        assert missing.value.attempts == 1
        assert len(_server_requests(caplog, "GET /data/experiments/XNAT_E99999 -> 404")) == 1
    server.restart(faults=FaultConfig(drop_rate=1.0, path_regex=r"^/data/experiments$"))
    with (
        _connect(server, retries=2) as gw,
        pytest.raises(XnatConnectionError, match="after 3 attempt"),
    ):
        gw.read_assessments("ANY")


def test_connect_retries_and_reports_an_unreachable_host(
    xnat_server_factory: Callable[..., RunningServer],
) -> None:
    server = xnat_server_factory(
        faults=FaultConfig(error_rate=0.5, path_regex=r"^/data/services/auth$", seed=10)
    )
    with _connect(server, retries=8) as gw:
        assert gw.xnat.logged_in_user == server.user
        assert server.app.faults.counts[FaultDecision.ERROR] > 0  # the login was retried
        session = gw.xnat
        url = server.url
        server.stop()  # XNAT goes away while the gateway is open: leaving the block still closes
    assert session.interface is None
    with pytest.raises(
        XnatConnectionError, match=r"cannot connect to XNAT at .* after 2 attempt"
    ) as info:
        XnatGateway.connect(url, "admin", "Unr3achable-pw", retries=1, backoff=0.001)
    assert "Unr3achable" not in _chain_text(info.value)


def test_forbidden_write_is_not_retried_and_names_the_user(
    xnat_server: RunningServer, tmp_path: Path
) -> None:
    with _connect(xnat_server) as admin:
        session = _make_sessions(admin, "PERM", ["S1"])[0]
        admin.xnat.post(
            "/xapi/users",
            json={
                "username": "viewer",
                "password": "V1ewer-pw-x",
                "email": "v@example.org",
                "firstName": "V",
                "lastName": "W",
                "enabled": True,
                "verified": True,
            },
        )
        admin.xnat.put("/data/projects/PERM/users/Collaborators/viewer")  # read-only role
    with XnatGateway.connect(xnat_server.url, "viewer", "V1ewer-pw-x", backoff=0.001) as viewer:
        assert [s.label for s in viewer.find_sessions_to_score("PERM", model_version=MODEL)] == [
            "S1"
        ]
        log = Requests(viewer)
        with pytest.raises(XnatPermissionError, match="user 'viewer' lacks the access") as info:
            viewer.write_rating(session, "viewer", {"overall": 4})
        assert info.value.status == 403 and info.value.attempts == 1 and len(log) == 1
        assert "S1_rating_viewer" in str(info.value) and "V1ewer-pw-x" not in _chain_text(
            info.value
        )


def test_mark_failed_redacts_and_truncates_the_reason(gw: XnatGateway) -> None:
    session = _make_sessions(gw, "FAIL", ["S1"])[0]
    reason = "ConnectionError: http://u:Hunter2-pw@pacs/ refused; password=Hunter2-pw " + "x" * 3000
    gw.mark_failed(session, "1", MODEL, reason)
    stored = gw.read_assessments("FAIL")[0].record
    assert stored.status == "failed" and "Hunter2" not in stored.failure_reason
    assert len(stored.failure_reason) == 2000 and stored.failure_reason.endswith("...")


def test_download_retries_and_rewrites_from_the_start(
    xnat_server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = xnat_server_factory()
    with _connect(server) as gw:
        session = _make_sessions(gw, "DLR", ["S1"])[0]
        base = f"/data/experiments/{session.session_id}/scans/7"
        gw.xnat.put(base, query={"xsiType": "xnat:ctScanData"})
        payload = {f"IM{i}.dcm": bytes([i]) * (1000 + i) for i in range(3)}
        for name, data in payload.items():
            gw.xnat.put(f"{base}/resources/DICOM/files/{name}", data=data, query={"inbody": "true"})
    for faults in (FaultConfig(error_rate=0.6, path_regex=r"/resources/DICOM/files$", seed=7),
                   FaultConfig(drop_rate=0.6, path_regex=r"/resources/DICOM/files$", seed=6)):  # fmt: skip
        server.restart(faults=faults)
        with _connect(server, retries=12) as gw:
            for _ in range(3):
                folder = gw.download_scan(session, "7", dest_dir=tmp_path / "dl")
                assert {p.name: p.read_bytes() for p in folder.iterdir()} == payload
            assert gw.request_counts.retries > 0
