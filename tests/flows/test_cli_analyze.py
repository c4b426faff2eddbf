"""Tests of ``cbctqa analyze`` run in-process."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from qa_core.categories import CATEGORIES
from qa_core.statistics import analyze_table, loo_spearman


def _write_table(path: Path, *, predicted: bool = True, seed: int = 0, n: int = 16) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    data = {}
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["session", "category", "ae", "consensus", *(["predicted"] if predicted else [])])
        for cat in CATEGORIES:
            q = rng.uniform(1, 5, n)
            consensus = np.clip(np.round(q + rng.normal(0, 0.4, (3, n))), 1, 5).mean(axis=0).round(4)
            pred = (q + rng.normal(0, 0.4, n)).round(3)
            ae = (np.exp(0.5 * q + rng.normal(0, 0.2, n)) * 100).round(3)
            data[cat] = (ae, consensus)
            for i in range(n):
                w.writerow([f"S{i:02d}", cat, ae[i], consensus[i], *([pred[i]] if predicted else [])])
    return data


def _write_ratings(path: Path, n: int = 16) -> None:
    rng = np.random.default_rng(9)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["session", "rater", "category", "score"])
        for cat in CATEGORIES:
            q = rng.uniform(1, 5, n)
            for i in range(n):
                for rater in ("alice", "bob", "carol"):
                    w.writerow([f"S{i:02d}", rater, cat, int(np.clip(round(q[i] + rng.normal(0, 0.5)), 1, 5))])


def test_analyze_prints_study_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "cohort.csv"
    data = _write_table(table)
    out = tmp_path / "out" / "analysis.json"
    rc = main(["analyze", str(table), "--json", str(out), "--n-resamples", "199", "--seed", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "LOO ρ̃" in text and "perm p" in text and "Verdicts:" in text
    assert text.count("  study") == 5
    assert "0.71  ≤ 0.01" in text and "0.25    0.37" in text  # the study's parotid and larynx rows
    raw = out.read_text()
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, indent=2) + "\n"  # sorted keys, no NaN tokens
    assert set(doc) == {*CATEGORIES, "provenance"}
    for cat in CATEGORIES:
        entry = doc[cat]
        for key in ("n", "rho", "loo_median_rho", "loo_median_p", "perm_p", "ci_low", "ci_high", "partial_rho", "outliers", "p_holm", "p_bh", "rho_ae_pred", "verdict"):
            assert key in entry, (cat, key)
        ae, consensus = data[cat]
        loo = loo_spearman(ae, consensus)
        assert entry["n"] == 16
        assert entry["rho"] == pytest.approx(loo.rho) and entry["loo_median_p"] == pytest.approx(loo.loo_median_p)
        assert isinstance(entry["partial_rho"], float)
        assert entry["study"]["rho"] > 0
    prov = doc["provenance"]
    assert prov["input_sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    assert prov["seed"] == 3 and prov["n_resamples"] == 199 and prov["package_version"] == "0.1.0"
    # The CLI agrees with the library on the same rows and seed.
    rows = list(csv.DictReader(table.open()))
    lib = analyze_table(rows, n_resamples=199, seed=3)
    assert doc["larynx"]["perm_p"] == pytest.approx(lib["larynx"].perm_p)
    assert doc["larynx"]["ci_low"] == pytest.approx(lib["larynx"].ci_low)


def test_json_without_predictions_has_null_partial_and_outlier_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.csv"
    _write_table(table, predicted=False)
    # Plant an atypical volume: far too much AE for the worst-rated parotid session.
    rows = list(csv.reader(table.open()))
    parotid = [r for r in rows[1:] if r[1] == "parotid"]
    worst = min(parotid, key=lambda r: float(r[3]))
    worst[2] = str(float(worst[2]) * 20)
    with table.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = tmp_path / "a.json"
    assert main(["analyze", str(table), "--json", str(out), "--n-resamples", "99"]) == 0
    doc = json.loads(out.read_text())
    assert doc["parotid"]["partial_rho"] is None and doc["parotid"]["rho_ae_pred"] is None
    flags = doc["parotid"]["outliers"]
    assert worst[0] in {f["session"] for f in flags}
    f = next(f for f in flags if f["session"] == worst[0] and f["kind"] == "ae_residual")
    assert {"session", "reason", "robust_z", "delta_rho", "residual", "ae", "consensus"} <= set(f)
    assert f["robust_z"] > 3.5 and "above the increasing isotonic trend" in f["reason"]
    assert worst[0] in capsys.readouterr().out


def test_ratings_and_weights_recompute_consensus_and_report_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.csv"
    _write_table(table, predicted=False)
    ratings = tmp_path / "r.csv"
    _write_ratings(ratings)
    out = tmp_path / "a.json"
    rc = main(["analyze", str(table), "--ratings", str(ratings), "--weights", "alice=2", "--n-resamples", "99", "--json", str(out)])
    assert rc == 0
    assert "Inter-rater agreement" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["provenance"]["rater_weights"] == {"alice": 2.0, "bob": 1.0, "carol": 1.0}
    assert doc["provenance"]["rater_weight_sources"]["alice"] == "override"
    assert doc["provenance"]["ratings_sha256"] == hashlib.sha256(ratings.read_bytes()).hexdigest()
    ag = doc["larynx"]["agreement"]
    assert -1 <= ag["icc2_1"] <= 1 and -1 <= ag["krippendorff_alpha_ordinal"] <= 1 and ag["n_raters"] == 3


def test_same_seed_same_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.csv"
    _write_table(table, n=8)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["analyze", str(table), "--json", str(a), "--n-resamples", "99", "--seed", "1"]) == 0
    assert main(["analyze", str(table), "--json", str(b), "--n-resamples", "99", "--seed", "1"]) == 0
    assert a.read_text() == b.read_text()


@pytest.mark.parametrize(
    ("content", "extra", "match"),
    [
        ("session,category,ae\nS1,larynx,3\n", [], "line 1: header lacks column consensus"),
        ("session,category,consensus\n", [], r"line 1: header lacks column\(s\) ae"),
        ("session,category,ae,consensus,score\nS1,larynx,1,3,2\n", [], r"line 1: unknown column\(s\) score"),
        ("session,category,ae,consensus\nS1,larynx,abc,3\n", [], "line 2, column 'ae': expected a number, got 'abc'"),
        ("session,category,ae,consensus\nS1,larynx,1,3\nS2,nose,1,3\n", [], "line 3, column 'category': unknown category 'nose'"),
        ("session,category,ae,consensus\nS1,larynx,1,7\n", [], "line 2, column 'consensus': 7 is outside the Likert range"),
        ("session,category,ae,consensus\nS1,larynx,-1,3\n", [], "line 2, column 'ae': -1 is negative"),
        ("session,category,ae,consensus\nS1,larynx,1,nan\n", [], "not a finite number"),
        ("session,category,ae,consensus\nS1,larynx,1\n", [], "line 2: 3 fields but the header has 4"),
        ("session,category,ae,consensus\n", [], "no data rows"),
        ("", [], "empty file"),
        ("session,category,ae,consensus\nS1,larynx,1,3\nS1,larynx,2,4\n", [], "appears twice"),
        ("session,category,ae,consensus\nS1,larynx,1,3\nS2,larynx,2,4\n", [], "at least 4"),
        ("session,category,ae,consensus\nS1,larynx,1,3\n", ["--weights", "a=1"], "--weights needs --ratings"),
        ("session,category,ae,consensus\nS1,larynx,1,3\n", ["--n-resamples", "0"], "--n-resamples must be a positive"),
    ],
)
def test_bad_tables_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, extra: list[str], match: str
) -> None:
    table = tmp_path / "bad.csv"
    table.write_text(content)
    assert main(["analyze", str(table), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cbctqa analyze: error:") and "\n" not in err
    assert re.search(match, err), err
    if "header" in match or "line" in match:
        assert str(table) in err


def test_skip_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.csv"
    _write_table(table, predicted=False, n=6)
    lines = table.read_text().splitlines()
    kept = [ln for ln in lines if ",larynx," not in ln] + [ln for ln in lines if ",larynx," in ln][:2]
    table.write_text("\n".join(kept) + "\n")
    assert main(["analyze", str(table), "--n-resamples", "99"]) == 2
    assert "category 'larynx'" in capsys.readouterr().err
    out = tmp_path / "a.json"
    assert main(["analyze", str(table), "--n-resamples", "99", "--skip-small", "--json", str(out)]) == 0
    assert "larynx: skipped: 2 volume(s)" in capsys.readouterr().out
    assert json.loads(out.read_text())["skipped"] == {"larynx": "2 volume(s); at least 4 are needed"}


def test_missing_file_and_bad_ratings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read analysis table" in capsys.readouterr().err
    table = tmp_path / "t.csv"
    _write_table(table, predicted=False, n=5)
    ratings = tmp_path / "r.csv"
    ratings.write_text("session,rater,category,score\nS00,alice,parotid,9\n")
    assert main(["analyze", str(table), "--ratings", str(ratings)]) == 2
    err = capsys.readouterr().err
    assert f"{ratings} line 2" in err and "not a Likert rating" in err
    ratings.write_text("session,rater,category,score\nS00,alice,parotid,3\n")
    assert main(["analyze", str(table), "--ratings", str(ratings)]) == 2
    assert "no ratings in" in capsys.readouterr().err


def test_constant_consensus_is_written_as_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.csv"
    table.write_text("session,category,ae,consensus\n" + "".join(f"S{i},larynx,{i + 1},3\n" for i in range(6)))
    out = tmp_path / "a.json"
    assert main(["analyze", str(table), "--n-resamples", "99", "--json", str(out)]) == 0
    def no_constants(token: str) -> None:
        raise AssertionError(f"non-JSON constant {token} written")

    doc = json.loads(out.read_text(), parse_constant=no_constants)
    assert doc["larynx"]["rho"] is None and doc["larynx"]["ci_low"] is None
    assert doc["larynx"]["verdict_code"] == "undefined"
    assert "constant" in capsys.readouterr().out
