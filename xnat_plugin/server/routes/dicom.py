"""DICOM import: ``POST /data/services/import`` builds a CT session from a zip of DICOM files.
"""

from __future__ import annotations

import io
import os
import re
from typing import IO, Any

from ..dicom_import import read_dicom_zip
from ..resources import store_content
from ..store import FileRow, ObjectRow, now_text
from ..wire import (
    HttpError,
    Request,
    Response,
    _check_label,
    _multipart,
)
from .base import RouteBase

__all__ = ["ImportRoutes"]


class ImportRoutes(RouteBase):
    """Route of the DICOM importer."""

    def _import(self, req: Request) -> Response:
        principal = req.principal
        assert principal is not None
        handler = (req.param("import-handler") or "DICOM-zip").lower()
        if handler not in {"dicom-zip", "si", "gradual-dicom"}:
            raise HttpError(400, f"import-handler {handler} is not supported; use DICOM-zip")
        project_id = req.param("PROJECT_ID") or req.param("project")
        if not project_id:
            raise HttpError(400, "DICOM import needs PROJECT_ID (or project=) naming the target project")
        dest = req.param("dest") or "/archive"
        if dest.startswith("/prearchive"):
            raise HttpError(400, "this server archives directly; use dest=/archive")
        overwrite = (req.param("overwrite") or "none").lower()
        if overwrite not in {"none", "append", "delete"}:
            raise HttpError(400, f"overwrite={overwrite}: use none, append or delete")
        with self.store.transaction() as tx:
            project = tx.project(project_id)
        if project is None:
            raise HttpError(404, f"Project {project_id} not found; create it first (PUT /data/projects/{project_id})")
        self._read_project(principal, project)
        self._require(principal, project.id, "sessions", "write")
        body: IO[bytes] = req.body
        ctype = req.header("content-type").lower()
        if ctype.startswith("multipart/"):
            parts = [p for p in _multipart(req) if p[1]]
            if not parts:
                raise HttpError(400, "multipart import without a file part")
            body = io.BytesIO(parts[0][3])
        body.seek(0)
        session, archive = read_dicom_zip(body, self.config.zip_limits)
        with archive:
            subject_label = req.param("SUBJECT_ID") or req.param("subject") or \
                re.sub(r"[^A-Za-z0-9_-]", "_", session.patient_name or session.patient_id or "Unknown")
            label = req.param("EXPT_LABEL") or req.param("session") or \
                re.sub(r"[^A-Za-z0-9_-]", "_", f"{subject_label}_{session.study_label or 'session'}")
            _check_label(subject_label, "subject")
            _check_label(label, "experiment")
            # write every file's content first (outside the transaction), then the rows
            incoming = self.store.files_dir / "incoming"
            staged: list[tuple[int, str, Any]] = []  # (scan index, name, StoredContent)
            try:
                for i, scan in enumerate(session.scans):
                    for name, member in scan.members:
                        with archive.open(member) as handle:
                            staged.append((i, name, store_content(incoming, handle)))
            except BaseException:
                for _, _, info in staged:
                    (incoming / info.stored_name).unlink(missing_ok=True)
                raise
        removed: list[FileRow] = []
        try:
            with self.store.transaction() as tx:
                now = now_text()
                subjects = [s for s in tx.objects(kind="subject", project=project.id, ref=subject_label)]
                if subjects:
                    subject = subjects[0]
                else:
                    sid = f"{self.config.site_id}_S{tx.next_id('subject'):05d}"
                    subject = ObjectRow(pk=0, id=sid, kind="subject", xsi_type="xnat:subjectData",
                                        project=project.id, label=subject_label, parent_pk=None,
                                        insert_date=now, last_modified=now,
                                        insert_user=principal.login)
                    subject.pk = tx.insert_object(subject)
                existing = [e for e in tx.objects(kinds=["experiment", "assessor"],
                                                  project=project.id, ref=label) if e.label == label]
                if existing and overwrite == "none":
                    raise HttpError(409, f"Session {label} already exists in project {project.id}; "
                                         "import with overwrite=append or overwrite=delete")
                if existing and existing[0].kind != "experiment":
                    raise HttpError(409, f"{label} is an assessor in project {project.id}")
                if existing and overwrite == "delete":
                    self._require(principal, project.id, f"session {label}", "delete")
                    removed += tx.delete_object(existing[0].pk)
                    existing = []
                fields = dict(session.fields)
                if existing:
                    exp = existing[0]
                    exp.fields.update(fields)
                    tx.update_object(exp)
                else:
                    eid = f"{self.config.site_id}_E{tx.next_id('experiment'):05d}"
                    exp = ObjectRow(pk=0, id=eid, kind="experiment", xsi_type=session.xsi_type,
                                    project=project.id, label=label, parent_pk=subject.pk,
                                    fields=fields, insert_date=now, last_modified=now,
                                    insert_user=principal.login)
                    exp.pk = tx.insert_object(exp)
                scans_now = {s.id: s for s in tx.objects(kind="scan", parent_pk=exp.pk)}
                for i, scan in enumerate(session.scans):
                    same_uid = [s for s in scans_now.values() if s.fields.get("UID") == scan.fields.get("UID")]
                    if same_uid:
                        scan_row = same_uid[0]
                        scan_row.fields.update(scan.fields)
                    else:
                        scan_id = scan.scan_id
                        n = 1
                        while scan_id in scans_now:
                            n += 1
                            scan_id = f"{scan.scan_id}-{n}"
                        scan_row = ObjectRow(pk=0, id=scan_id, kind="scan", xsi_type=scan.xsi_type,
                                             project=project.id, label=scan_id, parent_pk=exp.pk,
                                             fields=dict(scan.fields), insert_date=now,
                                             last_modified=now, insert_user=principal.login)
                        scan_row.pk = tx.insert_object(scan_row)
                        scans_now[scan_id] = scan_row
                    owner = f"obj:{scan_row.pk}"
                    dicom = [r for r in tx.resources(owner) if r.label == "DICOM"]
                    res_pk = dicom[0].pk if dicom else tx.insert_resource(owner, "DICOM", "DICOM", "RAW", "")
                    folder = self.store.files_dir / str(res_pk)
                    folder.mkdir(parents=True, exist_ok=True)
                    old = {f.path: f for f in tx.files(res_pk)}
                    for j, name, info in staged:
                        if j != i:
                            continue
                        if name in old:
                            removed.append(old[name])
                        os.replace(incoming / info.stored_name, folder / info.stored_name)
                        tx.put_file(FileRow(pk=0, resource_pk=res_pk, path=name, size=info.size,
                                            digest=info.digest, format="DICOM", content="RAW",
                                            tags="", stored_name=info.stored_name, insert_date=now))
                    frames = len(tx.files(res_pk))
                    scan_row.fields["frames"] = str(frames)
                    tx.update_object(scan_row)
                tx.touch(exp.pk)
        except BaseException:
            for _, _, info in staged:
                leftover = incoming / info.stored_name
                if leftover.exists():
                    leftover.unlink()
            raise
        self._unlink(removed)
        uri = f"/data/archive/projects/{project.id}/subjects/{subject_label}/experiments/{label}"
        return Response.text(uri + "\r\n", 200)
