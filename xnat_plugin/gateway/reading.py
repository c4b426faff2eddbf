"""Reading from XNAT: image sessions, what to score, a session's scans, bulk reads.

:class:`GatewayReading` lists a project's sessions and plans scoring (two listings whatever
the project size), reads a session's scans from its document, and reads every assessment
or rating of a project in ONE listing each. Columns are read by XNAT's own keys only
(shortcut names, otherwise the requested xpath in lower case), so the gateway does not
depend on anything only the local server answers. Scan choice and downloads are
:mod:`xnat_plugin.gateway.downloads`.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from xnat_plugin.gateway.attempts import (
    FailureTag,
    ScoringCandidate,
    parse_failure_reason,
    scans_fingerprint,
)
from xnat_plugin.gateway.errors import (
    XnatNotFoundError,
    XnatResponseFormatError,
    XnatValidationError,
)
from xnat_plugin.gateway.records import (
    ASSESSMENT_XSI_TYPE,
    CT_SESSION_XSI_TYPE,
    RATING_XSI_TYPE,
    AssessmentRecord,
    RatingRecord,
    ScanRef,
    SessionRef,
    StoredAssessment,
    parse_xnat_datetime,
)
from xnat_plugin.gateway.transport import GatewayTransport

__all__ = ["GatewayReading"]

logger = logging.getLogger("xnat_plugin.gateway")

_MODALITY_XSI = {"CT": CT_SESSION_XSI_TYPE}
_SESSION_COLUMNS = ("ID", "label", "project", "xsiType", "subject_ID", "subject_label", "URI", "insert_date",
                    "last_modified")  # fmt: skip
_ASSESSOR_COLUMNS = ("ID", "label", "project", "xsiType", "URI", "session_ID", "session_label", "subject_ID",
                     "subject_label", "date", "insert_date", "last_modified")  # fmt: skip


class GatewayReading(GatewayTransport):
    """Discovery, scan listing and bulk reads of :class:`~xnat_plugin.gateway.session.XnatGateway`."""

    # ------------------------------------------------------------------ discovery

    def _session_rows(
        self, project: str, xsi_type: str, extra: Mapping[str, str] | None = None
    ) -> list[SessionRef]:
        query = {"xsiType": xsi_type, "project": project, "columns": ",".join(_SESSION_COLUMNS)}
        query.update(extra or {})
        rows = self._listing(
            "/data/experiments", what=f"{xsi_type} sessions of project {project}", query=query
        )
        refs = []
        for row in rows:
            if row.get("xsitype") and row["xsitype"].lower() != xsi_type.lower():
                continue  # a server that ignores the xsiType filter
            if row.get("project") and row["project"] != project:
                continue
            what = f"session {row.get('label', '?')} ({row.get('id', '?')}) of project {project}"
            refs.append(
                SessionRef(
                    project=project,
                    subject=row.get("subject_label", ""),
                    subject_id=row.get("subject_id", ""),
                    session_id=row.get("id", ""),
                    label=row.get("label", ""),
                    uri=row.get("uri") or f"/data/experiments/{row.get('id', '')}",
                    insert_date=parse_xnat_datetime(
                        row.get("insert_date", ""), what=f"{what} insert_date"
                    ),
                    last_modified=parse_xnat_datetime(
                        row.get("last_modified", ""), what=f"{what} last_modified"
                    ),
                )
            )
        return refs

    def list_sessions(
        self, project: str | None = None, *, modality: str = "CT"
    ) -> list[SessionRef]:
        """All image sessions of ``modality`` in the project, oldest first; one request."""
        project = self._project_or_default(project)
        refs = self._session_rows(project, _modality_xsi(modality))
        return sorted(refs, key=_session_order)

    def get_session(
        self, label: str, project: str | None = None, *, modality: str = "CT"
    ) -> SessionRef:
        """The session with this label (or accession ID) in the project; one filtered listing
        (two for a label, a third, unfiltered, only when the server's filters found nothing).

        Raises
        ------
        XnatNotFoundError
            No such session in the project.
        """
        project = self._project_or_default(project)
        xsi = _modality_xsi(modality)
        # Filtered listings first (XNAT filters a listing on any of its columns; a server that
        # ignores the filter answers the whole listing, which the match below still handles):
        # discovery passes accession IDs, people pass labels; the whole listing is the last try.
        tries: list[Mapping[str, str] | None] = [None]
        if label and not any(ch in label for ch in "*?[],"):
            tries = [{"ID": label}, {"label": label}, None]
        for extra in tries:
            for ref in self._session_rows(project, xsi, extra):
                if label in (ref.label, ref.session_id):
                    return ref
        raise XnatNotFoundError(
            f"no {_modality_xsi(modality)} session with label or ID {label!r} in project {project}; "
            "check the label and the project",
            status=None,
            uri="/data/experiments",
        )

    def find_sessions_to_score(
        self,
        project: str | None = None,
        *,
        model_version: str,
        modality: str = "CT",
        max_attempts: int = 3,
    ) -> list[SessionRef]:
        """Sessions to (re)score by ``model_version``, oldest first (see :meth:`plan_scoring`).

        Two requests whatever the project size (plus one per session whose last failure was
        final, to see whether its scans changed): the project's CT sessions and the project's
        ``cbctqa:qaAssessmentData`` (status, model version, session, failure reason), joined
        here. One complete assessment of any of its scans by this version counts as done; a
        queued or running one is returned again (scoring is idempotent); a failed one is
        returned while transient failures have used fewer than ``max_attempts`` attempts, and
        after bad data or the last attempt only once its scans change.

        Parameters
        ----------
        project:
            Project ID (default: the gateway's project).
        model_version:
            The current model version.
        modality:
            ``"CT"`` (CBCT is archived as ``xnat:ctSessionData``) or an explicit xsi:type.
        max_attempts:
            Attempts allowed for transient trouble (``CBCTQA_MAX_ATTEMPTS``).
        """
        plan = self.plan_scoring(
            project, model_version=model_version, modality=modality, max_attempts=max_attempts
        )
        return [c.session for c in plan]

    def plan_scoring(
        self,
        project: str | None = None,
        *,
        model_version: str,
        modality: str = "CT",
        max_attempts: int = 3,
    ) -> list[ScoringCandidate]:
        """What :meth:`find_sessions_to_score` returns, with each session's next attempt number.

        A failed assessment's attempts are read from the tag at the start of its
        ``failure_reason`` (:mod:`xnat_plugin.gateway.attempts`).
        """
        if not model_version:
            raise XnatValidationError(
                "find_sessions_to_score: model_version is empty; expected the model version"
            )
        if max_attempts < 1:
            raise XnatValidationError(
                f"find_sessions_to_score: max_attempts is {max_attempts}; expected >= 1"
            )
        project = self._project_or_default(project)
        sessions = self._session_rows(project, _modality_xsi(modality))
        prefix = ASSESSMENT_XSI_TYPE.lower()
        columns = ["ID", "label", "xsiType", "session_ID", f"{ASSESSMENT_XSI_TYPE}/status",
                   f"{ASSESSMENT_XSI_TYPE}/model_version",
                   f"{ASSESSMENT_XSI_TYPE}/failure_reason"]  # fmt: skip
        rows = self._listing(
            "/data/experiments",
            what=f"{ASSESSMENT_XSI_TYPE} of project {project}",
            query={
                "xsiType": ASSESSMENT_XSI_TYPE,
                "project": project,
                "columns": ",".join(columns),
            },
        )
        done: set[str] = set()
        in_progress: dict[str, str] = {}
        failures: dict[str, FailureTag] = {}
        for row in rows:
            if row.get("xsitype") and row["xsitype"].lower() != prefix:
                continue
            # XNAT keys a requested xpath that is not a shortcut as the xpath in lower case
            status = row.get(f"{prefix}/status", "")
            version = row.get(f"{prefix}/model_version", "")
            session_id = row.get("session_id", "")
            if version != model_version:
                continue
            if status == "complete":
                done.add(session_id)
            elif status == "failed":
                tag = parse_failure_reason(
                    row.get(f"{prefix}/failure_reason", row.get("failure_reason", ""))
                )
                old = failures.get(session_id)
                if old is None or (tag.final, tag.attempt) > (old.final, old.attempt):
                    failures[session_id] = tag
            else:
                in_progress[session_id] = status
        plan: list[ScoringCandidate] = []
        for ref in sorted(sessions, key=_session_order):
            sid = ref.session_id
            if sid in done:
                continue
            last = failures.get(sid)
            if last is None:
                plan.append(ScoringCandidate(ref, 1, in_progress.get(sid, "")))
            elif not last.final and last.attempt < max_attempts:
                plan.append(ScoringCandidate(ref, last.attempt + 1, "failed"))
            elif last.scans:
                # final failure: retried only when the session's scans changed since
                current = scans_fingerprint(self.list_scans(ref))
                if current != last.scans:
                    plan.append(ScoringCandidate(ref, 1, "failed", scans=current))
        logger.info(
            "project %s: %d of %d %s sessions need scoring by model %s",
            project,
            len(plan),
            len(sessions),
            modality,
            model_version,
        )
        return plan

    # ------------------------------------------------------------------ scans

    def list_scans(self, session: SessionRef) -> list[ScanRef]:
        """The session's scans (from the session document); one request."""
        what = f"session {session.label} ({session.session_id})"
        path = f"/data/experiments/{quote(session.session_id, safe='')}"
        payload = self._get_json(path, what=what)
        try:
            items = [i for i in payload["items"] if not i.get("meta", {}).get("isHistory", False)]
            children = items[0].get("children", [])
        except (KeyError, TypeError, IndexError) as exc:
            raise XnatResponseFormatError(
                f"GET {path} for {what}: expected an XNAT item document {{'items': [...]}}",
                uri=path,
            ) from exc
        scans: list[ScanRef] = []
        for child in children:
            if child.get("field") != "scans/scan":
                continue
            for item in child.get("items", []):
                fields = item.get("data_fields", {})
                xsi = str(item.get("meta", {}).get("xsi:type", ""))
                frames_raw = str(fields.get("frames", "")).strip()
                try:
                    frames = int(float(frames_raw)) if frames_raw else None
                except ValueError as exc:
                    raise XnatResponseFormatError(
                        f"{what}: scan {fields.get('ID')!r} has frames={frames_raw!r}, not a number",
                        uri=path,
                    ) from exc
                scans.append(
                    ScanRef(
                        session=session,
                        scan_id=str(fields.get("ID", "")),
                        xsi_type=xsi,
                        frames=frames,
                        series_uid=str(fields.get("UID", "")),
                        type=str(fields.get("type", "")),
                        series_description=str(fields.get("series_description", "")),
                        modality=str(fields.get("modality", "")),
                    )
                )
        return scans

    # ------------------------------------------------------------------ bulk reads

    def _assessor_listing(
        self, project: str, xsi_type: str, field_names: Sequence[str], session_id: str | None = None
    ) -> list[tuple[dict[str, str], dict[str, str]]]:
        columns = [*_ASSESSOR_COLUMNS, *(f"{xsi_type}/{f}" for f in field_names)]
        query = {"xsiType": xsi_type, "project": project, "columns": ",".join(columns)}
        if session_id:
            query["session_ID"] = session_id
        rows = self._listing(
            "/data/experiments", what=f"{xsi_type} of project {project}", query=query
        )
        prefix = xsi_type.lower() + "/"
        out = []
        for row in rows:
            if row.get("xsitype") and row["xsitype"].lower() != xsi_type.lower():
                continue
            if row.get("project") and row["project"] != project:
                continue
            if session_id and row.get("session_id", session_id) != session_id:
                continue  # a server that ignores the session_ID filter
            ident = {c: row.get(c.lower(), "") for c in _ASSESSOR_COLUMNS}
            fields = {f: row.get(prefix + f.lower(), "") for f in field_names}  # XNAT's keys only
            out.append((ident, fields))
        return out

    def read_assessments(
        self, project: str | None = None, *, session_id: str | None = None
    ) -> list[StoredAssessment]:
        """Every ``cbctqa:qaAssessmentData`` of the project with its session; ONE request.

        ``session_id``: only that session's (accession ID; the listing is filtered by XNAT).
        Sorted by session label then assessor label.
        """
        project = self._project_or_default(project)
        out = []
        for ident, fields in self._assessor_listing(
            project, ASSESSMENT_XSI_TYPE, AssessmentRecord.field_names(), session_id
        ):
            what = (
                f"assessment {ident['label']} ({ident['ID']}) of session {ident['session_label']}"
            )
            out.append(
                StoredAssessment(
                    assessor_id=ident["ID"],
                    label=ident["label"],
                    uri=ident["URI"] or f"/data/experiments/{ident['ID']}",
                    project=project,
                    session_id=ident["session_ID"],
                    session_label=ident["session_label"],
                    subject_id=ident["subject_ID"],
                    subject=ident["subject_label"],
                    insert_date=parse_xnat_datetime(
                        ident["insert_date"], what=f"{what} insert_date"
                    ),
                    last_modified=parse_xnat_datetime(
                        ident["last_modified"], what=f"{what} last_modified"
                    ),
                    record=AssessmentRecord.from_xnat_fields(fields, what=what),
                )
            )
        return sorted(out, key=lambda a: (a.session_label, a.label))

    def read_ratings(self, project: str | None = None) -> list[RatingRecord]:
        """Every ``cbctqa:ratingData`` of the project; ONE request. Sorted by session, rater."""
        project = self._project_or_default(project)
        out = []
        for ident, fields in self._assessor_listing(
            project, RATING_XSI_TYPE, RatingRecord.field_names()
        ):
            ident["project"] = ident["project"] or project
            what = f"rating {ident['label']} ({ident['ID']}) of session {ident['session_label']}"
            out.append(RatingRecord.from_row(ident, fields, what=what))
        return sorted(out, key=lambda r: (r.session_label, r.rater, r.label))


# ---------------------------------------------------------------------- helpers


def _modality_xsi(modality: str) -> str:
    if ":" in modality:
        return modality
    try:
        return _MODALITY_XSI[modality.upper()]
    except KeyError:
        raise XnatValidationError(
            f"modality {modality!r} is not supported; expected 'CT' (CBCT sessions are xnat:ctSessionData) "
            "or an explicit xsi:type such as 'xnat:ctSessionData'"
        ) from None


def _session_order(ref: SessionRef) -> tuple[_dt.datetime, str]:
    return (ref.insert_date or _dt.datetime.min, ref.label)
