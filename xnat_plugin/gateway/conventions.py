"""XNAT conventions the gateway's records follow: data types, ``NULL``, labels, timestamps.

The xsi:types of ``xnat_plugin/schema/cbctqa.xsd`` and of the sessions scored, the value that
deletes a field on a query-string write, the deterministic assessor labels (so that writing
the same assessment or rating twice addresses the same assessor), and XNAT's timestamp
formats. Re-exported by :mod:`xnat_plugin.gateway.records`.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Final

from xnat_plugin.gateway.errors import XnatResponseFormatError, XnatValidationError

__all__ = [
    "ASSESSMENT_XSI_TYPE",
    "CT_SESSION_XSI_TYPE",
    "NULL",
    "RATING_XSI_TYPE",
    "assessment_label",
    "parse_xnat_date",
    "parse_xnat_datetime",
    "rating_label",
    "safe_label_part",
]

#: xsi:type of the automatic assessment.
ASSESSMENT_XSI_TYPE: Final[str] = "cbctqa:qaAssessmentData"
#: xsi:type of a radiologist's rating.
RATING_XSI_TYPE: Final[str] = "cbctqa:ratingData"
#: xsi:type of the CBCT image sessions scored (XNAT files CBCT under CT).
CT_SESSION_XSI_TYPE: Final[str] = "xnat:ctSessionData"

#: Value that makes XNAT delete a field on a query-string write.
NULL: Final[str] = "NULL"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_label_part(text: str) -> str:
    """Replace every character outside ``[A-Za-z0-9_-]`` by ``_`` (XNAT label rule)."""
    return _UNSAFE.sub("_", text)


def assessment_label(session_label: str, scan_id: str, model_version: str) -> str:
    """Deterministic label of the assessment of one scan by one model version.

    ``{session_label}_cbctqa_{scan_id}_{model_version}`` with characters outside
    ``[A-Za-z0-9_-]`` replaced by ``_`` (the XNAT contract). Writing the same assessment
    twice therefore addresses the same assessor.

    >>> assessment_label("CBCT 01", "3", "1.2.0")
    'CBCT_01_cbctqa_3_1_2_0'
    """
    for name, value in (
        ("session_label", session_label),
        ("scan_id", scan_id),
        ("model_version", model_version),
    ):
        if not value:
            raise XnatValidationError(
                f"assessment_label: {name} is empty; expected a non-empty string"
            )
    return safe_label_part(f"{session_label}_cbctqa_{scan_id}_{model_version}")


def rating_label(session_label: str, rater: str) -> str:
    """Deterministic label of one rater's rating of one session.

    >>> rating_label("CBCT 01", "dr.smith")
    'CBCT_01_rating_dr_smith'
    """
    for name, value in (("session_label", session_label), ("rater", rater)):
        if not value:
            raise XnatValidationError(f"rating_label: {name} is empty; expected a non-empty string")
    return safe_label_part(f"{session_label}_rating_{rater}")


def parse_xnat_datetime(text: str, *, what: str) -> _dt.datetime | None:
    """Parse an XNAT timestamp (``2026-11-27 17:05:43.123`` or ISO 8601); ``""`` gives ``None``.

    Raises
    ------
    XnatResponseFormatError
        When the text is neither empty nor a timestamp; ``what`` names the field.
    """
    text = text.strip()
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    for fmt in ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y"):
        try:
            return _dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise XnatResponseFormatError(
        f"{what}: cannot parse XNAT timestamp {text!r}; expected 'YYYY-MM-DD HH:MM:SS[.fff]'"
    )


def parse_xnat_date(text: str, *, what: str) -> _dt.date | None:
    """The date of an XNAT timestamp or date (see :func:`parse_xnat_datetime`); ``""`` gives ``None``."""
    stamp = parse_xnat_datetime(text, what=what)
    return None if stamp is None else stamp.date()
