"""The Prefect flows on a real Prefect server against the local XNAT-compatible server.

Tiny sessions (8 slices, 64 px) so that every run is fast; the shipped model resizes them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from flows import session_flows
from flows.cli import main
from flows.events import SESSION_SCORED, archived_event_body, post_session_archived
from flows.scoring import model_version
from qa_core.model import card_path_for, load_model
from xnat_plugin.gateway import XnatGateway

PROJECT = "PFLOWS"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort_in(xnat_server, tmp_path_factory, make_session):
    """``cohort_in(project)``: four good sessions and one whose DICOM is truncated, in a project
    of the test's own (tests share the XNAT and Prefect servers, never a project)."""

    def make(project: str):
        tmp = tmp_path_factory.mktemp(project.lower())
        with XnatGateway.connect(xnat_server.url, xnat_server.user, xnat_server.password) as gw:
            gw.xnat.put(f"/data/projects/{project}", accepted_status=[200, 201])
            for i in range(4):
                make_session(gw, project, f"GOOD{i}", tmp, seed=i, noise=10.0 + 40 * i)
            make_session(gw, project, "BROKEN", tmp, seed=9, broken=True)
        return xnat_server

    return make


def _assessments(server, project=PROJECT):
    with XnatGateway.connect(server.url, server.user, server.password) as gw:
        return gw.read_assessments(project)


