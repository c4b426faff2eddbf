"""Entry file of the CBCT QA dashboard: it only sets up the session and routes to the pages.

Run with ``cbctqa dashboard [--host H] [--port N] [--project P]`` (or
``streamlit run dashboard/app.py``). Pages live in :mod:`dashboard.views`, one module each;
data access in :mod:`dashboard.data`, sign-in in :mod:`dashboard.auth`.
"""

from __future__ import annotations

import os

import streamlit as st

from dashboard.ui import PAGE_FILES, init_state, render_sidebar

st.set_page_config(page_title="CBCT QA monitor", page_icon=":material/monitor_heart:", layout="wide")
init_state(os.environ.get("CBCTQA_DASHBOARD_PROJECT") or None)

_PAGES = [
    st.Page(PAGE_FILES["overview"], title="Overview", icon=":material/scatter_plot:", default=True),
    st.Page(PAGE_FILES["trends"], title="Trends", icon=":material/show_chart:"),
    st.Page(PAGE_FILES["alerts"], title="Alerts", icon=":material/notifications:"),
    st.Page(PAGE_FILES["case"], title="Case", icon=":material/radiology:"),
    st.Page(PAGE_FILES["raters"], title="Raters", icon=":material/groups:"),
    st.Page(PAGE_FILES["pipeline"], title="Pipeline", icon=":material/conveyor_belt:"),
    st.Page(PAGE_FILES["model"], title="Model", icon=":material/model_training:"),
]

navigation = st.navigation(_PAGES)
render_sidebar()
navigation.run()
