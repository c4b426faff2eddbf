"""Fixtures of the dashboard tests: a real local XNAT with a scored and rated simulated cohort.

``qa_cohort`` (session-scoped) starts the local XNAT-compatible server once, simulates a small
head-and-neck CBCT cohort (``qa_core.synth``: 8 sessions, 8 slices of 128², two scanners, one
acquisition per day), imports it as a scanner would, enters the simulated radiologists'
ratings, scores sessions with the shipped model through ``flows.scoring.score_session``
(Grad-CAM products uploaded as the assessments' resources), analyses the cohort and writes the
outlier flags, exactly as the services do. What it leaves:

* project ``HN_QA``: 6 sessions scored (``complete``), 1 failed (its series misses a
  slice), 1 not scored; sessions 1-5 rated by the panel (R1-R4), session 6 scored but unrated;
  at least three outlier flags;
* project ``EMPTY_QA``: no sessions;
* users: ``admin`` (site admin), ``viewer`` (Collaborator: read-only service account),
  ``rad_a`` (Member of both projects: a radiologist who rates and acknowledges).
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import pytest
import requests

from xnat_plugin.server import RunningServer, ServerConfig, run_in_thread

PROJECT, EMPTY = "HN_QA", "EMPTY_QA"
ADMIN, ADMIN_PW = "admin", "dash-admin-pw"
VIEWER, VIEWER_PW = "viewer", "dash-viewer-pw"
RAD, RAD_PW = "rad_a", "dash-rad-pw"
N_SESSIONS = 8
STATIONS = (("CBCT_A", "TrueBeam"), ("CBCT_B", "Halcyon"))


@dataclass(frozen=True)
class QaCohort:
    """The populated XNAT: server, project names, labels of the special sessions."""

    server: RunningServer
    url: str
    project: str
    empty_project: str
    scored: tuple[str, ...]
    failed: str
    unscored: str
    unrated: str
    flagged: tuple[tuple[str, str], ...]
    model_version: str
    admin: tuple[str, str] = (ADMIN, ADMIN_PW)
    viewer: tuple[str, str] = (VIEWER, VIEWER_PW)
    radiologist: tuple[str, str] = (RAD, RAD_PW)


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()


def _stamp_headers(folder: Path, index: int) -> None:
    """Give a simulated series a scanner and an acquisition date, as a real scanner would."""
    station, model = STATIONS[index % 2]
    day = (_dt.date(2026, 3, 1) + _dt.timedelta(days=3 * index)).strftime("%Y%m%d")
    for f in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StationName = station
        ds.Manufacturer = "Varian"
        ds.ManufacturerModelName = model
        ds.StudyDate = day
        ds.SeriesDate = day
        ds.save_as(f)


def _admin(server: RunningServer) -> requests.Session:
    http = requests.Session()
    resp = http.put(f"{server.url}/data/services/auth",
                    data={"username": ADMIN, "password": ADMIN_PW}, timeout=30)  # fmt: skip
    resp.raise_for_status()
    http.cookies.set("JSESSIONID", resp.text.strip())
    return http


def add_user(server: RunningServer, login: str, password: str, roles: dict[str, str]) -> None:
    """Create an XNAT user and give it ``{project: Owners|Members|Collaborators}``."""
    http = _admin(server)
    resp = http.post(f"{server.url}/xapi/users", json={
        "username": login, "password": password, "email": f"{login}@example.org",
        "firstName": login, "lastName": "Test", "enabled": True, "verified": True}, timeout=30)  # fmt: skip
    assert resp.status_code in (200, 201), resp.text
    for project, role in roles.items():
        r = http.put(f"{server.url}/data/projects/{project}/users/{role}/{login}", timeout=30)
        assert r.status_code in (200, 201), r.text


def _populate(server: RunningServer, work: Path) -> QaCohort:
    from flows.scoring import analyze_project, model_version, score_session, write_outlier_flags
    from qa_core.dicom_writer import write_series
    from qa_core.model import load_model
    from qa_core.synth import generate_cohort
    from xnat_plugin.gateway import XnatGateway

    cohort = generate_cohort(work / "cohort", n_sessions=N_SESSIONS, slices=8, size=128, seed=11,
                             workers=1, progress=False)  # fmt: skip
    model = load_model()
    version = model_version(model)
    with XnatGateway.connect(server.url, ADMIN, ADMIN_PW, project=PROJECT, backoff=0.01) as gw:
        for project in (PROJECT, EMPTY):
            gw.xnat.put(f"/data/projects/{project}", accepted_status=[200, 201])
        for i, s in enumerate(cohort.sessions):
            folder = s.dicom_dir
            if i == N_SESSIONS - 2:  # a session scoring cannot load: a slice is missing
                folder = work / "broken" / s.label
                import numpy as np

                files = write_series(np.zeros((6, 32, 32)), (2.0, 1.0, 1.0), folder, uid_seed=s.label,
                                     patient_id=s.subject, patient_name=s.subject)  # fmt: skip
                files[3].unlink()  # a gap: scoring refuses the series (MissingSlicesError)
            _stamp_headers(folder, i)
            gw.xnat.post("/data/services/import", data=_zip(folder), query={
                "import-handler": "DICOM-zip", "PROJECT_ID": PROJECT, "SUBJECT_ID": s.subject,
                "EXPT_LABEL": s.label, "overwrite": "append"},
                headers={"Content-Type": "application/zip"})  # fmt: skip
        refs = {r.label: r for r in gw.list_sessions(PROJECT)}
        labels = [s.label for s in cohort.sessions]
        scored, failed, unscored = labels[:6], labels[6], labels[7]
        for i, s in enumerate(cohort.sessions[:5]):
            for rater, scores in s.ratings.items():
                gw.write_rating(refs[s.label], rater, scores, on_behalf_of=True,
                                date=_dt.date(2026, 4, 1) + _dt.timedelta(days=i))  # fmt: skip
        for label in [*scored, failed]:
            outcome = score_session(gw, refs[label], model, workdir=work / "score", batch_size=8, top_k=1)
            expected = "failed" if label == failed else "complete"
            assert outcome.status == expected, (label, outcome.error)
        analysis, assessments = analyze_project(gw, PROJECT, model_version=version, n_resamples=200)
        write_outlier_flags(gw, analysis, assessments, refs)
        flagged = [(a.session_label, c) for a in gw.read_assessments(PROJECT)
                   for c, r in a.record.categories.items() if r.outlier]  # fmt: skip
        # the Alerts page needs something to show after other tests acknowledge one or two
        # alerts (the session fixture is shared, in any order): at least three flags, set as
        # monitoring would where the statistics raised fewer
        for label, cat in [(scored[1], "larynx"), (scored[2], "mandible"), (scored[1], "parotid")]:
            if len(flagged) >= 3:
                break
            if (label, cat) in flagged:
                continue
            a = next(a for a in gw.read_assessments(PROJECT) if a.session_label == label)
            cats = dict(a.record.categories)
            cats[cat] = replace(cats[cat], outlier=True,
                                outlier_reason="robust z of the AE residual 4.1 > 3.5")  # fmt: skip
            gw.write_assessment(refs[label], replace(a.record, categories=cats))
            flagged.append((label, cat))
    add_user(server, VIEWER, VIEWER_PW, {PROJECT: "Collaborators", EMPTY: "Collaborators"})
    add_user(server, RAD, RAD_PW, {PROJECT: "Members", EMPTY: "Members"})
    return QaCohort(server=server, url=server.url, project=PROJECT, empty_project=EMPTY,
                    scored=tuple(scored), failed=failed, unscored=unscored, unrated=scored[-1],
                    flagged=tuple(flagged), model_version=version)  # fmt: skip


@pytest.fixture(scope="session")
def qa_cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QaCohort]:
    """The populated local XNAT (see the module docstring); shared by all dashboard tests."""
    work = tmp_path_factory.mktemp("dashboard")
    config = ServerConfig(data_dir=work / "xnat", admin_user=ADMIN, admin_password=ADMIN_PW)
    with run_in_thread(config) as server:
        yield _populate(server, work)


@pytest.fixture
def xnat_env(qa_cohort: QaCohort, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> QaCohort:
    """Point the dashboard at the cohort's XNAT as the read-only ``viewer`` account."""
    monkeypatch.setenv("XNAT_HOST", qa_cohort.url)
    monkeypatch.setenv("XNAT_USER", VIEWER)
    monkeypatch.setenv("XNAT_PASS", VIEWER_PW)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XNATPY_HOST", "XNATPY_USER", "XNATPY_PASS", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CBCTQA_DASHBOARD_PROJECT", qa_cohort.project)
    assert os.environ["XNAT_HOST"]
    return qa_cohort
