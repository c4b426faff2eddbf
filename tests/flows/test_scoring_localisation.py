"""Contours in XNAT: an RTSTRUCT imported with its CBCT becomes its own scan, is never scored
as the CBCT, scoring localises the maps in its organs (assessment fields), and cohort
monitoring flags the maps that fall outside the organ for this model."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flows.scoring import (
    IMAGE_CHECK_PREFIX,
    LOCALISATION_PREFIX,
    score_sessions,
    write_outlier_flags,
)
from qa_core.categories import CATEGORIES
from qa_core.dicom_series import load_series
from qa_core.dicom_writer import write_series
from qa_core.localisation import localise_rtstruct
from qa_core.model import load_model
from qa_core.synth.rtstruct_writer import write_rtstruct
from xnat_plugin.gateway import XnatGateway

PROJECT = "LOCALISE"


def _phantom() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    _z, y, x = np.mgrid[0:6, 0:64, 0:64]
    body = ((y - 32) ** 2 + (x - 32) ** 2) < 26**2
    rng = np.random.default_rng(5)
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, size=body.shape)
    parotid_l = ((y - 34) ** 2 / 36 + (x - 44) ** 2 / 16) <= 1
    parotid_r = ((y - 34) ** 2 / 36 + (x - 20) ** 2 / 16) <= 1
    mandible = ((y - 14) ** 2 + (x - 32) ** 2 < 12**2) & ((y - 14) ** 2 + (x - 32) ** 2 > 8**2)
    rois = {"External": body, "Parotid_L": parotid_l, "Parotid_R": parotid_r, "Bone_Mandible": mandible}
    return hu.astype(np.float32), rois


def _zip(files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f.name)
    return buf.getvalue()


@pytest.fixture(scope="module")
def project(xnat_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("localise")
    hu, rois = _phantom()
    files = write_series(hu, (2.0, 1.0, 1.0), tmp / "ct", uid_seed="localise", patient_id="PL")
    rs = write_rtstruct(files, rois, tmp / "ct" / "RS.dcm", uid_seed="localise")
    with XnatGateway.connect(xnat_server.url, xnat_server.user, xnat_server.password) as gw:
        gw.xnat.put(f"/data/projects/{PROJECT}", accepted_status=[200, 201])
        # the RTSTRUCT first in the archive: it must neither type the session nor be scored
        gw.xnat.post(
            "/data/services/import",
            data=_zip([rs, *files]),
            query={"import-handler": "DICOM-zip", "PROJECT_ID": PROJECT, "SUBJECT_ID": "SL",
                   "EXPT_LABEL": "WITH_RS"},
            headers={"Content-Type": "application/zip"},
        )
    return {"server": xnat_server, "ct": tmp / "ct", "rs": rs}


def test_rtstruct_is_a_scan_of_its_own_and_never_the_cbct(project) -> None:
    server = project["server"]
    with XnatGateway.connect(server.url, server.user, server.password, project=PROJECT) as gw:
        session = gw.get_session("WITH_RS", PROJECT)
        scans = gw.list_scans(session)
        kinds = sorted((s.modality, s.xsi_type, s.frames) for s in scans)
        assert kinds == [("CT", "xnat:ctScanData", 6), ("RTSTRUCT", "xnat:otherDicomScanData", 1)]
        chosen = gw.select_scan(session)
        assert chosen.modality == "CT" and chosen.frames == 6
        listing = gw.xnat.get_json(f"/data/experiments/{session.session_id}")
        assert listing["items"][0]["meta"]["xsi:type"] == "xnat:ctSessionData"


def test_scoring_localises_in_the_sessions_rtstruct(project, tmp_path) -> None:
    server = project["server"]
    model = load_model(device="cpu")
    with XnatGateway.connect(server.url, server.user, server.password, project=PROJECT) as gw:
        session = gw.get_session("WITH_RS", PROJECT)
        (outcome,) = score_sessions(gw, [session], model, workdir=tmp_path, batch_size=6, top_k=1)
        assert outcome.status == "complete", outcome.error
        assert outcome.timings["localise"] >= 0.0
        (stored,) = [a for a in gw.read_assessments(PROJECT) if a.session_label == "WITH_RS"]
    # the same numbers from the library on the local files
    volume = load_series(project["ct"])
    from qa_core.attribution import attribute_volume

    want, _ = localise_rtstruct(attribute_volume(model, volume), volume, project["rs"], aliases={})
    cats = stored.record.categories
    for cat in CATEGORIES:
        res = cats[cat]
        if cat in want.categories:
            loc = want.categories[cat]
            assert res.ae_in_region == pytest.approx(loc.ae_in_region, rel=1e-4, abs=1e-7)
            assert res.region_share == pytest.approx(loc.region_share, rel=1e-6)
            if not math.isnan(loc.pointing_hit_rate):
                assert res.pointing_hit_rate == pytest.approx(loc.pointing_hit_rate)
            # localisation alerts are a cohort question (write_outlier_flags), not a scoring one
            assert LOCALISATION_PREFIX not in res.outlier_reason
        else:  # no submandibular or larynx ROI in this structure set
            assert math.isnan(res.ae_in_region) and math.isnan(res.region_share)


def _record(parotid: float, larynx: float, reason: str = "") -> object:
    from xnat_plugin.gateway import AssessmentRecord, CategoryAssessment

    def cat(c: str) -> CategoryAssessment:
        share = {"parotid": parotid, "larynx": larynx}.get(c, math.nan)
        old = reason if c in ("parotid", "overall") else ""
        return CategoryAssessment(
            score=3.0, ae=2.0, ae_per_voxel=0.01, outlier=bool(old) or None, outlier_reason=old,
            ae_in_region=share,
            region_share=(0.02 if c == "parotid" else 0.005) if share == share else math.nan,
        )

    return AssessmentRecord(status="complete", scan_id="1", model_version="m1",
                            categories={c: cat(c) for c in CATEGORIES})


def test_write_outlier_flags_recomputes_the_cohort_localisation_flags(
    xnat_server, make_session, tmp_path
) -> None:
    """9 sessions with stored shares: parotid, where the model localises (median 70 %), flags
    only the one map mostly outside; larynx, where it never does (about 1 %, though above its
    0.5 % chance level), flags only the extreme one; an old scoring-time localisation reason is dropped, an image check kept;
    a second pass writes nothing."""
    from qa_core.statistics import analyze_table

    project = "LOCCOHORT"
    parotid = [0.70, 0.72, 0.68, 0.20, 0.75, 0.69, 0.71, 0.66, 0.73]
    larynx = [0.010, 0.012, 0.008, 0.011, 0.009, 0.010, 0.013, 0.011, 0.0]
    stale = f"{LOCALISATION_PREFIX} attribution map falls mostly outside the contoured parotid"
    image = f"{IMAGE_CHECK_PREFIX} the field of view is truncated"
    with XnatGateway.connect(xnat_server.url, xnat_server.user, xnat_server.password) as gw:
        gw.xnat.put(f"/data/projects/{project}", accepted_status=[200, 201])
        for i in range(9):
            make_session(gw, project, f"L{i}", tmp_path, seed=i, slices=2, size=32)
        sessions = {s.label: s for s in gw.list_sessions(project)}
        for i in range(9):
            reason = f"{stale}; {image}" if i == 1 else ""
            gw.write_assessment(sessions[f"L{i}"], _record(parotid[i], larynx[i], reason))  # type: ignore[arg-type]
        stored = [a for a in gw.read_assessments(project) if a.record.status == "complete"]
        assert len(stored) == 9
        rows = [{"session": f"L{i}", "category": c, "ae": 2.0 + 0.1 * i, "consensus": 1.0 + i % 5}
                for i in range(9) for c in CATEGORIES]
        analysis = analyze_table(rows, n_resamples=50, seed=1)
        assert write_outlier_flags(gw, analysis, stored, sessions) >= 3
        after = {a.session_label: a.record.categories for a in gw.read_assessments(project)}
        loc = {(s, c): [r for r in cats[c].outlier_reason.split("; ") if r.startswith(LOCALISATION_PREFIX)]
               for s, cats in after.items() for c in CATEGORIES}
        assert sorted(k for k, v in loc.items() if v) == [("L3", "parotid"), ("L8", "larynx")]
        (par,) = loc[("L3", "parotid")]
        assert "20% of the map's energy inside, where this model usually puts 70%" in par
        (lar,) = loc[("L8", "larynx")]
        assert "lies even further from the contoured larynx than usual for this model" in lar
        assert after["L3"]["parotid"].outlier is True and after["L8"]["larynx"].outlier is True
        # the stale scoring-time localisation reason is gone, the image check kept
        assert stale not in after["L1"]["parotid"].outlier_reason
        assert image in after["L1"]["parotid"].outlier_reason.split("; ")
        again = [a for a in gw.read_assessments(project) if a.record.status == "complete"]
        assert write_outlier_flags(gw, analysis, again, sessions) == 0
