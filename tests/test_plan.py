import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archskip.plan import PlanError, SearchResult, SkipPlan, resolve_plan


def test_plan_is_sorted_and_knows_what_it_keeps():
    p = SkipPlan((5, 1), 6)
    assert p.skip == (1, 5) and p.keep == (0, 2, 3, 4) and p.k == 2
    assert SkipPlan.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert SkipPlan.last(2, 6).skip == (4, 5)
    assert SkipPlan.none(6).keep == tuple(range(6))


@pytest.mark.parametrize(
    "skip, n, message",
    [
        ((6,), 6, "skip index 6 is out of range; expected 0..5"),
        ((-1,), 6, "skip index -1 is out of range"),
        ((2, 2), 6, r"skip indices \[2\] appear more than once"),
        ((0, 1, 2), 3, "cannot skip 3 of 3 candidates"),
        ((1.5,), 6, "skip index 1.5 is not an integer"),
        ((), 0, "num_candidates=0 must be a positive integer"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(skip, n, message):
    with pytest.raises(PlanError, match=message):
        SkipPlan(skip, n)


@pytest.mark.parametrize("text, skip", [("3,5", (3, 5)), ("[5, 3]", (3, 5)), ("", ()), (" 0 ", (0,)), ("(1,2)", (1, 2))])
def test_parse(text, skip):
    assert SkipPlan.parse(text, 6).skip == skip


def test_parse_errors_name_the_text():
    with pytest.raises(PlanError, match="'a,b' is not a comma-separated list"):
        SkipPlan.parse("a,b", 6)
    with pytest.raises(PlanError, match="out of range"):
        SkipPlan.parse("9", 6)


@given(st.text(max_size=20))
def test_parse_never_crashes_with_anything_but_plan_error(text):
    try:
        plan = SkipPlan.parse(text, 8)
    except PlanError:
        return
    assert all(0 <= i < 8 for i in plan.skip)


def test_resolve_plan_requires_an_explicit_choice(tmp_path):
    with pytest.raises(PlanError, match="no skip plan given"):
        resolve_plan(None, 6)
    assert resolve_plan("none", 6).skip == ()
    assert resolve_plan("1,2", 6).skip == (1, 2)
    res = SearchResult(plan=SkipPlan((1, 4), 6), method="das-faithful", scores=[0.0] * 6, seed=3)
    path = tmp_path / "r.json"
    res.save(path)
    assert resolve_plan(str(path), 6).skip == (1, 4)
    with pytest.raises(PlanError, match="made for 6 candidates; this model has 12"):
        resolve_plan(str(path), 12)
    with pytest.raises(PlanError, match="does not exist"):
        resolve_plan(str(tmp_path / "missing.json"), 6)


def test_search_result_roundtrip_and_version_check(tmp_path):
    res = SearchResult(plan=SkipPlan((0, 2), 4), method="das-exact", scores=[0.1, -0.2, 0.3, 0.0], seed=1,
                       history=[{"micro_step": 10, "gates": [0.1, 0.0, 0.0, 0.0]}])
    res.save(tmp_path / "r.json")
    back = SearchResult.load(tmp_path / "r.json")
    assert back == res
    d = json.loads((tmp_path / "r.json").read_text())
    d["format"] = 99
    (tmp_path / "new.json").write_text(json.dumps(d))
    with pytest.raises(PlanError, match="newer than this archskip"):
        SearchResult.load(tmp_path / "new.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        SearchResult.load(tmp_path / "bad.json")
