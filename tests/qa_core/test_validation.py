"""qa_core.validation on a small simulated cohort with the shipped model."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from scipy.stats import spearmanr

from flows.cli import main
from qa_core.attribution import attribute_volume
from qa_core.categories import CATEGORIES
from qa_core.dicom_series import load_series
from qa_core.errors import StatisticsError, TrainingError
from qa_core.model import load_model
from qa_core.synth import generate_cohort
from qa_core.validation import validate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "cohort"
    generate_cohort(out, n_sessions=5, slices=8, size=64, seed=11, progress=False)
    return out


def _exact_permutation_p(x: list[float], y: list[float]) -> float:
    """Two-sided exact permutation p of Spearman's rho: share of all n! orderings of y."""
    observed = abs(spearmanr(x, y).statistic)
    hits = total = 0
    for order in itertools.permutations(y):
        total += 1
        hits += abs(spearmanr(x, list(order)).statistic) >= observed - 1e-12
    return hits / total


def _holm(p: dict[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values."""
    ranked = sorted(p, key=p.__getitem__)
    out: dict[str, float] = {}
    running = 0.0
    for i, key in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p[key]))
        out[key] = running
    return out


@pytest.mark.slow
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
    # one session scored independently: the rows hold exactly what attribution gives
    first = attribute_volume(model, load_series(cohort / "sessions" / seen[0] / "DICOM"))
    for row in (r for r in report.rows if r["session"] == seen[0]):
        assert row["ae"] == pytest.approx(float(first.ae[row["category"]]), rel=1e-6)
        assert row["predicted"] == pytest.approx(float(first.scores[row["category"]]), rel=1e-6)

    def column(cat: str, key: str) -> list[float]:
        return [r[key] for r in report.rows if r["category"] == cat]

    for m in report.model:
        preds, cons = column(m.category, "predicted"), column(m.category, "consensus")
        assert m.mae == pytest.approx(sum(abs(p - c) for p, c in zip(preds, cons, strict=True)) / 5)
        assert m.n == 5
        expected = spearmanr(preds, cons)
        assert m.rho == pytest.approx(expected.statistic) and m.p == pytest.approx(expected.pvalue)
    # the AE analysis, recomputed from the rows: rho, exact permutation p (all 5! orderings),
    # Holm across the five categories
    results = {res.category: res for res in report.analysis.results}
    assert list(results) == list(CATEGORIES)
    perm = {c: _exact_permutation_p(column(c, "ae"), column(c, "consensus")) for c in CATEGORIES}
    holm = _holm(perm)
    for cat, res in results.items():
        assert res.n == 5 and sorted(res.sessions) == seen
        assert res.rho == pytest.approx(spearmanr(column(cat, "ae"), column(cat, "consensus")).statistic)
        assert res.perm_exact and res.perm_p == pytest.approx(perm[cat])
        assert res.p_holm == pytest.approx(holm[cat]) and res.family_size == 5
        # with 5 volumes the smallest two-sided p is 2/5! = 1/60; Holm over 5 categories lifts
        # it to 1/12 > 0.05, so the product must not claim that AE tracks consensus
        assert res.perm_min_p == pytest.approx(2 / math.factorial(5))
        assert res.verdict_code == "too_few_volumes" and not res.ae_tracks_consensus
        assert "too few volumes" in res.verdict and "n=5" in res.verdict
    doc = report.to_dict()
    assert set(doc["categories"]) == set(CATEGORIES)
    assert doc["provenance"]["n_sessions"] == 5
    assert doc["categories"]["parotid"]["ae"]["rho"] == pytest.approx(results["parotid"].rho)


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
        # simulated sessions carry an RTSTRUCT: localisation is reported beside the AE analysis
        assert set(doc["categories"][cat]) == {"model", "ae", "localisation"}
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
