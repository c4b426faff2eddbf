"""Logging that never prints credentials."""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter", "configure_logging", "redact"]

_PATTERNS = [
    # user:password@host in URLs
    (re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@"), r"\g<scheme>\g<user>:***@"),
    # password=..., pass=..., token=..., secret=... in query strings, forms, reprs
    (re.compile(r"(?i)\b(password|passwd|pass|token|secret|api_key|apikey|jsessionid)(['\"]?\s*[=:]\s*['\"]?)([^\s&'\",;]+)"), r"\1\2***"),
    # HTTP Authorization headers
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:basic|bearer)\s+)([A-Za-z0-9+/=._-]+)"), r"\1***"),
]


def redact(text: str) -> str:
    """Mask passwords, tokens, session cookies and URL credentials in ``text``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that applies :func:`redact` to every formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg = clean
            record.args = None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Configure root logging once with the redacting filter on every handler."""
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(level)
