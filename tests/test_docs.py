"""The documentation cannot drift silently: links resolve, named settings exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.commands.config import setting_docs

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md"),
                *(REPO / "docker").rglob("*.md")])

#: ``CBCTQA_*`` names that are not settings of the Python package, and where they belong.
NOT_SETTINGS = {
    "CBCTQA_WORKERS": "docker/.env: CPU worker replicas",
    "CBCTQA_MODELS_DIR": "docker/.env: host folder mounted at /models",
    "CBCTQA_IMAGE_TAG": "docker/.env: image tag",
    "CBCTQA_PREFECT_API_URL": "Tomcat environment read by the XNAT automation script",
    "CBCTQA_XNAT_ADMIN_USER": "cbctqa xnat-server option",
    "CBCTQA_XNAT_ADMIN_PASSWORD": "cbctqa xnat-server option",
    "CBCTQA_REPORT": "XNAT project resource label of the cohort report",
    "CBCTQA_DEMO": "the demo's XNAT project ID",
    "CBCTQA_DASHBOARD_PROJECT": "set by cbctqa dashboard --project for the Streamlit process",
}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{page.relative_to(REPO)} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_settings_exist(page: Path) -> None:
    known = {env for doc in setting_docs() for env in doc.env} | set(NOT_SETTINGS)
    named = set(re.findall(r"\bCBCTQA_[A-Z0-9_]*[A-Z0-9]\b", page.read_text(encoding="utf-8")))
    unknown = sorted(named - known)
    assert not unknown, f"{page.relative_to(REPO)} names {unknown}, which are not settings"
