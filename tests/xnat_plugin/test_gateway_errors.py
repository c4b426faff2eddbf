"""The gateway's error paths, against the real local XNAT server made to misbehave.

Each case is produced by the server over HTTP (no mocking): :class:`ScriptedFault` makes it
answer what a real XNAT, or a proxy in front of it, can answer but the local server never
would on its own: a create that leaves two assessors with one label, a 409 from a racing
create, any other 4xx, a 503 with ``Retry-After``, a single-sign-on login page with status 200,
malformed JSON, damaged download zips. Time-outs come from injected latency and TLS failures
from a server with a self-signed certificate.

Every error must be the gateway's own class (also the matching built-in), name what was being
done, and never carry the password.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from qa_core.categories import CATEGORIES
from xnat_plugin.gateway import (
    AssessmentRecord,
    CategoryAssessment,
    SessionRef,
    XnatAuthenticationError,
    XnatConnectionError,
    XnatGateway,
    XnatNotFoundError,
    XnatPermissionError,
    XnatServerError,
    XnatValidationError,
)
from xnat_plugin.gateway.errors import (
    XnatConflictError,
    XnatGatewayError,
    XnatRequestError,
    XnatResponseFormatError,
)
from xnat_plugin.server import FaultConfig, RunningServer
from xnat_plugin.server.faults import ScriptedFault

PASSWORD_MARK = "admin-test-pw"  # the fixtures' admin password: must never show in an error
ASSESSORS = r"/assessors/[^/]+$"
LISTING = r"^/data/experiments$"


# ---------------------------------------------------------------------- helpers


def _connect(server: RunningServer, **kwargs: Any) -> XnatGateway:
    kwargs.setdefault("backoff", 0.001)
    kwargs.setdefault("max_backoff", 0.01)
    kwargs.setdefault("seed", 0)
    return XnatGateway.connect(server.url, server.user, server.password, **kwargs)


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _no_secret(exc: BaseException) -> None:
    text = _chain_text(exc)
    assert PASSWORD_MARK not in text and "JSESSIONID" not in text, text


def _record(scan_id: str = "1") -> AssessmentRecord:
    cats = {
        c: CategoryAssessment(score=3.0 + i / 4, ae=100.0 + i, ae_per_voxel=0.5, outlier=False,
                              outlier_reason="")
        for i, c in enumerate(CATEGORIES)
    }  # fmt: skip
    return AssessmentRecord(
        status="complete", scan_id=scan_id, model_version="1.2.0", series_uid="1.2.3.4",
        slices=4, spacing=(2.0, 0.5, 0.5), model_name="cbctqa-cnn", model_sha256="0" * 64,
        cam_method="gradcam", target_layer="layer4", package_version="0.1.0", duration_s=1.0,
        categories=cats,
    )  # fmt: skip


def _session(gw: XnatGateway, project: str, label: str = "S1") -> SessionRef:
    gw.xnat.put(f"/data/projects/{project}")
    gw.xnat.put(f"/data/projects/{project}/subjects/SUBJ")
    gw.xnat.put(
        f"/data/projects/{project}/subjects/SUBJ/experiments/{label}",
        query={"xsiType": "xnat:ctSessionData"},
    )
    return gw.get_session(label, project)


def _imported(gw: XnatGateway, project: str, payload: bytes) -> SessionRef:
    gw.xnat.put(f"/data/projects/{project}")
    gw.xnat.post(
        "/data/services/import",
        data=payload,
        query={"import-handler": "DICOM-zip", "PROJECT_ID": project, "SUBJECT_ID": "SUBJ",
               "EXPT_LABEL": "CBCT1"},
        headers={"Content-Type": "application/zip"},
    )  # fmt: skip
    return gw.get_session("CBCT1", project)


def _assessor_rows(gw: XnatGateway, session: SessionRef, xsi_type: str) -> list[dict[str, str]]:
    rows = gw.xnat.get_json(f"/data/experiments/{session.session_id}/assessors")
    return [r for r in rows["ResultSet"]["Result"] if r.get("xsiType", "").lower() == xsi_type]


class Sent:
    """Every request the gateway's xnatpy session sends and the status it gets."""

    def __init__(self, gw: XnatGateway) -> None:
        self.calls: list[tuple[str, str, int]] = []
        gw.xnat.interface.hooks["response"].append(self._hook)

    def _hook(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        path = unquote(urlsplit(str(resp.request.url)).path)
        self.calls.append((str(resp.request.method), path, resp.status_code))

    def matching(self, method: str, suffix: str) -> list[int]:
        return [s for m, p, s in self.calls if m == method and p.endswith(suffix)]


def _faulty(server: RunningServer, *faults: ScriptedFault, **random_faults: Any) -> None:
    server.restart(faults=FaultConfig(scripted=faults, **random_faults))


@pytest.fixture
def server(xnat_server_factory: Callable[..., RunningServer]) -> Iterator[RunningServer]:
    yield xnat_server_factory()


# ---------------------------------------------------------------------- the fault mode itself


def test_scripted_faults_are_validated() -> None:
    from qa_core.errors import ConfigurationError

    for bad in (
        {"path_regex": "(", "status": 500},
        {"path_regex": "x", "status": 700},
        {"path_regex": "x", "times": 0, "status": 500},
        {"path_regex": "x", "corrupt": "melt"},
        {"path_regex": "x"},  # does nothing
        {"path_regex": "x", "status": 500, "duplicate": True},  # does two things
    ):
        with pytest.raises(ConfigurationError):
            ScriptedFault(**bad)


def test_scripted_fault_applies_to_its_first_matching_requests_only(server: RunningServer) -> None:
    fault = ScriptedFault(LISTING, method="GET", times=2, status=418, body=b"teapot")
    _faulty(server, fault)
    auth = (server.user, server.password)
    codes = [requests.get(f"{server.url}/data/experiments", auth=auth, timeout=10).status_code
             for _ in range(3)]  # fmt: skip
    assert codes == [418, 418, 200]
    other = requests.get(f"{server.url}/data/projects", auth=auth, timeout=10)
    assert other.status_code == 200 and server.app.faults.scripted_counts == [2]


# ---------------------------------------------------------------------- duplicates and 409


def test_duplicate_assessors_from_a_lost_race_are_reconciled_to_one(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with _connect(server) as gw:
        session = _session(gw, "DUP")
    # the server stores a second assessor with the same label when the first PUT creates it
    _faulty(server, ScriptedFault(ASSESSORS, method="PUT", duplicate=True))
    caplog.set_level(logging.WARNING, logger="xnat_plugin.gateway")
    with _connect(server) as gw:
        accession = gw.write_assessment(session, _record())
        assert server.app.faults.scripted_counts == [1]  # the twin was made
        rows = _assessor_rows(gw, session, "cbctqa:qaassessmentdata")
        assert [r["ID"] for r in rows] == [accession]  # the twin is gone, the first kept
        stored = gw.read_assessments("DUP")
        assert len(stored) == 1 and stored[0].record == _record()
        warned = [r.getMessage() for r in caplog.records if "duplicate assessor" in r.getMessage()]
        assert len(warned) == 1 and accession in warned[0]
        # ratings are reconciled the same way
    _faulty(server, ScriptedFault(ASSESSORS, method="PUT", duplicate=True))
    with _connect(server) as gw:
        rating = gw.write_rating(session, server.user, dict.fromkeys(CATEGORIES, 4))
        rows = _assessor_rows(gw, session, "cbctqa:ratingdata")
        assert [r["ID"] for r in rows] == [rating]
        assert [r.rater for r in gw.read_ratings("DUP")] == [server.user]


def test_a_409_from_a_racing_create_is_sent_again(server: RunningServer) -> None:
    with _connect(server) as gw:
        session = _session(gw, "RACE409")
    body = b"Experiment S1_cbctqa_1_1_2_0 already exists in project RACE409"
    _faulty(server, ScriptedFault(ASSESSORS, method="PUT", times=1, status=409, body=body))
    with _connect(server) as gw:
        sent = Sent(gw)
        accession = gw.write_assessment(session, _record())
        puts = sent.matching("PUT", "/assessors/S1_cbctqa_1_1_2_0")
        assert puts[:2] == [409, 201] and all(s in (200, 201) for s in puts[1:])
        assert [r["ID"] for r in _assessor_rows(gw, session, "cbctqa:qaassessmentdata")] == [
            accession
        ]


def test_a_409_that_persists_is_a_conflict_after_three_puts(server: RunningServer) -> None:
    with _connect(server) as gw:
        session = _session(gw, "TAKEN")
    body = b"Experiment S1_cbctqa_1_1_2_0 already exists in project TAKEN (XNAT_E00042, xnat:mrSessionData)"
    _faulty(server, ScriptedFault(ASSESSORS, method="PUT", times=None, status=409, body=body))
    with _connect(server) as gw:
        sent = Sent(gw)
        with pytest.raises(XnatConflictError, match=r"S1_cbctqa_1_1_2_0.*HTTP 409.*XNAT_E00042") as info:
            gw.write_assessment(session, _record())
        assert info.value.status == 409
        assert sent.matching("PUT", "/assessors/S1_cbctqa_1_1_2_0") == [409, 409, 409]
        _no_secret(info.value)


# ---------------------------------------------------------------------- other 4xx and 5xx


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, XnatRequestError),
        (401, XnatAuthenticationError),
        (403, XnatPermissionError),
        (404, XnatNotFoundError),
        (405, XnatRequestError),
        (410, XnatRequestError),
        (413, XnatRequestError),
        (422, XnatRequestError),
        (429, XnatRequestError),
        (501, XnatServerError),
        (505, XnatServerError),
    ],
)
def test_client_errors_and_final_5xx_are_not_retried(
    server: RunningServer, status: int, error: type[XnatGatewayError]
) -> None:
    said = f"refused by the site's rules (code {status}) for user admin password={PASSWORD_MARK}"
    _faulty(server, ScriptedFault(LISTING, method="GET", times=None, status=status,
                                  body=said.encode()))  # fmt: skip
    with _connect(server, retries=4) as gw:
        sent = Sent(gw)
        with pytest.raises(error) as info:
            gw.read_assessments("ANY")
    assert info.value.status == status and info.value.attempts == 1
    assert sent.matching("GET", "/data/experiments") == [status]  # one request, no retry
    message = str(info.value)
    assert f"HTTP {status}" in message and "Fix:" in message and "refused by the site's rules" in message
    assert "qaAssessmentData" in message or "ANY" in message  # says what was being read
    _no_secret(info.value)


