from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main


def test_missing_cohort_exits_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-cohort"
    assert main(["train", "--cohort", str(missing), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("cbctqa train: error: cohort folder")
    assert str(missing) in err[0] and "cbctqa synth" in err[0]
    assert not (tmp_path / "m.pt").exists()


def test_out_must_be_pt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--cohort", str(tmp_path), "--out", str(tmp_path / "m.pth"), "--device", "cpu"]) == 2
    assert "must end in .pt" in capsys.readouterr().err


def test_empty_cohort_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--cohort", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--device", "cpu"]) == 2
    assert "cbctqa train: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_train_end_to_end_on_tiny_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from qa_core.model import load_model
    from qa_core.synth import generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_sessions=5, slices=8, size=64, seed=9, progress=False)
    out = tmp_path / "models" / "m.pt"
    argv = ["train", "--cohort", str(cohort), "--out", str(out), "--epochs", "1", "--seed", "2",
            "--device", "cpu", "--quiet", "--heldout", str(cohort)]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    assert "validation (volume means" in stdout and "parotid" in stdout and "held-out cohort" in stdout
    model = load_model(out, device="cpu")
    card = model.card
    assert card["command"] == (
        f"cbctqa train --cohort {cohort} --out {out} --epochs 1 --seed 2 --val-fraction 0.2 "
        f"--batch-size 32 --patience 6 --lr 0.002 --threads 2 --device cpu --heldout {cohort}"
    )
    assert card["training"]["epochs_run"] == 1 and card["training"]["data"]["n_sessions"] == 5
    assert len(card["training"]["val_sessions"]) == 2
