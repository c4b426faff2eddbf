"""``cbctqa demo`` end to end on a tiny cohort: simulate, import into the local XNAT, rate,
score with write-back, analyse, flag — and a rerun that finds nothing left to do."""

from __future__ import annotations

import json

import pytest

from flows.cli import main
from qa_core.categories import CATEGORIES


@pytest.mark.slow
def test_demo_runs_end_to_end_and_is_idempotent(tmp_path, capsys) -> None:
    argv = [
        "demo",
        "--out",
        str(tmp_path),
        "--sessions",
        "5",
        "--slices",
        "12",
        "--size",
        "64",
        "--n-resamples",
        "200",
        "--no-progress",
        "--seed",
        "4",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "imported 5 sessions" in out
    assert "AE vs consensus" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sessions"] == 5
    assert [s["status"] for s in summary["scored"]] == ["complete"] * 5
    assert summary["still_to_score"] == []
    for cat in CATEGORIES:
        res = summary["analysis"][cat]
        assert res["n"] == 5
        assert -1.0 <= res["rho"] <= 1.0
    password = (tmp_path / "xnat" / "ADMIN_PASSWORD").read_text().strip()
    assert password not in out
    assert password not in (tmp_path / "summary.json").read_text()

    # second run over the same folder: cohort resumed, nothing re-imported or re-scored
    assert main(argv) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["scored"] == []
    assert again["sessions"] == 5


def _tiny_demo_argv(out, *, n_resamples: int) -> list[str]:
    """A two-session, 8-slice, 64-pixel demo run (fast; too small for the statistics)."""
    return [
        "demo",
        "--out",
        str(out),
        "--sessions",
        "2",
        "--slices",
        "8",
        "--size",
        "64",
        "--n-resamples",
        str(n_resamples),
        "--no-progress",
    ]


def test_demo_refuses_too_few_resamples(tmp_path, capsys) -> None:
    argv = _tiny_demo_argv(tmp_path, n_resamples=5)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n-resamples" in err[0]


def test_demo_with_too_few_sessions_scores_and_skips_the_analysis(tmp_path, capsys) -> None:
    argv = _tiny_demo_argv(tmp_path, n_resamples=200)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "analysis skipped" in out and "at least 4" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["scored"]] == ["complete", "complete"]
    assert summary["analysis"] is None
