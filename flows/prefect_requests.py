"""Requests to the Prefect API outside the Prefect client's own habits.

* :func:`post_once`: Prefect's HTTP client retries 429/502/503 after ``2**n`` seconds and
  sleeps before giving up even with ``PREFECT_CLIENT_MAX_RETRIES=0``. Callers that choose
  their own (quick) retries, or for which a lost request is only late (heartbeats), send
  through it.
* :func:`open_owned_client`: a Prefect client that lives as long as its owner says, shared by
  threads. Prefect's engine opens a fresh client for every flow run (an ``httpx`` client, a
  TLS context, a CSRF-token request: 30-60 ms a run here); the in-process worker hands one
  owned client to all its runs instead, and the scoring slot keeps one per process for
  releases that outlive a run.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import SyncPrefectClient

__all__ = ["OwnedSyncClient", "close_owned_client", "open_owned_client", "post_once"]


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


class OwnedSyncClient(SyncPrefectClient):
    """A Prefect client whose ``with`` blocks neither start nor close it (see
    :func:`open_owned_client`)."""

    def __enter__(self) -> OwnedSyncClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None


def open_owned_client() -> OwnedSyncClient:
    """A started ``SyncPrefectClient`` for the current Prefect settings (API URL, key, auth
    string) whose ``with`` blocks do nothing: code that enters and leaves it (the flow engine's
    ``SyncClientContext``, a flow's ``with get_client(...)``) cannot close it under the other
    threads using it. Built like ``get_client`` builds one, but never taken from the current
    client context. Close it with :func:`close_owned_client`."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise RuntimeError("PREFECT_API_URL is not set: start the Prefect API first "
                           "(cbctqa serve / score-pending do) or set PREFECT_API_URL")  # fmt: skip
    client = OwnedSyncClient(api, auth_string=PREFECT_API_AUTH_STRING.value(),
                             api_key=PREFECT_API_KEY.value())  # fmt: skip
    SyncPrefectClient.__enter__(client)
    return client


def close_owned_client(client: Any) -> None:
    """Close a client from :func:`open_owned_client`."""
    SyncPrefectClient.__exit__(client, None, None, None)
