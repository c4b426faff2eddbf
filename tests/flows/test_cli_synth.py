"""``cbctqa synth`` and ``cbctqa demo``: summary output, and exit code 2 with one line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from qa_core.categories import CATEGORIES
from qa_core.synth import read_cohort

TINY = ["--slices", "8", "--size", "64", "--no-progress"]


def test_synth_writes_cohort_and_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cohort"
    assert main(["synth", "--sessions", "2", "--seed", "3", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "2 sessions x 8 slices x 64^2 (seed 3)" in text
    for cat in CATEGORIES:
        assert any(line.split()[:1] == [cat] for line in text.splitlines())
    cohort = read_cohort(out)
    assert [s.label for s in cohort.sessions] == ["SIM3_001", "SIM3_002"]
    # the printed mean matches the cohort's consensus
    line = next(ln for ln in text.splitlines() if ln.split()[:1] == ["larynx"])
    mean = sum(s.consensus["larynx"] for s in cohort.sessions) / 2
    assert float(line.split()[1]) == pytest.approx(mean, abs=0.006)


def test_synth_progress_bar_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "synth",
        "--sessions",
        "1",
        "--out",
        str(tmp_path / "c"),
        "--slices",
        "8",
        "--size",
        "64",
    ]
    assert main(args) == 0
    assert "synth" in capsys.readouterr().err  # tqdm bar label


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sessions", "0"], "--sessions must be >= 1"),
        (["--sessions", "1", "--slices", "4"], "--slices must be >= 8"),
        (["--sessions", "1", "--size", "32"], "--size must be 64-1024"),
        (["--sessions", "1", "--size", "2048"], "--size must be 64-1024"),
        (["--sessions", "1", "--seed", "-2"], "--seed must be >= 0"),
        (["--sessions", "1", "--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_synth_bad_arguments_exit_2_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    base = ["--slices", "8", "--size", "64", "--no-progress", "--out", str(tmp_path / "o")]
    # later options win in argparse, so the bad value goes last
    assert main(["synth", *base, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert err.startswith("cbctqa synth: error:")
    assert not (tmp_path / "o").exists()


def test_synth_refuses_non_empty_foreign_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    assert main(["synth", "--sessions", "1", "--out", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without cohort.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_demo_generates_small_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--sessions", "1", "--cohort-only", *TINY]) == 0
    text = capsys.readouterr().out
    assert "1 sessions x 8 slices x 64^2" in text
    meta = json.loads((out / "cohort" / "cohort.json").read_text())
    assert meta["n_sessions"] == 1 and meta["complete"] is True


def test_demo_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--sessions", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sessions must be >= 1" in err
