"""Scans to files: which scan to score, its DICOM download, and loading it as a volume.

:class:`GatewayDownloads` chooses the scan (the CT scan with most frames, never an RTSTRUCT,
plan, dose, registration or segmentation filed under the session), downloads it as one zip
(streamed, retried as any request), checks and flattens the zip, and replaces any earlier
copy atomically.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

from xnat_plugin.gateway.errors import (
    XnatNotFoundError,
    XnatResponseFormatError,
    XnatScanSelectionError,
)
from xnat_plugin.gateway.reading import GatewayReading
from xnat_plugin.gateway.records import ScanRef, SessionRef, safe_label_part

if TYPE_CHECKING:
    from qa_core.volume import Volume

__all__ = ["GatewayDownloads"]

logger = logging.getLogger("xnat_plugin.gateway")


class GatewayDownloads(GatewayReading):
    """Scan choice and downloads of :class:`~xnat_plugin.gateway.session.XnatGateway`."""

    def select_scan(
        self,
        session: SessionRef,
        scan_id: str | None = None,
        *,
        scans: Sequence[ScanRef] | None = None,
    ) -> ScanRef:
        """The scan to score: ``scan_id`` if given, else the CT scan with the most frames.

        Ties go to the scan listed first. One request (none when ``scans``, the session's
        :meth:`list_scans`, is given).

        Raises
        ------
        XnatScanSelectionError
            The session has no CT scan, or no scan ``scan_id``.
        """
        scans = self.list_scans(session) if scans is None else list(scans)
        if scan_id is not None:
            for scan in scans:
                if scan.scan_id == scan_id:
                    return scan
            raise XnatScanSelectionError(
                f"session {session.label} ({session.session_id}) has no scan {scan_id!r}; it has "
                f"{[s.scan_id for s in scans]}",
                uri=session.uri,
            )
        # never an RTSTRUCT, plan, dose, registration or segmentation filed under the session
        ct = [
            s
            for s in scans
            if s.xsi_type.lower() == "xnat:ctscandata" and s.modality.upper() not in _NOT_IMAGES
        ]
        if not ct:
            raise XnatScanSelectionError(
                f"session {session.label} ({session.session_id}) has no CT scan (xnat:ctScanData); scans: "
                f"{[(s.scan_id, s.xsi_type) for s in scans]}. Pass scan_id=... to choose one",
                uri=session.uri,
            )
        best = max(
            range(len(ct)), key=lambda i: (ct[i].frames if ct[i].frames is not None else -1, -i)
        )
        return ct[best]

    def download_scan(
        self,
        session: SessionRef,
        scan_id: str | None = None,
        *,
        dest_dir: str | Path,
        resource: str = "DICOM",
    ) -> Path:
        """Download a scan's DICOM files into ``dest_dir/<session label>/<scan ID>/``.

        One zip download (plus one request to choose the scan when ``scan_id`` is None:
        the CT scan with most frames). Any earlier copy in that folder is replaced
        atomically; zip members are flattened to their base names (the zip's CRCs are
        checked on extraction). Returns the folder.

        Raises
        ------
        XnatScanSelectionError
            No CT scan to choose.
        XnatNotFoundError
            The scan or its ``resource`` does not exist, or holds no files.
        XnatResponseFormatError
            The download is not a valid zip, is corrupt, or holds clashing file names.
        """
        if scan_id is None:
            scan_id = self.select_scan(session).scan_id
        what = f"scan {scan_id} of session {session.label} ({session.session_id})"
        path = (f"/data/experiments/{quote(session.session_id, safe='')}/scans/{quote(scan_id, safe='')}"
                f"/resources/{quote(resource, safe='')}/files")  # fmt: skip
        dest_root = Path(dest_dir)
        dest_root.mkdir(parents=True, exist_ok=True)
        final = dest_root / safe_label_part(session.label) / safe_label_part(scan_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=final.parent))
        try:
            zip_path = staging / "scan.zip"
            self._download(path, zip_path, what=what, query={"format": "zip"})
            out = staging / "files"
            out.mkdir()
            n_files = _extract_flat(zip_path, out, what=what)
            if n_files == 0:
                raise XnatNotFoundError(
                    f"{what}: resource {resource} holds no files", status=200, uri=path
                )
            if final.exists():
                shutil.rmtree(final)
            out.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("downloaded %s (%d files) to %s", what, n_files, final)
        return final

    def load_session_volume(
        self, session: SessionRef, scan_id: str | None = None, *, dest_dir: str | Path | None = None
    ) -> Volume:
        """Download a scan (see :meth:`download_scan`) and load it with ``qa_core.load_series``.

        With ``dest_dir=None`` the files go to a temporary folder removed after loading.
        DICOM problems raise :class:`qa_core.errors.DicomError` subclasses from ``load_series``.
        """
        from qa_core.dicom_series import load_series

        if dest_dir is not None:
            return load_series(self.download_scan(session, scan_id, dest_dir=dest_dir))
        with tempfile.TemporaryDirectory(prefix="cbctqa-scan-") as tmp:
            return load_series(self.download_scan(session, scan_id, dest_dir=tmp))


# ---------------------------------------------------------------------- helpers


#: DICOM modalities of non-image objects that may arrive as scans of an image session.
_NOT_IMAGES: frozenset[str] = frozenset(
    {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "SEG", "SR", "PR", "KO"}
)


def _extract_flat(zip_path: Path, out: Path, *, what: str) -> int:
    """Extract every file of the zip into ``out`` under its base name; return the count."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            seen: set[str] = set()
            count = 0
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = PurePosixPath(info.filename.replace("\\", "/")).name
                if not name or name in {".", ".."}:
                    continue
                if name in seen:
                    raise XnatResponseFormatError(
                        f"{what}: the download holds two files named {name}; download them with scan_id and "
                        "inspect the resource in XNAT"
                    )
                seen.add(name)
                with zf.open(info) as src, open(out / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                count += 1
            return count
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as exc:
        # a broken deflate stream raises zlib.error, a cut one EOFError: both mean a bad zip
        with open(zip_path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html")):  # e.g. a single-sign-on login page
            raise XnatResponseFormatError(
                f"{what}: XNAT answered with an HTML page instead of a zip; check the host URL "
                "(XNAT's REST root, not a login portal in front of it)"
            ) from exc
        raise XnatResponseFormatError(
            f"{what}: XNAT's download is not a valid zip ({exc})"
        ) from exc
