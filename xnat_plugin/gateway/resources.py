"""Files into XNAT resources: an assessment's resource folders and project files.

:class:`GatewayResources` uploads each file with ``overwrite=true``, checks that XNAT lists
it (a digest differing from the local MD5 is logged: a concurrent writer of the same
assessment replaced it, last write wins) and deletes files of the same resource label that
this write did not name. :func:`_check_resources` validates resource labels and files before
anything is sent.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from xnat_plugin.gateway.errors import (
    XnatNotFoundError,
    XnatResponseFormatError,
    XnatValidationError,
)
from xnat_plugin.gateway.records import SessionRef
from xnat_plugin.gateway.transport import _OK_CREATED, GatewayTransport

__all__ = ["GatewayResources"]

logger = logging.getLogger("xnat_plugin.gateway")

_RESOURCE_LABEL = re.compile(r"[A-Za-z0-9_-]+")


class GatewayResources(GatewayTransport):
    """Resource uploads of :class:`~xnat_plugin.gateway.session.XnatGateway`."""

    def _upload_resource(
        self,
        session: SessionRef,
        accession: str,
        res_label: str,
        paths: Sequence[Path],
        *,
        what: str,
    ) -> None:
        base = (f"{self._assessors_path(session)}/{quote(accession, safe='')}"
                f"/resources/{quote(res_label, safe='')}/files")  # fmt: skip
        digests: dict[str, str] = {}
        for p in paths:
            digests[p.name] = _md5(p)
            self._request(
                "PUT",
                f"{base}/{quote(p.name, safe='')}",
                what=f"{what}, resource {res_label} file {p.name}",
                query={"overwrite": "true", "inbody": "true"},
                data=functools.partial(open, p, "rb"),
                headers={"Content-Type": "application/octet-stream"},
                accepted=_OK_CREATED,
            )
        rows = self._listing(base, what=f"{what}, resource {res_label}", query={})
        listed: dict[str, str] = {}
        for row in rows:
            name = row.get("name") or PurePosixPath(row.get("uri", "")).name
            listed[name] = row.get("digest", "")
        for name, digest in digests.items():
            if name not in listed:
                raise XnatResponseFormatError(
                    f"{what}: resource {res_label} file {name} was uploaded but XNAT does not list it",
                    uri=base,
                )
            if listed[name] and listed[name] != digest:
                # Not an error: a concurrent writer of this same assessment may have replaced the
                # file after us (last write wins, as for the fields).
                logger.warning(
                    "%s: resource %s file %s has MD5 %s in XNAT but %s locally; another writer of "
                    "this assessment replaced it (last write wins)",
                    what,
                    res_label,
                    name,
                    listed[name],
                    digest,
                )
        for stale in sorted(set(listed) - set(digests)):
            logger.info("%s: deleting stale file %s from resource %s", what, stale, res_label)
            try:
                self._request(
                    "DELETE", f"{base}/{quote(stale, safe='')}", what=f"{what}, stale file {stale}"
                )
            except XnatNotFoundError:
                pass  # removed concurrently

    def write_project_files(
        self, project: str | None, label: str, paths: Sequence[str | Path]
    ) -> list[str]:
        """Upload files into the project resource ``label`` (replacing same-named files).

        One PUT per file (``overwrite=true``) and one listing to check they are there. Used for
        the cohort report (``CBCTQA_REPORT``). Returns the files' URIs.
        """
        project = self._project_or_default(project)
        if not _RESOURCE_LABEL.fullmatch(label):
            raise XnatValidationError(
                f"project {project}: resource label {label!r} must match [A-Za-z0-9_-]+"
            )
        files = [Path(p) for p in paths]
        for f in files:
            if not f.is_file():
                raise XnatValidationError(f"project {project}: file {f} to upload does not exist")
        base = f"/data/projects/{quote(project, safe='')}/resources/{quote(label, safe='')}/files"
        what = f"project {project} resource {label}"
        for f in files:
            self._request(
                "PUT",
                f"{base}/{quote(f.name, safe='')}",
                what=f"{what} file {f.name}",
                query={"overwrite": "true", "inbody": "true"},
                data=functools.partial(open, f, "rb"),
                headers={"Content-Type": "application/octet-stream"},
                accepted=_OK_CREATED,
            )
        rows = self._listing(base, what=what, query={})
        listed = {row.get("name") or PurePosixPath(row.get("uri", "")).name: row.get("uri", "")
                  for row in rows}  # fmt: skip
        missing = [f.name for f in files if f.name not in listed]
        if missing:
            raise XnatResponseFormatError(f"{what}: uploaded {missing} but XNAT does not list them",
                                          uri=base)  # fmt: skip
        return [listed[f.name] or f"{base}/{f.name}" for f in files]


# ---------------------------------------------------------------------- helpers


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_resources(
    resources: Mapping[str, Sequence[str | Path]], *, what: str
) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for label, paths in resources.items():
        if not _RESOURCE_LABEL.fullmatch(label):
            raise XnatValidationError(f"{what}: resource label {label!r} must match [A-Za-z0-9_-]+")
        if isinstance(paths, str | Path):
            raise XnatValidationError(
                f"{what}: resource {label} must map to a list of files, not one path"
            )
        files = [Path(p) for p in paths]
        if not files:
            raise XnatValidationError(
                f"{what}: resource {label} has no files; omit it or give its files"
            )
        names: dict[str, Path] = {}
        for f in files:
            if not f.is_file():
                raise XnatValidationError(
                    f"{what}: resource {label} file {f} does not exist or is not a file"
                )
            if f.name in names:
                raise XnatValidationError(
                    f"{what}: resource {label} has two files named {f.name} ({names[f.name]} and {f}); "
                    "names must be unique within a resource"
                )
            names[f.name] = f
        out[label] = files
    return out
