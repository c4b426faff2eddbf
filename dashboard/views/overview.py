"""Overview: does Attribution Energy track the radiologists' consensus, per category?

Counts of the project's sessions (scored, failed, awaiting scoring, awaiting ratings), the
interactive AE-against-consensus scatter of one category (hover names the session; clicking a
point opens its case), and the statistics table for every category: the study's protocol
(full-sample Spearman ρ, leave-one-out median ρ and p) beside better statistics (permutation p,
BCa interval, Holm and Benjamini-Hochberg, partial ρ given the model's prediction) and the
study's published row, with the verdict in words.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, ui

__all__ = ["STUDY_COLUMNS", "counts", "render", "stats_frame"]

_WAIT_FOR_STATS_S = 1.0
_WAIT_MAX_SESSIONS = 100


def counts(sessions: pd.DataFrame) -> dict[str, int]:
    """Sessions in the project, scored (complete), failed, awaiting scoring, awaiting ratings."""
    status = sessions["status"]
    complete = status == "complete"
    return {
        "sessions": len(sessions),
        "scored": int(complete.sum()),
        "failed": int((status == "failed").sum()),
        "awaiting scoring": int(status.isin(["not scored", "queued", "running"]).sum()),
        "awaiting ratings": int((complete & (sessions["ratings"] == 0)).sum()),
    }


def _p(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def _r(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def stats_frame(analysis: Any) -> pd.DataFrame:
    """One row per analysed category: our numbers beside the study's published ones."""
    rows = []
    for a in analysis.results:
        study = a.study
        rows.append(
            {
                "category": a.category,
                "n": a.n,
                "ρ": _r(a.rho),
                "p (t)": _p(a.p),
                "LOO median ρ": _r(a.loo_median_rho),
                "LOO median p": _p(a.loo_median_p),
                "study ρ (LOO median)": _r(study.rho) if study else "n/a",
                "study p": study.p_text if study else "n/a",
                "permutation p": _p(a.perm_p),
                f"BCa {a.ci_level:.0%} CI": f"[{_r(a.ci_low)}, {_r(a.ci_high)}]",
                "Holm p": _p(a.p_holm),
                "BH p": _p(a.p_bh),
                "partial ρ | prediction": _r(a.partial_rho),
                "partial p (Holm)": _p(a.partial_p_holm),
                "ρ(AE, prediction)": _r(a.rho_ae_pred),
                "verdict": a.verdict_code.replace("_", " "),
            }
        )
    return pd.DataFrame(rows)


#: Columns of the two views of :func:`stats_frame`.
STUDY_COLUMNS = ["category", "n", "ρ", "p (t)", "LOO median ρ", "LOO median p", "study ρ (LOO median)", "study p"]


def _scatter(frame: pd.DataFrame, category: str) -> Any:
    sub = frame.loc[(frame["category"] == category) & frame["consensus"].notna(),
                    ["session", "consensus", "ae", "predicted", "scanner", "outlier"]].copy()
    sub["flag"] = sub["outlier"].map({True: "outlier", False: "typical"})
    pick = alt.selection_point(fields=["session"], name="pick", on="click")
    return (
        alt.Chart(sub, title=f"{category}: AE against consensus ({len(sub)} sessions)")
        .mark_circle(size=80, opacity=0.85)
        .encode(
            x=alt.X("consensus:Q", title="consensus Likert score (weighted mean of raters; 5 = best)",
                    scale=alt.Scale(domain=[0.8, 5.2])),
            y=alt.Y("ae:Q", title="Attribution Energy (sum of raw Grad-CAM)"),
            color=alt.Color("flag:N", title="",
                            scale=alt.Scale(domain=["typical", "outlier"], range=["#4c78a8", "#e45756"])),
            tooltip=[alt.Tooltip("session:N", title="session"),
                     alt.Tooltip("consensus:Q", format=".2f"),
                     alt.Tooltip("ae:Q", title="AE", format=".4g"),
                     alt.Tooltip("predicted:Q", title="predicted score", format=".2f"),
                     alt.Tooltip("scanner:N")],
        )
        .add_params(pick)
        .properties(height=380, usermeta={"embedOptions": {"renderer": "svg"}})
    )


def _draw_scatter(frame: pd.DataFrame, category: str) -> Any:
    def draw(ax: Any) -> None:
        sub = frame[(frame["category"] == category) & frame["consensus"].notna()]
        typical, flagged = sub[~sub["outlier"]], sub[sub["outlier"]]
        ax.scatter(typical["consensus"], typical["ae"], s=18, color="#4c78a8", label="typical")
        ax.scatter(flagged["consensus"], flagged["ae"], s=30, color="#e45756", label="outlier")
        ax.set_xlabel("consensus Likert score (5 = best)")
        ax.set_ylabel("Attribution Energy")
        ax.set_title(f"{category}: AE against consensus (n={len(sub)})")
        ax.legend()

    return draw