def test_score_pending_scores_every_session_once(
    prefect_api_url, cohort_in, xnat_env, capsys, tmp_path
) -> None:
    cohort = cohort_in(PROJECT)
    xnat_env(cohort)
    loads = session_flows.MODEL_LOADS
    assert main(["score-pending", "--project", PROJECT, "--workers", "2",
                 "--json", str(tmp_path / "s.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"{PROJECT}: scored 4, failed 1, already done 0" in out
    assert "failed BROKEN: [not retried until the session changes; scans " in out
    stored = _assessments(cohort)
    assert len(stored) == 5
    by_label = {a.session_label: a.record for a in stored}
    assert {k: v.status for k, v in by_label.items()} == {
        **{f"GOOD{i}": "complete" for i in range(4)}, "BROKEN": "failed"}
    assert "TruncatedFileError" in by_label["BROKEN"].failure_reason
    assert session_flows.MODEL_LOADS - loads <= 1  # once per worker process, not per session

    # a second discovery scores nothing and does not retry the broken session
    assert main(["score-pending", "--project", PROJECT]) == 0
    out = capsys.readouterr().out
    assert f"{PROJECT}: scored 0, failed 0, already done 4, not retried 1" in out
    again = {a.label: a for a in _assessments(cohort)}
    assert len(again) == 5
    assert again == {a.label: a for a in stored}  # untouched, broken reason included
    summary = json.loads((tmp_path / "s.json").read_text())
    assert sorted(summary[PROJECT]["scored"]) == [f"GOOD{i}" for i in range(4)]


def test_pushed_event_scores_the_session_without_polling(
    prefect_api_url, xnat_server, xnat_env, make_session, tmp_path
) -> None:
    from flows.deployments import start_serving

    cohort, project = xnat_server, "PF_PUSH"
    xnat_env(cohort)
    with XnatGateway.connect(cohort.url, cohort.user, cohort.password) as gw:
        gw.xnat.put(f"/data/projects/{project}", accepted_status=[200, 201])
        sid = make_session(gw, project, "PUSHED", tmp_path, seed=21)
        ref = gw.get_session("PUSHED", project)
    handle = start_serving([project], poll_interval=3600, workers=1, monitor=True)
    try:
        # exactly the body and endpoint XNAT's automation script uses
        body = archived_event_body(session_id=sid, project=project, subject=ref.subject,
                                   subject_id=ref.subject_id, label="PUSHED",
                                   xnat_url=cohort.url)  # fmt: skip
        assert post_session_archived(handle.api_url, body) in (200, 201, 202, 204)
        deadline = time.monotonic() + 180
        status = None
        while time.monotonic() < deadline:
            recs = [a.record for a in _assessments(cohort, project) if a.session_label == "PUSHED"]
            status = recs[0].status if recs else None
            if status == "complete":
                break
            time.sleep(1)
        assert status == "complete"
        # the scored event reached Prefect with the session as its resource (other test modules'
        # XNAT servers hand out the same accession IDs: match the project and label too)
        import httpx

        deadline = time.monotonic() + 30
        found = []
        while time.monotonic() < deadline and not found:
            answer = httpx.post(f"{handle.api_url}/events/filter", json={
                "filter": {"event": {"name": [SESSION_SCORED]},
                           "resource": {"id": [f"xnat.session.{sid}"]}}, "limit": 50})  # fmt: skip
            found = [e for e in answer.json().get("events", [])
                     if e["payload"].get("project") == project
                     and e["payload"].get("label") == "PUSHED"]  # fmt: skip
            time.sleep(0.5)
        assert found and found[0]["resource"]["prefect.resource.id"] == f"xnat.session.{sid}"
        assert set(found[0]["payload"]["scores"]) == {
            "parotid", "submandibular", "larynx", "mandible", "overall"}
    finally:
        handle.stop()
    assert len([a for a in _assessments(cohort, project) if a.session_label == "PUSHED"]) == 1


def test_raised_model_version_rescores_everything_once(
    prefect_api_url, cohort_in, xnat_env, capsys, tmp_path, monkeypatch
) -> None:
    PROJECT = "PF_RAISED"  # this test's own project (shadows the module one)
    cohort = cohort_in(PROJECT)
    xnat_env(cohort)
    main(["score-pending", "--project", PROJECT])  # whatever earlier tests left: all done
    capsys.readouterr()
    base = load_model(device="cpu")
    src = Path(base.card.get("checkpoint_path", "")) if base.card.get("checkpoint_path") else None
    from qa_core import model as model_mod

    src = Path(model_mod.__file__).parent / "models" / "default.pt"
    dst = tmp_path / "v2.pt"
    shutil.copy(src, dst)
    card = json.loads(card_path_for(src).read_text())
    card["version"] = "2.0.0-test"
    card_path_for(dst).write_text(json.dumps(card))
    monkeypatch.setenv("CBCTQA_MODEL_PATH", str(dst))
    assert model_version(session_flows.worker_model()) == "2.0.0-test"
    n_sessions = len({a.session_label for a in _assessments(cohort, PROJECT)})
    assert main(["score-pending", "--project", PROJECT, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"scored {n_sessions - 1}, failed 1, already done 0" in out
    assert main(["score-pending", "--project", PROJECT]) == 0
    assert f"scored 0, failed 0, already done {n_sessions - 1}, not retried 1" in capsys.readouterr().out
    v2 = [a for a in _assessments(cohort, PROJECT) if a.record.model_version == "2.0.0-test"]
    assert len(v2) == n_sessions
    assert len({a.session_label for a in v2}) == n_sessions


def test_rescore_on_request(prefect_api_url, cohort_in, xnat_env, capsys) -> None:
    PROJECT = "PF_RESCORE"  # this test's own project (shadows the module one)
    cohort = cohort_in(PROJECT)
    xnat_env(cohort)
    assert main(["rescore", "BROKEN", "--project", PROJECT]) == 1  # bad data: fails again, clearly
    out = capsys.readouterr().out
    assert f"{PROJECT}/BROKEN: failed (run " in out and "TruncatedFileError" in out
    assert main(["rescore", "GOOD1", "--project", PROJECT]) == 0
    assert f"{PROJECT}/GOOD1: complete (run " in capsys.readouterr().out
    labels = [a.label for a in _assessments(cohort, PROJECT)
              if a.session_label in ("GOOD1", "BROKEN")]  # fmt: skip
    assert len(labels) == len(set(labels))  # rescoring replaces, never duplicates
    assert main(["rescore", "NOPE", "--project", PROJECT]) == 2
    assert "no xnat:ctSessionData session with label or ID 'NOPE'" in capsys.readouterr().err
