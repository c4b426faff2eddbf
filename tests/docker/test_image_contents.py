"""What the images install works on its own, without the repository around it.

No Docker engine runs here, so the build stage is reproduced: the files the Dockerfile COPYs
(read from the Dockerfile itself) are copied into an empty folder, built into a wheel as
``pip install /src`` does, and the unpacked wheel, not the working tree, is imported in a fresh
interpreter: the CLI parses the compose stack's commands, the shipped model loads and matches
its card, the XNAT schemas the local server and gateway read are there, and the dashboard's
pages are packaged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _copied_sources() -> list[str]:
    text = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    stage = text.split(" AS build\n", 1)[1].split("\nFROM ", 1)[0]
    sources: list[str] = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", stage, flags=re.M):
        words = [w for w in line.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("context") / "src"
    src.mkdir()
    for name in _copied_sources():
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", ".gradle"))
        else:
            shutil.copy2(path, src / name)
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, timeout=300,
                   cwd=src)  # fmt: skip
    (wheel,) = wheels.glob("cbctqa-*.whl")
    out = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out)
    return out


def _run(unpacked: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(unpacked), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CBCTQA_MODEL_PATH", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=unpacked, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_build_copies_the_packages() -> None:
    assert set(_copied_sources()) == {"pyproject.toml", "README.md", "qa_core", "xnat_plugin",
                                      "flows", "dashboard"}


@pytest.mark.slow
def test_installed_package_runs_without_the_repository(unpacked: Path) -> None:
    out = _run(unpacked, """
import pathlib, qa_core, flows, xnat_plugin, dashboard
for m in (qa_core, flows, xnat_plugin, dashboard):
    assert pathlib.Path(m.__file__).is_relative_to(pathlib.Path.cwd()), m.__file__
from flows.cli import build_parser
parser = build_parser()
for argv in (["doctor", "--pool", "cbctqa"], ["version"], ["config", "--markdown"]):
    parser.parse_args(argv)
from qa_core.model import DEFAULT_MODEL_PATH, load_model
model = load_model(device="cpu")
assert pathlib.Path(DEFAULT_MODEL_PATH).is_relative_to(pathlib.Path.cwd())
from xnat_plugin.server.schemas import SchemaCatalog
names = SchemaCatalog().names()
assert "cbctqa" in names and "xnat" in names, names
views = sorted(p.name for p in (pathlib.Path(dashboard.__file__).parent / "views").glob("*.py"))
print("ok", qa_core.__version__, model.card["sha256"][:12], len(views))
""")
    assert out.startswith("ok ")
    import qa_core

    assert out.split()[1] == qa_core.__version__
    assert int(out.split()[3]) == len(list((REPO / "dashboard" / "views").glob("*.py")))
