"""Every dashboard page through Streamlit's AppTest, against the real local XNAT over HTTP.

The app is run from its entry file (``dashboard/app.py``); pages are reached with
``switch_page``. Data come from the session-scoped ``qa_cohort`` (see ``conftest.py``): a
simulated cohort scored by the shipped model, rated by a simulated panel, flagged by the
monitoring. Writes (a rating, an acknowledgement) are checked by reading XNAT back with the
gateway as the site administrator.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

import dashboard
from dashboard.ui import PAGE_FILES
from xnat_plugin.gateway import XnatGateway, read_acknowledgements

QaCohort = Any  # tests/dashboard/conftest.py::QaCohort
RAD, RAD_PW = "rad_a", "dash-rad-pw"  # the cohort's radiologist (conftest.py)

pytestmark = pytest.mark.slow

APP = str(Path(dashboard.__file__).parent / "app.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Prefect server of the machine leaks in; caches start empty in every test."""
    monkeypatch.setenv("CBCTQA_PREFECT_PORT", str(_free_port()))
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page is not None:
        at.switch_page(PAGE_FILES[page]).run()
    return at


def _with_statistics(at: AppTest, timeout: float = 300.0) -> AppTest:
    """Wait for the background statistics (slow on a loaded machine), then rerun the page."""
    import time

    from dashboard import data

    if not any("Computing the statistics" in str(i.value) for i in at.info):
        return at
    deadline = time.time() + timeout
    while time.time() < deadline and not all(j.done for j in data._job_registry()[0].values()):
        time.sleep(0.2)
    return at.run()


def _texts(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "info", "warning", "error", "success", "caption", "subheader", "title"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def _images(at: AppTest) -> list[Any]:
    return [e for e in at.main if e.type in ("image", "imgs")]


def _sign_in(at: AppTest, user: str, password: str) -> None:
    at.sidebar.text_input(key="signin_user").input(user)
    at.sidebar.text_input(key="signin_password").input(password)
    next(b for b in at.sidebar.button if b.label == "Sign in").click()
    at.run()


def _admin_gw(cohort: QaCohort) -> XnatGateway:
    user, password = cohort.admin
    return XnatGateway.connect(cohort.url, user, password, project=cohort.project, backoff=0.01)


# ------------------------------------------------------------------ scored and rated project


def test_overview_counts_chart_and_statistics(xnat_env: QaCohort) -> None:
    at = _with_statistics(_app())
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"CT sessions": "8", "scored": "6", "failed": "1", "awaiting scoring": "1",
                       "awaiting ratings": "1"}  # fmt: skip
    assert at.get("vega_lite_chart"), "no AE-against-consensus chart"
    frames = {d.key if hasattr(d, "key") else None: d for d in at.dataframe}
    study = at.dataframe[0].value
    assert list(study["category"]) == ["parotid", "submandibular", "larynx", "mandible", "overall"]
    assert {"LOO median ρ", "study ρ (LOO median)", "study p"} <= set(study.columns)
    assert list(study.loc[study["category"] == "larynx", "study p"]) == ["0.37"]
    better = at.dataframe[1].value
    assert {"permutation p", "Holm p", "BH p", "partial ρ | prediction", "BCa 95% CI"} <= set(better.columns)
    text = _texts(at)
    assert "too few volumes" in text or "AE tracks consensus" in text or "not shown" in text
    assert not at.error, [e.value for e in at.error]
    assert frames


def test_overview_category_change_reruns_without_xnat(xnat_env: QaCohort) -> None:
    at = _app()
    gw_calls_before = at.session_state["_data_epoch"]
    at.button_group(key="ov_category").set_value("larynx").run()
    assert not at.exception
    assert at.session_state["category"] == "larynx"
    assert "larynx" in _texts(at)
    assert at.session_state["_data_epoch"] == gw_calls_before


