"""qa_core.validation with contours: localisation per category and the organ-restricted AE."""

from __future__ import annotations

import math
import shutil

import pytest

from flows.cli import main
from qa_core.categories import CATEGORIES
from qa_core.errors import StatisticsError
from qa_core.model import load_model
from qa_core.synth import generate_cohort
from qa_core.validation import summarise_localisation, validate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("valloc") / "cohort"
    generate_cohort(out, n_sessions=4, slices=8, size=64, seed=12, progress=False)
    return out


def test_localisation_per_category_and_organ_ae(cohort) -> None:
    model = load_model(device="cpu")
    report = validate_cohort(model, cohort, n_resamples=200, seed=1)
    assert [s.category for s in report.localisation] == list(CATEGORIES)
    for row in report.rows:  # every simulated session carries its RTSTRUCT
        assert 0.0 <= row["ae_in_region"] <= 1.0
        assert row["organ_ae"] == pytest.approx(row["ae_in_region"] * row["ae"], rel=1e-6)
        assert 0.0 < row["region_share"] <= 1.0
    for s in report.localisation:
        assert s.n == 4 and 0 <= s.n_flagged <= 4 and s.verdict
        vals = sorted(r["ae_in_region"] for r in report.rows if r["category"] == s.category)
        assert s.ae_in_region_median == pytest.approx((vals[1] + vals[2]) / 2)
    overall = next(s for s in report.localisation if s.category == "overall")
    assert overall.region_share_median == 1.0
    doc = report.to_dict()
    assert doc["categories"]["parotid"]["localisation"]["n"] == 4

    organ = validate_cohort(model, cohort, n_resamples=200, seed=1, ae_definition="organ")
    by_key = {(r["session"], r["category"]): r for r in report.rows}
    for row in organ.rows:
        assert row["ae"] == pytest.approx(by_key[(row["session"], row["category"])]["organ_ae"])
    assert organ.provenance["ae_definition"] == "organ"
    with pytest.raises(StatisticsError, match="ae_definition must be one of study, organ"):
        validate_cohort(model, cohort, ae_definition="inside")


def test_organ_ae_needs_contours(cohort, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(cohort, bare)
    for rs in bare.glob("sessions/*/DICOM/RS.dcm"):
        rs.unlink()
    model = load_model(device="cpu")
    report = validate_cohort(model, bare, n_resamples=200)
    assert report.localisation == () and "ae_in_region" not in report.rows[0]
    with pytest.raises(StatisticsError, match="no RTSTRUCT referencing series"):
        validate_cohort(model, bare, n_resamples=200, ae_definition="organ")


def test_summary_known_answer() -> None:
    rows = [
        {"category": "larynx", "ae_in_region": v, "region_share": 0.1, "pointing_hits": h,
         "pointing_slices": 4}
        for v, h in ((0.05, 0), (0.3, 2), (0.6, 3), (0.9, 4))
    ]
    (s,) = summarise_localisation(rows, min_share=0.5)
    assert s.ae_in_region_median == pytest.approx(0.45) and s.ratio_median == pytest.approx(4.5)
    assert s.pointing_hit_rate == pytest.approx(9 / 16) and s.n_flagged == 2
    assert "well above chance" in s.verdict
    assert s.n_alerted == 0 and "0 alerted as unusual for this model" in s.verdict
    rows[0]["localisation_flag"] = "attribution map falls mostly outside the contoured larynx"
    assert summarise_localisation(rows, min_share=0.5)[0].n_alerted == 1
    assert math.isnan(summarise_localisation(
        [{"category": "parotid", "ae_in_region": 0.0, "region_share": 0.0}], 0.5)[0].ratio_median)


def test_validate_cli_prints_localisation(cohort, capsys) -> None:
    argv = ["validate", "--cohort", str(cohort), "--n-resamples", "200", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Localisation (sessions with an RTSTRUCT)" in out and "pointing" in out
    assert "parotid: the map" in out
