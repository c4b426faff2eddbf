"""Tests of consensus from a ratings table (qa_core.consensus)."""

from __future__ import annotations

import pytest

from qa_core.consensus import (
    RatingRow,
    consensus_from_ratings,
    parse_rater_weights,
    parse_rating_rows,
    weighted_consensus,
)
from qa_core.errors import StatisticsError


def _r(session: str, rater: str, score: float, category: str = "larynx", weight: float | None = None) -> dict[str, object]:
    return {"session": session, "rater": rater, "category": category, "score": score, "weight": weight}


def test_default_weights_are_equal() -> None:
    t = consensus_from_ratings([_r("S1", "a", 4), _r("S1", "b", 2), _r("S1", "c", 3)])
    assert t.get("S1", "larynx") == pytest.approx(3.0)
    assert t.weight_sources == (("a", "default"), ("b", "default"), ("c", "default"))
    v = t.values[0]
    assert v.raters == ("a", "b", "c") and v.scores == (4.0, 2.0, 3.0) and v.weights == (1.0, 1.0, 1.0)


def test_row_weights_then_overrides_take_precedence() -> None:
    rows = [_r("S1", "a", 5, weight=3), _r("S1", "b", 1, weight=1), _r("S2", "a", 4, weight=3), _r("S2", "b", 2)]
    t = consensus_from_ratings(rows)
    # (3·5 + 1·1)/4 = 4.0; S2: a weighs 3 (row), b 1 (row weight from S1): (12 + 2)/4 = 3.5.
    assert t.get("S1", "larynx") == pytest.approx(4.0)
    assert t.get("S2", "larynx") == pytest.approx(3.5)
    t2 = consensus_from_ratings(rows, rater_weights={"b": 3.0})
    assert t2.get("S1", "larynx") == pytest.approx(3.0)  # (15 + 3)/6
    assert dict(t2.weight_sources) == {"a": "row", "b": "override"}
    assert dict(t2.rater_weights) == {"a": 3.0, "b": 3.0}
    # A zero weight excludes a rater.
    assert consensus_from_ratings(rows, rater_weights={"b": 0}).get("S1", "larynx") == 5.0
    # Same as the single-cell function.
    assert t.get("S1", "larynx") == weighted_consensus([5, 1], [3, 1])


def test_cells_sorted_by_contract_category_then_session_and_missing_cell() -> None:
    rows = [_r("S2", "a", 3, "overall"), _r("S1", "a", 4, "parotid"), _r("S0", "a", 2, "overall")]
    t = consensus_from_ratings(rows)
    assert [(v.category, v.session) for v in t.values] == [("parotid", "S1"), ("overall", "S0"), ("overall", "S2")]
    assert t.as_dict()[("S2", "overall")] == 3.0
    with pytest.raises(KeyError, match="no ratings for session 'S9'"):
        t.get("S9", "overall")


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (_r("S1", "a", 6), r"rating row 2 \(session 'S1', rater 'a', category 'larynx'\): score 6"),
        (_r("S1", "a", 0), "integer from 1 to 5"),
        (_r("S1", "a", 2.5), "not a Likert rating"),
        (_r("S1", "a", 3, category="nose"), "unknown category"),
        ({"session": "S1", "rater": "a", "category": "larynx"}, r"missing \['score'\]"),
        (_r("S1", "a", "good"), "column 'score': expected a number"),
        (_r("S1", "a", 3, weight=-1), "weight -1.0 must be"),
        (_r("", "a", 3), r"missing \['session'\]"),
        ("S1,a,larynx,3", "expected a RatingRow or a mapping"),
    ],
)
def test_invalid_rows_are_named(row: object, match: str) -> None:
    with pytest.raises(StatisticsError, match=match):
        consensus_from_ratings([_r("S0", "z", 3), row])  # type: ignore[list-item]


def test_origin_is_used_in_messages() -> None:
    row = RatingRow("S1", "a", "larynx", 9, origin="ratings.csv line 12")
    with pytest.raises(StatisticsError, match=r"^ratings\.csv line 12 \(session 'S1'"):
        parse_rating_rows([row])


def test_table_level_errors() -> None:
    with pytest.raises(StatisticsError, match="no ratings given"):
        consensus_from_ratings([])
    with pytest.raises(StatisticsError, match=r"rating row 2: rater 'a' rated session 'S1', category 'larynx' twice \(also rating row 1\)"):
        consensus_from_ratings([_r("S1", "a", 3), _r("S1", "a", 4)])
    with pytest.raises(StatisticsError, match="rater 'a' has weight 2 here but 1 at rating row 1"):
        consensus_from_ratings([_r("S1", "a", 3, weight=1), _r("S2", "a", 4, weight=2)])
    with pytest.raises(StatisticsError, match=r"name rater\(s\) \['alcie'\] who have no ratings; raters present: a, b"):
        consensus_from_ratings([_r("S1", "a", 3), _r("S1", "b", 4)], rater_weights={"alcie": 2})
    with pytest.raises(StatisticsError, match="all have weight 0"):
        consensus_from_ratings([_r("S1", "a", 3), _r("S1", "b", 4)], rater_weights={"a": 0, "b": 0})
    with pytest.raises(StatisticsError, match="finite and >= 0"):
        consensus_from_ratings([_r("S1", "a", 3)], rater_weights={"a": float("inf")})


def test_parse_rater_weights() -> None:
    assert parse_rater_weights("alice=2, bob=1.5") == {"alice": 2.0, "bob": 1.5}
    assert parse_rater_weights("a=0,") == {"a": 0.0}
    for text, match in [
        ("", "empty"),
        ("alice", "rater=weight"),
        ("=2", "rater=weight"),
        ("alice=lots", "'lots' is not a number"),
        ("alice=-1", "finite and >= 0"),
        ("alice=1,alice=2", "twice"),
    ]:
        with pytest.raises(StatisticsError, match=match):
            parse_rater_weights(text)
