"""How much of a benchmark's difference is the test set: plans re-trained on the same budget, tested on many more reviews.

lavin_table1 tests every model on the same 400 reviews. Averaging seeds removes training noise, not the noise of
which 400 reviews were drawn: two ~70% models that disagree on ~20% of the reviews have a paired standard error of
about 2 points on 400. This script trains the plans it is given exactly as lavin_table1 does (same reviews, seed,
budget; recipe `adapters`, or the one a plan names as "<blocks>+<recipe>") and tests each on those 400 reviews and
on `--n-held-out` more that no run of lavin_table1 ever trains or tests on, keeping every review's right/wrong, so
that plans can be compared review by review (paired). `--model minilm` does the same for search_quality's set-up
(all-MiniLM-L6-v2, k = 2 of 6, its budget and test split; recipes its training switches), tested on examples
search_quality never uses. Finished models are remembered (benchmarks/results/memo/held_out.json; lavin_table1's
tables show their held-out accuracy); a killed run resumes.

    python benchmarks/held_out.py --task imdb --seeds 0 1 --plans 14,17 14,25 16,17   # ~35 min per model, 1 core
    python benchmarks/held_out.py --model minilm --task imdb --seeds 0 1 2 --plans none 4,5 3,5   # ~10-15 min per model, 1 core
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import search_quality
from common import RESULTS, Memo, Report, held_out_key
from lavin_table1 import (
    HELD_OUT,
    METHODS_RUN,
    N_LAYERS,
    QUICK_TEST,
    QUICK_TRAIN,
    Bench,
    held_out,
    n_held_out,
    recipe_of,
)

from archskip import SkipPlan
from archskip.errors import PlanError


class MiniLM:
    """search_quality's set-up for one seed, seen as held_out.py sees lavin_table1's Bench."""

    def __init__(self, bench: search_quality.Bench, seed: int):
        self.bench, self.seed, self.test, self.right = bench, seed, bench.test, bench.right
        self.budget = search_quality.held_out_budget(bench, seed)

    def trained(self, plan: SkipPlan, recipe: str):
        return self.bench.train_plan(plan, self.seed, "plain" if recipe == "adapters" else recipe)


def smollm2_benches(args, n_extra: int) -> Iterator[tuple[int, Bench, list[dict]]]:
    """Per seed: lavin_table1's Bench and the held-out reviews of its split."""
    for seed in args.seeds:
        bench = Bench(args.task, args.quick, seed, args.n_train, args.n_test, args.epochs)
        yield seed, bench, held_out(args.task, len(bench.train), len(bench.test), n_extra)


def minilm_benches(args, n_extra: int) -> Iterator[tuple[int, MiniLM, list[dict]]]:
    """Per seed: search_quality's set-up (one Bench shared by the seeds) and its held-out examples."""
    shared, extra = search_quality.Bench(args.task, args.quick), search_quality.held_out(args.task, n_extra)
    for seed in args.seeds:
        yield seed, MiniLM(shared, seed), extra


@dataclass(frozen=True)
class Setup:
    """One --model: the benchmark whose training held_out.py repeats, and what differs between them."""

    layers: int
    recipes: list[str]  # the training recipes a plan may name ("adapters": plain training)
    default_plans: list[str]  # --plans when none are given
    n_held_out: Callable  # task -> --n-held-out's default
    prefix: str  # the results file's name before the task
    benches: Callable  # (args, n_extra) -> per seed (seed, bench, held-out examples)
    training: Callable  # (bench, args) -> the training budget, as the report says it


MODELS = {
    "smollm2": Setup(N_LAYERS, sorted({recipe_of(m) for m in METHODS_RUN}), ["14,17", "14,25"], lambda task: HELD_OUT, "held_out-",
                     smollm2_benches, lambda b, args: f"lavin_table1's budget ({len(b.train)} reviews, {args.epochs:g} epochs)"),
    "minilm": Setup(search_quality.N, ["adapters"] + [v for v in search_quality.VARIANTS if v != "plain"], ["4,5", "3,5"],
                    search_quality.HELD_OUT_REVIEWS.__getitem__,
                    "held_out-minilm-", minilm_benches, lambda b, args: f"search_quality's budget ({b.bench.budget()})"),
}


