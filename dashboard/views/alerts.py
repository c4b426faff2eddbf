"""Alerts: the outlier flags of the monitoring, newest first, and their acknowledgement.

Each alert is one flagged category of one session's assessment, with the reason the monitoring
gave. A signed-in person acknowledges it with a comment; the acknowledgement (who, when,
comment) is stored on the assessment in XNAT and the flag itself stays. Acknowledged alerts are
hidden unless "Show acknowledged" is on.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import auth, data, ui
from qa_core.errors import CbctQaError

__all__ = ["alerts_frame", "render"]


def alerts_frame(frame: pd.DataFrame, *, show_acknowledged: bool) -> pd.DataFrame:
    """Flagged (session, category) rows, newest first (flag written, then acquisition)."""
    flagged = frame[frame["outlier"]].copy()
    flagged["acknowledged"] = flagged["acknowledged_by"] != ""
    if not show_acknowledged:
        flagged = flagged[~flagged["acknowledged"]]
    return flagged.sort_values(["flagged_at", "acquired", "session", "category"],
                               ascending=[False, False, True, True], na_position="last")  # fmt: skip


def _acknowledge(snap: data.Snapshot, row: pd.Series) -> None:
    from xnat_plugin.gateway import acknowledge_alert

    gw = auth.writer()
    st.markdown(f"**{row['session']} · {row['category']}** — {row['outlier_reason'] or 'no reason recorded'}")
    if row["acknowledged_by"]:
        st.caption(f"Acknowledged by {row['acknowledged_by']} on {row['acknowledged_at']:%Y-%m-%d %H:%M} UTC: "
                   f"{row['ack_comment'] or '(no comment)'}")  # fmt: skip
    if st.button("Open this case", key="al_open", icon=":material/radiology:"):
        ui.open_case(str(row["session"]))
    if gw is None:
        st.info("Sign in with your own XNAT account (sidebar) to acknowledge alerts; the acknowledgement "
                "is recorded in XNAT under your name.", icon=":material/lock:")  # fmt: skip
        return
    with st.form("al_ack_form", clear_on_submit=True):
        comment = st.text_area("Comment", key="al_comment", max_chars=1000,
                               placeholder="e.g. checked the scan: metal artefact from a dental filling, image usable")  # fmt: skip
        if st.form_submit_button("Acknowledge as " + gw.user, type="primary"):
            assessment = next(a for a in snap.assessments if a.assessor_id == row["assessor_id"])
            try:
                acknowledge_alert(gw, assessment, str(row["category"]), comment)
            except CbctQaError as exc:
                ui.show_failure(exc, key="al_ack")
                return
            data.clear_caches()
            st.toast(f"Acknowledged the {row['category']} alert on {row['session']}.")
            st.rerun()


def render() -> None:
    _gw, snap = ui.snapshot_or_stop()
    version = st.session_state.get("model_version")
    if not version:
        st.info(f"No session of project {snap.project} has been scored yet, so there are no alerts.")
        return
    frame = data.cohort_frame(snap, version)
    show = st.toggle("Show acknowledged alerts", key="al_show_ack", value=False)
    table = alerts_frame(frame, show_acknowledged=show)
    total = int(frame["outlier"].sum()) if not frame.empty else 0
    acked = int((frame["outlier"] & (frame["acknowledged_by"] != "")).sum()) if not frame.empty else 0
    st.markdown(f"**{total - acked} open alert(s)**, {acked} acknowledged, in {snap.project} "
                f"(model {version}).")  # fmt: skip
    if table.empty:
        st.success("No open alerts: no session's attribution is atypical for the cohort."
                   if total == 0 else "Every alert has been acknowledged. Turn on "
                   "'Show acknowledged alerts' to see them.", icon=":material/check_circle:")  # fmt: skip
        return
    shown = table[["session", "category", "acquired", "scanner", "flagged_at", "acknowledged_by",
                   "ack_comment", "outlier_reason"]].rename(columns={
        "outlier_reason": "reason", "flagged_at": "flag written", "acknowledged_by": "acknowledged by",
        "ack_comment": "comment"})  # fmt: skip
    if not show:
        shown = shown.drop(columns=["acknowledged by", "comment"])
    ids = [f"{a}|{c}" for a, c in zip(table["assessor_id"], table["category"], strict=True)]
    labels = dict(zip(ids, [f"{s} · {c}" for s, c in zip(table["session"], table["category"], strict=True)],
                      strict=True))  # fmt: skip

    def picked_from_table() -> None:
        rows = list(st.session_state["al_table"].selection.rows)
        if rows:
            st.session_state["al_pick"] = ids[int(rows[0])]

    st.dataframe(shown, hide_index=True, width="stretch", key="al_table", on_select=picked_from_table,
                 selection_mode="single-row",
                 column_config={"acquired": st.column_config.DateColumn("acquired"),
                                "flag written": st.column_config.DatetimeColumn("flag written",
                                                                                format="YYYY-MM-DD HH:mm"),
                                "reason": st.column_config.TextColumn("reason", width="large")})  # fmt: skip
    ui.csv_button(shown, f"{snap.project}_alerts", key="al_csv")
    if st.session_state.get("al_pick") not in ids:
        st.session_state["al_pick"] = None
    choice = st.selectbox("Alert to open or acknowledge", ids, key="al_pick", format_func=lambda i: labels.get(i, str(i)),
                          placeholder="select a row above, or choose here")  # fmt: skip
    if choice is None:
        return
    _acknowledge(snap, table.iloc[ids.index(choice)])

if __name__ == "__main__":
    ui.page("Alerts", render, caption="Sessions whose Attribution Energy is atypical for the cohort.")
