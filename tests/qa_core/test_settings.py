from __future__ import annotations

import pytest

from qa_core.errors import CbctQaError, ConfigurationError
from qa_core.settings import Settings, get_settings


def test_defaults_are_documented_and_valid() -> None:
    s = Settings()
    assert s.max_slices == 2048
    assert s.device == "auto"
    # every field carries a docstring (attribute docstrings are part of the contract)
    import inspect

    source = inspect.getsource(Settings)
    for name in Settings.model_fields:
        block = source.split(f"    {name}:", 1)[1].split("\n", 3)
        assert '"""' in block[1], f"field {name} has no docstring"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBCTQA_MAX_SLICES", "12")
    monkeypatch.setenv("CBCTQA_LOG_LEVEL", "debug")
    s = get_settings()
    assert s.max_slices == 12
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("var", "value"),
    [("CBCTQA_MAX_SLICES", "0"), ("CBCTQA_DEVICE", "tpu"), ("CBCTQA_LOG_LEVEL", "LOUD"), ("CBCTQA_BATCH_SIZE", "x")],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError, match=var) as info:
        get_settings()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, CbctQaError)
