"""Fixtures of the Prefect tests: a real Prefect server, XNAT credentials in the environment,
and tiny CT sessions imported into the local XNAT-compatible server."""

from __future__ import annotations

import io
import os
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qa_core.dicom_writer import write_series
from xnat_plugin.gateway import SessionRef, XnatGateway
from xnat_plugin.server import RunningServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real local Prefect server (SQLite under a temporary PREFECT_HOME), started once for the
    whole test session through :func:`flows.prefect_server.prefect_api` and stopped after it."""
    from flows.prefect_server import prefect_api

    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.pop(k, None) for k in ("PREFECT_API_URL",)}
    os.environ["CBCTQA_PREFECT_PORT"] = str(free_port())
    try:
        with prefect_api(home=home, timeout=300) as url:
            yield url
    finally:
        os.environ.pop("CBCTQA_PREFECT_PORT", None)
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


@pytest.fixture
def xnat_env(monkeypatch: pytest.MonkeyPatch):
    """``use(server)``: point XNAT_HOST/XNAT_USER/XNAT_PASS at a test server (as a worker reads them)."""

    def use(server: RunningServer) -> None:
        monkeypatch.setenv("XNAT_HOST", server.url)
        monkeypatch.setenv("XNAT_USER", server.user)
        monkeypatch.setenv("XNAT_PASS", server.password)

    return use


def _zip(files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f.name)
    return buf.getvalue()


def phantom(seed: int, noise: float, slices: int = 8, size: int = 64) -> np.ndarray:
    """A small head-like CT phantom in HU (seeded)."""
    rng = np.random.default_rng(seed)
    _z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    c, r = size / 2, size * 0.4
    body = ((y - c) ** 2 + (x - c) ** 2) < r**2
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, noise, size=body.shape)
    hu[:, int(c - 4):int(c + 4), int(c - 12):int(c - 4)] = 300.0
    return hu.astype(np.float32)


def import_session(
    gw: XnatGateway, project: str, label: str, tmp: Path, *, seed: int = 0, noise: float = 20.0,
    broken: bool = False, slices: int = 8, size: int = 64,
) -> str:
    """Import one CT session as a scanner would (DICOM zip to /data/services/import).

    ``broken``: one DICOM file of the scan is then truncated (scoring must fail with a reason).
    Returns the session's accession ID.
    """
    files = write_series(phantom(seed, noise, slices, size), (2.0, 1.0, 1.0), tmp / label,
                         uid_seed=f"{project}-{label}", patient_id=f"P-{label}")
    gw.xnat.post(
        "/data/services/import",
        data=_zip(files),
        query={"import-handler": "DICOM-zip", "PROJECT_ID": project, "SUBJECT_ID": f"S-{label}",
               "EXPT_LABEL": label},
        headers={"Content-Type": "application/zip"},
    )
    ref = gw.get_session(label, project)
    if broken:
        truncate_first_dicom(gw, ref, files[0])
    return ref.session_id


def truncate_first_dicom(gw: XnatGateway, ref: SessionRef, source: Path) -> None:
    """Replace the first file of ``ref``'s scan in XNAT by the first 700 bytes of ``source``
    (a DICOM file cut inside its header: scoring must fail with a reason)."""
    scan = gw.select_scan(ref)
    listing = gw.xnat.get_json(
        f"/data/experiments/{ref.session_id}/scans/{scan.scan_id}/resources/DICOM/files"
    )
    name = listing["ResultSet"]["Result"][0]["Name"]
    gw.xnat.put(
        f"/data/experiments/{ref.session_id}/scans/{scan.scan_id}/resources/DICOM/files/{name}",
        data=source.read_bytes()[:700],
        query={"overwrite": "true", "inbody": "true"},
        accepted_status=[200, 201],
    )


@pytest.fixture(scope="session")
def truncate_dicom():
    """``truncate_dicom(gw, session_ref, source_file)``: see :func:`truncate_first_dicom`."""
    return truncate_first_dicom


@pytest.fixture(scope="session")
def make_session():
    """``make_session(gw, project, label, tmp, **kw)``: see :func:`import_session`."""
    return import_session
