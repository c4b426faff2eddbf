from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import qa_core
from qa_core.categories import CATEGORIES
from qa_core.errors import ConfigurationError, ModelContractError, ModelNotFoundError
from qa_core.model import (
    DEFAULT_MODEL_PATH,
    LikertCNN,
    card_path_for,
    load_model,
    predict_volume,
    save_model,
    select_device,
    sha256_file,
)
from qa_core.volume import Volume

TINY = {"widths": (4, 4, 8, 8), "hidden": 4}


def _tiny(seed: int = 0) -> LikertCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LikertCNN(**TINY)  # type: ignore[arg-type]


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    save_model(_tiny(), path, {"note": "test"})
    return path


def _edit_card(path: Path, **changes: Any) -> None:
    card_path = card_path_for(path)
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def test_output_shape_and_likert_range() -> None:
    model = _tiny().eval()
    x = torch.randn(3, 1, 128, 128) * 5  # large inputs push the sigmoid to its ends
    with torch.no_grad():
        y = model(x)
    assert y.shape == (3, len(CATEGORIES))
    assert y.dtype == torch.float32
    assert float(y.min()) >= 1.0 and float(y.max()) <= 5.0


def test_target_layer_output_is_16x16() -> None:
    model = _tiny()
    seen: list[tuple[int, ...]] = []
    handle = model.target_layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    model.eval()(torch.zeros(2, 1, 128, 128))
    handle.remove()
    assert seen == [(2, 8, 16, 16)]
    assert model.target_layer is model.get_submodule(model.target_layer_name)
    assert model.target_layer_name == "features.3"


def test_wrong_input_shape_raises() -> None:
    with pytest.raises(ModelContractError, match=r"\(B, 1, 128, 128\)"):
        _tiny()(torch.zeros(1, 1, 64, 64))


def test_bad_architecture_arguments_raise() -> None:
    with pytest.raises(ModelContractError, match="four positive block widths"):
        LikertCNN(widths=(4, 4, 8), hidden=4)


def test_preprocess_method_uses_contract() -> None:
    model = _tiny()
    vol = Volume(hu=np.zeros((3, 200, 200), np.float32), spacing=(2.0, 0.8, 0.8))
    x = model.preprocess(vol)
    assert x.shape == (3, 1, 128, 128) and x.dtype == torch.float32
    assert model.hu_window == (-500.0, 1500.0) and model.input_size == 128
    # zeros (0 HU) map to (0 + 500) / 2000 * 2 - 1 = -0.5
    assert torch.all(x == -0.5)


def test_save_load_round_trip_on_cpu_eval_mode(saved: Path) -> None:
    model = load_model(saved, device="cpu")
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert model.card["sha256"] == sha256_file(saved)
    assert model.card["note"] == "test"
    x = torch.randn(2, 1, 128, 128)
    assert torch.equal(model(x), _tiny().eval()(x))


def test_default_model_loads_and_is_importable_from_package() -> None:
    model = qa_core.load_model(device="cpu")
    assert isinstance(model, LikertCNN)
    assert model.card["categories"] == list(CATEGORIES)
    assert DEFAULT_MODEL_PATH.stat().st_size < 5 * 1024 * 1024


def test_settings_model_path_is_honoured(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBCTQA_MODEL_PATH", str(saved))
    monkeypatch.setenv("CBCTQA_DEVICE", "cpu")
    assert load_model().card["note"] == "test"


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("categories", ["submandibular", "parotid", "larynx", "mandible", "overall"]),
        ("categories", ["parotid", "submandibular", "larynx", "mandible"]),
        ("input_size", 256),
        ("in_channels", 3),
        ("hu_window", [-1000.0, 1000.0]),
        ("target_layer", "features.2"),
    ],
)
def test_card_field_mismatch_is_refused(saved: Path, field: str, bad: Any) -> None:
    _edit_card(saved, **{field: bad})
    with pytest.raises(ModelContractError) as info:
        load_model(saved, device="cpu")
    msg = str(info.value)
    assert f"field {field!r}" in msg and "expected" in msg and "Fix:" in msg
    assert saved.name.replace(".pt", ".card.json") in msg


def test_card_architecture_name_mismatch_is_refused(saved: Path) -> None:
    _edit_card(saved, architecture={"name": "resnet18", "widths": [4, 4, 8, 8], "hidden": 4})
    with pytest.raises(ModelContractError, match=r"'architecture.name' is 'resnet18'"):
        load_model(saved, device="cpu")


