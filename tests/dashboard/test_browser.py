"""The dashboard in a real browser: ``cbctqa dashboard`` driven by headless Debian Chromium.

Starts ``cbctqa dashboard --port <free> --project HN_QA`` as a separate process against the
session's local XNAT (scored, rated simulated cohort), opens every page with Selenium and
``/usr/bin/chromium`` + ``/usr/bin/chromedriver`` (headless, no sandbox), waits until the app has
finished running, asserts the expected elements and that no exception box is shown, and saves a
screenshot of each page under ``test-artifacts/dashboard/``. Also clicks a point of the
AE-against-consensus chart and checks that its case opens (AppTest cannot click charts).

Skips only when Chromium or ChromeDriver is absent, and fails instead when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
PAGES = {  # url path -> text that must be on the page
    "": "AE against consensus",
    "trends": "Individuals chart",
    "alerts": "open alert(s)",
    "case": "Slice-level AE",
    "raters": "Agreement between raters",
    "pipeline": "No Prefect API is configured",
    "model": "Validation: predicted score against consensus",
}


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        message = f"headless Chromium needed for the browser test: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dashboard_url(qa_cohort: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``cbctqa dashboard`` running against the cohort's XNAT as the read-only viewer."""
    _browser_or_skip()
    port = _free_port()
    home = tmp_path_factory.mktemp("dash-home")
    user, password = qa_cohort.viewer
    env = dict(os.environ, XNAT_HOST=qa_cohort.url, XNAT_USER=user, XNAT_PASS=password, HOME=str(home),
               NETRC=str(home / "none"), CBCTQA_PREFECT_PORT=str(_free_port()))  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    cbctqa = str(Path(sys.executable).with_name("cbctqa"))
    log = (home / "dashboard.log").open("w")
    proc = subprocess.Popen([cbctqa, "dashboard", "--port", str(port), "--project", qa_cohort.project],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, (home / "dashboard.log").read_text()
            try:
                if requests.get(f"{url}/_stcore/health", timeout=2).text == "ok":
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("cbctqa dashboard did not answer within 90 s:\n" + (home / "dashboard.log").read_text())
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1500,1100"):  # fmt: skip
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def _settled(driver: Any, timeout: float = 90.0) -> None:
    """Wait until the app has rendered and is no longer running (twice in a row, 1 s apart)."""
    deadline = time.time() + timeout
    calm = 0
    while time.time() < deadline:
        time.sleep(0.5)
        state = driver.execute_script(
            "const app = document.querySelector('[data-testid=\"stApp\"]');"
            "const running = document.querySelector('[data-testid=\"stStatusWidget\"]');"
            "const title = document.querySelector('h1');"
            "return [app !== null, running === null, title !== null];"
        )
        calm = calm + 1 if all(state) else 0
        if calm >= 2:
            return
    raise AssertionError("the dashboard page did not finish running in time")


def _screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    driver.set_window_size(1500, min(max(1100, int(height) + 120), 4000))
    time.sleep(0.8)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1500, 1100)
    return path


def _no_exception(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    boxes = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not boxes, [b.text for b in boxes]
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text


@pytest.mark.parametrize("path", list(PAGES))
def test_page_in_chromium(dashboard_url: str, driver: Any, path: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{dashboard_url}/{path}")
    _settled(driver)
    _no_exception(driver)
    body = driver.find_element(By.TAG_NAME, "body").text
    assert PAGES[path] in body, body[:2000]
    assert "Read-only as XNAT user" in body
    if path == "":
        assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"]')
        assert "CT sessions" in body and "awaiting ratings" in body
    if path == "case":
        assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')
    shot = _screenshot(driver, path or "overview")
    assert shot.stat().st_size > 20_000


def test_clicking_a_point_opens_its_case(dashboard_url: str, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.get(dashboard_url)
    _settled(driver)
    points = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] g.mark-symbol path')
    assert points, "the AE-against-consensus chart shows no points"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", points[0])
    time.sleep(0.5)
    points[0].click()
    deadline = time.time() + 30
    while time.time() < deadline and "/case" not in driver.current_url:
        time.sleep(0.5)
    assert "/case" in driver.current_url, driver.current_url
    _settled(driver)
    _no_exception(driver)
    assert "Slice-level AE" in driver.find_element(By.TAG_NAME, "body").text


def test_artifacts_folder_is_ignored_by_git() -> None:
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "check-ignore", "-q", "test-artifacts/dashboard/overview.png"], cwd=root)
    assert out.returncode == 0, "add test-artifacts/ to .gitignore"
