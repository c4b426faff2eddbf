"""``cbctqa demo`` end to end on a tiny cohort: simulate, import into the local XNAT, rate,
score with write-back, analyse, flag — and a rerun that finds nothing left to do."""

from __future__ import annotations

import json

import pytest
from scipy.stats import spearmanr

from flows.cli import main
from flows.commands.demo import DEMO_PROJECT
from flows.scoring import cohort_rows
from qa_core.categories import CATEGORIES
from xnat_plugin.gateway import XnatGateway
from xnat_plugin.server import ServerConfig, run_in_thread


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
    password = (tmp_path / "xnat" / "ADMIN_PASSWORD").read_text().strip()
    # the analysis is recomputed independently from what the demo left in its XNAT: the
    # assessments' AE and the consensus of the ratings, with scipy's Spearman correlation
    with (
        run_in_thread(ServerConfig(data_dir=tmp_path / "xnat", admin_user="admin",
                                   admin_password=password)) as server,
        XnatGateway.connect(server.url, "admin", password, project=DEMO_PROJECT) as gw,
    ):
        rows = cohort_rows(gw.read_assessments(DEMO_PROJECT), gw.read_ratings(DEMO_PROJECT),
                           model_version=summary["model_version"])
    for cat in CATEGORIES:
        res = summary["analysis"][cat]
        mine = sorted((r["session"], r["ae"], r["consensus"]) for r in rows if r["category"] == cat)
        assert res["n"] == len(mine) == 5
        assert sorted(res["sessions"]) == [m[0] for m in mine]
        expected = spearmanr([m[1] for m in mine], [m[2] for m in mine]).statistic
        assert res["rho"] == pytest.approx(expected, abs=1e-9), cat
        assert res["ci_low"] <= res["rho"] <= res["ci_high"]
        assert 0.0 < res["perm_p"] <= 1.0 and res["p_holm"] >= res["perm_p"]
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
