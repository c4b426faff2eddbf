"""Records of xnat_plugin.gateway: labels, XNAT field round trips, validation (no server)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qa_core.categories import CATEGORIES
from qa_core.errors import CbctQaError
from xnat_plugin.gateway import (
    AssessmentRecord,
    CategoryAssessment,
    RatingRecord,
    SessionRef,
    XnatGatewayError,
    XnatResponseFormatError,
    XnatValidationError,
    assessment_label,
    rating_label,
    validate_scores,
)
from xnat_plugin.gateway.records import parse_xnat_datetime


def _complete(**overrides: object) -> AssessmentRecord:
    cats = {
        c: CategoryAssessment(score=1.5 + i, ae=10.0 * (i + 1), ae_per_voxel=0.25 * (i + 1),
                              outlier=(i == 2), outlier_reason="robust z 4.1" if i == 2 else "")
        for i, c in enumerate(CATEGORIES)
    }  # fmt: skip
    kwargs: dict[str, object] = dict(
        status="complete", scan_id="3", model_version="1.2.0", series_uid="1.2.3.4", slices=40,
        spacing=(2.5, 0.5, 0.5), model_name="cbctqa-resnet", model_sha256="a" * 64, cam_method="gradcam",
        target_layer="layer4", package_version="0.1.0", duration_s=12.5, categories=cats,
    )  # fmt: skip
    kwargs.update(overrides)
    return AssessmentRecord(**kwargs)  # type: ignore[arg-type]


def test_labels_follow_the_contract() -> None:
    # contract: {session_label}_cbctqa_{scan_id}_{model_version}, [^A-Za-z0-9_-] -> "_"
    assert assessment_label("CBCT 01", "3", "1.2.0") == "CBCT_01_cbctqa_3_1_2_0"
    assert assessment_label("P-7_s", "12", "v2") == "P-7_s_cbctqa_12_v2"
    assert rating_label("CBCT 01", "dr.smith") == "CBCT_01_rating_dr_smith"
    with pytest.raises(XnatValidationError, match="scan_id is empty"):
        assessment_label("S", "", "1")
    with pytest.raises(XnatValidationError, match="rater is empty"):
        rating_label("S", "")


def test_errors_derive_from_the_project_tree() -> None:
    assert issubclass(XnatGatewayError, CbctQaError)
    assert issubclass(XnatValidationError, ValueError)


def test_assessment_round_trips_through_xnat_strings() -> None:
    rec = _complete()
    fields = rec.to_xnat_fields()
    assert set(fields) == set(AssessmentRecord.field_names())
    assert fields["status"] == "complete"
    assert fields["larynx_outlier"] == "true" and fields["parotid_outlier"] == "false"
    assert fields["spacing_z"] == "2.5"
    assert fields["failure_reason"] == "NULL"  # NULL deletes the field on XNAT
    listed = {k: ("" if v == "NULL" else v) for k, v in fields.items()}  # as XNAT lists it
    assert AssessmentRecord.from_xnat_fields(listed, what="t") == rec


def test_nan_and_absent_values_are_deleted_and_read_back_as_nan() -> None:
    cats = {
        c: CategoryAssessment(score=3.0, ae=math.nan, ae_per_voxel=math.nan) for c in CATEGORIES
    }
    rec = AssessmentRecord(status="complete", scan_id="1", model_version="v", categories=cats)
    fields = rec.to_xnat_fields()
    assert (
        fields["parotid_ae"] == "NULL"
        and fields["slices"] == "NULL"
        and fields["parotid_outlier"] == "NULL"
    )
    # XNAT lists a deleted field as empty text
    listed = {k: ("" if v == "NULL" else v) for k, v in fields.items()}
    back = AssessmentRecord.from_xnat_fields(listed, what="t")
    assert math.isnan(back.categories["parotid"].ae)
    assert back.categories["parotid"].outlier is None
    assert back.slices is None and back.spacing is None and back.duration_s is None


def test_assessment_validation_names_the_field() -> None:
    with pytest.raises(XnatValidationError, match=r"categories .*'mandible'.* missing"):
        _complete(
            categories={c: CategoryAssessment(3.0, 1.0, 0.1) for c in CATEGORIES if c != "mandible"}
        )
    with pytest.raises(XnatValidationError, match="status is 'done'"):
        _complete(status="done")
    with pytest.raises(XnatValidationError, match="failure_reason is empty"):
        AssessmentRecord(status="failed", scan_id="1", model_version="v")
    with pytest.raises(XnatValidationError, match="model_sha256"):
        _complete(model_sha256="xyz")
    with pytest.raises(XnatValidationError, match="spacing"):
        _complete(spacing=(0.0, 1.0, 1.0))
    with pytest.raises(XnatValidationError, match="unknown categories"):
        AssessmentRecord(
            status="running",
            scan_id="1",
            model_version="v",
            categories={"brain": CategoryAssessment(1.0, 1.0, 1.0)},
        )
    with pytest.raises(XnatValidationError, match="infinite"):
        CategoryAssessment(score=math.inf, ae=1.0, ae_per_voxel=1.0)
    with pytest.raises(XnatValidationError, match="at most 1000"):
        CategoryAssessment(score=1.0, ae=1.0, ae_per_voxel=1.0, outlier_reason="x" * 1001)


def test_stored_garbage_is_a_format_error_naming_the_assessor() -> None:
    fields = _complete().to_xnat_fields()
    fields["parotid_score"] = "high"
    with pytest.raises(XnatResponseFormatError, match="A_1: field parotid_score='high'"):
        AssessmentRecord.from_xnat_fields(fields, what="A_1")
    fields = _complete().to_xnat_fields()
    fields["status"] = ""
    with pytest.raises(XnatResponseFormatError, match="A_2: stored assessment is inconsistent"):
        AssessmentRecord.from_xnat_fields(fields, what="A_2")


def test_validate_scores_accepts_numpy_ints_and_orders_categories() -> None:
    out = validate_scores({"overall": np.int64(4), "parotid": 2}, session_label="S1")
    assert out == {"parotid": 2, "overall": 4}
    assert list(out) == ["parotid", "overall"]


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ({"parotid": 6}, "session 'S1', category 'parotid': 6 is outside"),
        ({"larynx": 0}, "category 'larynx': 0 is outside"),
        ({"mandible": 3.5}, "category 'mandible': 3.5 is not an integer"),
        ({"overall": True}, "category 'overall': True is not an integer"),
        ({"overall": "4"}, "category 'overall': '4' is not an integer"),
        ({"eyes": 3}, "unknown category 'eyes'"),
        ({}, "no scores given"),
    ],
)
def test_validate_scores_rejects_bad_values(scores: dict[str, object], match: str) -> None:
    with pytest.raises(XnatValidationError, match=match):
        validate_scores(scores, session_label="S1")


def test_rating_record_from_row() -> None:
    ident = {"ID": "X_E9", "label": "S1_rating_bob", "URI": "/data/experiments/X_E9", "project": "P",
             "session_ID": "X_E1", "session_label": "S1", "date": "2026-11-27"}  # fmt: skip
    rec = RatingRecord.from_row(
        ident, {"rater": "bob", "parotid": "4", "overall": "5", "larynx": ""}, what="r"
    )
    assert rec.scores == {"parotid": 4, "overall": 5}
    assert rec.date is not None and rec.date.isoformat() == "2026-11-27"
    with pytest.raises(XnatResponseFormatError, match="outside the Likert"):
        RatingRecord.from_row(ident, {"rater": "bob", "parotid": "9"}, what="r")


def test_timestamps_and_session_ref() -> None:
    stamp = parse_xnat_datetime("2026-11-27 17:05:43.123", what="t")
    assert stamp is not None and (stamp.hour, stamp.microsecond) == (17, 123000)
    assert parse_xnat_datetime("", what="t") is None
    with pytest.raises(XnatResponseFormatError, match="insert_date of S1: cannot parse"):
        parse_xnat_datetime("yesterday", what="insert_date of S1")
    with pytest.raises(XnatValidationError, match="session_id is empty"):
        SessionRef(project="P", subject="s", session_id="", label="L", uri="/x")