# ---------------------------------------------------------------------- Retry-After


def test_retry_after_is_honoured_end_to_end(server: RunningServer) -> None:
    fault = ScriptedFault(LISTING, method="GET", times=2, status=503, body=b"maintenance",
                          headers=(("Retry-After", "1"),))  # fmt: skip
    _faulty(server, fault)
    with _connect(server, retries=3, backoff=0.001, max_backoff=5.0) as gw:
        sent = Sent(gw)
        start = time.monotonic()
        assert gw.read_assessments("ANY") == []
        elapsed = time.monotonic() - start
        assert sent.matching("GET", "/data/experiments") == [503, 503, 200]
        assert gw.request_counts.retries == 2
    # the backoff alone would wait milliseconds; the server asked for 1 s twice
    assert 2.0 <= elapsed < 4.5, elapsed


@pytest.mark.slow
def test_retry_after_as_an_http_date_is_honoured(server: RunningServer) -> None:
    import email.utils

    # RFC 9110 allows an HTTP-date as well as seconds; proxies in front of XNAT send dates
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=8)
    fault = ScriptedFault(LISTING, method="GET", times=1, status=503, body=b"maintenance",
                          headers=(("Retry-After", email.utils.format_datetime(when, usegmt=True)),))  # fmt: skip
    _faulty(server, fault)
    with _connect(server, retries=2, backoff=0.001, max_backoff=10.0) as gw:
        asked = (when - dt.datetime.now(dt.UTC)).total_seconds()  # the wait the date asks for
        assert asked > 1.0
        start = time.monotonic()
        assert gw.read_assessments("ANY") == []
        elapsed = time.monotonic() - start
    # waited until the date, not the millisecond backoff
    assert asked - 0.5 <= elapsed < asked + 3.0, (asked, elapsed)
    assert server.app.faults.scripted_counts == [1]


