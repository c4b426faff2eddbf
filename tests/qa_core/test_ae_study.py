"""qa_core.ae_study: one pass serves every CAM method, the table's statistics, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from qa_core.ae_study import analyse_study, collect_cohort, format_markdown, main, volume_maps
from qa_core.attribution import METHODS, attribute_volume
from qa_core.categories import CATEGORIES
from qa_core.dicom_series import load_series
from qa_core.model import load_model
from qa_core.statistics import partial_spearman
from qa_core.synth import generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "c"
    generate_cohort(out, n_sessions=5, slices=8, size=64, seed=13, progress=False)
    return out


def test_one_pass_equals_attribute_volume_for_every_method(cohort) -> None:
    model = load_model(device="cpu")
    volume = load_series(cohort / "sessions" / "SIM13_001" / "DICOM")
    scores, maps = volume_maps(model, volume, batch_size=3)
    assert set(maps) == set(METHODS)
    for method in ("gradcam", "layercam"):
        ref = attribute_volume(model, volume, method=method)
        np.testing.assert_allclose(maps[method], ref.cams, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(scores, ref.slice_scores, rtol=1e-5)


def test_table_statistics_and_command(cohort, tmp_path, capsys) -> None:
    model = load_model(device="cpu")
    rows = collect_cohort(model, cohort, methods=("gradcam", "hirescam"))
    assert len(rows) == 5 * len(CATEGORIES) * 2
    for r in rows:
        assert 0.0 <= r["organ_ae"] <= r["ae"] + 1e-9
    cells = analyse_study(rows, n_resamples=500, seed=1)
    assert len(cells) == 2 * 2 * len(CATEGORIES)
    c = next(c for c in cells if (c.method, c.definition, c.category) == ("gradcam", "organ", "parotid"))
    sel = [r for r in rows if r["method"] == "gradcam" and r["category"] == "parotid"]
    ae = [r["organ_ae"] for r in sel]
    cons = [r["consensus"] for r in sel]
    pred = [r["predicted"] for r in sel]
    assert c.rho_consensus == pytest.approx(stats.spearmanr(ae, cons).statistic)
    assert c.rho_prediction == pytest.approx(stats.spearmanr(ae, pred).statistic)
    assert c.partial_rho == pytest.approx(partial_spearman(ae, cons, pred).rho)
    assert 0.0 < c.p_consensus <= c.p_consensus_holm <= 1.0
    text = format_markdown(cells)
    assert "| gradcam | Σ L·r | parotid |" in text and "partial ρ given prediction" in text
    out = tmp_path / "s.json"
    argv = ["--cohort", str(cohort), "--methods", "gradcam", "--n-resamples", "200", "--json", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert len(doc["cells"]) == 2 * len(CATEGORIES) and "Σ L" in capsys.readouterr().out
