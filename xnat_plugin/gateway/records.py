"""Small frozen records exchanged through the gateway, and their XNAT field mapping.

The field names are the contract of ``xnat_plugin/schema/cbctqa.xsd`` (see
``helpers/XNAT_CONTRACT.md``): ``cbctqa:qaAssessmentData`` holds one automatic assessment
of one CBCT scan by one model version; ``cbctqa:ratingData`` one radiologist's Likert
ratings of one session. Values travel to XNAT as query-string fields (``req_format=qs``)
and come back as strings in listings; this module converts both ways.

The XNAT conventions (data types, ``NULL``, labels, timestamps) are
:mod:`xnat_plugin.gateway.conventions` and the assessment record
:mod:`xnat_plugin.gateway.assessment_record`; both are re-exported here, so every name
below imports from this module as before. This module holds the session and scan
references and the rating.

Missing values: XNAT stores an absent field as empty. Floats read back from an empty
field are ``NaN`` (and ``NaN`` is written as ``NULL``, which deletes the field), integers
and booleans become ``None``, strings ``""``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass

from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
from xnat_plugin.gateway.assessment_record import (
    AssessmentRecord,
    AssessmentStatus,
    CategoryAssessment,
    StoredAssessment,
)
from xnat_plugin.gateway.conventions import (
    ASSESSMENT_XSI_TYPE,
    CT_SESSION_XSI_TYPE,
    NULL,
    RATING_XSI_TYPE,
    assessment_label,
    parse_xnat_date,
    parse_xnat_datetime,
    rating_label,
    safe_label_part,
)
from xnat_plugin.gateway.errors import XnatResponseFormatError, XnatValidationError

__all__ = [
    "ASSESSMENT_XSI_TYPE",
    "CT_SESSION_XSI_TYPE",
    "NULL",
    "RATING_XSI_TYPE",
    "AssessmentRecord",
    "AssessmentStatus",
    "CategoryAssessment",
    "RatingRecord",
    "ScanRef",
    "SessionRef",
    "StoredAssessment",
    "assessment_label",
    "parse_xnat_datetime",
    "rating_label",
    "safe_label_part",
    "validate_scores",
]


@dataclass(frozen=True)
class SessionRef:
    """One XNAT image session, as listed by the gateway.

    Attributes
    ----------
    project:
        Project ID.
    subject:
        Subject label.
    session_id:
        Accession ID of the session (``XNAT_E00001``), unique site-wide.
    label:
        Session label, unique within the project.
    uri:
        REST path of the session (``/data/experiments/XNAT_E00001`` or the archive path).
    insert_date, last_modified:
        When XNAT archived / last changed the session (server local time), or ``None``
        when the server did not say.
    subject_id:
        Accession ID of the subject, or ``""`` when not listed.
    """

    project: str
    subject: str
    session_id: str
    label: str
    uri: str
    insert_date: _dt.datetime | None = None
    last_modified: _dt.datetime | None = None
    subject_id: str = ""

    def __post_init__(self) -> None:
        for name in ("project", "session_id", "label"):
            if not getattr(self, name):
                raise XnatValidationError(
                    f"SessionRef.{name} is empty; expected the XNAT {name.replace('_', ' ')}"
                )


@dataclass(frozen=True)
class ScanRef:
    """One scan of an image session.

    Attributes
    ----------
    session:
        The session holding the scan.
    scan_id:
        Scan ID within the session (often the DICOM SeriesNumber).
    xsi_type:
        ``xnat:ctScanData`` for CT/CBCT.
    frames:
        Number of frames (slices) XNAT counted, or ``None`` when unknown.
    series_uid:
        SeriesInstanceUID, or ``""``.
    type, series_description:
        Scan type and series description as XNAT shows them.
    modality:
        The scan's DICOM Modality (``CT``, ``RTSTRUCT``, ...), or ``""`` when not listed.
    """

    session: SessionRef
    scan_id: str
    xsi_type: str
    frames: int | None = None
    series_uid: str = ""
    type: str = ""
    series_description: str = ""
    modality: str = ""


def validate_scores(scores: Mapping[str, object], *, session_label: str) -> dict[str, int]:
    """Check a rating's scores: known categories, integers 1..5, at least one.

    Returns the scores in category order. Raises :class:`XnatValidationError` naming the
    session and the category.
    """
    if not scores:
        raise XnatValidationError(
            f"rating of session {session_label!r}: no scores given; expected at least one of {list(CATEGORIES)}"
        )
    for cat, value in scores.items():
        if cat not in CATEGORIES:
            raise XnatValidationError(
                f"rating of session {session_label!r}: unknown category {cat!r}; expected one of {list(CATEGORIES)}"
            )
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if not is_int and hasattr(value, "__index__") and not isinstance(value, bool):
            try:
                value = value.__index__()  # numpy integers
                is_int = True
            except TypeError:
                is_int = False
        if not is_int:
            raise XnatValidationError(
                f"rating of session {session_label!r}, category {cat!r}: {value!r} is not an integer; "
                f"expected a Likert score {LIKERT_MIN}..{LIKERT_MAX}"
            )
        assert isinstance(value, int)
        if not LIKERT_MIN <= value <= LIKERT_MAX:
            raise XnatValidationError(
                f"rating of session {session_label!r}, category {cat!r}: {value} is outside the Likert scale "
                f"{LIKERT_MIN}..{LIKERT_MAX} (5 = best)"
            )
    return {c: int(scores[c]) for c in CATEGORIES if c in scores}  # type: ignore[call-overload]


@dataclass(frozen=True)
class RatingRecord:
    """One radiologist's rating of one session, as stored in XNAT (``cbctqa:ratingData``).

    Attributes
    ----------
    assessor_id, label, uri:
        Accession ID, label and REST path of the rating assessor.
    project, session_id, session_label:
        The rated image session.
    rater:
        XNAT username of the radiologist.
    scores:
        Likert score (int, 1..5, 5 = best) per rated category, in category order; categories
        not rated are absent.
    comments:
        Free text, or ``""``.
    scan_id:
        The rated scan, or ``""`` when the rating is for the session.
    date:
        Date of the rating (XNAT's experiment ``date``), or ``None``.
    subject_id, subject:
        The session's subject, ``""`` when not listed.
    """

    assessor_id: str
    label: str
    uri: str
    project: str
    session_id: str
    session_label: str
    rater: str
    scores: Mapping[str, int]
    comments: str = ""
    scan_id: str = ""
    date: _dt.date | None = None
    subject_id: str = ""
    subject: str = ""

    @staticmethod
    def field_names() -> tuple[str, ...]:
        """Bare names of the ``cbctqa:ratingData`` fields."""
        return ("rater", "scan_id", *CATEGORIES, "comments")

    @classmethod
    def from_row(
        cls, ident: Mapping[str, str], fields: Mapping[str, str], *, what: str
    ) -> RatingRecord:
        """Build from identity columns (``ID``, ``label``, ...) and bare schema fields."""
        scores: dict[str, int] = {}
        for cat in CATEGORIES:
            raw = str(fields.get(cat, "") or "").strip()
            if not raw:
                continue
            try:
                value = int(float(raw))
            except ValueError as exc:
                raise XnatResponseFormatError(
                    f"{what}: field {cat}={raw!r} is not an integer Likert score"
                ) from exc
            if not LIKERT_MIN <= value <= LIKERT_MAX or float(raw) != value:
                raise XnatResponseFormatError(
                    f"{what}: field {cat}={raw!r} is outside the Likert scale 1..5"
                )
            scores[cat] = value
        return cls(
            assessor_id=ident.get("ID", ""),
            label=ident.get("label", ""),
            uri=ident.get("URI", ""),
            project=ident.get("project", ""),
            session_id=ident.get("session_ID", ""),
            session_label=ident.get("session_label", ""),
            rater=str(fields.get("rater", "") or "").strip(),
            scores=scores,
            comments=str(fields.get("comments", "") or ""),
            scan_id=str(fields.get("scan_id", "") or "").strip(),
            date=parse_xnat_date(ident.get("date", ""), what=f"{what} date"),
            subject_id=ident.get("subject_ID", ""),
            subject=ident.get("subject_label", ""),
        )