def test_retry_after_is_capped_by_max_backoff_and_the_budget_ends(server: RunningServer) -> None:
    fault = ScriptedFault(LISTING, method="GET", times=None, status=503, body=b"down",
                          headers=(("Retry-After", "3600"),))  # fmt: skip
    _faulty(server, fault)
    with _connect(server, retries=2, backoff=0.001, max_backoff=0.2) as gw:
        start = time.monotonic()
        with pytest.raises(XnatServerError, match=r"HTTP 503 after 3 attempt") as info:
            gw.read_assessments("ANY")
        assert time.monotonic() - start < 3.0  # not an hour: max_backoff bounds Retry-After
    assert info.value.attempts == 3 and server.app.faults.scripted_counts == [3]


# ---------------------------------------------------------------------- time-outs


def test_a_server_slower_than_the_timeout_is_a_connection_error(server: RunningServer) -> None:
    _faulty(server, latency_ms=1500, path_regex=LISTING)
    with _connect(server, timeout=0.3, retries=1) as gw:
        start = time.monotonic()
        with pytest.raises(XnatConnectionError, match=r"after 2 attempt\(s\) \(\w*Timeout\)") as info:
            gw.read_assessments("ANY")
        assert time.monotonic() - start < 1.4  # two 0.3 s waits, not two 1.5 s answers
    assert info.value.status is None and info.value.attempts == 2
    _no_secret(info.value)


# ---------------------------------------------------------------------- HTML and malformed answers

