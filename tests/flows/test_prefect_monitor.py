"""monitor_cohort on a real Prefect server: flags, report resource, alerts once; the example
alert automation accepted by the server and delivering a webhook notification."""

from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import pytest

from flows.cli import main
from flows.events import ALERT, emit_alert
from qa_core.categories import CATEGORIES
from xnat_plugin.gateway import XnatGateway

PROJECT = "PMON"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(xnat_server, tmp_path_factory, make_session, prefect_api_url):
    """Eight scored sessions with three raters each: consensus follows the overall AE except
    for the session with the highest AE, rated worst (an atypical case)."""
    import os

    tmp = tmp_path_factory.mktemp("pmon")
    env = {"XNAT_HOST": xnat_server.url, "XNAT_USER": xnat_server.user,
           "XNAT_PASS": xnat_server.password}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with XnatGateway.connect(xnat_server.url, xnat_server.user, xnat_server.password) as gw:
            gw.xnat.put(f"/data/projects/{PROJECT}", accepted_status=[200, 201])
            for i in range(8):
                make_session(gw, PROJECT, f"M{i}", tmp, seed=100 + i, noise=5.0 + 30 * i)
        assert main(["score-pending", "--project", PROJECT, "--workers", "2"]) == 0
        with XnatGateway.connect(xnat_server.url, xnat_server.user, xnat_server.password) as gw:
            stored = gw.read_assessments(PROJECT)
            sessions = {s.label: s for s in gw.list_sessions(PROJECT)}
            by_ae = sorted(stored, key=lambda a: a.record.categories["overall"].ae)
            for rank, a in enumerate(by_ae):
                # rater sums 3 + 2*rank: consensus 1, 1.67, 2.33 ... 5 rising with AE ...
                total = 3 + 2 * rank if rank < len(by_ae) - 1 else 3  # ... but the top AE rated worst
                scores = [total // 3 + (r < total % 3) for r in range(3)]
                for rater, score in zip(["ann", "bob", "cy"], scores, strict=True):
                    gw.write_rating(sessions[a.session_label], rater,
                                    dict.fromkeys(CATEGORIES, score), on_behalf_of=True)  # fmt: skip
        yield xnat_server, by_ae[-1].session_label
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _alerts(api_url: str, project: str) -> list[dict]:
    answer = httpx.post(f"{api_url}/events/filter", json={
        "filter": {"event": {"name": [ALERT]},
                   "related": {"id": [f"xnat.project.{project}"]}}, "limit": 50})  # fmt: skip
    answer.raise_for_status()
    return answer.json().get("events", [])


def test_monitor_flags_reports_and_alerts_once(scored, prefect_api_url) -> None:
    from flows.monitor import REPORT_RESOURCE, monitor_cohort

    server, atypical = scored
    first = monitor_cohort(PROJECT, n_resamples=200)  # a real flow run on the Prefect server
    assert first["status"] == "done" and first["analysed"], first
    flagged = {(a["session"], a["category"]) for a in first["new_alerts"]}
    assert any(s == atypical for s, _ in flagged), first["new_alerts"]
    with XnatGateway.connect(server.url, server.user, server.password) as gw:
        stored = {a.session_label: a.record for a in gw.read_assessments(PROJECT)}
        for session, cat in flagged:
            assert stored[session].categories[cat].outlier is True
            assert stored[session].categories[cat].outlier_reason
        listing = gw.xnat.get_json(f"/data/projects/{PROJECT}/resources/{REPORT_RESOURCE}/files")
        names = {r["Name"] for r in listing["ResultSet"]["Result"]}
        assert names == {"report.json", "report.html"}
        report = json.loads(gw.xnat.get(
            f"/data/projects/{PROJECT}/resources/{REPORT_RESOURCE}/files/report.json").text)
        page = gw.xnat.get(
            f"/data/projects/{PROJECT}/resources/{REPORT_RESOURCE}/files/report.html").text
    assert report["project"] == PROJECT and len(report["sessions"]) == 8
    assert set(report["statistics"]) >= {"overall"}
    assert "<table>" in page and "data:image/png;base64," in page and atypical in page
    # one alert event per new outlier
    deadline = time.monotonic() + 30
    events = _alerts(prefect_api_url, PROJECT)
    while len(events) < len(flagged) and time.monotonic() < deadline:
        time.sleep(0.5)
        events = _alerts(prefect_api_url, PROJECT)
    assert sorted((e["payload"]["label"], e["payload"]["category"]) for e in events) == sorted(flagged)
    # a second pass raises nothing already raised
    second = monitor_cohort(PROJECT, n_resamples=200)
    assert second["new_alerts"] == [] and second["updated"] == 0
    time.sleep(2)
    assert len(_alerts(prefect_api_url, PROJECT)) == len(events)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_alert_automation_is_accepted_and_notifies(prefect_api_url) -> None:
    from prefect.automations import Automation

    from flows.automations import install_alert_automation

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        automation_id = install_alert_automation(url)
        stored = Automation.read(id=automation_id)
        assert stored.enabled and stored.trigger.expect == {ALERT}
        time.sleep(2)  # the triggers service loads new automations
        emit_alert(project="PAUTO", session_id="XNAT_E99", label="CASE9", category="larynx",
                   reason="AE far above the cohort's fit (robust z 5.1)", model_version="1.0",
                   ae=12.5, consensus=2.0)  # fmt: skip
        deadline = time.monotonic() + 90
        while not _Hook.received and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _Hook.received, "the webhook was not called"
        note = _Hook.received[0]
        assert "PAUTO/CASE9 (larynx)" in note["subject"]
        assert "robust z 5.1" in note["body"]
    finally:
        server.shutdown()
