"""Shared page furniture: session-state keys, the sidebar, failure messages, exports.

Every page body runs inside :func:`page`, which turns any failure into one clear message with
what to do and a retry button: XNAT unreachable, credentials rejected, no permission, no
XNAT configured, empty project. A traceback is never shown in the browser (it goes to the
server log).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
import streamlit as st

from dashboard import auth, data
from qa_core import __version__
from qa_core.errors import CbctQaError
from qa_core.logs import redact

if TYPE_CHECKING:
    from xnat_plugin.gateway import XnatGateway

__all__ = [
    "PAGE_FILES",
    "category_picker",
    "csv_button",
    "init_state",
    "open_case",
    "page",
    "png_button",
    "render_sidebar",
    "snapshot_or_stop",
]

logger = logging.getLogger("dashboard")

#: Page files, relative to the entry file (``st.Page`` and ``AppTest.switch_page`` paths).
PAGE_FILES: dict[str, str] = {
    "overview": "views/overview.py",
    "trends": "views/trends.py",
    "alerts": "views/alerts.py",
    "case": "views/case.py",
    "raters": "views/raters.py",
    "pipeline": "views/pipeline.py",
    "model": "views/model.py",
}

_DEFAULTS: dict[str, Any] = {
    "project": None,
    "model_version": None,
    "case_session": None,
    "category": "overall",
    "_data_epoch": 0,
}


def init_state(default_project: str | None = None) -> None:
    """Set every shared session-state key once (entry file, top)."""
    for key, value in _DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value
    if st.session_state["project"] is None and default_project:
        st.session_state["project"] = default_project


# ------------------------------------------------------------------------------ failures


def _explain(exc: BaseException) -> tuple[str, str]:
    """(what failed, what to do) for a failure, in words."""
    from xnat_plugin.gateway import (
        XnatAuthenticationError,
        XnatConfigurationError,
        XnatConnectionError,
        XnatNotFoundError,
        XnatPermissionError,
        XnatServerError,
    )

    text = redact(str(exc))
    if isinstance(exc, XnatConfigurationError):
        return (f"XNAT is not configured for this dashboard: {text}.",
                "Sign in with your XNAT account in the sidebar, or start the dashboard with "
                "XNAT_HOST and XNAT_USER/XNAT_PASS (or a ~/.netrc entry) set.")  # fmt: skip
    if isinstance(exc, XnatConnectionError):
        return (f"XNAT cannot be reached: {text}",
                "Check that XNAT is running and that XNAT_HOST is right, then press Retry.")  # fmt: skip
    if isinstance(exc, XnatAuthenticationError):
        return (f"XNAT rejected the credentials: {text}",
                "Sign in again with your XNAT username and password, or fix XNAT_USER/XNAT_PASS "
                "(or ~/.netrc) and restart the dashboard.")  # fmt: skip
    if isinstance(exc, XnatPermissionError):
        return (f"XNAT refused access: {text}",
                "Ask a project owner for Member access to this project, or choose another project.")  # fmt: skip
    if isinstance(exc, XnatNotFoundError):
        return (f"Not found in XNAT: {text}", "Choose another project or session, or press Retry.")
    if isinstance(exc, XnatServerError):
        return (f"XNAT is failing: {text}", "Retry in a minute; if it persists, check the XNAT server logs.")
    if isinstance(exc, CbctQaError):
        return (text, "Fix what the message names, then press Retry.")
    return (f"Unexpected error ({type(exc).__name__}); the details are in the dashboard's log.",
            "Press Retry; if it happens again, report it with the dashboard log.")  # fmt: skip


def show_failure(exc: BaseException, *, key: str) -> None:
    """One error message saying what failed and what to do, with a Retry button."""
    what, todo = _explain(exc)
    st.error(f"**{what}**\n\n{todo}", icon=":material/error:")
    if st.button("Retry", key=f"retry_{key}", icon=":material/refresh:"):
        data.clear_caches()
        st.rerun()


def page(title: str, body: Callable[[], None], *, caption: str = "") -> None:
    """Run one page: title, then ``body()``; any failure becomes a message with Retry."""
    st.title(title)
    if caption:
        st.caption(caption)
    try:
        body()
    except Exception as exc:
        if not isinstance(exc, CbctQaError):
            logger.exception("page %s failed", title)
        else:
            logger.warning("page %s: %s", title, redact(str(exc)))
        show_failure(exc, key=title)


# ------------------------------------------------------------------------------ data access


def snapshot_or_stop() -> tuple[XnatGateway, data.Snapshot]:
    """The reader gateway and the chosen project's snapshot; stops the page with a message
    when no project is chosen or visible."""
    gw = auth.reader()
    project = st.session_state.get("project")
    if not project:
        st.info(
            "No project chosen. Pick an XNAT project in the sidebar "
            "(only projects your XNAT account may see are listed).",
            icon=":material/folder_open:",
        )
        st.stop()
    return gw, data.load_snapshot(gw, str(project))


def category_picker(page_key: str) -> str:
    """The category buttons of a page; the choice is shared by every page."""
    from qa_core.categories import CATEGORIES

    widget = f"{page_key}_category"
    if widget not in st.session_state:
        st.session_state[widget] = st.session_state.get("category") or "overall"
    value = st.segmented_control("Category", CATEGORIES, key=widget, required=True) or "overall"
    st.session_state["category"] = value
    return str(value)


def open_case(session_label: str) -> None:
    """Go to the Case page showing ``session_label``."""
    st.session_state["case_session"] = session_label
    st.switch_page(PAGE_FILES["case"])


# ------------------------------------------------------------------------------ exports


def csv_button(frame: pd.DataFrame, name: str, *, key: str, label: str = "Download table (CSV)") -> None:
    """Download ``frame`` as CSV (built when clicked)."""
    st.download_button(
        label,
        data=lambda: frame.to_csv(index=False).encode("utf-8"),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=key,
        icon=":material/download:",
    )


def png_button(draw: Callable[[Any], None], name: str, *, key: str, label: str = "Download figure (PNG)") -> None:
    """Download a matplotlib rendering of the current figure as PNG (drawn only when clicked).

    ``draw(ax)`` draws onto a matplotlib axes.
    """

    def render() -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 5), dpi=150, layout="constrained")
        ax = fig.add_subplot()
        draw(ax)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    st.download_button(label, data=render, file_name=f"{name}.png", mime="image/png", key=key,
                       icon=":material/image:")  # fmt: skip


# ------------------------------------------------------------------------------ sidebar


def _sign_in_form(host_default: str, *, first: bool) -> None:
    title = "Sign in with your XNAT account" if first else "Sign in to rate or acknowledge"
    with st.sidebar.form("sign_in", clear_on_submit=True, border=True):
        st.markdown(f"**{title}**")
        host = host_default
        if not host_default:
            host = st.text_input("XNAT URL", placeholder="https://xnat.example.org", key="signin_host")
        user = st.text_input("XNAT username", key="signin_user")
        password = st.text_input("XNAT password", type="password", key="signin_password")
        if st.form_submit_button("Sign in", type="primary"):
            try:
                auth.sign_in(host, user, password)
            except CbctQaError as exc:
                what, todo = _explain(exc)
                st.error(f"Sign-in failed. {what} {todo}")
            else:
                data.clear_caches()
                st.session_state["project"] = None
                st.rerun()


def render_sidebar() -> None:
    """Identity, project and model choice, refresh: the same on every page."""
    sb = st.sidebar
    sb.markdown("### CBCT QA monitor")
    sb.caption(f"cbctqa {__version__}")  # the one version (qa_core.__version__)
    if auth.oidc_configured():
        user_info: Any = st.user
        if not getattr(user_info, "is_logged_in", False):
            sb.info("Sign in with your organisation account to use the dashboard.")
            if sb.button("Sign in", type="primary"):
                st.login()
            st.stop()
        sb.caption(f"Signed in as {getattr(user_info, 'email', '') or getattr(user_info, 'name', '')}")
        if sb.button("Log out of the dashboard"):
            st.logout()
    else:
        sb.caption("Local mode: no sign-in provider is configured, so the dashboard only listens "
                   "on this computer (127.0.0.1).")  # fmt: skip
    who = auth.identity()
    host = auth.xnat_host() or (who.host if who else "")
    if who is None:
        _sign_in_form(host, first=True)
        return
    if who.signed_in:
        sb.success(f"Signed in to XNAT as **{who.user}**: you can rate sessions and acknowledge alerts.",
                   icon=":material/verified_user:")  # fmt: skip
        if sb.button("Sign out", key="sign_out"):
            auth.sign_out()
            data.clear_caches()
            st.session_state["project"] = None
            st.rerun()
    else:
        sb.info(f"Read-only as XNAT user **{who.user}**. Sign in with your own XNAT account to rate "
                "or acknowledge alerts.", icon=":material/visibility:")  # fmt: skip
        _sign_in_form(host, first=False)
    _project_picker()


@st.cache_data(ttl=60, max_entries=32, show_spinner=False)
def _projects(_gw: XnatGateway, host: str, user: str, epoch: int) -> list[tuple[str, str]]:
    from xnat_plugin.gateway import list_projects

    return [(p.project_id, p.name) for p in list_projects(_gw)]


def _project_picker() -> None:
    sb = st.sidebar
    try:
        gw = auth.reader()
        projects = _projects(gw, gw.host, gw.user, int(st.session_state.get("_data_epoch", 0)))
    except CbctQaError as exc:
        what, _ = _explain(exc)
        sb.error(what)
        return
    ids = [p for p, _ in projects]
    names = dict(projects)
    if not ids:
        sb.warning(f"XNAT user {gw.user} may see no project. Ask a project owner for access.")
        st.session_state["project"] = None
        return
    if st.session_state.get("project") not in ids:
        st.session_state["project"] = ids[0]
    sb.selectbox("Project", ids, key="project",
                 format_func=lambda p: f"{p} — {names[p]}" if names.get(p) and names[p] != p else p)  # fmt: skip
    try:
        snap = data.load_snapshot(gw, str(st.session_state["project"]))
    except CbctQaError as exc:
        what, _ = _explain(exc)
        sb.error(what)
        return
    versions = data.model_versions(snap)
    if versions:
        if st.session_state.get("model_version") not in versions:
            st.session_state["model_version"] = versions[0]
        sb.selectbox("Model version", versions, key="model_version",
                     help="Assessments written by this version of the scoring model are shown.")  # fmt: skip
    else:
        st.session_state["model_version"] = None
    age = _dt.datetime.now(_dt.UTC) - snap.fetched_at
    sb.caption(f"XNAT read {int(age.total_seconds())} s ago in {snap.xnat_s:.2f} s; "
               f"re-read every {int(data.TTL_S)} s.")  # fmt: skip
    if sb.button("Refresh from XNAT", icon=":material/refresh:", key="refresh"):
        data.clear_caches()
        st.rerun()
