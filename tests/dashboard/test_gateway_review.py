"""xnat_plugin.gateway.review against the local XNAT: the operations the dashboard needs.

(Kept beside the dashboard tests because they share the scored, rated ``qa_cohort``.)
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pytest

from xnat_plugin.gateway import (
    XnatGateway,
    XnatNotFoundError,
    XnatPermissionError,
    XnatValidationError,
    acknowledge_alert,
    list_assessment_files,
    list_projects,
    read_acknowledgements,
    read_assessment_file,
    read_session_details,
)

pytestmark = pytest.mark.slow


def _gw(cohort: Any, who: str) -> XnatGateway:
    user, password = getattr(cohort, who)
    return XnatGateway.connect(cohort.url, user, password, project=cohort.project, backoff=0.01, retries=1)


def test_session_details_carry_date_and_scanner_but_no_patient_fields(qa_cohort: Any) -> None:
    with _gw(qa_cohort, "viewer") as gw:
        details = read_session_details(gw)
        assert gw.request_counts.attempts == 1
    assert len(details) == 8
    first = details[0]
    assert first.acquisition_date == _dt.date(2026, 3, 1)
    assert (first.station, first.manufacturer, first.model) == ("CBCT_A", "Varian", "TrueBeam")
    assert first.scanner == "CBCT_A (Varian TrueBeam)"
    assert {d.station for d in details} == {"CBCT_A", "CBCT_B"}
    assert not any("patient" in f.lower() for f in type(first).__dataclass_fields__)


def test_projects_are_those_xnat_lets_the_user_see(qa_cohort: Any) -> None:
    with _gw(qa_cohort, "radiologist") as gw:
        ids = [p.project_id for p in list_projects(gw)]
    assert ids == sorted([qa_cohort.project, qa_cohort.empty_project])


def test_assessment_files_are_read_back(qa_cohort: Any) -> None:
    with _gw(qa_cohort, "viewer") as gw:
        a = next(x for x in gw.read_assessments() if x.record.status == "complete")
        assert "cams.npz" in list_assessment_files(gw, a, "MAPS")
        csv = read_assessment_file(gw, a, "AE_SLICES", "slice_ae.csv").decode()
        assert csv.startswith("slice,z_mm,")
        with pytest.raises(XnatNotFoundError):
            read_assessment_file(gw, a, "MAPS", "missing.npz")
        with pytest.raises(XnatValidationError):
            read_assessment_file(gw, a, "MAPS", "../x")


def test_acknowledgement_rules(qa_cohort: Any) -> None:
    with _gw(qa_cohort, "radiologist") as gw:
        assessments = gw.read_assessments()
        flagged = next(a for a in assessments for r in a.record.categories.values() if r.outlier)
        cat = next(c for c, r in flagged.record.categories.items() if r.outlier)
        calm = next((c for c, r in flagged.record.categories.items() if not r.outlier), None)
        if calm is not None:
            with pytest.raises(XnatValidationError, match="not flagged"):
                acknowledge_alert(gw, flagged, calm, "nothing to acknowledge")
        with pytest.raises(XnatValidationError, match="at most 1000"):
            acknowledge_alert(gw, flagged, cat, "x" * 1001)
        with pytest.raises(XnatValidationError, match="unknown category"):
            acknowledge_alert(gw, flagged, "teeth", "")
        when = _dt.datetime(2026, 5, 1, 12, 30, tzinfo=_dt.UTC)
        ack = acknowledge_alert(gw, flagged, cat, "first look", when=when)
        again = acknowledge_alert(gw, flagged, cat, "second look", when=when + _dt.timedelta(hours=1))
        assert ack.by == again.by == qa_cohort.radiologist[0]
        stored = [a for a in read_acknowledgements(gw) if a.assessor_id == flagged.assessor_id and a.category == cat]
        after = next(a for a in gw.read_assessments() if a.assessor_id == flagged.assessor_id)
    assert len(stored) == 1 and stored[0].comment == "second look"
    assert stored[0].at is not None and stored[0].at.replace(tzinfo=None) == _dt.datetime(2026, 5, 1, 13, 30)
    assert after.record == flagged.record  # flags, reasons and every result field unchanged


def test_a_read_only_account_cannot_acknowledge(qa_cohort: Any) -> None:
    with _gw(qa_cohort, "viewer") as gw:
        flagged = next(a for a in gw.read_assessments() for r in a.record.categories.values() if r.outlier)
        cat = next(c for c, r in flagged.record.categories.items() if r.outlier)
        with pytest.raises(XnatPermissionError):
            acknowledge_alert(gw, flagged, cat, "not allowed")
