"""Trends: AE per voxel and predicted score per category over acquisition date, under SPC.

Filters: scanner station, scanner model, acquisition date range, category, metric. Each chart
is a robust individuals chart (:mod:`dashboard.spc`): median centre line, limits at ±3 σ̂ with
σ̂ = 1.4826 × MAD; sessions outside the limits are marked and listed; clicking a point opens its
case.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, spc, ui

__all__ = ["METRICS", "render", "spc_frame"]

#: Metric column -> axis title.
METRICS: dict[str, str] = {
    "ae_per_voxel": "AE per voxel (raw Grad-CAM sum / map cells)",
    "predicted": "predicted Likert score (5 = best)",
}


def spc_frame(frame: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, spc.ControlLimits]:
    """Sessions in acquisition order with the metric, limits and an ``out`` column."""
    sub = frame.dropna(subset=["acquired"]).sort_values(["acquired", "session"]).copy()
    limits = spc.control_limits(sub[metric].to_numpy(dtype=float), floor=0.0 if metric.startswith("ae") else 1.0)
    sub["out"] = limits.out
    sub["state"] = sub["out"].map({True: "outside limits", False: "in control"})
    return sub, limits


def _chart(sub: pd.DataFrame, limits: spc.ControlLimits, metric: str, category: str) -> Any:
    pick = alt.selection_point(fields=["session"], name="pick", on="click")
    base = alt.Chart(sub)
    line = base.mark_line(color="#9aa5b1", strokeWidth=1).encode(x="acquired:T", y=f"{metric}:Q")
    points = base.mark_circle(size=60).encode(
        x=alt.X("acquired:T", title="acquisition date"),
        y=alt.Y(f"{metric}:Q", title=METRICS[metric], scale=alt.Scale(zero=False)),
        color=alt.Color("state:N", title="", scale=alt.Scale(domain=["in control", "outside limits"],
                                                              range=["#4c78a8", "#e45756"])),
        tooltip=[alt.Tooltip("session:N"), alt.Tooltip("acquired:T", title="acquired"),
                 alt.Tooltip(f"{metric}:Q", format=".4g"), alt.Tooltip("scanner:N")],
    ).add_params(pick)  # fmt: skip
    rules = pd.DataFrame({"y": [limits.lower, limits.centre, limits.upper],
                          "line": ["lower limit", "centre (median)", "upper limit"]})  # fmt: skip
    rule = alt.Chart(rules).mark_rule(strokeDash=[6, 4]).encode(
        y="y:Q", color=alt.Color("line:N", title="", scale=alt.Scale(
            domain=["lower limit", "centre (median)", "upper limit"], range=["#f58518", "#54a24b", "#f58518"])),
        tooltip=[alt.Tooltip("line:N"), alt.Tooltip("y:Q", format=".4g")])  # fmt: skip
    return alt.layer(line, points, rule, title=f"{category}: {METRICS[metric]}").resolve_scale(color="independent")


def _draw(sub: pd.DataFrame, limits: spc.ControlLimits, metric: str, category: str) -> Any:
    def draw(ax: Any) -> None:
        ax.plot(sub["acquired"], sub[metric], color="#9aa5b1", lw=1)
        inside, out = sub[~sub["out"]], sub[sub["out"]]
        ax.scatter(inside["acquired"], inside[metric], s=18, color="#4c78a8", label="in control")
        ax.scatter(out["acquired"], out[metric], s=30, color="#e45756", label="outside limits")
        for y, style in ((limits.lower, "--"), (limits.centre, "-"), (limits.upper, "--")):
            ax.axhline(y, ls=style, color="#f58518" if style == "--" else "#54a24b", lw=1)
        ax.set_xlabel("acquisition date")
        ax.set_ylabel(METRICS[metric])
        ax.set_title(f"{category}: {METRICS[metric]} (median ± 3 × 1.4826 MAD)")
        ax.legend()

    return draw


def render() -> None:
    _gw, snap = ui.snapshot_or_stop()
    version = st.session_state.get("model_version")
    if not version:
        st.info(f"No session of project {snap.project} has been scored yet; trends appear once sessions "
                "are scored.", icon=":material/hourglass_empty:")  # fmt: skip
        return
    frame = data.cohort_frame(snap, version)
    if frame.empty:
        st.info(f"No complete assessment by model {version} in project {snap.project} yet.",
                icon=":material/hourglass_empty:")  # fmt: skip
        return
    dated = frame.dropna(subset=["acquired"])
    if dated.empty:
        st.warning("No scored session has an acquisition date (DICOM StudyDate) in XNAT, so nothing can "
                   "be plotted over time.")  # fmt: skip
        return
    c1, c2, c3 = st.columns(3)
    stations = sorted(frame["station"].unique())
    models = sorted(frame["model"].unique())
    chosen_st = c1.multiselect("Scanner station", stations, default=stations, key="tr_station",
                               help="DICOM StationName as XNAT archived it.")  # fmt: skip
    chosen_mo = c2.multiselect("Scanner model", models, default=models, key="tr_model",
                               help="DICOM Manufacturer and ManufacturerModelName.")  # fmt: skip
    lo = dated["acquired"].min().date()
    hi = dated["acquired"].max().date()
    span = c3.date_input("Acquisition dates", value=(lo, hi), min_value=lo, max_value=hi, key="tr_dates")
    c4, c5 = st.columns([3, 2])
    with c4:
        category = ui.category_picker("tr")
    metric = c5.radio("Metric", list(METRICS), key="tr_metric", horizontal=True,
                      format_func=lambda m: "AE per voxel" if m == "ae_per_voxel" else "predicted score")  # fmt: skip
    start, end = (span if isinstance(span, tuple) and len(span) == 2 else (lo, hi))
    mask = (
        (frame["category"] == category)
        & frame["station"].isin(chosen_st)
        & frame["model"].isin(chosen_mo)
        & (frame["acquired"] >= pd.Timestamp(start))
        & (frame["acquired"] <= pd.Timestamp(end if isinstance(end, _dt.date) else hi))
    )
    sel = frame[mask]
    if sel.empty:
        st.info("No scored session matches these filters. Widen the date range or choose more scanners.")
        return
    sub, limits = spc_frame(sel, metric)
    event = st.altair_chart(_chart(sub, limits, metric, category), key=f"tr_chart_{category}_{metric}",
                            on_select="rerun", selection_mode="pick", width="stretch")  # fmt: skip
    picked = (event.get("selection", {}) if isinstance(event, dict) else {}).get("pick") or []
    if picked and picked[0].get("session"):
        ui.open_case(str(picked[0]["session"]))
    st.caption(f"{spc.RULE} Here: centre {limits.centre:.4g}, σ̂ {limits.sigma:.3g} ({limits.sigma_method}), "
               f"limits [{limits.lower:.4g}, {limits.upper:.4g}], {len(sub)} sessions. Click a point to "
               "open its case.")  # fmt: skip
    out = sub[sub["out"]]
    st.markdown(f"**{len(out)} session(s) outside the control limits**")
    if not out.empty:
        st.dataframe(out[["session", "acquired", "scanner", metric, "predicted", "consensus"]],
                     hide_index=True, width="stretch", key="tr_out", column_config={"acquired": st.column_config.DateColumn("acquired")})  # fmt: skip
    b1, b2 = st.columns(2)
    with b1:
        ui.png_button(_draw(sub, limits, metric, category), f"{snap.project}_{category}_{metric}_spc",
                      key="tr_png")  # fmt: skip
    with b2:
        ui.csv_button(sub.drop(columns=["state"]), f"{snap.project}_{category}_{metric}_trend", key="tr_csv")


if __name__ == "__main__":
    ui.page("Trends", render, caption="Statistical process control of AE and predicted scores over time.")
