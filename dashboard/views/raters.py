"""Raters: the radiologists' ratings, their agreement, the consensus weights, and the rating form.

Agreement per category: ICC(2,1) (two-way random effects, absolute agreement, single rater)
with its 95 % interval, and Krippendorff's α for ordinal data (``qa_core.agreement``). The
consensus is the weighted mean of the raters' scores (``qa_core.consensus``) with the weights
listed here. A radiologist signed in with their own XNAT account rates a session with five
Likert scores and a comment; it is stored as their ``cbctqa:ratingData`` (label
``{session}_rating_{user}``), so rating again updates it and never adds a second one.
"""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from dashboard import auth, data, ui
from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
from qa_core.errors import CbctQaError

__all__ = ["agreement_frame", "per_rater_frame", "render"]

_LIKERT = list(range(LIKERT_MIN, LIKERT_MAX + 1))
_LIKERT_WORDS = {1: "1 non-diagnostic", 2: "2 poor", 3: "3 acceptable", 4: "4 good", 5: "5 excellent"}


def per_rater_frame(snap: data.Snapshot) -> pd.DataFrame:
    """Sessions rated and mean score per category, per rater."""
    rows = []
    for r in snap.ratings:
        rows += [{"rater": r.rater, "session": r.session_label, "category": c, "score": s} for c, s in r.scores.items()]
    if not rows:
        return pd.DataFrame(columns=["rater", "sessions rated", *CATEGORIES])
    long = pd.DataFrame(rows)
    means = long.pivot_table(index="rater", columns="category", values="score", aggfunc="mean")
    means = means.reindex(columns=[c for c in CATEGORIES if c in means.columns]).round(2)
    means.insert(0, "sessions rated", long.groupby("rater")["session"].nunique())
    return means.reset_index()


def agreement_frame(snap: data.Snapshot) -> pd.DataFrame:
    """ICC(2,1) with CI and ordinal Krippendorff's α per category."""
    from qa_core.agreement import agreement_by_category

    rows = [{"session": r.session_label, "rater": r.rater, "category": c, "score": s}
            for r in snap.ratings for c, s in r.scores.items()]  # fmt: skip
    if not rows:
        return pd.DataFrame()
    out = []
    for cat, ag in agreement_by_category(rows).items():
        icc, alpha = ag.icc, ag.alpha

        def f(v: float | None) -> str:
            return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"

        out.append({
            "category": cat, "sessions": ag.n_sessions, "raters": ag.n_raters,
            "ICC(2,1)": f(icc.icc if icc else None),
            "ICC 95% CI": f"[{f(icc.ci_low)}, {f(icc.ci_high)}]" if icc else "n/a",
            "Krippendorff's α (ordinal)": f(alpha.alpha if alpha else None),
            "notes": "; ".join(ag.warnings),
        })  # fmt: skip
    return pd.DataFrame(out)