@pytest.mark.parametrize("page", ["trends", "alerts", "case", "raters", "pipeline", "model"])
def test_every_page_renders(xnat_env: QaCohort, page: str) -> None:
    at = _app(page)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    text = _texts(at)
    if page == "trends":
        assert at.get("vega_lite_chart")
        assert "Individuals chart: centre line = median" in text
        assert {o for o in at.multiselect(key="tr_station").options} == {"CBCT_A", "CBCT_B"}
    elif page == "alerts":
        assert "open alert(s)" in text
        assert len(at.dataframe) == 1 and len(at.dataframe[0].value) >= 1
    elif page == "case":
        assert _images(at), "no slice image"
        assert at.selectbox(key="case_session").value == xnat_env.scored[0]
        assert "Open SIM11_001 in XNAT" in text
    elif page == "raters":
        agreement = next(d.value for d in at.dataframe if "ICC(2,1)" in d.value.columns)
        assert set(agreement["category"]) == {"parotid", "submandibular", "larynx", "mandible", "overall"}
        assert "Sessions awaiting ratings (1)" in text
        assert "Sign in with your own XNAT account" in text
    elif page == "pipeline":
        assert "No Prefect API is configured" in text
        assert "Failed sessions and why" in text and "MissingSlicesError" in at.dataframe[0].value.to_string()
    elif page == "model":
        table = at.dataframe[0].value
        assert "held-out ρ" in table.columns and len(table) == 5
        versions = next(d.value for d in at.dataframe if "model version" in d.value.columns)
        assert len(versions) >= 1 and set(versions["this card"]) == {"yes"}
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in versions["SHA-256"]), versions


def test_case_of_a_failed_session_says_why(xnat_env: QaCohort) -> None:
    at = _app("case")
    at.selectbox(key="case_session").set_value(xnat_env.failed).run()
    assert not at.exception
    assert any("Scoring failed" in w.value and "MissingSlicesError" in w.value for w in at.warning)


def test_case_slice_and_window_controls(xnat_env: QaCohort) -> None:
    at = _app("case")
    slider = next(s for s in at.slider if s.key and s.key.startswith("case_slice_"))
    slider.set_value(0).run()
    at.selectbox(key="case_window").set_value("bone (W1800 L400)").run()
    at.slider(key="case_opacity").set_value(0.9).run()
    assert not at.exception
    assert _images(at)


# ------------------------------------------------------------------ failures and empty


