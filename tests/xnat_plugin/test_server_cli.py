"""``cbctqa xnat-server``: options, environment, refusal of insecure remote binds, serving."""

from __future__ import annotations

import argparse
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from flows.cli import build_parser, main
from flows.commands import xnat_server


def test_refuses_non_loopback_without_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["xnat-server", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path),
                 "--admin-user", "admin", "--admin-password", "pw"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-insecure-remote" in err[0] and "pw" not in err[0]


def test_missing_data_dir_and_password(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CBCTQA_XNAT_DATA_DIR", "CBCTQA_XNAT_ADMIN_PASSWORD", "CBCTQA_XNAT_ADMIN_USER"):
        monkeypatch.delenv(name, raising=False)
    assert main(["xnat-server", "--admin-user", "a", "--admin-password", "b"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["xnat-server", "--data-dir", "/tmp/x", "--admin-user", "a"]) == 2
    assert "password" in capsys.readouterr().err
    assert main(["xnat-server", "--data-dir", "/tmp/x", "--admin-user", "a",
                 "--admin-password", "b", "--fault-error-rate", "2"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_serves_from_environment_until_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CBCTQA_XNAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CBCTQA_XNAT_ADMIN_USER", "envadmin")
    monkeypatch.setenv("CBCTQA_XNAT_ADMIN_PASSWORD", "env-pw")
    # port 0: the server binds any free port itself and reports it (no probe-and-close race)
    monkeypatch.setenv("CBCTQA_XNAT_PORT", "0")
    args = build_parser().parse_args(["xnat-server"])
    assert isinstance(args, argparse.Namespace)
    stop = threading.Event()
    worker = threading.Thread(target=xnat_server.run, args=(args, stop), daemon=True)
    worker.start()
    printed = ""
    deadline = time.monotonic() + 10
    while "serving" not in printed:
        assert worker.is_alive() and time.monotonic() < deadline, printed
        time.sleep(0.05)
        printed += capsys.readouterr().out
    found = re.search(r"serving (http://127\.0\.0\.1:(\d+)) ", printed)
    assert found and int(found.group(2)) > 0, printed
    response = requests.get(f"{found.group(1)}/data/auth", auth=("envadmin", "env-pw"), timeout=5)
    assert response.text == "User 'envadmin' is logged in"
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert "stopped" in capsys.readouterr().out
    assert (tmp_path / "data" / "xnat.sqlite").exists()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cryptography ships with prefect)."""
    import datetime as dt
    import ipaddress

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
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serving_and_remote_bind_allowed_with_tls(tmp_path: Path, xnat_server_factory) -> None:  # type: ignore[no-untyped-def]
    cert, key = _self_signed(tmp_path)
    server = xnat_server_factory(tls_cert=cert, tls_key=key)
    assert server.url.startswith("https://127.0.0.1:")
    response = requests.get(f"{server.url}/data/auth", auth=(server.user, server.password),
                            verify=str(cert), timeout=10)
    assert response.text == f"User '{server.user}' is logged in"
    args = build_parser().parse_args([
        "xnat-server", "--host", "0.0.0.0", "--data-dir", str(tmp_path), "--admin-user", "a",
        "--admin-password", "b", "--tls-cert", str(cert), "--tls-key", str(key)])
    config = xnat_server.build_config(args)
    assert config.host == "0.0.0.0" and config.tls_cert == cert  # type: ignore[attr-defined]
    insecure = build_parser().parse_args([
        "xnat-server", "--host", "10.1.2.3", "--data-dir", str(tmp_path), "--admin-user", "a",
        "--admin-password", "b", "--allow-insecure-remote"])
    assert xnat_server.build_config(insecure).host == "10.1.2.3"  # type: ignore[attr-defined]


def test_security_and_strict_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args([
        "xnat-server", "--data-dir", str(tmp_path), "--admin-user", "a", "--admin-password", "b",
        "--strict", "--max-failed-logins", "3", "--max-failed-logins-lockout-duration", "60",
        "--session-timeout", "120", "--open-user-list"])
    config = xnat_server.build_config(args)
    assert config.strict is True  # type: ignore[attr-defined]
    security = config.security  # type: ignore[attr-defined]
    assert (security.max_failed_logins, security.max_failed_logins_lockout_duration,
            security.session_timeout, security.restrict_user_list_access_to_admins) == (
        3, 60.0, 120.0, False)
    defaults = xnat_server.build_config(build_parser().parse_args([
        "xnat-server", "--data-dir", str(tmp_path), "--admin-user", "a", "--admin-password", "b"]))
    assert defaults.security.restrict_user_list_access_to_admins  # type: ignore[attr-defined]
    assert main(["xnat-server", "--data-dir", str(tmp_path), "--admin-user", "a",
                 "--admin-password", "b", "--session-timeout", "0"]) == 2
    assert "sessionTimeout" in capsys.readouterr().err

