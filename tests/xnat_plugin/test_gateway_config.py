"""Retry policy and credential resolution of xnat_plugin.gateway (no server needed)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from xnat_plugin.gateway import RetryPolicy, Secret, XnatConfigurationError, resolve_credentials
from xnat_plugin.gateway.retry import is_retryable_status

_ENV = ("XNAT_HOST", "XNAT_USER", "XNAT_PASS", "XNATPY_HOST", "XNATPY_USER", "XNATPY_PASS", "NETRC")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no stray ~/.netrc


def test_backoff_is_exponential_jittered_and_bounded() -> None:
    policy = RetryPolicy(retries=6, backoff=0.1, max_backoff=1.0, jitter=0.5)
    rng = random.Random(1)
    for k in range(7):
        base = min(1.0, 0.1 * 2**k)
        draws = [policy.delay(k, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in draws)
        assert max(draws) - min(draws) > 0.2 * base  # jitter spreads the retries
    # Retry-After is honoured but bounded by max_backoff
    assert policy.delay(0, rng, retry_after=0.7) == pytest.approx(0.7)
    assert policy.delay(0, rng, retry_after=30.0) == pytest.approx(1.0)
    assert RetryPolicy(retries=0).max_attempts == 1


def test_retry_policy_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="max_backoff"):
        RetryPolicy(backoff=2.0, max_backoff=1.0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)


def test_only_transient_5xx_are_retryable() -> None:
    assert [s for s in (400, 401, 403, 404, 409, 429, 500, 501, 502, 503, 504, 505) if is_retryable_status(s)] == [
        500, 502, 503, 504,
    ]  # fmt: skip


def test_credentials_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = resolve_credentials("http://127.0.0.1:8080/", "alice", "s3cret-A")
    assert (creds.host, creds.user, creds.password.reveal()) == (
        "http://127.0.0.1:8080",
        "alice",
        "s3cret-A",
    )
    monkeypatch.setenv("XNAT_HOST", "http://xnat.example.org")
    monkeypatch.setenv("XNAT_USER", "bob")
    monkeypatch.setenv("XNAT_PASS", "s3cret-B")
    creds = resolve_credentials()
    assert (creds.host, creds.user, creds.password.reveal(), creds.source) == (
        "http://xnat.example.org", "bob", "s3cret-B", "environment",
    )  # fmt: skip
    assert "s3cret" not in repr(creds) and "s3cret" not in str(creds)


def test_credentials_from_netrc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1:8080 login carol password s3cret-C\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    creds = resolve_credentials("http://127.0.0.1:8080")
    assert (creds.user, creds.password.reveal(), creds.source) == ("carol", "s3cret-C", "netrc")
    with pytest.raises(
        XnatConfigurationError, match=r"login for user 'carol'.*'dave' was requested"
    ):
        resolve_credentials("http://127.0.0.1:8080", "dave")


def test_unparsable_netrc_error_does_not_quote_it(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine h login u password s3cret-D bogus-token s3cret-E\n")
    with pytest.raises(XnatConfigurationError) as info:
        resolve_credentials("http://h", netrc_file=netrc)
    assert "s3cret" not in str(info.value)
    assert str(netrc) in str(info.value)


@pytest.mark.parametrize(
    ("host", "user", "password", "match"),
    [
        (None, "u", "p", "no XNAT host"),
        ("ftp://h", "u", "p", "not an http"),
        ("http://u:s3cret-F@h", "u", "p", "embeds credentials"),
        ("http://h", None, None, "no XNAT user"),
        ("http://h", "u", None, "no password for XNAT user 'u'"),
    ],
)
def test_missing_or_bad_configuration(
    host: str | None, user: str | None, password: str | None, match: str
) -> None:
    with pytest.raises(XnatConfigurationError, match=match) as info:
        resolve_credentials(host, user, password)
    assert "s3cret" not in str(info.value)


def test_secret_never_prints_or_pickles() -> None:
    secret = Secret("s3cret-G")
    assert "s3cret" not in f"{secret} {secret!r} {secret!s} {secret:>20}"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)
