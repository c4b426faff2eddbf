"""flows.scoring against the real local XNAT over HTTP, with the shipped model and real DICOM."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flows.scoring import (
    AE_SLICES,
    MAPS,
    OVERLAYS,
    analyze_project,
    cohort_rows,
    model_version,
    score_sessions,
    write_outlier_flags,
)
from qa_core.categories import CATEGORIES
from qa_core.dicom_writer import write_series
from qa_core.errors import CbctQaError
from qa_core.model import load_model
from xnat_plugin.gateway import XnatGateway

PROJECT = "SCORING"


def _zip(files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f.name)
    return buf.getvalue()


def _phantom(rng: np.random.Generator, noise: float) -> np.ndarray:
    _z, y, x = np.mgrid[0:6, 0:64, 0:64]
    body = ((y - 32) ** 2 + (x - 32) ** 2) < 26**2
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, noise, size=body.shape)
    hu[:, 28:36, 20:28] = 300.0
    return hu.astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def project(xnat_server, tmp_path_factory, truncate_dicom):
    """Four sessions: three good CT series with rising noise, one that is not CT at all."""
    tmp = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(3)
    with XnatGateway.connect(xnat_server.url, xnat_server.user, xnat_server.password) as gw:
        gw.xnat.put(f"/data/projects/{PROJECT}", accepted_status=[200, 201])
        for i, noise in enumerate([5.0, 60.0, 200.0]):
            files = write_series(
                _phantom(rng, noise),
                (2.0, 1.0, 1.0),
                tmp / f"s{i}",
                uid_seed=f"scoring{i}",
                patient_id=f"P{i}",
            )
            gw.xnat.post(
                "/data/services/import",
                data=_zip(files),
                query={
                    "import-handler": "DICOM-zip",
                    "PROJECT_ID": PROJECT,
                    "SUBJECT_ID": f"SUBJ{i}",
                    "EXPT_LABEL": f"SESS{i}",
                },
                headers={"Content-Type": "application/zip"},
            )
        # a session whose DICOM resource holds a truncated file: scoring must fail cleanly
        bad = write_series(
            _phantom(rng, 5.0), (2.0, 1.0, 1.0), tmp / "bad", uid_seed="bad", patient_id="PB"
        )
        gw.xnat.post(
            "/data/services/import",
            data=_zip(bad),
            query={
                "import-handler": "DICOM-zip",
                "PROJECT_ID": PROJECT,
                "SUBJECT_ID": "SUBJB",
                "EXPT_LABEL": "SESSBAD",
            },
            headers={"Content-Type": "application/zip"},
        )
        truncate_dicom(gw, gw.get_session("SESSBAD", PROJECT), bad[0])
    return xnat_server


def test_score_sessions_writes_complete_and_failed_assessments(project, model, tmp_path) -> None:
    version = model_version(model)
    with XnatGateway.connect(project.url, project.user, project.password, project=PROJECT) as gw:
        todo = gw.list_sessions(PROJECT)  # every session (other tests may have scored some)
        assert sorted(s.label for s in todo) == ["SESS0", "SESS1", "SESS2", "SESSBAD"]
        outcomes = score_sessions(gw, todo, model, workdir=tmp_path, batch_size=4, top_k=1)
        by_label = {o.session_label: o for o in outcomes}
        assert by_label["SESSBAD"].status == "failed"
        assert "TruncatedFileError" in by_label["SESSBAD"].error
        for label in ("SESS0", "SESS1", "SESS2"):
            assert by_label[label].status == "complete", by_label[label].error
            assert set(by_label[label].scores) == set(CATEGORIES)

        stored = {a.session_label: a for a in gw.read_assessments(PROJECT)}
        assert len(stored) == 4
        assert stored["SESSBAD"].record.status == "failed"
        assert "TruncatedFileError" in stored["SESSBAD"].record.failure_reason
        good = stored["SESS1"].record
        assert good.status == "complete"
        assert good.model_version == version
        assert good.slices == 6
        assert good.spacing == pytest.approx((2.0, 1.0, 1.0))
        assert good.cam_method == "gradcam"
        for cat in CATEGORIES:
            assert good.categories[cat].ae == pytest.approx(by_label["SESS1"].ae[cat], rel=1e-6)
            assert 1.0 <= good.categories[cat].score <= 5.0

        # the products are in XNAT under the assessor
        assessor = stored["SESS1"].assessor_id
        sess = stored["SESS1"].session_id
        for res, n_min in ((OVERLAYS, 5), (AE_SLICES, 1), (MAPS, 1)):
            rows = gw.xnat.get_json(
                f"/data/experiments/{sess}/assessors/{assessor}/resources/{res}/files"
            )["ResultSet"]["Result"]
            assert len(rows) >= n_min, res
        text = gw.xnat.get(
            f"/data/experiments/{sess}/assessors/{assessor}/resources/{AE_SLICES}/files/slice_ae.csv"
        ).text
        table = list(csv.DictReader(io.StringIO(text)))
        assert len(table) == 6
        total = sum(float(r["parotid_ae"]) for r in table)
        assert total == pytest.approx(good.categories["parotid"].ae, rel=1e-4)

        # bad data is final until the session changes; complete ones are done; a rerun of the
        # broken session (on request) adds nothing
        assert stored["SESSBAD"].record.failure_reason.startswith(
            "[not retried until the session changes; scans "
        )
        assert gw.find_sessions_to_score(PROJECT, model_version=version) == []
        again = score_sessions(
            gw, [gw.get_session("SESSBAD", PROJECT)], model, workdir=tmp_path, batch_size=4, top_k=1
        )
        assert [o.status for o in again] == ["failed"]
        assert len(gw.read_assessments(PROJECT)) == 4


def test_small_cohort_analysis_is_refused_and_rows_are_built(project, model, tmp_path) -> None:
    version = model_version(model)
    with XnatGateway.connect(project.url, project.user, project.password, project=PROJECT) as gw:
        todo = gw.find_sessions_to_score(PROJECT, model_version=version)
        score_sessions(gw, todo, model, workdir=tmp_path, batch_size=4, top_k=1)
        sessions = {s.label: s for s in gw.list_sessions(PROJECT)}
        for i, label in enumerate(["SESS0", "SESS1", "SESS2"]):
            for r, rater in enumerate(["ann", "bob", "cy"]):
                score = min(5, 2 + i + (r == 2))
                gw.write_rating(
                    sessions[label], rater, dict.fromkeys(CATEGORIES, score), on_behalf_of=True
                )
        # three volumes is below the statistics' minimum: the analysis refuses clearly
        with pytest.raises(CbctQaError, match=r"at least 4 are needed"):
            analyze_project(gw, PROJECT, model_version=version, n_resamples=200)
        rows = cohort_rows(
            gw.read_assessments(PROJECT), gw.read_ratings(PROJECT), model_version=version
        )
        assert {r["session"] for r in rows} == {"SESS0", "SESS1", "SESS2"}
        cons = {(r["session"], r["category"]): r["consensus"] for r in rows}
        assert cons[("SESS0", "parotid")] == pytest.approx((2 + 2 + 3) / 3)
        assert all(r["predicted"] is not None for r in rows)


def _table_with_outlier(session: str, category: str) -> list[dict[str, object]]:
    """A cohort table in which ``session``'s ``category`` AE is far off the AE-consensus trend."""
    others = [label for label in ("SESS0", "SESS1", "SESS2") if label != session]
    rows: list[dict[str, object]] = []
    for n, label in enumerate(others):
        for k, cat in enumerate(CATEGORIES):
            rows.append({"session": label, "category": cat, "ae": 1.0 + n + k / 10,
                         "consensus": 2.0 + n})
    for j in range(4):
        for cat in CATEGORIES:
            rows.append({"session": f"X{j}", "category": cat, "ae": (1.0 + j) * 1.5,
                         "consensus": min(5.0, 1.0 + j)})
    for cat in CATEGORIES:
        rows.append({"session": session, "category": cat,
                     "ae": 400.0 if cat == category else 2.0, "consensus": 1.0})
    return rows


