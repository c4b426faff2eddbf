"""Tests of qa_core.agreement against published and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qa_core.agreement import agreement_by_category, icc2_1, krippendorff_alpha, ratings_matrix
from qa_core.errors import StatisticsError

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]

NAN = math.nan
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 observers × 12 units
# (printed with observers as rows; our functions take units as rows, hence the .T below).
KRIPP_2011 = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
)
# Wikipedia "Krippendorff's alpha", computational example: 3 coders × 15 units.
WIKI = np.array(
    [
        [NAN, NAN, NAN, NAN, NAN, 3, 4, 1, 2, 1, 1, 3, 3, NAN, 3],
        [1, NAN, 2, 1, 3, 3, 4, 3, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
        [NAN, NAN, 2, 1, 3, 4, 4, NAN, 2, 1, 1, 3, 3, NAN, 4],
    ]
)


def test_icc21_shrout_fleiss_and_psych_reference() -> None:
    r = icc2_1(SHROUT_FLEISS)
    assert round(r.icc, 2) == 0.29  # Shrout & Fleiss (1979), Table 4
    # R psych::ICC(sf): ICC2 0.29, F = 11.03 on (5, 15) df, p = 0.00013, 95% CI [0.019, 0.76].
    assert r.icc == pytest.approx(0.28976, abs=1e-5)
    assert r.f == pytest.approx(11.03, abs=0.01) and (r.df1, r.df2) == (5, 15)
    assert r.p == pytest.approx(0.00013, abs=1e-5)
    assert r.ci_low == pytest.approx(0.019, abs=5e-4) and r.ci_high == pytest.approx(0.76, abs=5e-3)
    assert (r.n_targets, r.n_raters, r.n_dropped) == (6, 4, 0)


def test_icc21_hand_computed_without_residual() -> None:
    # rows 1.5/3.5/5.5, columns 3/4: MSR = 8, MSC = 1.5, MSE = 0 -> ICC = 8 / (8 + 2·1.5/3) = 8/9.
    r = icc2_1([[1, 2], [3, 4], [5, 6]])
    assert r.icc == pytest.approx(8 / 9)
    assert (r.ms_rows, r.ms_cols, r.ms_error) == pytest.approx((8.0, 1.5, 0.0))
    assert math.isnan(r.ci_low) and "no McGraw & Wong interval" in r.warnings[0]


def test_icc21_drops_incomplete_sessions() -> None:
    data = [*SHROUT_FLEISS, [5, NAN, 3, 4]]
    r = icc2_1(data)
    assert r.n_dropped == 1 and r.icc == pytest.approx(icc2_1(SHROUT_FLEISS).icc)
    assert "left out" in r.warnings[0]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2, 3], "2-D"),
        ([[1], [2], [3]], "at least 2 raters"),
        ([[1, 2], [NAN, 3]], "at least 2 sessions"),
        ([[3, 3], [3, 3]], "identical"),
        ([[1, np.inf], [2, 3]], "infinite"),
    ],
)
def test_icc21_errors(data: object, match: str) -> None:
    with pytest.raises(StatisticsError, match=match):
        icc2_1(data)  # type: ignore[arg-type]
    with pytest.raises(StatisticsError, match="confidence_level"):
        icc2_1(SHROUT_FLEISS, confidence_level=1.0)


@pytest.mark.parametrize(
    ("level", "expected"),
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_2011_published_values(level: str, expected: float) -> None:
    r = krippendorff_alpha(KRIPP_2011.T, level=level)  # type: ignore[arg-type]
    assert round(r.alpha, 3) == expected
    assert r.n_units == 11 and r.n_values == 40  # unit 12 has one value: not pairable
    assert "only one rater" in r.warnings[0]


def test_krippendorff_wikipedia_example() -> None:
    assert round(krippendorff_alpha(WIKI.T, level="nominal").alpha, 3) == 0.691
    assert round(krippendorff_alpha(WIKI.T, level="interval").alpha, 3) == 0.811


def test_krippendorff_hand_computed_two_raters() -> None:
    # Units (1,1), (2,2), (1,2): coincidences o11 = 2, o22 = 2, o12 = o21 = 1; n = 6, n1 = n2 = 3.
    # Nominal: D_o = 2/6, D_e = 2·3·3/(6·5) = 0.6 -> α = 1 - (1/3)/0.6 = 4/9.
    r = krippendorff_alpha([[1, 1], [2, 2], [1, 2]], level="nominal")
    assert r.alpha == pytest.approx(4 / 9)
    # Perfect agreement -> 1.
    assert krippendorff_alpha([[1, 1], [2, 2], [5, 5]]).alpha == pytest.approx(1.0)


def test_krippendorff_undefined_and_errors() -> None:
    r = krippendorff_alpha([[3, 3], [3, 3]])
    assert math.isnan(r.alpha) and "α undefined" in r.warnings[0]
    with pytest.raises(StatisticsError, match="at least one unit rated by 2"):
        krippendorff_alpha([[1, NAN], [NAN, 2]])
    with pytest.raises(StatisticsError, match="level must be"):
        krippendorff_alpha([[1, 2], [2, 2]], level="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(StatisticsError, match="2-D"):
        krippendorff_alpha([1, 2, 3])
    with pytest.raises(StatisticsError, match="non-negative"):
        krippendorff_alpha([[-1, 2], [2, 2]], level="ratio")


def _rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for s, scores in enumerate(SHROUT_FLEISS):
        for r, v in enumerate(scores):
            # Map the 1-10 scale into Likert 1-5 for the 'larynx' rows.
            rows.append({"session": f"S{s}", "rater": f"R{r}", "category": "larynx", "score": (v + 1) // 2})
    rows.append({"session": "S0", "rater": "R0", "category": "parotid", "score": 4})
    return rows


def test_ratings_matrix_and_agreement_by_category() -> None:
    sessions, raters, mat = ratings_matrix(_rows(), "larynx")
    assert sessions == tuple(f"S{i}" for i in range(6)) and raters == ("R0", "R1", "R2", "R3")
    assert mat[0].tolist() == [5, 1, 3, 4]
    ag = agreement_by_category(_rows())
    assert list(ag) == ["parotid", "larynx"]
    lar = ag["larynx"]
    assert lar.icc is not None and lar.icc.icc == pytest.approx(icc2_1(mat).icc)
    assert lar.alpha is not None and lar.alpha.alpha == pytest.approx(krippendorff_alpha(mat).alpha)
    par = ag["parotid"]  # one rating: neither coefficient can be computed, reasons given
    assert par.icc is None and par.alpha is None
    assert any("ICC(2,1) not computed" in w for w in par.warnings)
    d = lar.to_dict()
    assert d["icc2_1"] == pytest.approx(lar.icc.icc) and d["n_raters"] == 4


def test_agreement_errors() -> None:
    with pytest.raises(StatisticsError, match="no ratings"):
        agreement_by_category([])
    with pytest.raises(StatisticsError, match="unknown category 'nose'"):
        agreement_by_category(_rows(), categories=["nose"])
    with pytest.raises(StatisticsError, match="unknown category"):
        ratings_matrix(_rows(), "nose")
    with pytest.raises(StatisticsError, match="no ratings for category 'overall'"):
        ratings_matrix(_rows(), "overall")
    bad = [*_rows(), {"session": "S1", "rater": "R1", "category": "larynx", "score": 7, "origin": "r.csv line 9"}]
    with pytest.raises(StatisticsError, match=r"r\.csv line 9 .*score 7\.0 is not a Likert rating"):
        agreement_by_category(bad)
    dup = [*_rows(), {"session": "S1", "rater": "R1", "category": "larynx", "score": 2}]
    with pytest.raises(StatisticsError, match="twice"):
        ratings_matrix(dup, "larynx")
