"""Gateway operations for reviewing results: what the QA dashboard reads and writes.

Built on :class:`~xnat_plugin.gateway.session.XnatGateway` (same retries, errors and
credential handling); each function takes an open gateway and uses the identity it was
opened with, so a write made through a radiologist's own gateway is recorded in XNAT under
that radiologist's account.

=============================  ===================================================================
function                       requests
=============================  ===================================================================
list_projects                  1: ``GET /data/projects`` (only what the user may see)
read_session_details           1: ``GET /data/experiments?xsiType=xnat:ctSessionData&project=P
                               &columns=…,date,…/scanner,…/scanner/manufacturer,…/scanner/model``
read_acknowledgements          1: ``GET /data/experiments?xsiType=cbctqa:qaAssessmentData&project=P
                               &columns=…,{category}_ack_by,_ack_date,_ack_comment``
acknowledge_alert              1 PUT by label with the three ``{category}_ack_*`` fields only
list_assessment_files          1: ``GET …/assessors/A/resources/R/files``
read_assessment_file           1: ``GET …/assessors/A/resources/R/files/NAME``
=============================  ===================================================================

Acknowledging an alert never changes the flag: ``{category}_outlier`` and
``{category}_outlier_reason`` stay as the monitoring wrote them; the acknowledgement is three
separate fields of ``cbctqa:qaAssessmentData`` (who, when in UTC, comment). Writing the
assessment again (new outlier flags, rescoring with the same model version) leaves them in
place, because the gateway's PUT by label only changes the fields it sends.

Scanner identity comes from the DICOM headers as XNAT archived them: ``scanner`` is the
StationName, ``scanner/manufacturer`` and ``scanner/model`` the Manufacturer and
ManufacturerModelName; ``date`` is the StudyDate (acquisition date). Patient name and ID are
never requested.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import quote

from qa_core.categories import CATEGORIES
from xnat_plugin.gateway.errors import XnatResponseFormatError, XnatValidationError
from xnat_plugin.gateway.records import (
    ASSESSMENT_XSI_TYPE,
    CT_SESSION_XSI_TYPE,
    NULL,
    SessionRef,
    StoredAssessment,
    parse_xnat_datetime,
)
from xnat_plugin.gateway.session import XnatGateway

__all__ = [
    "ACK_COMMENT_MAX",
    "AlertAcknowledgement",
    "ProjectRef",
    "SessionDetails",
    "ack_field_names",
    "acknowledge_alert",
    "list_assessment_files",
    "list_projects",
    "read_acknowledgements",
    "read_assessment_file",
    "read_session_details",
]

#: Longest acknowledgement comment (``xs:maxLength`` in cbctqa.xsd).
ACK_COMMENT_MAX: Final[int] = 1000
_RESOURCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def ack_field_names(category: str) -> tuple[str, str, str]:
    """Bare schema field names of one category's acknowledgement: by, date, comment.

    >>> ack_field_names("larynx")
    ('larynx_ack_by', 'larynx_ack_date', 'larynx_ack_comment')
    """
    if category not in CATEGORIES:
        raise XnatValidationError(
            f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}"
        )
    return (f"{category}_ack_by", f"{category}_ack_date", f"{category}_ack_comment")


@dataclass(frozen=True)
class ProjectRef:
    """One XNAT project the logged-in user may see.

    Attributes
    ----------
    project_id:
        Project ID.
    name:
        Its title (``""`` when XNAT gives none).
    """

    project_id: str
    name: str = ""


@dataclass(frozen=True)
class SessionDetails:
    """Acquisition facts of one CT session from its archived DICOM headers.

    Attributes
    ----------
    session_id, label, project, subject:
        Accession ID, label, project ID and subject label.
    acquisition_date:
        StudyDate as XNAT stored it (``date``), or ``None``.
    station:
        StationName (XNAT ``scanner``), ``""`` when absent.
    manufacturer, model:
        Manufacturer and ManufacturerModelName, ``""`` when absent.
    insert_date:
        When XNAT archived the session, or ``None``.
    """

    session_id: str
    label: str
    project: str
    subject: str = ""
    acquisition_date: _dt.date | None = None
    station: str = ""
    manufacturer: str = ""
    model: str = ""
    insert_date: _dt.datetime | None = None

    @property
    def scanner(self) -> str:
        """``"<station> (<manufacturer> <model>)"``, or whatever part is known, or ``"unknown"``."""
        make = " ".join(p for p in (self.manufacturer, self.model) if p)
        if self.station and make:
            return f"{self.station} ({make})"
        return self.station or make or "unknown"

    def ref(self) -> SessionRef:
        """The :class:`SessionRef` for other gateway calls."""
        return SessionRef(
            project=self.project,
            subject=self.subject,
            session_id=self.session_id,
            label=self.label,
            uri=f"/data/experiments/{self.session_id}",
            insert_date=self.insert_date,
        )


@dataclass(frozen=True)
class AlertAcknowledgement:
    """Someone's acknowledgement of one category's outlier flag on one assessment.

    Attributes
    ----------
    assessor_id, label:
        The assessment's accession ID and label.
    session_id, session_label:
        The assessed session.
    category:
        The flagged category.
    by:
        XNAT username of who acknowledged it.
    at:
        When (UTC, timezone-aware when XNAT kept the offset), or ``None`` if not recorded.
    comment:
        Their comment (may be ``""``).
    """

    assessor_id: str
    label: str
    session_id: str
    session_label: str
    category: str
    by: str
    at: _dt.datetime | None
    comment: str = ""


def _row(row: dict[str, str], name: str, xsi_type: str) -> str:
    """A listed column by its xpath, whichever key style the server used (lower-case keys)."""
    low = name.lower()
    for key in (f"{xsi_type.lower()}/{low}", low):
        if key in row:
            return row[key].strip()
    return ""


def list_projects(gw: XnatGateway) -> list[ProjectRef]:
    """The projects XNAT lets the gateway's user see, sorted by ID; one request."""
    rows = gw._listing(
        "/data/projects", what="projects", query={"columns": "ID,name,URI"}
    )
    out = [ProjectRef(project_id=r.get("id", ""), name=r.get("name", "")) for r in rows]
    return sorted((p for p in out if p.project_id), key=lambda p: p.project_id)