@pytest.mark.slow
def test_outlier_flags_written_once(project, model, tmp_path) -> None:
    """write_outlier_flags writes each changed assessment once (one complete PUT), then nothing."""
    from urllib.parse import parse_qs, unquote, urlsplit

    from qa_core.statistics import analyze_table

    version = model_version(model)
    with XnatGateway.connect(project.url, project.user, project.password, project=PROJECT) as gw:
        score_sessions(gw, gw.find_sessions_to_score(PROJECT, model_version=version), model,
                       workdir=tmp_path, batch_size=4, top_k=1)
        sessions = {s.label: s for s in gw.list_sessions(PROJECT)}
        before = {a.session_label: a for a in gw.read_assessments(PROJECT)
                  if a.record.status == "complete"}
        assert {"SESS0", "SESS1", "SESS2"} <= set(before)
        puts: list[tuple[str, dict[str, list[str]]]] = []

        def record(resp, *args, **kwargs) -> None:  # every answer the gateway's client gets
            if resp.request.method == "PUT":
                parts = urlsplit(str(resp.request.url))
                puts.append((unquote(parts.path).rstrip("/").rsplit("/", 1)[-1],
                             parse_qs(parts.query)))

        gw.xnat.interface.hooks["response"].append(record)
        analysis = analyze_table(_table_with_outlier("SESS1", "larynx"), n_resamples=200, seed=1)
        written = write_outlier_flags(gw, analysis, before.values(), sessions)

        after = {a.session_label: a for a in gw.read_assessments(PROJECT)
                 if a.record.status == "complete"}
        flagged = after["SESS1"].record.categories["larynx"]
        assert flagged.outlier is True and flagged.outlier_reason
        changed = {label for label in before if after[label].record != before[label].record}
        assert "SESS1" in changed and written == len(changed)
        # one completed write per changed assessment, none for the others
        completed = [label for label, query in puts
                     if query.get("cbctqa:qaAssessmentData/status") == ["complete"]]
        assert sorted(completed) == sorted(before[label].label for label in changed)
        assert {label for label, _ in puts} == {before[label].label for label in changed}
        # a second pass over the re-read assessments sends no write at all
        puts.clear()
        assert write_outlier_flags(gw, analysis, after.values(), sessions) == 0
        assert puts == []