def _rating_form(snap: data.Snapshot) -> None:
    gw = auth.writer()
    st.subheader("Rate a session")
    if gw is None:
        st.info("Sign in with your own XNAT account (sidebar) to rate sessions. Your rating is stored in "
                "XNAT under your account, and rating a session again updates your rating.",
                icon=":material/lock:")  # fmt: skip
        return
    me = gw.user
    mine = {r.session_label: r for r in snap.ratings if r.rater == me}
    labels = [s.label for s in snap.sessions]
    if not labels:
        st.info("There is no session to rate in this project yet.")
        return
    todo = [lbl for lbl in labels if lbl not in mine]
    st.caption(f"You ({me}) have rated {len(mine)} of {len(labels)} sessions; {len(todo)} await your rating.")
    if st.session_state.get("rt_session") not in labels:
        st.session_state["rt_session"] = todo[0] if todo else labels[0]
    label = st.selectbox("Session", labels, key="rt_session",
                         format_func=lambda s: f"{s} (rated by you)" if s in mine else s)  # fmt: skip
    previous = mine.get(label)
    details = next(s for s in snap.sessions if s.label == label)
    with st.form(f"rt_form_{label}"):
        st.markdown(f"**{label}** · acquired {details.acquisition_date or 'unknown'} · "
                    + ("editing your rating" if previous else "new rating"))  # fmt: skip
        scores: dict[str, int | None] = {}
        cols = st.columns(len(CATEGORIES))
        for col, cat in zip(cols, CATEGORIES, strict=True):
            old = previous.scores.get(cat) if previous else None
            scores[cat] = col.radio(cat, _LIKERT, index=None if old is None else _LIKERT.index(old),
                                    key=f"rt_{label}_{cat}", format_func=lambda v: _LIKERT_WORDS[v])  # fmt: skip
        comment = st.text_area("Comment", value=previous.comments if previous else "", key=f"rt_{label}_comment",
                               max_chars=2000)  # fmt: skip
        if st.form_submit_button("Save my rating" if not previous else "Update my rating", type="primary"):
            given = {c: int(v) for c, v in scores.items() if v is not None}
            if len(given) < len(CATEGORIES):
                missing = [c for c in CATEGORIES if c not in given]
                st.error(f"Give a score for every category; missing: {', '.join(missing)}.")
                return
            try:
                gw.write_rating(details.ref(), me, given, comments=comment or None)
            except CbctQaError as exc:
                ui.show_failure(exc, key="rt_write")
                return
            data.clear_caches()
            st.toast(f"Saved your rating of {label} in XNAT.")
            st.rerun()


def render() -> None:
    _gw, snap = ui.snapshot_or_stop()
    version = st.session_state.get("model_version")
    if not snap.ratings:
        st.info(f"No radiologist has rated a session of {snap.project} yet. Agreement and consensus appear "
                "once sessions are rated (below, or with XNAT's rating form).", icon=":material/rate_review:")  # fmt: skip
    else:
        st.subheader("Ratings per rater")
        per = per_rater_frame(snap)
        st.dataframe(per, hide_index=True, width="stretch", key="rt_per_rater")
        st.caption("Mean Likert score per category (1 = non-diagnostic … 5 = excellent).")
        ui.csv_button(per, f"{snap.project}_ratings_per_rater", key="rt_csv_per")
        st.subheader("Agreement between raters")
        agreement = agreement_frame(snap)
        st.dataframe(agreement, hide_index=True, width="stretch", key="rt_agreement")
        st.caption("ICC(2,1): two-way random effects, absolute agreement, single rater (1 = perfect). "
                   "Krippendorff's α treats the Likert scale as ordinal and tolerates missing ratings.")  # fmt: skip
        ui.csv_button(agreement, f"{snap.project}_agreement", key="rt_csv_agreement")
        table = data.consensus_table(snap)
        st.subheader("Consensus weights")
        weights = pd.DataFrame([{"rater": n, "weight": w, "source": dict(table.weight_sources)[n]}
                                for n, w in table.rater_weights])  # fmt: skip
        st.dataframe(weights, hide_index=True, key="rt_weights")
        st.caption("Consensus = Σ weight × score / Σ weight over the raters of a session. Source 'default' "
                   "means every rater counts equally.")  # fmt: skip
    sessions = data.session_frame(snap, version)
    awaiting = sessions[(sessions["status"] == "complete") & (sessions["ratings"] == 0)]
    st.subheader(f"Sessions awaiting ratings ({len(awaiting)})")
    if awaiting.empty:
        st.caption("Every scored session has at least one rating.")
    else:
        st.dataframe(awaiting[["session", "acquired", "scanner"]], hide_index=True, width="stretch",
                     key="rt_awaiting", column_config={"acquired": st.column_config.DateColumn("acquired")})  # fmt: skip
    _rating_form(snap)


if __name__ == "__main__":
    ui.page("Raters", render, caption="Ratings, agreement between raters, consensus weights; rate a session.")
