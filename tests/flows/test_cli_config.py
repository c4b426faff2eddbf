"""``cbctqa config``: the generated configuration reference and the settings in force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.cli import main
from flows.commands.config import current_values, render_reference, setting_docs
from qa_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_committed_reference_equals_generated() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_reference(), (
        "docs/configuration.md is out of date with qa_core/settings.py; regenerate it with "
        "`make docs` (cbctqa config --markdown > docs/configuration.md)"
    )


def test_every_setting_is_documented_and_listed() -> None:
    docs = setting_docs()
    assert [d.field for d in docs] == list(Settings.model_fields)
    undocumented = [d.field for d in docs if d.doc == "(undocumented)"]
    assert not undocumented, f"settings without a docstring: {undocumented}"
    text = render_reference()
    for d in docs:
        assert f"`{d.env[0]}`" in text


def test_markdown_command_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == render_reference()


class _Example(BaseSettings):
    """A settings class exercising aliases, secrets, bounds and factories."""

    model_config = SettingsConfigDict(env_prefix="CBCTQA_", extra="ignore", frozen=True)

    poll_interval_s: float = Field(60.0, gt=0)
    """Seconds between | discovery passes."""

    xnat_host: str | None = Field(None, validation_alias=AliasChoices("XNATPY_HOST", "XNAT_HOST"))
    """XNAT URL."""

    webhook_token: SecretStr | None = None
    """Token of the alert webhook."""

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".cbctqa")
    """State folder."""


def test_reference_renders_aliases_secrets_bounds_and_home() -> None:
    docs = {d.field: d for d in setting_docs(_Example)}
    assert docs["poll_interval_s"].env == ("CBCTQA_POLL_INTERVAL_S",)
    assert docs["poll_interval_s"].constraints == "> 0"
    assert docs["xnat_host"].env == ("XNATPY_HOST", "XNAT_HOST")
    assert docs["xnat_host"].type == "str | None"
    assert docs["webhook_token"].secret and not docs["data_dir"].secret
    assert docs["data_dir"].default == "~/.cbctqa"
    text = render_reference(_Example)
    assert "Seconds between \\| discovery passes." in text  # a pipe cannot break the table
    assert "`XNATPY_HOST` or `XNAT_HOST`" in text
    assert "**Secret**" in text
    # XNAT_HOST is declared by the class, so the external list does not repeat it
    assert text.count("| `XNAT_HOST`") == 0 and "| `XNAT_PASS`" in text


def test_values_in_force_mask_secrets_and_name_their_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBCTQA_WEBHOOK_TOKEN", "tok-very-secret-42")
    monkeypatch.setenv("CBCTQA_POLL_INTERVAL_S", "15")
    rows = {d.field: (shown, source) for d, shown, source in current_values(_Example())}
    assert rows["webhook_token"] == ("***", "environment (CBCTQA_WEBHOOK_TOKEN)")
    assert rows["poll_interval_s"] == ("15.0", "environment (CBCTQA_POLL_INTERVAL_S)")
    assert rows["xnat_host"] == ("None", "default")


def test_config_command_shows_values_and_sources(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CBCTQA_BATCH_SIZE", "8")
    assert main(["config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["CBCTQA_BATCH_SIZE"] == {"value": "8", "source": "environment (CBCTQA_BATCH_SIZE)"}
    assert data["CBCTQA_DEVICE"]["source"] == "default"
    assert main(["config"]) == 0
    assert "CBCTQA_BATCH_SIZE" in capsys.readouterr().out


def test_config_command_names_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CBCTQA_BATCH_SIZE", "0")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "CBCTQA_BATCH_SIZE" in err and "Traceback" not in err