def plan_of(text: str, model: str = "smollm2") -> tuple[SkipPlan, str]:
    """A --plans value as (plan, recipe): "none" or block indices joined by commas, optionally "+<switches>" as in
    lavin_table1's rows (e.g. "12,13,14,15,25,26+teacher"); a bad one stops the script, named."""
    n_layers, recipes = MODELS[model].layers, MODELS[model].recipes
    blocks, recipe = text.partition("+")[0], recipe_of(text)
    if recipe not in recipes:
        raise SystemExit(f"--plans {text}: unknown training recipe {recipe!r}; expected one of {', '.join(recipes)}")
    try:
        skip = () if blocks == "none" else tuple(int(b) for b in blocks.split(","))
    except ValueError:
        raise SystemExit(f"--plans {text}: expected 'none' or block indices 0..{n_layers - 1} joined by commas, "
                         "optionally +<recipe>") from None
    try:
        return SkipPlan(skip, n_layers), recipe
    except PlanError as e:
        raise SystemExit(f"--plans {text}: {e}") from None


def outcomes(bench: Bench | MiniLM, memo: Memo, plan: SkipPlan, recipe: str, extra: list[dict]) -> dict:
    """Per review 1 (right) or 0 of the model trained under `plan` and `recipe`: {'test': [...], 'held_out': [...],
    'seconds'} (remembered as strings of 0 and 1, one character a review)."""
    key = held_out_key(bench.budget, len(extra), plan.skip, recipe)

    def compute() -> dict:
        t0 = time.perf_counter()
        model, task, _ = bench.trained(plan, recipe)
        right = {split: bench.right(model, task, rows) for split, rows in (("test", bench.test), ("held_out", extra))}
        return {**right, "seconds": round(time.perf_counter() - t0, 1)}

    found = memo.get(key, compute)
    return {"test": [int(c) for c in found["test"]], "held_out": [int(c) for c in found["held_out"]], "seconds": found["seconds"]}