def test_empty_project_says_so(xnat_env: QaCohort, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBCTQA_DASHBOARD_PROJECT", xnat_env.empty_project)
    for page in [None, "trends", "alerts", "case", "raters", "pipeline", "model"]:
        at = _app(page)
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
    at = _app()
    assert "has no CT sessions yet" in _texts(at)


def test_xnat_down_gives_a_clear_message_and_retry(xnat_env: QaCohort, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNAT_HOST", f"http://127.0.0.1:{_free_port()}")
    for page in [None, "trends", "case", "raters"]:
        at = _app(page)
        assert not at.exception, (page, at.exception)
        messages = " ".join(e.value for e in at.error)
        assert "XNAT cannot be reached" in messages and "check that xnat is running" in messages.lower()
        assert any(b.label == "Retry" for b in at.button)
        assert "Traceback" not in messages


def test_wrong_credentials_say_so(xnat_env: QaCohort, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNAT_PASS", "not-the-password")
    at = _app()
    assert not at.exception
    messages = " ".join(e.value for e in at.error)
    assert "rejected the credentials" in messages
    assert "not-the-password" not in messages + _texts(at)


def test_without_credentials_sign_in_comes_first(xnat_env: QaCohort, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XNAT_USER")
    monkeypatch.delenv("XNAT_PASS")
    at = _app()
    assert not at.exception
    assert "Sign in with your XNAT account" in " ".join(m.value for m in at.sidebar.markdown)
    assert "not configured" in " ".join(e.value for e in at.error)
    _sign_in(at, RAD, RAD_PW)
    assert not at.exception
    assert at.metric, "pages open after signing in"
    assert any(f"Signed in to XNAT as **{RAD}**" in s.value for s in at.sidebar.success)


def test_bad_sign_in_is_refused(xnat_env: QaCohort) -> None:
    at = _app()
    _sign_in(at, RAD, "wrong-password")
    assert not at.exception
    assert any("Sign-in failed" in e.value for e in at.sidebar.error)
    assert not at.sidebar.success


# ------------------------------------------------------------------ writes as the signed-in user


def test_rating_form_writes_a_rating_as_the_signed_in_user(xnat_env: QaCohort) -> None:
    session = xnat_env.scored[0]
    at = _app()
    _sign_in(at, RAD, RAD_PW)
    at.switch_page(PAGE_FILES["raters"]).run()
    at.selectbox(key="rt_session").set_value(session).run()
    scores = {"parotid": 4, "submandibular": 3, "larynx": 5, "mandible": 2, "overall": 4}
    for cat, value in scores.items():
        at.radio(key=f"rt_{session}_{cat}").set_value(value)
    at.text_area(key=f"rt_{session}_comment").input("streaks at the mandible")
    next(b for b in at.button if b.label == "Save my rating").click().run()
    assert not at.exception
    with _admin_gw(xnat_env) as gw:
        mine = [r for r in gw.read_ratings() if r.rater == RAD and r.session_label == session]
    assert len(mine) == 1 and dict(mine[0].scores) == scores and mine[0].comments == "streaks at the mandible"
    # editing updates the same rating, never a second one
    at.selectbox(key="rt_session").set_value(session).run()
    at.radio(key=f"rt_{session}_larynx").set_value(3)
    next(b for b in at.button if b.label == "Update my rating").click().run()
    assert not at.exception
    with _admin_gw(xnat_env) as gw:
        mine = [r for r in gw.read_ratings() if r.rater == RAD and r.session_label == session]
    assert len(mine) == 1 and mine[0].scores["larynx"] == 3 and mine[0].assessor_id


def test_incomplete_rating_is_refused(xnat_env: QaCohort) -> None:
    session = xnat_env.scored[1]
    at = _app()
    _sign_in(at, RAD, RAD_PW)
    at.switch_page(PAGE_FILES["raters"]).run()
    at.selectbox(key="rt_session").set_value(session).run()
    at.radio(key=f"rt_{session}_parotid").set_value(4)
    next(b for b in at.button if b.label == "Save my rating").click().run()
    assert any("missing" in e.value for e in at.error)
    with _admin_gw(xnat_env) as gw:
        assert not [r for r in gw.read_ratings() if r.rater == RAD and r.session_label == session]


def test_acknowledging_an_alert_is_stored_and_keeps_the_flag(xnat_env: QaCohort) -> None:
    at = _app()
    _sign_in(at, RAD, RAD_PW)
    at.switch_page(PAGE_FILES["alerts"]).run()
    with _admin_gw(xnat_env) as gw:
        acked = {(a.assessor_id, a.category) for a in read_acknowledgements(gw)}
        assessor_id, category, session = next(
            (a.assessor_id, c, a.session_label) for a in gw.read_assessments()
            for c, r in a.record.categories.items() if r.outlier and (a.assessor_id, c) not in acked)  # fmt: skip
    chosen = f"{assessor_id}|{category}"
    at.selectbox(key="al_pick").set_value(chosen).run()
    assert not at.exception
    at.text_area(key="al_comment").input("checked: dental filling, image usable")
    next(b for b in at.button if b.label == f"Acknowledge as {RAD}").click().run()
    assert not at.exception
    with _admin_gw(xnat_env) as gw:
        acks = [a for a in read_acknowledgements(gw) if a.assessor_id == assessor_id and a.category == category]
        stored = next(a for a in gw.read_assessments() if a.assessor_id == assessor_id)
    assert len(acks) == 1 and acks[0].by == RAD and acks[0].comment == "checked: dental filling, image usable"
    assert acks[0].at is not None
    assert stored.record.categories[category].outlier is True  # the flag stays
    # hidden by default, one toggle away
    label = f"{session} · {category}"
    assert label not in at.selectbox(key="al_pick").options
    at.toggle(key="al_show_ack").set_value(True).run()
    assert label in at.selectbox(key="al_pick").options