def _statistics(job: data.AnalysisJob, project: str) -> None:
    try:
        analysis = job.result()
    except Exception as exc:
        st.warning(f"The statistics cannot be computed yet: {exc}", icon=":material/info:")
        return
    table = stats_frame(analysis)
    st.markdown("**The study's protocol, beside the study's published figures**")
    st.dataframe(table[STUDY_COLUMNS], hide_index=True, width="stretch", key="ov_stats_study")
    st.markdown("**Better statistics**")
    better = table[["category", *[c for c in table.columns if c not in STUDY_COLUMNS]]]
    st.dataframe(better, hide_index=True, width="stretch", key="ov_stats")
    st.caption(
        "ρ: Spearman rank correlation of AE with consensus (higher = AE tracks image quality). "
        "p (t): scipy's Student-t p. LOO: the study's protocol, medians over the leave-one-out subsets "
        "(reproduction only; the median p is not a calibrated p value). Study: the published figures "
        "(n=16). Permutation p (two-sided) is valid with the ties of weighted consensus; Holm and BH "
        "adjust it across the categories; BCa: bias-corrected bootstrap interval of ρ. Partial ρ asks "
        "whether AE says anything beyond the model's predicted score; ρ(AE, prediction) how much AE "
        f"restates it. Computed in {job.seconds:.1f} s."
    )
    ui.csv_button(table, f"{project}_ae_vs_consensus_statistics", key="ov_stats_csv",
                  label="Download statistics (CSV)")  # fmt: skip
    st.markdown("**Verdicts**")
    for a in analysis.results:
        icon = ":material/check_circle:" if a.verdict_code == "tracks" else (
            ":material/warning:" if a.ae_tracks_consensus else ":material/cancel:")
        st.markdown(f"{icon} {a.verdict}")
    for cat, why in analysis.skipped:
        st.markdown(f":material/remove: {cat}: not analysed — {why}.")


def render() -> None:
    _gw, snap = ui.snapshot_or_stop()
    version = st.session_state.get("model_version")
    sessions = data.session_frame(snap, version)
    c = counts(sessions)
    cols = st.columns(5)
    cols[0].metric("CT sessions", c["sessions"])
    cols[1].metric("scored", c["scored"])
    cols[2].metric("failed", c["failed"], help="Scoring failed; reasons on the Pipeline and Case pages.")
    cols[3].metric("awaiting scoring", c["awaiting scoring"])
    cols[4].metric("awaiting ratings", c["awaiting ratings"], help="Scored but not rated by anyone yet.")
    if c["sessions"] == 0:
        st.info(
            f"Project {snap.project} has no CT sessions yet. They appear here once the scanner or PACS "
            "sends them to XNAT and the scoring service has scored them.",
            icon=":material/inbox:",
        )
        return
    if not version or c["scored"] == 0:
        st.info(
            f"No session of project {snap.project} has been scored yet"
            + (f" by model {version}" if version else "")
            + ". Start the scoring service (`cbctqa serve`) or score the pending sessions "
            "(`cbctqa score-pending --project " + snap.project + "`).",
            icon=":material/hourglass_empty:",
        )
        return
    frame = data.cohort_frame(snap, version)
    rows, rows_key = data.rated_rows(snap, version)
    if not rows:
        st.info(
            f"Project {snap.project} has no radiologists' ratings of scored sessions yet, so AE cannot "
            "be compared with the consensus. Radiologists rate sessions on the **Raters** page "
            "(or in XNAT's rating form).",
            icon=":material/rate_review:",
        )
        return
    category = ui.category_picker("ov")
    sub = frame[frame["category"] == category]
    st.markdown(f"**{category}**: {int(sub['consensus'].notna().sum())} rated of {len(sub)} scored sessions; "
                f"{int(sub['outlier'].sum())} flagged as outliers (red).")  # fmt: skip
    event = st.altair_chart(_scatter(frame, category), key=f"ov_scatter_{category}",
                            on_select="rerun", selection_mode="pick", width="stretch")  # fmt: skip
    st.caption("Hover a point for its session; click it to open the case.")
    picked = (event.get("selection", {}) if isinstance(event, dict) else {}).get("pick") or []
    if picked and picked[0].get("session"):
        ui.open_case(str(picked[0]["session"]))
    b1, b2, _ = st.columns([1, 1, 2])
    with b1:
        ui.png_button(_draw_scatter(frame, category), f"{snap.project}_{category}_ae_vs_consensus",
                      key="ov_png")  # fmt: skip
    with b2:
        ui.csv_button(sub, f"{snap.project}_{category}_cohort", key="ov_cohort_csv",
                      label="Download points (CSV)")  # fmt: skip
    st.subheader("AE against consensus: the study's statistics and better ones")
    n_sessions = int(frame.loc[frame["consensus"].notna(), "session"].nunique())
    # small cohorts: wait a moment so the table appears with the page; large ones never block it
    job = data.analysis_job(rows, key=rows_key,
                            wait_s=_WAIT_FOR_STATS_S if n_sessions <= _WAIT_MAX_SESSIONS else 0.0)
    if job.done:
        _statistics(job, snap.project)
        return

    @st.fragment(run_every=2.0)
    def pending() -> None:
        current = data.analysis_job(rows, key=rows_key)
        if current.done:
            st.rerun(scope="app")
        st.info(
            f"Computing the statistics for {n_sessions} rated sessions × "
            f"{len({r['category'] for r in rows})} categories ({data.ANALYSIS_RESAMPLES} permutations "
            f"and bootstrap resamples); running for {current.seconds:.0f} s. The table appears here "
            "by itself when ready.",
            icon=":material/hourglass_top:",
        )

    pending()

if __name__ == "__main__":
    ui.page("Overview", render, caption="Attribution Energy against the radiologists' consensus, per category.")