def paired(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """Mean difference a - b in points and its standard error, per review averaged over the seeds (rows)."""
    d = [statistics.mean(x[i] - y[i] for x, y in zip(a, b)) for i in range(len(a[0]))]
    return 100 * statistics.mean(d), 100 * statistics.stdev(d) / math.sqrt(len(d))


def over_seeds(a: list[list[int]], b: list[list[int]]) -> tuple[list[float], float | None]:
    """Per seed (row) the difference a - b in points, and the standard error of the mean difference counting both
    sources of noise: which seed trained the models (the per-seed differences' spread) and which reviews test them
    (`paired`'s error), as sqrt(se_seeds^2 + se_reviews^2) (conservative: both hold the seed-by-review term). None
    with one seed, where the training noise is not measured."""
    per = [100 * (statistics.mean(x) - statistics.mean(y)) for x, y in zip(a, b)]
    if len(per) < 2:
        return per, None
    return per, math.hypot(statistics.stdev(per) / math.sqrt(len(per)), paired(a, b)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_TRAIN} training, {QUICK_TEST} test and {n_held_out(True)} held-out reviews, 2 steps")
    ap.add_argument("--task", default="imdb", choices=["polarity", "imdb"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--plans", nargs="+", default=None, help="skipped blocks per plan ('none': no skip), optionally +<recipe> as lavin_table1's rows "
                    "(reassess there trains last-k's plan only); default: "
                    + "; ".join(f"{name} {' '.join(m.default_plans)}" for name, m in MODELS.items()))
    ap.add_argument("--model", default="smollm2", choices=sorted(MODELS),
                    help="smollm2: lavin_table1's set-up (SmolLM2-135M, LaVIN adapters); minilm: search_quality's")
    ap.add_argument("--n-held-out", type=int, default=None,
                    help="more test reviews, never trained or tested on (default: "
                    + "; ".join(f"{name} {task} {m.n_held_out(task)}" for name, m in MODELS.items() for task in ("imdb", "polarity")) + ")")
    ap.add_argument("--n-train", type=int, default=400, help="smollm2 (minilm: search_quality's budget)")
    ap.add_argument("--n-test", type=int, default=400, help="smollm2")
    ap.add_argument("--epochs", type=float, default=3.0, help="smollm2")
    ap.add_argument("--out", default=None, help="results file name (default: "
                    + "; ".join(f"{name} {m.prefix}<task>" for name, m in MODELS.items()) + ")")
    args = ap.parse_args()
    setup = MODELS[args.model]
    plans = {text: plan_of(text, args.model) for text in args.plans or setup.default_plans}  # a bad plan fails here, before any training
    n_extra = n_held_out(True) if args.quick else args.n_held_out or setup.n_held_out(args.task)
    out = args.out or setup.prefix + args.task
    report = Report(out, f"Plans on {args.task} tested on {n_extra} more reviews ({args.model})", args.seeds, args.quick)
    memo = Memo("held_out", args.quick)
    runs: dict[str, list[dict]] = {text: [] for text in plans}
    for seed, bench, extra in setup.benches(args, n_extra):
        for text, (plan, recipe) in plans.items():
            runs[text].append(outcomes(bench, memo, plan, recipe, extra))
            print(seed, text, {s: statistics.mean(runs[text][-1][s]) for s in ("test", "held_out")}, flush=True)

    def acc(rs: list[dict], split: str) -> str:
        per = [100 * statistics.mean(r[split]) for r in rs]
        return " / ".join(f"{a:.2f}" for a in per) + (f" ({statistics.mean(per):.2f})" if len(per) > 1 else "")

    report.table(
        "Accuracy per seed (mean)",
        [{"plan": text, f"the {len(bench.test)} test reviews %": acc(rs, "test"), f"{n_extra} held-out reviews %": acc(rs, "held_out"),
          "s per model": statistics.mean(r["seconds"] for r in rs)} for text, rs in runs.items()],
        ["plan", f"the {len(bench.test)} test reviews %", f"{n_extra} held-out reviews %", "s per model"],
        note=f"Training: {setup.training(bench, args)}, recipe adapters "
             "unless the plan names one, re-run here (a re-run can differ from that benchmark's own memo by a few test reviews: training on CPU is not bitwise "
             "repeatable across code versions).")
    pairs = []
    for a, b in itertools.combinations(plans, 2):
        row = {"plans": f"{a} minus {b}"}
        for split, label in (("test", f"on the {len(bench.test)} test reviews"), ("held_out", f"on {n_extra} held-out")):
            m, se = paired([r[split] for r in runs[a]], [r[split] for r in runs[b]])
            row[label] = f"{m:+.2f} ± {se:.2f}"
        per, se_all = over_seeds([r["held_out"] for r in runs[a]], [r["held_out"] for r in runs[b]])
        row["held-out, per seed"] = " / ".join(f"{d:+.2f}" for d in per)
        row["held-out ± seeds and reviews"] = "—" if se_all is None else f"{statistics.mean(per):+.2f} ± {se_all:.2f}"
        pairs.append(row)
    report.table("Paired differences (points, ± one standard error)", pairs, list(pairs[0]) if pairs else ["plans"],
                 note="Per review, the difference of the two plans' right/wrong averaged over the seeds; its mean and "
                      "standard error over the reviews. Seeds share the reviews, so that error is the test set's alone. "
                      "'± seeds and reviews' adds the training noise: the spread of the per-seed differences (their "
                      "standard error) and the reviews' error, combined as the root of the sum of squares (— with one seed). "
                      "With 2 or 3 seeds the seeds' part rests on 1 or 2 degrees of freedom: a rough size, not a precise one.")
    if not args.quick:
        from archskip.io import atomic_write_text

        summary = {"task": args.task, "seeds": args.seeds, "n_test": len(bench.test), "n_held_out": n_extra,
                   "plans": {t: {"test": [statistics.mean(r["test"]) for r in rs],
                                 "held_out": [statistics.mean(r["held_out"]) for r in rs]} for t, rs in runs.items()}}
        atomic_write_text(RESULTS / f"{out}.json", json.dumps(summary, indent=2))
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