def test_sha256_mismatch_is_refused(saved: Path) -> None:
    _edit_card(saved, sha256="0" * 64)
    with pytest.raises(ModelContractError, match=r"field 'sha256'.*Fix:"):
        load_model(saved, device="cpu")


def test_replaced_checkpoint_is_refused(saved: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    save_model(_tiny(seed=1), other, {})
    saved.write_bytes(other.read_bytes())
    with pytest.raises(ModelContractError, match="sha256"):
        load_model(saved, device="cpu")


def test_checkpoint_contract_mismatch_is_refused(saved: Path) -> None:
    # card is consistent and its sha256 matches, but the weights file says other categories
    blob = torch.load(saved, weights_only=True)
    blob["contract"]["categories"] = list(reversed(CATEGORIES))
    torch.save(blob, saved)
    _edit_card(saved, sha256=sha256_file(saved))
    with pytest.raises(ModelContractError, match=r"checkpoint .*tiny\.pt: field 'categories'"):
        load_model(saved, device="cpu")


def test_weights_that_do_not_fit_are_refused(saved: Path) -> None:
    blob = torch.load(saved, weights_only=True)
    del blob["state_dict"]["head.w2"]
    torch.save(blob, saved)
    _edit_card(saved, sha256=sha256_file(saved))
    with pytest.raises(ModelContractError, match="weights do not fit"):
        load_model(saved, device="cpu")


def test_missing_checkpoint_and_missing_card(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"nope\.pt not found"):
        load_model(tmp_path / "nope.pt", device="cpu")
    card_path_for(saved).unlink()
    with pytest.raises(ModelContractError, match=r"tiny\.card\.json not found"):
        load_model(saved, device="cpu")


def test_unreadable_card_is_refused(saved: Path) -> None:
    card_path_for(saved).write_text("{not json")
    with pytest.raises(ModelContractError, match="not readable JSON"):
        load_model(saved, device="cpu")


def test_save_requires_pt_suffix(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match=r"must end in \.pt"):
        save_model(_tiny(), tmp_path / "model.pth", {})


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    with pytest.raises(ConfigurationError, match="unknown torch device"):
        select_device("gpu-please")
    with pytest.raises(ConfigurationError, match="unsupported torch device"):
        select_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="CUDA is not available"):
            select_device("cuda")


def test_select_device_follows_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBCTQA_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")


def test_predict_volume_shape_and_mode_restored() -> None:
    model = _tiny().train()
    vol = Volume(hu=np.zeros((5, 64, 64), np.float32), spacing=(2.0, 1.0, 1.0))
    y = predict_volume(model, vol, batch_size=2)
    assert y.shape == (5, 5) and y.dtype == np.float32
    assert model.training  # restored
    # identical slices give identical rows
    assert np.allclose(y, y[0])
    with pytest.raises(ModelContractError, match="batch_size"):
        predict_volume(model, vol, batch_size=0)


def test_predict_volume_equals_plain_forward_pass() -> None:
    """predict_volume = the model's own forward on model.preprocess(volume), in eval mode,
    for any batch size; and a model in train mode would give other numbers (BatchNorm with
    batch statistics), so the comparison can tell eval from train."""
    model = _tiny(seed=4)
    with torch.no_grad():  # give BatchNorm running statistics that differ from a batch's
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(8)
    hu = rng.normal(0.0, 300.0, (7, 48, 40)).astype(np.float32)  # non-square: padded
    hu[:, 10:38, 8:32] += np.linspace(-400, 800, 7, dtype=np.float32)[:, None, None]
    vol = Volume(hu=hu, spacing=(2.0, 1.0, 1.0))
    model.train()
    x = model.preprocess(vol)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
        # on a copy: a train-mode pass updates BatchNorm's running statistics
        in_train_mode = copy.deepcopy(model).train()(x).numpy()
    model.train()
    assert np.abs(expected - in_train_mode).max() > 1e-3  # the check below can fail
    for bs in (1, 3, 7, 64):
        got = predict_volume(model, vol, batch_size=bs)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert model.training  # restored each time
    # Each row depends on its own slice only: a permuted volume permutes the rows.
    order = rng.permutation(7)
    permuted = Volume(hu=hu[order], spacing=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(
        predict_volume(model, permuted, batch_size=2), expected[order], rtol=1e-5, atol=1e-6
    )
