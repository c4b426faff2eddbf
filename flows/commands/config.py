"""``cbctqa config``: the settings in force, and the configuration reference.

``cbctqa config`` prints every setting with its value and where the value came from
(environment or default), secrets masked. ``cbctqa config --markdown`` prints the
configuration reference, generated from :class:`qa_core.settings.Settings` (each field's
environment variable, type, default, constraints and docstring) plus the variables the
libraries read themselves (xnatpy's ``XNAT_*``, Prefect's ``PREFECT_*``).
``docs/configuration.md`` is that output, and a test checks that the committed file equals it,
so the reference cannot drift from the code. After changing the settings class run::

    cbctqa config --markdown > docs/configuration.md
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXTERNAL_VARIABLES",
    "SettingDoc",
    "current_values",
    "register",
    "render_reference",
    "run",
    "setting_docs",
]

#: Variables read outside the settings class (by xnatpy, Prefect or the gateway), documented
#: beside it: (name, meaning, default). A name that the settings class also declares is shown
#: once, from the class.
EXTERNAL_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("XNAT_HOST", "XNAT server URL, e.g. `https://xnat.example.org` (xnatpy's variable; "
     "`XNATPY_HOST` wins when both are set).", "none: required by serve, score-pending, "
     "rescore, dashboard, doctor"),
    ("XNAT_USER", "XNAT account of the service (`XNATPY_USER` wins when both are set).",
     "the `~/.netrc` entry's login"),
    ("XNAT_PASS", "Its password (`XNATPY_PASS` wins). Secret: never logged, never in flow-run "
     "parameters; prefer `~/.netrc` (mode 600) or an env file readable by the service only.",
     "the `~/.netrc` entry's password"),
    ("NETRC", "Alternative netrc file holding `machine HOST:PORT login USER password ...`.",
     "`~/.netrc`"),
    ("PREFECT_API_URL", "Prefect server API, e.g. `http://prefect:4200/api`. Unset: `cbctqa "
     "serve` and `cbctqa score-pending` start a local Prefect server on "
     "127.0.0.1:`CBCTQA_PREFECT_PORT`.", "unset (local server)"),
    ("PREFECT_HOME", "Prefect's own folder: the local server's SQLite database, profiles, "
     "logs.", "`~/.prefect`"),
    ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "Prefect server's database (production: "
     "`postgresql+asyncpg://prefect:PASSWORD@postgres:5432/prefect`). Secret when it holds a "
     "password.", "SQLite under `PREFECT_HOME`"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "Prefect's usage analytics; the product turns them "
     "off for the servers it starts and the compose stack sets `false`.", "`true` (Prefect's "
     "default)"),
)

_SECRET_WORDS = ("password", "pass", "secret", "token", "api_key")


@dataclass(frozen=True)
class SettingDoc:
    """One documented setting.

    Attributes
    ----------
    field:
        Attribute name on :class:`~qa_core.settings.Settings`.
    env:
        Environment variables that set it, first one preferred.
    type:
        Readable type (``int``, ``Path | None`` ...).
    default:
        Default as shown to users (home folder written ``~``).
    constraints:
        Bounds such as ``>= 1``, or ``""``.
    doc:
        The field's docstring (or ``description``), one paragraph.
    secret:
        Whether the value must never be shown.
    """

    field: str
    env: tuple[str, ...]
    type: str
    default: str
    constraints: str
    doc: str
    secret: bool


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for string literals that follow annotated class attributes."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith(("pydantic", "builtins")):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        node = ast.parse(source).body[0]
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for stmt, nxt in zip(body, [*body[1:], None], strict=True):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if annotation is type(None):
        return "None"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _show_default(value: Any) -> str:
    home = str(Path.home())
    if value is None:
        return "None"
    if value == "":
        return '""'
    if isinstance(value, Path):
        text = str(value)
        if home not in ("", "/") and (text == home or text.startswith(home + os.sep)):
            text = "~" + text[len(home):]
        return text
    if isinstance(value, tuple | list | set | frozenset):
        return ", ".join(_show_default(v) for v in value) or "(empty)"
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _constraints(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"),
                           ("min_length", "length >="), ("max_length", "length <=")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _env_names(name: str, info: Any, prefix: str) -> tuple[str, ...]:
    alias = info.validation_alias or info.alias
    if alias is None:
        return (f"{prefix}{name}".upper(),)
    if isinstance(alias, str):
        return (alias.upper(),)
    choices = getattr(alias, "choices", None)
    if choices is not None:
        return tuple(str(c).upper() for c in choices if isinstance(c, str))
    return (f"{prefix}{name}".upper(),)


def _is_secret(name: str, annotation: Any) -> bool:
    text = _type_name(annotation)
    return "Secret" in text or any(word in name.lower() for word in _SECRET_WORDS)


def setting_docs(settings_cls: type | None = None) -> list[SettingDoc]:
    """Document every field of the settings class, in declaration order."""
    if settings_cls is None:
        from qa_core.settings import Settings

        settings_cls = Settings
    docs = _attribute_docstrings(settings_cls)
    prefix = str(settings_cls.model_config.get("env_prefix", ""))  # type: ignore[attr-defined]
    out = []
    for name, info in settings_cls.model_fields.items():  # type: ignore[attr-defined]
        if info.default_factory is not None:
            default = _show_default(info.default_factory())
        else:
            default = _show_default(info.default)
        out.append(
            SettingDoc(
                field=name,
                env=_env_names(name, info, prefix),
                type=_type_name(info.annotation),
                default=default,
                constraints=_constraints(list(info.metadata)),
                doc=docs.get(name) or (info.description or "").strip() or "(undocumented)",
                secret=_is_secret(name, info.annotation),
            )
        )
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reference(settings_cls: type | None = None) -> str:
    """The configuration reference as Markdown (the content of ``docs/configuration.md``)."""
    if settings_cls is None:
        from qa_core.settings import Settings

        settings_cls = Settings
    items = setting_docs(settings_cls)
    env_file = settings_cls.model_config.get("env_file")  # type: ignore[attr-defined]
    declared = {env for item in items for env in item.env}
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `cbctqa config --markdown` from qa_core/settings.py; do not edit by",
        "     hand. tests/flows/test_cli_config.py fails when this file and the code disagree. -->",
        "",
        "Every setting is read from the environment when a command starts"
        + (f" (and from `{env_file}`)." if env_file else
           " (no `.env` file is read implicitly: the compose stack passes `docker/.env` to its"
           " services).")
        + " A bad value stops the command with one line naming the variable and what is"
        " expected. `cbctqa config` prints the values in force and where each came from;"
        " `cbctqa doctor` checks that they work.",
        "",
        "## Settings of the CBCT QA monitor",
        "",
        "| variable | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for item in items:
        env = " or ".join(f"`{e}`" for e in item.env)
        secret = " **Secret**: never logged." if item.secret else ""
        lines.append(
            f"| {env} | `{_cell(item.type)}` | `{_cell(item.default)}` | "
            f"{_cell(item.constraints) or ''} | {_cell(item.doc)}{secret} |"
        )
    external = [v for v in EXTERNAL_VARIABLES if v[0] not in declared]
    if external:
        lines += [
            "",
            "## Read by xnatpy, Prefect and the gateway",
            "",
            "| variable | default | meaning |",
            "|---|---|---|",
        ]
        lines += [f"| `{name}` | {_cell(default)} | {_cell(meaning)} |"
                  for name, meaning, default in external]
    lines += [
        "",
        "## Credentials",
        "",
        "XNAT credentials are looked up in this order: `XNATPY_*`, then `XNAT_HOST`, `XNAT_USER`,",
        "`XNAT_PASS`, then the `~/.netrc` (or `$NETRC`) entry whose machine is the host's",
        "`host:port`. The services never prompt; a missing password is an error naming where it",
        "was looked for. Passwords never appear in logs, error messages, URLs, flow-run",
        "parameters or results. See [security.md](security.md).",
        "",
    ]
    return "\n".join(lines)


def _value_source(item: SettingDoc) -> str:
    for env in item.env:
        if env in os.environ:
            return f"environment ({env})"
        if env.lower() in os.environ:
            return f"environment ({env.lower()})"
    return "default"


def current_values(settings: Any = None) -> Iterator[tuple[SettingDoc, str, str]]:
    """``(doc, shown value, source)`` for every setting in force; secrets masked.

    ``settings`` defaults to :func:`qa_core.settings.get_settings` (the environment).

    Raises
    ------
    qa_core.errors.ConfigurationError
        A variable holds an invalid value (the message names it).
    """
    if settings is None:
        from qa_core.settings import get_settings

        settings = get_settings()
    for item in setting_docs(type(settings)):
        value = getattr(settings, item.field)
        shown = "***" if item.secret and value not in (None, "") else _show_default(value)
        yield item, shown, _value_source(item)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="print the settings in force (secrets masked) or the configuration reference",
        description="Print every CBCTQA_* setting with its value and source. --markdown prints "
        "the configuration reference (docs/configuration.md) generated from the settings class.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--markdown", action="store_true",
                      help="print the configuration reference as Markdown")
    mode.add_argument("--json", action="store_true", help="print the settings in force as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(render_reference(), end="")
        return 0
    rows = list(current_values())
    if args.json:
        print(json.dumps({item.env[0]: {"value": shown, "source": source}
                          for item, shown, source in rows}, sort_keys=True, indent=1))
        return 0
    width = max(len(item.env[0]) for item, _, _ in rows)
    for item, shown, source in rows:
        print(f"{item.env[0]:{width}s}  {shown}  [{source}]")
    return 0
