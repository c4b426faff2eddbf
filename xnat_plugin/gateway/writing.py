"""Writing to XNAT: assessments, failures and ratings, idempotently by deterministic label.

:class:`GatewayWriting` PUTs an assessor by its label with query-string fields (split over
several PUTs when the query would be too long, the final status last), absorbs the
create race (a 409 from a concurrent create is sent again), and heals duplicate assessors a
server may create when writers race (every writer keeps the smallest accession ID). Writes
of one label from threads of one process take turns (striped locks). Resource uploads are
:mod:`xnat_plugin.gateway.resources`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import requests

from qa_core.logs import redact
from xnat_plugin.gateway.errors import (
    XnatConflictError,
    XnatNotFoundError,
    XnatResponseFormatError,
    XnatValidationError,
)
from xnat_plugin.gateway.records import (
    ASSESSMENT_XSI_TYPE,
    NULL,
    RATING_XSI_TYPE,
    AssessmentRecord,
    RatingRecord,
    SessionRef,
    assessment_label,
    rating_label,
    validate_scores,
)
from xnat_plugin.gateway.resources import GatewayResources, _check_resources
from xnat_plugin.gateway.transport import _LOCK_STRIPES, _OK_CREATED, _excerpt

__all__ = ["GatewayWriting"]

logger = logging.getLogger("xnat_plugin.gateway")

#: Longest query string sent in one assessor PUT (servlet containers limit the request
#: line to about 8 KiB); longer field sets are split over several PUTs by label.
_MAX_QUERY_CHARS = 4000
_ID_LIKE = re.compile(r"[A-Za-z0-9_.-]+")


def _id_sort_key(accession_id: str) -> tuple[int, str]:
    return (len(accession_id), accession_id)


class GatewayWriting(GatewayResources):
    """Assessment, failure and rating writes of :class:`~xnat_plugin.gateway.session.XnatGateway`."""

    @contextmanager
    def _label_lock(self, session_id: str, label: str) -> Iterator[None]:
        digest = hashlib.blake2b(f"{session_id}/{label}".encode(), digest_size=4).digest()
        with self._label_locks[int.from_bytes(digest, "big") % _LOCK_STRIPES]:
            yield

    def _put_fields(
        self,
        session: SessionRef,
        label: str,
        xsi_type: str,
        fields: Mapping[str, str],
        *,
        what: str,
    ) -> str:
        """PUT an assessor by label with query-string fields; return its accession ID.

        Fields go in as few PUTs as the query-length limit allows; ``status`` (if any) goes
        in the last one, and earlier ones carry ``status=running`` when the final status is
        ``complete`` so no reader sees a complete assessor with half its fields.
        """
        path = f"{self._assessors_path(session)}/{quote(label, safe='')}"
        base = {"xsiType": xsi_type, "req_format": "qs", f"{xsi_type}/label": label}
        items = [(k, v) for k, v in fields.items() if k != "status"]
        chunks: list[list[tuple[str, str]]] = [[]]
        size = 0
        for key, value in items:
            cost = len(quote(f"{xsi_type}/{key}")) + len(quote(value)) + 2
            if chunks[-1] and size + cost > _MAX_QUERY_CHARS:
                chunks.append([])
                size = 0
            chunks[-1].append((key, value))
            size += cost
        final_status = fields.get("status")
        accession = ""
        for index, chunk in enumerate(chunks):
            query = dict(base)
            query.update({f"{xsi_type}/{k}": v for k, v in chunk})
            if final_status is not None:
                last = index == len(chunks) - 1
                query[f"{xsi_type}/status"] = (
                    final_status if last or final_status != "complete" else "running"
                )
            resp = self._put_by_label(path, query, what=what)
            body = resp.text.strip()
            if body and _ID_LIKE.fullmatch(body) and body != label:
                accession = body
        if not accession:
            accession = self._assessor_id(path, what=what)
        return accession

    def _put_by_label(self, path: str, query: Mapping[str, str], *, what: str) -> requests.Response:
        """PUT an assessor by label, absorbing the create race.

        When two writers create the same new label at once, XNAT lets one create it and may
        answer the other 409 (label exists). PUT by label is an update once the assessor
        exists, so the loser simply sends its PUT again (at most twice); a 409 that persists
        is a real conflict (the label is taken elsewhere in the project) and is raised.
        """
        for conflict in range(3):
            try:
                return self._request("PUT", path, what=what, query=query, accepted=_OK_CREATED)
            except XnatConflictError:
                if conflict == 2:
                    raise
                logger.info(
                    "%s: PUT by label met a concurrent create (409); sending it again", what
                )
                self._sleep(self._policy.delay(0, self._rng))
        raise AssertionError("unreachable")  # pragma: no cover

    def _assessor_id(self, path: str, *, what: str) -> str:
        payload = self._get_json(path, what=what)
        try:
            items = [i for i in payload["items"] if not i.get("meta", {}).get("isHistory", False)]
            return str(items[0]["data_fields"]["ID"])
        except (KeyError, TypeError, IndexError) as exc:
            raise XnatResponseFormatError(
                f"GET {path} for {what}: no assessor ID in the answer", uri=path
            ) from exc

    def _reconcile(
        self, session: SessionRef, label: str, xsi_type: str, accession: str, *, what: str
    ) -> str:
        """Make sure exactly one assessor of ``xsi_type`` carries ``label`` in the session.

        A server that creates two assessors when two writers PUT the same new label at the
        same moment is healed here: every writer keeps the one with the smallest accession ID
        and deletes the others, so racing writers converge. One listing request (plus a
        DELETE per duplicate).
        """
        path = self._assessors_path(session)
        rows = self._listing(
            path,
            what=f"assessors of session {session.label}",
            query={"columns": "ID,label,xsiType,URI"},
        )
        same = sorted(
            (
                r["id"]
                for r in rows
                if r.get("label") == label
                and (not r.get("xsitype") or r["xsitype"].lower() == xsi_type.lower())
            ),
            key=_id_sort_key,
        )
        if not same:
            raise XnatResponseFormatError(
                f"{what}: assessor {label} ({accession}) was written but is not listed under session "
                f"{session.label}; check the XNAT server",
                uri=path,
            )
        keep = same[0]
        for extra in same[1:]:
            logger.warning(
                "%s: duplicate assessor %s with label %s found; deleting it, keeping %s",
                what,
                extra,
                label,
                keep,
            )
            try:
                self._request(
                    "DELETE",
                    f"{path}/{quote(extra, safe='')}",
                    what=f"duplicate assessor {extra} of {label}",
                )
            except XnatNotFoundError:
                pass  # another writer removed it first
        return keep

    def write_assessment(
        self,
        session: SessionRef,
        record: AssessmentRecord,
        *,
        resources: Mapping[str, Sequence[str | Path]] | None = None,
    ) -> str:
        """Create or update the ``cbctqa:qaAssessmentData`` of one scan by one model version.

        Idempotent: the label is :func:`~xnat_plugin.gateway.records.assessment_label`
        (session label, ``record.scan_id``, ``record.model_version``), written by PUT on the
        label, so writing again updates the same assessor (same accession ID) and never adds
        one. Absent values are deleted (``NULL``), so the stored fields equal ``record``.

        Order when ``resources`` are given: (1) every field with status ``running`` (or the
        record's status when it is queued/running); (2) each file uploaded with
        ``overwrite=true`` to ``…/assessors/{ID}/resources/{label}/files/{name}``, checked to be
        listed (a digest differing from the local MD5 is logged: a concurrent writer of the same
        assessment replaced it, last write wins), and files of that resource label not in this
        write deleted; (3) the record's status. A reader therefore never sees ``complete`` while
        a resource is missing; a failure in (2) leaves the assessor ``running``.

        Parameters
        ----------
        session:
            The assessed session.
        record:
            Fields to store.
        resources:
            Resource label (``[A-Za-z0-9_-]+``, e.g. ``OVERLAYS``, ``AE_SLICES``, ``MAPS``) to the
            files it must hold (overlay PNGs, slice-level AE CSV, ``.npz`` raw maps). File
            names must be unique within a label. Labels not named are left untouched.

        Returns
        -------
        str
            The assessor's accession ID.

        Raises
        ------
        XnatValidationError
            Bad resource label, missing file, clashing file names (nothing is sent).
        XnatGatewayError
            Any XNAT failure, naming the session and label.
        """
        label = assessment_label(session.label, record.scan_id, record.model_version)
        what = f"assessment {label} of session {session.label} ({session.session_id})"
        files = _check_resources(resources or {}, what=what)
        fields = record.to_xnat_fields()
        with self._label_lock(session.session_id, label):
            if files:
                first = dict(fields)
                first["status"] = (
                    record.status if record.status in ("queued", "running") else "running"
                )
                accession = self._put_fields(session, label, ASSESSMENT_XSI_TYPE, first, what=what)
                accession = self._reconcile(
                    session, label, ASSESSMENT_XSI_TYPE, accession, what=what
                )
                for res_label, paths in files.items():
                    self._upload_resource(session, accession, res_label, paths, what=what)
                if first["status"] != record.status:
                    self._put_fields(
                        session, label, ASSESSMENT_XSI_TYPE, {"status": record.status}, what=what
                    )
            else:
                accession = self._put_fields(session, label, ASSESSMENT_XSI_TYPE, fields, what=what)
                accession = self._reconcile(
                    session, label, ASSESSMENT_XSI_TYPE, accession, what=what
                )
        logger.info("wrote %s as %s (status %s)", what, accession, record.status)
        return accession

    def mark_failed(
        self, session: SessionRef, scan_id: str, model_version: str, reason: str
    ) -> str:
        """Record that scoring ``scan_id`` with ``model_version`` failed, and why.

        Writes (by the same deterministic label as :meth:`write_assessment`) ``status=failed``,
        ``failure_reason`` (cut to the schema's 2000 characters), the scan ID and model
        version; other fields of an existing assessor are left as they were. Returns the
        assessor's accession ID.
        """
        if not reason:
            raise XnatValidationError(
                f"mark_failed for session {session.label}: reason is empty; say which step failed and why"
            )
        text = redact(reason)
        if len(text) > 2000:
            text = text[:1997] + "..."
        label = assessment_label(session.label, scan_id, model_version)
        what = f"assessment {label} of session {session.label} ({session.session_id})"
        fields = {
            "failure_reason": text,
            "scan_id": scan_id,
            "model_version": model_version,
            "status": "failed",
        }
        with self._label_lock(session.session_id, label):
            accession = self._put_fields(session, label, ASSESSMENT_XSI_TYPE, fields, what=what)
            accession = self._reconcile(session, label, ASSESSMENT_XSI_TYPE, accession, what=what)
        logger.warning("marked %s failed: %s", what, _excerpt(text, 200))
        return accession

    def write_rating(
        self,
        session: SessionRef,
        rater: str,
        scores: Mapping[str, int],
        *,
        comments: str | None = None,
        scan_id: str | None = None,
        on_behalf_of: bool = False,
        date: _dt.date | None = None,
    ) -> str:
        """Create or replace ``rater``'s ``cbctqa:ratingData`` of ``session``.

        The label is ``{session}_rating_{rater}``: a second write by the same rater replaces
        the first (categories not given and absent comments are cleared). Scores are checked
        before anything is sent.

        Parameters
        ----------
        session:
            The rated session.
        rater:
            XNAT username of the radiologist who gave the scores.
        scores:
            Category name to Likert integer 1..5 (5 = best); at least one category.
        comments:
            Free text, optional.
        scan_id:
            The rated scan, optional.
        on_behalf_of:
            Must be ``True`` to record a rating for a ``rater`` other than the logged-in
            user (a service account entering a radiologist's scores); guards against
            attributing scores to the wrong person by mistake.
        date:
            Date of the rating; default today (UTC).

        Returns
        -------
        str
            The rating's accession ID.

        Raises
        ------
        XnatValidationError
            Unknown category, a score that is not an integer 1..5, no scores, empty rater,
            or a rater other than the user without ``on_behalf_of=True``. The message names
            the session and the category.
        """
        if not rater:
            raise XnatValidationError(
                f"rating of session {session.label!r}: rater is empty; expected an XNAT username"
            )
        clean = validate_scores(scores, session_label=session.label)
        if rater != self._user and not on_behalf_of:
            raise XnatValidationError(
                f"rating of session {session.label!r}: rater {rater!r} is not the logged-in user {self._user!r}; "
                "pass on_behalf_of=True to record another user's rating"
            )
        label = rating_label(session.label, rater)
        what = f"rating {label} of session {session.label} ({session.session_id})"
        day = date or _dt.datetime.now(_dt.UTC).date()
        fields: dict[str, str] = {"rater": rater, "scan_id": scan_id or NULL, "comments": comments or NULL,
                                  "date": day.isoformat()}  # fmt: skip
        for cat in RatingRecord.field_names():
            if cat in ("rater", "scan_id", "comments"):
                continue
            fields[cat] = str(clean[cat]) if cat in clean else NULL
        with self._label_lock(session.session_id, label):
            accession = self._put_fields(session, label, RATING_XSI_TYPE, fields, what=what)
            accession = self._reconcile(session, label, RATING_XSI_TYPE, accession, what=what)
        logger.info("wrote %s as %s", what, accession)
        return accession