def test_model_version_needs_a_card() -> None:
    from torch import nn

    with pytest.raises(CbctQaError, match="card"):
        model_version(nn.Linear(2, 2))


def test_write_outlier_flags_is_idempotent(project, model, tmp_path) -> None:
    from qa_core.statistics import analyze_table

    version = model_version(model)
    with XnatGateway.connect(project.url, project.user, project.password, project=PROJECT) as gw:
        score_sessions(
            gw,
            gw.find_sessions_to_score(PROJECT, model_version=version),
            model,
            workdir=tmp_path,
            batch_size=4,
            top_k=1,
        )
        assessments = [a for a in gw.read_assessments(PROJECT) if a.record.status == "complete"]
        sessions = {s.label: s for s in gw.list_sessions(PROJECT)}
        # a synthetic cohort table in which SESS2's parotid AE is far off its trend
        rows = []
        ae = {"SESS0": [1.0, 1.1, 1.2, 1.3, 1.4], "SESS1": [2.0, 2.1, 2.2, 2.3, 2.4]}
        for label, series in ae.items():
            for k, cat in enumerate(CATEGORIES):
                rows.append(
                    {
                        "session": label,
                        "category": cat,
                        "ae": series[k],
                        "consensus": 2.0 + (label == "SESS1"),
                    }
                )
        extra = [(f"X{j}", 1.0 + j) for j in range(4)]
        for label, cons in extra:
            for cat in CATEGORIES:
                rows.append(
                    {
                        "session": label,
                        "category": cat,
                        "ae": cons * 1.5,
                        "consensus": min(5.0, cons),
                    }
                )
        for cat in CATEGORIES:
            rows.append(
                {
                    "session": "SESS2",
                    "category": cat,
                    "ae": 400.0 if cat == "parotid" else 2.0,
                    "consensus": 1.0,
                }
            )
        analysis = analyze_table(rows, n_resamples=200, seed=1)
        first = write_outlier_flags(gw, analysis, assessments, sessions)
        assert first >= 1
        stored = {a.session_label: a for a in gw.read_assessments(PROJECT)}
        flagged = stored["SESS2"].record.categories["parotid"]
        assert flagged.outlier is True
        assert flagged.outlier_reason
        # a second pass over the re-read assessments changes nothing
        again = [a for a in gw.read_assessments(PROJECT) if a.record.status == "complete"]
        assert write_outlier_flags(gw, analysis, again, sessions) == 0


def test_a_reason_with_its_own_semicolons_survives_the_round_trip() -> None:
    """Reasons are joined and split on '; ': a reason's own '; ' must not cut it in two."""
    from flows.scoring import _clause

    reason = "map falls outside the larynx (limit 50%; chance 12%)"
    joined = "; ".join([_clause(reason), "image check: motion"])
    parts = joined.split("; ")
    assert parts == ["map falls outside the larynx (limit 50%, chance 12%)", "image check: motion"]
