"""``docker/compose.yaml``: valid Compose, and in agreement with the code it runs.

No Docker engine runs here, so the file is checked the way ``docker compose config`` would
(variables substituted from ``docker/.env.example``, then validated against the Compose
Specification's JSON schema, vendored as ``compose-spec.json`` from check-jsonschema 0.39.0,
Apache-2.0, see ``LICENSE.compose-spec``), and then against the code: every ``cbctqa`` command
parses with the real ``cbctqa`` parser, every ``prefect`` command with Prefect's own CLI, every
``CBCTQA_*`` variable is a field of the settings class with a valid value, every ``PREFECT_*``
variable is a Prefect setting, and the ports, pools and health checks line up.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flows.cli import build_parser
from flows.commands.config import EXTERNAL_VARIABLES, setting_docs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SETTINGS_EXAMPLE = DOCKER / "cbctqa.env.example"

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(Exception):
    """A ``${VAR:?message}`` variable is unset, as Compose reports it."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Substitute variables as Compose does: ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?err}``, ``${VAR?err}``, ``${VAR:+alt}``, ``$$`` for a literal ``$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        expr = match.group("braced")
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?", expr, flags=re.S)
        assert m, f"bad substitution ${{{expr}}}"
        name, colon, op, arg = m.groups()
        present = name in env and (env[name] != "" or not colon)
        if op is None:
            return env.get(name, "")
        if op == "-":
            return env[name] if present else interpolate(arg, env)
        if op == "+":
            return interpolate(arg, env) if present else ""
        if not present:
            raise MissingVariable(f"{name}: {arg}")
        return env[name]

    return _VAR.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], example_env: dict[str, str]) -> dict[str, Any]:
    """The compose model after substitution from docker/.env.example (as `compose config`)."""
    return interpolate(raw, example_env)


def services(compose: dict[str, Any], *, profiles: bool = True) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items()
            if profiles or not svc.get("profiles")}


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# ------------------------------------------------------------------------------ the schema


