"""qa_core.validation on a small simulated cohort with the shipped model."""

from __future__ import annotations

import json
import math

import pytest

from flows.cli import main
from qa_core.categories import CATEGORIES
from qa_core.errors import StatisticsError, TrainingError
from qa_core.model import load_model
from qa_core.synth import generate_cohort
from qa_core.validation import validate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "cohort"
    generate_cohort(out, n_sessions=5, slices=8, size=64, seed=11, progress=False)
    return out


def test_report_joins_scores_ae_and_consensus(cohort) -> None:
    model = load_model(device="cpu")
    seen: list[str] = []
    report = validate_cohort(model, cohort, n_resamples=200, seed=2, on_session=seen.append)
    assert seen == [f"SIM11_{i:03d}" for i in range(1, 6)]
    assert [m.category for m in report.model] == list(CATEGORIES)
    assert len(report.rows) == 5 * len(CATEGORIES)
    truth = json.loads((cohort / "truth.json").read_text())
    for row in report.rows:
        assert row["consensus"] == pytest.approx(
            truth[row["session"]]["consensus"][row["category"]]
        )
        assert 1.0 <= row["predicted"] <= 5.0
        assert row["ae"] >= 0.0
    for m in report.model:
        preds = [r["predicted"] for r in report.rows if r["category"] == m.category]
        cons = [r["consensus"] for r in report.rows if r["category"] == m.category]
        assert m.mae == pytest.approx(sum(abs(p - c) for p, c in zip(preds, cons, strict=True)) / 5)
        assert m.n == 5
        assert math.isnan(m.rho) or -1.0 <= m.rho <= 1.0
    for res in report.analysis.results:
        assert res.n == 5
        assert res.verdict  # the product says whether AE tracks the consensus, or why not
    doc = report.to_dict()
    assert set(doc["categories"]) == set(CATEGORIES)
    assert doc["provenance"]["n_sessions"] == 5


def test_validate_cli_writes_json(cohort, tmp_path, capsys) -> None:
    out = tmp_path / "v.json"
    argv = [
        "validate",
        "--cohort",
        str(cohort),
        "--n-resamples",
        "200",
        "--json",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Model vs consensus" in text and "Verdicts:" in text
    doc = json.loads(out.read_text())
    for cat in CATEGORIES:
        assert set(doc["categories"][cat]) == {"model", "ae"}
        assert "rho" in doc["categories"][cat]["ae"]


def test_errors_name_the_problem(tmp_path, capsys) -> None:
    model = load_model(device="cpu")
    with pytest.raises(TrainingError):
        validate_cohort(model, tmp_path / "missing")
    assert main(["validate", "--cohort", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    small = tmp_path / "small"
    generate_cohort(small, n_sessions=2, slices=8, size=64, seed=3, progress=False)
    with pytest.raises(StatisticsError, match="at least 4"):
        validate_cohort(model, small)
