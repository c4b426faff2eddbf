"""Requests to the Prefect API that are sent once, without the client's own retries.

Prefect's HTTP client retries 429/502/503 after ``2**n`` seconds and sleeps before giving up
even with ``PREFECT_CLIENT_MAX_RETRIES=0``. Callers that choose their own (quick) retries, or
for which a lost request is only late (heartbeats), send through :func:`post_once`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["post_once"]


def post_once(client: Any, path: str, body: Any) -> Any:
    """POST ``body`` to the Prefect API ``path`` once: Prefect's HTTP client sleeps before it
    gives up even with ``PREFECT_CLIENT_MAX_RETRIES=0``, so the request goes through the
    underlying ``httpx.Client`` (same base URL, auth headers, TLS; CSRF token when enabled).
    Raises ``httpx.HTTPStatusError`` for an error answer."""
    import httpx

    http = getattr(client, "_client", None)
    if not isinstance(http, httpx.Client):  # pragma: no cover - a Prefect without it
        raise RuntimeError("this Prefect client has no httpx client to send through")
    request = http.build_request("POST", path, json=body)
    if getattr(http, "enable_csrf_support", False):
        http._add_csrf_headers(request)  # type: ignore[attr-defined]
    response = httpx.Client.send(http, request)
    response.raise_for_status()
    return response
