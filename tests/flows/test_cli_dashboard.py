"""``cbctqa dashboard``: options, local-mode guard, the Streamlit command line (no server started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from flows.commands import dashboard as cmd


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["dashboard", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "--project" in out


def test_local_mode_refuses_a_public_address(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["dashboard", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1" in err and "OIDC" in err and "Traceback" not in err


def test_bad_port_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err


def test_oidc_is_detected_from_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert not cmd.oidc_configured(tmp_path)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        '[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\ncookie_secret = "x"\n'
    )
    assert cmd.oidc_configured(tmp_path)
    (tmp_path / ".streamlit" / "secrets.toml").write_text("[auth\n")
    with pytest.raises(Exception, match=r"secrets\.toml"):
        cmd.oidc_configured(tmp_path)


def test_streamlit_command_line() -> None:
    argv = cmd.streamlit_argv("127.0.0.1", 8600)
    assert argv[1:4] == ["-m", "streamlit", "run"]
    assert Path(argv[4]) == cmd.app_path() and cmd.app_path().is_file()
    joined = " ".join(argv)
    assert "--server.address 127.0.0.1" in joined and "--server.port 8600" in joined
    assert "--server.headless true" in joined and "--browser.gatherUsageStats false" in joined
