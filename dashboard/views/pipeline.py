"""Pipeline: the health of automatic scoring.

From XNAT (always): sessions queued, running, failed (with the reasons) and not yet scored by
the chosen model version. From Prefect (when an API is configured: ``PREFECT_API_URL``, or the
local Prefect server on 127.0.0.1:``CBCTQA_PREFECT_PORT`` when it answers): the recent flow
runs (``score_session``, ``discover_sessions``, ``monitor_cohort``) and their states, and the
scoring throughput per hour. Read with plain HTTP (``POST /flow_runs/filter``,
``POST /flows/filter``), cached for 15 s.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import altair as alt
import pandas as pd
import requests
import streamlit as st

from dashboard import data, ui
from qa_core.logs import redact

__all__ = ["FLOW_NAMES", "prefect_api_url", "prefect_runs", "render", "throughput_per_hour"]

#: The flows of the scoring service.
FLOW_NAMES = ("score_session", "discover_sessions", "monitor_cohort")


def prefect_api_url() -> tuple[str | None, str]:
    """(API URL or None, how it was found) — ``PREFECT_API_URL``, else a local server that answers."""
    url = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if url:
        return url, "PREFECT_API_URL"
    port = 4200
    try:
        from qa_core.settings import get_settings

        port = int(getattr(get_settings(), "prefect_port", 4200))
    except Exception:  # a bad CBCTQA_* value is reported by the commands that need it
        port = 4200
    local = f"http://127.0.0.1:{port}/api"
    try:
        if requests.get(f"{local}/health", timeout=0.5).status_code == 200:
            return local, f"local Prefect server on port {port} (PREFECT_API_URL is unset)"
    except requests.RequestException:
        pass
    return None, ""


@st.cache_data(ttl=15, max_entries=8, show_spinner=False)
def prefect_runs(url: str, limit: int = 500) -> pd.DataFrame:
    """Recent flow runs (newest first) with their flow's name and state.

    Raises ``requests.RequestException`` when the API does not answer or refuses.
    """
    flows = requests.post(f"{url}/flows/filter", json={"limit": 200}, timeout=5)
    flows.raise_for_status()
    names = {f["id"]: f["name"] for f in flows.json()}
    resp = requests.post(f"{url}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC", "limit": limit},
                         timeout=10)  # fmt: skip
    resp.raise_for_status()
    rows = []
    for r in resp.json():
        state: dict[str, Any] = r.get("state") or {}
        rows.append({
            "flow": names.get(r.get("flow_id"), "?"), "run": r.get("name", ""),
            "state": r.get("state_name") or state.get("name", ""), "type": r.get("state_type") or state.get("type", ""),
            "started": pd.to_datetime(r.get("start_time"), utc=True),
            "ended": pd.to_datetime(r.get("end_time"), utc=True),
            "seconds": r.get("total_run_time"), "message": (state.get("message") or "")[:300],
            "parameters": ", ".join(f"{k}={v}" for k, v in (r.get("parameters") or {}).items())[:200],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["flow", "run", "state", "type", "started", "ended", "seconds",
                                       "message", "parameters"])  # fmt: skip


def throughput_per_hour(runs: pd.DataFrame, *, now: pd.Timestamp | None = None, hours: int = 24) -> pd.DataFrame:
    """Completed ``score_session`` runs per hour over the last ``hours`` hours (``hour``, ``sessions``)."""
    now = now or pd.Timestamp.now(tz="UTC")
    hours_index = pd.date_range(end=now.floor("h"), periods=hours, freq="h")
    done = runs[(runs["flow"] == "score_session") & (runs["type"] == "COMPLETED")].dropna(subset=["ended"])
    counts = done["ended"].dt.floor("h").value_counts()
    return pd.DataFrame({"hour": hours_index, "sessions": [int(counts.get(h, 0)) for h in hours_index]})


def _xnat_side(snap: data.Snapshot, version: str | None) -> None:
    sessions = data.session_frame(snap, version)
    status = sessions["status"]
    c = st.columns(4)
    c[0].metric("queued", int((status == "queued").sum()))
    c[1].metric("running", int((status == "running").sum()))
    c[2].metric("failed", int((status == "failed").sum()))
    c[3].metric("not scored yet", int((status == "not scored").sum()))
    failed = sessions[status == "failed"][["session", "acquired", "scanner", "scored_at", "failure_reason"]].copy()
    if not failed.empty:
        from xnat_plugin.gateway import parse_failure_reason

        tags = [parse_failure_reason(r) for r in failed["failure_reason"]]
        failed["retried"] = ["no: not until the session changes" if t.permanent else
                             ("no: gave up" if t.final else f"yes (attempt {t.attempt} failed)") for t in tags]
        failed["failure_reason"] = [t.reason.strip() for t in tags]
        st.markdown("**Failed sessions and why**")
        st.dataframe(failed.rename(columns={"scored_at": "failed at", "failure_reason": "reason"}),
                     hide_index=True, width="stretch", key="pl_failed",
                     column_config={"reason": st.column_config.TextColumn("reason", width="large"),
                                    "acquired": st.column_config.DateColumn("acquired")})  # fmt: skip
        ui.csv_button(failed, f"{snap.project}_failed_sessions", key="pl_failed_csv")


def _prefect_side() -> None:
    url, how = prefect_api_url()
    if url is None:
        st.info("**No Prefect API is configured**, so the scoring service's flow runs cannot be shown. "
                "Set PREFECT_API_URL (for example http://prefect.example.org:4200/api) for the dashboard, "
                "or run `cbctqa serve`, which starts a local Prefect server. The XNAT-side counts above "
                "do not need Prefect.", icon=":material/link_off:")  # fmt: skip
        return
    try:
        runs = prefect_runs(url)
    except requests.RequestException as exc:
        st.error(f"**The Prefect API at {url} ({how}) does not answer:** {redact(str(exc))[:200] or type(exc).__name__}. Check that the "
                 "Prefect server is running and the URL is right.", icon=":material/error:")  # fmt: skip
        if st.button("Retry", key="pl_retry"):
            prefect_runs.clear()
            st.rerun()
        return
    st.caption(f"Prefect API: {url} ({how}); read every 15 s.")
    ours = runs[runs["flow"].isin(FLOW_NAMES)]
    if ours.empty:
        st.info(f"Prefect has no runs of {', '.join(FLOW_NAMES)} yet: the scoring service has not run. "
                "Start it with `cbctqa serve --project P`.")  # fmt: skip
        return
    by_state = ours.groupby(["flow", "state"]).size().unstack(fill_value=0)
    st.dataframe(by_state, width="stretch", key="pl_states")
    tp = throughput_per_hour(ours)
    st.altair_chart(alt.Chart(tp, title="Sessions scored per hour (completed score_session runs, last 24 h)")
                    .mark_bar().encode(x=alt.X("hour:T", title="hour (UTC)"),
                                       y=alt.Y("sessions:Q", title="sessions scored")),
                    width="stretch", key="pl_throughput")  # fmt: skip
    st.markdown("**Recent flow runs**")
    recent = ours.head(100)
    st.dataframe(recent, hide_index=True, width="stretch", key="pl_runs")
    ui.csv_button(recent, "prefect_flow_runs", key="pl_runs_csv")


def render() -> None:
    _gw, snap = ui.snapshot_or_stop()
    version = st.session_state.get("model_version")
    st.subheader("Sessions in XNAT" + (f" (model {version})" if version else ""))
    _xnat_side(snap, version)
    st.subheader("Scoring service (Prefect)")
    _prefect_side()
    st.caption(f"Checked {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M:%S} UTC.")


if __name__ == "__main__":
    ui.page("Pipeline", render, caption="Automatic scoring: queue, failures and Prefect flow runs.")
