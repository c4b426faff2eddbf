"""One version everywhere: ``qa_core.__version__`` is the only place it is written."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

import qa_core
from flows.cli import main
from flows.commands.version import product_version

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "xnat_plugin" / "plugin"


def test_version_is_semantic() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[.-]?(?:a|b|rc|dev|post)\d*)?", qa_core.__version__)


def test_cbctqa_version_prints_the_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cbctqa"] == qa_core.__version__
    assert main(["version"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"cbctqa {qa_core.__version__}"
    assert product_version() == qa_core.__version__


def test_pyproject_reads_the_version_from_qa_core() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"], "write the version only in qa_core/__init__.py"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "qa_core.__version__"}


def test_setuptools_resolves_the_same_version() -> None:
    from setuptools.config.pyprojecttoml import read_configuration

    config = read_configuration(REPO / "pyproject.toml", expand=True)
    assert config["project"]["version"] == qa_core.__version__


def test_xnat_plugin_carries_the_same_version() -> None:
    props = dict(
        line.split("=", 1)
        for line in (PLUGIN / "gradle.properties").read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    assert props["version"].strip() == qa_core.__version__, (
        "xnat_plugin/plugin/gradle.properties version differs from qa_core.__version__"
    )
    java = next(PLUGIN.rglob("CbctQaPlugin.java")).read_text(encoding="utf-8")
    found = re.search(r'String VERSION\s*=\s*"([^"]+)"', java)
    assert found and found.group(1) == qa_core.__version__


def test_changelog_newest_release_is_this_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert releases and releases[0] == "Unreleased"
    assert releases[1] == qa_core.__version__, "add a CHANGELOG section for the new version"


def test_assessments_record_this_version() -> None:
    """What scoring writes as ``package_version`` is the same object, not a copy."""
    import flows.scoring

    assert flows.scoring.__version__ is qa_core.__version__


def test_dashboard_shows_this_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The dashboard's sidebar names the same version (no XNAT needed: before sign-in)."""
    from streamlit.testing.v1 import AppTest

    import dashboard

    for name in ("XNAT_HOST", "XNATPY_HOST", "XNAT_USER", "XNAT_PASS", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(Path(dashboard.__file__).parent / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert f"cbctqa {qa_core.__version__}" in [str(c.value) for c in at.sidebar.caption]