def test_interpolation_follows_compose_rules() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}-${B:-x}-${EMPTY:-d}-${EMPTY-d}-$$A-$A", env) == "1-x-d--$A-1"
    assert interpolate("${A:+yes}${B:+no}", env) == "yes"
    with pytest.raises(MissingVariable, match="B: set B"):
        interpolate("${B:?set B}", env)
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?empty is unset}", env)


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((HERE / "compose-spec.json").read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    assert "version" not in compose, "the top-level 'version' key is obsolete in the Compose Specification"


def test_schema_rejects_what_compose_rejects(compose: dict[str, Any]) -> None:
    """The validation is not vacuous: a misspelt key and a wrong type fail."""
    schema = json.loads((HERE / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["healthchek"] = {}
    broken["services"]["dashboard"]["ports"] = "8501:8501"
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("healthchek" in m for m in messages) and len(messages) >= 2


def test_required_secrets_are_reported_when_missing(raw: dict[str, Any]) -> None:
    """Without docker/.env the stack refuses to start and says what to set."""
    with pytest.raises(MissingVariable, match=r"PREFECT_DB_PASSWORD: set PREFECT_DB_PASSWORD in docker/\.env"):
        interpolate(raw["services"]["prefect-db"], {})
    with pytest.raises(MissingVariable, match="XNAT_HOST"):
        interpolate(raw["services"]["worker"], {})


# ------------------------------------------------------------------------- commands vs code


def _cbctqa_commands(compose: dict[str, Any]) -> list[tuple[str, list[str]]]:
    out = []
    for name, svc in services(compose).items():
        command = svc.get("command")
        if isinstance(command, list) and command and command[0] == "cbctqa":
            out.append((name, command[1:]))
    return out


def test_every_cbctqa_command_parses_with_the_real_cli(compose: dict[str, Any]) -> None:
    commands = _cbctqa_commands(compose)
    assert {name for name, _ in commands} >= {"dashboard", "deployments", "doctor"}
    parser = build_parser()
    for name, argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits 2 on an unknown command or option
            pytest.fail(f"service {name}: `cbctqa {' '.join(argv)}` is not a valid command ({exc})")
        assert callable(args.handler), name


def test_dockerfile_default_commands_parse_with_the_real_cli() -> None:
    parser = build_parser()
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    cmds = [json.loads(m) for m in re.findall(r"^CMD (\[.*\])$", text, flags=re.M)]
    assert cmds
    for cmd in cmds:
        if cmd[0] == "cbctqa":
            parser.parse_args(cmd[1:])


@pytest.fixture(scope="module")
def prefect_cli() -> Any:
    import prefect.cli  # noqa: F401  (registers the commands)
    from prefect.cli._app import _app

    return _app


def test_every_prefect_command_parses_with_prefects_cli(
    compose: dict[str, Any], prefect_cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [(name, svc["command"][1:]) for name, svc in services(compose).items()
                if isinstance(svc.get("command"), list) and svc["command"][0] == "prefect"]
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    commands += [("Dockerfile", json.loads(m)[1:]) for m in re.findall(r"^CMD (\[.*\])$", text, flags=re.M)
                 if json.loads(m)[0] == "prefect"]
    assert {name for name, _ in commands} >= {"prefect-server", "worker", "worker-cuda", "Dockerfile"}
    for name, argv in commands:
        command, bound, _ = prefect_cli.parse_args(argv)
        assert callable(command), name
        if argv[:2] == ["worker", "start"]:
            assert bound.arguments["work_pool_name"] == "cbctqa", name
            assert bound.arguments["worker_type"] == "process", name
            assert bound.arguments["with_healthcheck"] is True, name
    # and the check is real: an option Prefect does not have is refused
    with pytest.raises(Exception, match="--no-such-option"):
        prefect_cli.parse_args(["worker", "start", "--pool", "cbctqa", "--no-such-option"])
    capsys.readouterr()


def test_one_work_pool_everywhere(compose: dict[str, Any]) -> None:
    pools = set()
    for svc in services(compose).values():
        command = svc.get("command") or []
        for flag in ("--pool", "-p"):
            if flag in command:
                pools.add(command[command.index(flag) + 1])
    assert pools == {"cbctqa"}


# ----------------------------------------------------------------------- settings vs code


def _settings_names() -> set[str]:
    return {env for doc in setting_docs() for env in doc.env}


def _prefect_setting_names() -> set[str]:
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(PrefectSettings))


def test_every_cbctqa_variable_is_a_setting_with_a_valid_value(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from qa_core.settings import Settings

    known = _settings_names()
    values: dict[str, dict[str, str]] = {}
    for name, svc in services(compose).items():
        env = {k: v for k, v in environment(svc).items() if k.startswith("CBCTQA_")}
        unknown = sorted(set(env) - known)
        assert not unknown, f"service {name}: {unknown} are not fields of qa_core.settings.Settings"
        values[name] = env
    example = read_env_file(SETTINGS_EXAMPLE)
    commented = re.findall(r"^# (CBCTQA_[A-Z0-9_]+)=(.*)$", SETTINGS_EXAMPLE.read_text(encoding="utf-8"),
                           flags=re.M)
    for key, _ in commented:
        assert key in known, f"docker/cbctqa.env.example names {key}, which is not a setting"
    values["cbctqa.env.example"] = {**example, **{k: v for k, v in commented if k != "CBCTQA_MODEL_PATH"}}
    for name, env in values.items():
        for key in list(os.environ):
            if key.startswith("CBCTQA_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        Settings()  # raises on a value the settings class refuses
        assert name


def test_every_prefect_variable_is_a_prefect_setting(compose: dict[str, Any]) -> None:
    valid = _prefect_setting_names()
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    used = {(name, k) for name, svc in services(compose).items() for k in environment(svc)
            if k.startswith("PREFECT_")}
    used |= {("Dockerfile", k) for k in re.findall(r"\b(PREFECT_[A-Z_]+)=", text)}
    assert used
    bad = sorted((name, k) for name, k in used if k not in valid)
    assert not bad, f"not Prefect settings: {bad}"


def test_other_variables_are_known(compose: dict[str, Any]) -> None:
    known = _settings_names() | {name for name, _, _ in EXTERNAL_VARIABLES}
    for name, svc in services(compose).items():
        if svc.get("image", "").startswith(("cbctqa-worker", "cbctqa-dashboard")):
            for key in environment(svc):
                assert key in known or key.startswith("PREFECT_"), (name, key)


def test_prefect_image_matches_the_installed_prefect(raw: dict[str, Any], example_env: dict[str, str]) -> None:
    from importlib.metadata import version

    image = raw["services"]["prefect-server"]["image"]
    assert interpolate(image, {}) == f"prefecthq/prefect:{version('prefect')}-python3.11"
    assert example_env["PREFECT_VERSION"] == version("prefect")


# ------------------------------------------------------------------- network, state, health


def _port_mappings(compose: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, str(p)) for name, svc in services(compose).items() for p in svc.get("ports", [])]


def test_no_port_is_public_by_default(raw: dict[str, Any], example_env: dict[str, str]) -> None:
    for env in ({k: v for k, v in example_env.items() if k != "BIND_ADDRESS"}, example_env):
        mappings = _port_mappings(interpolate(raw, env))
        assert mappings
        for name, mapping in mappings:
            host_ip = mapping.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {mapping}: bind 127.0.0.1"
    for name, svc in raw["services"].items():
        assert "expose" not in svc and "network_mode" not in svc, name


def test_published_ports_are_the_ports_the_services_listen_on(compose: dict[str, Any]) -> None:
    by_service = dict(_port_mappings(compose))
    assert by_service["prefect-server"].endswith(":4200")
    assert by_service["dashboard"].endswith(":8501")
    assert by_service["xnat-web"].endswith(":8080")
    svcs = services(compose)
    server = svcs["prefect-server"]["command"]
    assert server[server.index("--port") + 1] == "4200"
    dash = svcs["dashboard"]["command"]
    assert dash[dash.index("--port") + 1] == "8501"
    for name in ("prefect-server", "xnat-web"):
        port = by_service[name].rsplit(":", 1)[1]
        assert f"127.0.0.1:{port}/" in " ".join(svcs[name]["healthcheck"]["test"]), name
    for name, svc in svcs.items():
        env = environment(svc)
        if "PREFECT_API_URL" in env:
            assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name


def _dockerfile_stage_has_healthcheck(target: str) -> bool:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    return "\nHEALTHCHECK " in stage


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        if svc.get("restart") == "no":
            continue  # one-shot jobs
        if "healthcheck" in svc:
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
            continue
        target = (svc.get("build") or {}).get("target")
        assert target and _dockerfile_stage_has_healthcheck(target), f"{name} has no health check"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    for name, svc in svcs.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in svcs, (name, dep)
            expected = "service_completed_successfully" if svcs[dep].get("restart") == "no" else "service_healthy"
            assert cond["condition"] == expected, (name, dep)
            if not svc.get("profiles"):
                assert not svcs[dep].get("profiles"), f"{name} (always on) depends on profile service {dep}"


def test_every_piece_of_state_is_on_a_volume(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    declared = set(compose["volumes"])
    used: set[str] = set()
    mounts: dict[str, set[str]] = {}
    for name, svc in svcs.items():
        for spec in svc.get("volumes", []):
            source, target = str(spec).split(":")[:2]
            mounts.setdefault(name, set()).add(target)
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"
    state = {
        "prefect-db": {"/var/lib/postgresql/data"},
        "prefect-server": {environment(svcs["prefect-server"])["PREFECT_HOME"]},
        "worker": {"/var/lib/cbctqa"},
        "worker-cuda": {"/var/lib/cbctqa"},
        "dashboard": {"/var/lib/cbctqa"},
        "deployments": {"/var/lib/cbctqa"},
        "xnat-db": {"/var/lib/postgresql/data"},
        "xnat-web": {"/data/xnat/archive", "/data/xnat/prearchive", "/data/xnat/build",
                     "/data/xnat/cache", "/data/xnat/home/logs", "/data/xnat/home/config",
                     "/data/xnat/home/work", "/data/xnat/home/plugins"},
    }
    for name, paths in state.items():
        assert paths <= mounts.get(name, set()), f"{name}: state not on a volume: {paths - mounts.get(name, set())}"
    for name in ("worker", "worker-cuda", "dashboard", "deployments"):
        assert environment(svcs[name])["CBCTQA_DATA_DIR"] == "/var/lib/cbctqa", name


def test_plugin_folder_is_xnats_plugins_folder(compose: dict[str, Any]) -> None:
    xnat_dockerfile = (DOCKER / "xnat" / "Dockerfile").read_text(encoding="utf-8")
    home = re.search(r"XNAT_HOME=(\S+)", xnat_dockerfile)
    assert home
    mounts = [str(v) for v in services(compose)["xnat-web"]["volumes"]]
    plugin = next(m for m in mounts if m.split(":")[1] == f"{home.group(1)}/plugins")
    assert plugin.endswith(":ro") and plugin.startswith("../xnat_plugin/plugin/build/libs:")
    gradle = (REPO / "xnat_plugin" / "plugin" / "build.gradle").read_text(encoding="utf-8")
    assert "build/libs/" in gradle and "xnatPluginJar" in (REPO / "xnat_plugin" / "plugin" / "README.md").read_text()


def test_gpu_worker_reserves_the_gpu_and_uses_cuda_wheels(compose: dict[str, Any]) -> None:
    svc = services(compose)["worker-cuda"]
    assert svc["profiles"] == ["cuda"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert svc["build"]["args"]["TORCH_INDEX_URL"].endswith("/cu130")
    assert environment(svc)["CBCTQA_DEVICE"] == "auto"
    cpu = services(compose)["worker"]
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")


# ---------------------------------------------------------------------------------- secrets

_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CONNECTION_URL", re.I)


def test_no_secret_is_written_in_the_compose_file(raw: dict[str, Any]) -> None:
    for name, svc in raw["services"].items():
        for key, value in environment(svc).items():
            if _SECRET_NAME.search(key):
                assert "${" in value, f"{name}: {key} holds a literal value; take it from docker/.env"
        assert "XNAT_PASS" not in environment(svc), f"{name}: the XNAT password comes from the netrc secret"
    for name in ("worker", "worker-cuda", "dashboard", "deployments", "doctor"):
        svc = raw["services"][name]
        assert "xnat_netrc" in svc["secrets"]
        assert environment(svc)["NETRC"] == "/run/secrets/xnat_netrc"
    assert raw["secrets"]["xnat_netrc"]["file"] == "${XNAT_NETRC_FILE:-./secrets/xnat.netrc}"


def test_env_files_are_never_committed() -> None:
    for path in ("docker/.env", "docker/cbctqa.env", "docker/prefect-auth.env",
                 "docker/secrets/xnat.netrc", "docker/secrets/streamlit-secrets.toml",
                 "docker/models/x.pt"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False)
        assert ignored.returncode == 0, f"{path} is not gitignored"
    tracked = subprocess.run(["git", "ls-files", "docker"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert not {"docker/.env", "docker/cbctqa.env", "docker/prefect-auth.env",
                "docker/secrets/xnat.netrc"} & set(tracked)


def test_env_example_covers_every_variable_the_compose_file_reads(raw: dict[str, Any],
                                                                  example_env: dict[str, str]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    read = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))
    assert required <= set(example_env), f"docker/.env.example lacks {required - set(example_env)}"
    documented = set(example_env) | set(re.findall(r"^# ([A-Z_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert read <= documented, f"docker/.env.example does not mention {read - documented}"
    for key, value in example_env.items():
        if _SECRET_NAME.search(key):
            assert value.startswith("change-me"), f"{key} in .env.example must be a placeholder"


def test_prefect_api_auth_is_one_file_for_server_and_clients(raw: dict[str, Any]) -> None:
    example = read_env_file(DOCKER / "prefect-auth.env.example")
    assert set(example) == {"PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"}
    assert set(example) <= _prefect_setting_names()
    assert example["PREFECT_SERVER_API_AUTH_STRING"] == example["PREFECT_API_AUTH_STRING"]
    assert "change-me" in example["PREFECT_API_AUTH_STRING"]
    for name in ("prefect-server", "deployments", "worker", "worker-cuda", "dashboard", "doctor"):
        files = raw["services"][name]["env_file"]
        assert {"path": "./prefect-auth.env", "required": False} in files, name
    # the health checks work with auth on: Prefect leaves GET /api/health open
    health = " ".join(raw["services"]["prefect-server"]["healthcheck"]["test"])
    assert "/api/health" in health


def test_dashboard_is_served_only_behind_sign_in(raw: dict[str, Any], tmp_path: Path) -> None:
    """`cbctqa dashboard --host 0.0.0.0` (needed inside a container) runs only with OIDC: the
    stack mounts the Streamlit secrets where the command looks for them, and the shipped example
    is what the command recognises as a sign-in configuration."""
    from flows.commands.dashboard import oidc_configured

    svc = raw["services"]["dashboard"]
    command = svc["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    mount = next(s for s in svc["secrets"] if isinstance(s, dict))
    assert mount["source"] == "streamlit_secrets"
    home = "/var/lib/cbctqa"  # HOME and WORKDIR of the image
    assert mount["target"] == f"{home}/.streamlit/secrets.toml"
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert f"HOME={home}" in dockerfile and f"WORKDIR {home}" in dockerfile
    assert raw["secrets"]["streamlit_secrets"]["file"].endswith("./secrets/streamlit-secrets.toml}")
    (tmp_path / ".streamlit").mkdir()
    example = DOCKER / "secrets" / "streamlit-secrets.toml.example"
    (tmp_path / ".streamlit" / "secrets.toml").write_text(example.read_text(encoding="utf-8"))
    assert oidc_configured(tmp_path)
    import tomllib

    auth = tomllib.loads(example.read_text(encoding="utf-8"))["auth"]
    assert {"redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url"} <= set(auth)
    assert auth["redirect_uri"].endswith("/oauth2callback")