def read_session_details(gw: XnatGateway, project: str | None = None) -> list[SessionDetails]:
    """Acquisition date and scanner (station, manufacturer, model) of every CT session; ONE request.

    Sorted by acquisition date (unknown last), then label.
    """
    project = gw._project_or_default(project)
    xsi = CT_SESSION_XSI_TYPE
    columns = ["ID", "label", "project", "xsiType", "subject_label", "date", "insert_date",
               f"{xsi}/scanner", f"{xsi}/scanner/manufacturer", f"{xsi}/scanner/model", "URI"]  # fmt: skip
    rows = gw._listing(
        "/data/experiments",
        what=f"{xsi} sessions of project {project}",
        query={"xsiType": xsi, "project": project, "columns": ",".join(columns)},
    )
    out = []
    for row in rows:
        if row.get("xsitype") and row["xsitype"].lower() != xsi.lower():
            continue
        if row.get("project") and row["project"] != project:
            continue
        label, sid = row.get("label", ""), row.get("id", "")
        if not label or not sid:
            continue
        what = f"session {label} ({sid}) of project {project}"
        stamp = parse_xnat_datetime(row.get("date", ""), what=f"{what} date")
        out.append(
            SessionDetails(
                session_id=sid,
                label=label,
                project=project,
                subject=row.get("subject_label", ""),
                acquisition_date=None if stamp is None else stamp.date(),
                station=_row(row, "scanner", xsi),
                manufacturer=_row(row, "scanner/manufacturer", xsi),
                model=_row(row, "scanner/model", xsi),
                insert_date=parse_xnat_datetime(
                    row.get("insert_date", ""), what=f"{what} insert_date"
                ),
            )
        )
    return sorted(out, key=lambda s: (s.acquisition_date or _dt.date.max, s.label))


def read_acknowledgements(
    gw: XnatGateway, project: str | None = None
) -> list[AlertAcknowledgement]:
    """Every alert acknowledgement stored on the project's assessments; ONE request.

    Sorted by session label, assessor label, category order.
    """
    project = gw._project_or_default(project)
    fields = [f for c in CATEGORIES for f in ack_field_names(c)]
    columns = ["ID", "label", "xsiType", "project", "session_ID", "session_label",
               *(f"{ASSESSMENT_XSI_TYPE}/{f}" for f in fields)]  # fmt: skip
    rows = gw._listing(
        "/data/experiments",
        what=f"{ASSESSMENT_XSI_TYPE} acknowledgements of project {project}",
        query={"xsiType": ASSESSMENT_XSI_TYPE, "project": project, "columns": ",".join(columns)},
    )
    out = []
    for row in rows:
        if row.get("xsitype") and row["xsitype"].lower() != ASSESSMENT_XSI_TYPE.lower():
            continue
        if row.get("project") and row["project"] != project:
            continue
        for cat in CATEGORIES:
            by_f, date_f, comment_f = ack_field_names(cat)
            by = _row(row, by_f, ASSESSMENT_XSI_TYPE)
            if not by:
                continue
            what = f"assessment {row.get('label', '?')} {date_f}"
            out.append(
                AlertAcknowledgement(
                    assessor_id=row.get("id", ""),
                    label=row.get("label", ""),
                    session_id=row.get("session_id", ""),
                    session_label=row.get("session_label", ""),
                    category=cat,
                    by=by,
                    at=parse_xnat_datetime(_row(row, date_f, ASSESSMENT_XSI_TYPE), what=what),
                    comment=_row(row, comment_f, ASSESSMENT_XSI_TYPE),
                )
            )
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(out, key=lambda a: (a.session_label, a.label, order[a.category]))


