from __future__ import annotations

import logging

import pytest

from qa_core.logs import RedactingFilter, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET http://admin:s3cr3t@127.0.0.1:8080/data/projects", "s3cr3t"),
        ("PUT /data/services/auth username=u&password=hunter2", "hunter2"),
        ("Cookie: JSESSIONID=ABCDEF0123456789", "ABCDEF0123456789"),
        ("headers={'Authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ("token=eyJhbGciOi.abc.def other", "eyJhbGciOi.abc.def"),
    ],
)
def test_redact_masks_credentials(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_redact_keeps_ordinary_text() -> None:
    text = "scored session SIM1_001 in 2.1 s (AE parotid 12.5)"
    assert redact(text) == text


def test_filter_applies_to_formatted_args(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("cbctqa.test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="cbctqa.test.redact"):
        logger.info("connecting to %s", "https://bob:topsecret@xnat.example.org")
    assert "topsecret" not in caplog.text
    assert "bob:***@xnat.example.org" in caplog.text