SSO_PAGE = (b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>"
            b"<form action='/sso/login'>Your session has expired.</form></body></html>")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (SSO_PAGE, "text/html", r"HTML page instead of data"),
        (b'{"ResultSet": {"Result": [{"ID": "X1"', "application/json", r"answered 200 but not JSON"),
        (b"", "application/json", r"answered 200 but not JSON"),
        (b'{"items": []}', "application/json", r"expected an XNAT listing"),
        (b'{"ResultSet": {"Result": "none"}}', "application/json", r"is not a list of rows"),
        (b'{"ResultSet": {"Result": [1, 2]}}', "application/json", r"is not a list of rows"),
    ],
)
def test_html_and_malformed_answers_are_format_errors(
    server: RunningServer, body: bytes, content_type: str, match: str
) -> None:
    _faulty(server, ScriptedFault(LISTING, method="GET", times=None, status=200, body=body,
                                  content_type=content_type))  # fmt: skip
    with _connect(server, retries=3) as gw, pytest.raises(XnatResponseFormatError, match=match) as info:
        gw.read_assessments("ANY")
    assert isinstance(info.value, XnatGatewayError)
    _no_secret(info.value)


def test_html_page_instead_of_a_download(server: RunningServer, make_dicom_zip: Any, tmp_path: Path) -> None:
    with _connect(server) as gw:
        session = _imported(gw, "HTMLDL", make_dicom_zip(tmp_path / "dicom")[0])
    _faulty(server, ScriptedFault(r"/scans/[^/]+/resources/DICOM/files$", method="GET", times=None,
                                  status=200, body=SSO_PAGE, content_type="text/html"))  # fmt: skip
    with _connect(server) as gw, pytest.raises(XnatResponseFormatError, match="HTML page instead of a zip"):
        gw.download_scan(session, "1", dest_dir=tmp_path / "dl")
    assert not (tmp_path / "dl" / "CBCT1" / "1").exists()


# ---------------------------------------------------------------------- damaged downloads


@pytest.mark.parametrize("corrupt", ["truncate", "flip", "deflate-flip"])
def test_a_damaged_download_zip_fails_cleanly_and_keeps_the_earlier_copy(
    server: RunningServer, make_dicom_zip: Any, tmp_path: Path, corrupt: str
) -> None:
    with _connect(server) as gw:
        session = _imported(gw, "BADZIP", make_dicom_zip(tmp_path / "dicom")[0])
        good = gw.download_scan(session, "1", dest_dir=tmp_path / "dl")
        before = sorted(p.name for p in good.iterdir())
        assert len(before) == 4
    _faulty(server, ScriptedFault(r"/scans/1/resources/DICOM/files$", method="GET", times=None,
                                  corrupt=corrupt))  # fmt: skip
    with _connect(server) as gw, pytest.raises(XnatResponseFormatError, match=r"scan 1 of session CBCT1") as info:
        gw.download_scan(session, "1", dest_dir=tmp_path / "dl")
    assert "zip" in str(info.value)
    assert server.app.faults.scripted_counts == [1]
    # the earlier download is untouched and no staging folder is left behind
    assert sorted(p.name for p in good.iterdir()) == before
    assert [p.name for p in (tmp_path / "dl" / "CBCT1").iterdir()] == ["1"]


# ---------------------------------------------------------------------- TLS


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def test_tls_failures_are_named_and_not_retried(
    xnat_server_factory: Callable[..., RunningServer], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = _self_signed(tmp_path)
    tls = xnat_server_factory(tls_cert=cert, tls_key=key)
    plain = xnat_server_factory()
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    # an untrusted (self-signed) certificate
    start = time.monotonic()
    with pytest.raises(XnatConnectionError, match=r"TLS failure .*127\.0\.0\.1.*certificates") as info:
        XnatGateway.connect(tls.url, tls.user, tls.password, retries=3, backoff=0.5)
    assert info.value.attempts == 1 and time.monotonic() - start < 2.0  # no retry, no backoff
    assert isinstance(info.value, ConnectionError)
    _no_secret(info.value)
    # https:// against a server that speaks plain HTTP
    https_url = plain.url.replace("http://", "https://")
    with pytest.raises(XnatConnectionError, match=r"TLS failure") as wrong_scheme:
        XnatGateway.connect(https_url, plain.user, plain.password, retries=3, backoff=0.5)
    _no_secret(wrong_scheme.value)
    # trusting the site's certificate (as a hospital with a private CA does) makes it work
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with _connect(tls) as gw:
        assert gw.read_assessments("NONE") == []
        session = _session(gw, "TLSOK")
        assert gw.write_assessment(session, _record())
        assert len(gw.read_assessments("TLSOK")) == 1


def test_writes_validate_before_any_fault_can_matter(server: RunningServer) -> None:
    # a bad record is refused locally; the faulty server never sees a request for it
    with _connect(server) as gw:
        session = _session(gw, "LOCAL")
    _faulty(server, ScriptedFault(ASSESSORS, method="PUT", times=None, status=500))
    with _connect(server) as gw, pytest.raises(XnatValidationError):
        gw.write_rating(session, server.user, {"parotid": 9})
    assert server.app.faults.scripted_counts == [0]