def _session_of(assessment: StoredAssessment) -> SessionRef:
    return SessionRef(
        project=assessment.project,
        subject=assessment.subject,
        session_id=assessment.session_id,
        label=assessment.session_label,
        uri=f"/data/experiments/{assessment.session_id}",
        subject_id=assessment.subject_id,
    )


def acknowledge_alert(
    gw: XnatGateway,
    assessment: StoredAssessment,
    category: str,
    comment: str = "",
    *,
    when: _dt.datetime | None = None,
) -> AlertAcknowledgement:
    """Record that the gateway's user acknowledged ``category``'s outlier flag on ``assessment``.

    Writes only ``{category}_ack_by`` (the logged-in XNAT user), ``{category}_ack_date`` (UTC,
    ISO 8601) and ``{category}_ack_comment``; the flag and its reason stay as they are.
    Acknowledging again replaces the earlier acknowledgement of that category (latest wins,
    never a second record). One PUT by label.

    Raises
    ------
    XnatValidationError
        Unknown category, the category is not flagged on this assessment, or the comment is
        longer than :data:`ACK_COMMENT_MAX` characters (nothing is sent).
    XnatGatewayError
        XNAT refused the write (e.g. :class:`XnatPermissionError` for a read-only user).
    """
    names = ack_field_names(category)
    what = (
        f"acknowledgement of the {category} alert on assessment {assessment.label} "
        f"of session {assessment.session_label}"
    )
    res = assessment.record.categories.get(category)
    if res is None or res.outlier is not True:
        raise XnatValidationError(
            f"{what}: the {category} category is not flagged as an outlier on this assessment; "
            "only flagged categories can be acknowledged"
        )
    if len(comment) > ACK_COMMENT_MAX:
        raise XnatValidationError(
            f"{what}: the comment has {len(comment)} characters; the schema allows at most "
            f"{ACK_COMMENT_MAX}. Shorten it"
        )
    stamp = (when or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC).replace(microsecond=0)
    fields = {
        names[0]: gw.user,
        names[1]: stamp.strftime("%Y-%m-%dT%H:%M:%S"),
        names[2]: comment.strip() or NULL,
    }
    session = _session_of(assessment)
    with gw._label_lock(session.session_id, assessment.label):
        gw._put_fields(session, assessment.label, ASSESSMENT_XSI_TYPE, fields, what=what)
    return AlertAcknowledgement(
        assessor_id=assessment.assessor_id,
        label=assessment.label,
        session_id=assessment.session_id,
        session_label=assessment.session_label,
        category=category,
        by=gw.user,
        at=stamp,
        comment=comment.strip(),
    )


def _files_path(assessment: StoredAssessment, resource: str) -> str:
    if not resource or not set(resource) <= _RESOURCE_CHARS:
        raise XnatValidationError(
            f"resource label {resource!r} of assessment {assessment.label} must match [A-Za-z0-9_-]+"
        )
    return (f"/data/experiments/{quote(assessment.session_id, safe='')}/assessors/"
            f"{quote(assessment.assessor_id, safe='')}/resources/{quote(resource, safe='')}/files")  # fmt: skip


def list_assessment_files(
    gw: XnatGateway, assessment: StoredAssessment, resource: str
) -> list[str]:
    """Names of the files in one resource of an assessment (``OVERLAYS``, ``AE_SLICES``, ``MAPS``).

    One request. A missing resource raises :class:`XnatNotFoundError`.
    """
    path = _files_path(assessment, resource)
    rows = gw._listing(
        path, what=f"resource {resource} of assessment {assessment.label}", query={}
    )
    names = [r.get("name") or PurePosixPath(r.get("uri", "")).name for r in rows]
    return sorted(n for n in names if n)


def read_assessment_file(
    gw: XnatGateway,
    assessment: StoredAssessment,
    resource: str,
    name: str,
    *,
    max_bytes: int = 512 * 1024 * 1024,
) -> bytes:
    """The bytes of one file of an assessment's resource (e.g. ``MAPS/cams.npz``); one request.

    Raises
    ------
    XnatNotFoundError
        No such resource or file.
    XnatResponseFormatError
        The file is larger than ``max_bytes``.
    """
    if not name or "/" in name or name in {".", ".."}:
        raise XnatValidationError(
            f"file name {name!r} of assessment {assessment.label} must be a plain file name"
        )
    path = f"{_files_path(assessment, resource)}/{quote(name, safe='')}"
    what = f"file {resource}/{name} of assessment {assessment.label}"
    with tempfile.TemporaryDirectory(prefix="cbctqa-review-") as tmp:
        target = Path(tmp) / "file"
        gw._download(path, target, what=what, query={})
        size = target.stat().st_size
        if size > max_bytes:
            raise XnatResponseFormatError(
                f"{what}: {size} bytes is more than the {max_bytes} allowed", uri=path
            )
        return target.read_bytes()
