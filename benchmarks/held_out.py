"""How much of a lavin_table1 difference is the test set: plans re-trained on the same budget, tested on many more reviews.

lavin_table1 tests every model on the same 400 reviews. Averaging seeds removes training noise, not the noise of
which 400 reviews were drawn: two ~70% models that disagree on ~20% of the reviews have a paired standard error of
about 2 points on 400. This script trains the plans it is given exactly as lavin_table1 does (same reviews, seed,
budget; recipe `adapters`, or the one a plan names as "<blocks>+<recipe>") and tests each on those 400 reviews and
on `--n-held-out` more that no run of lavin_table1 ever trains or tests on, keeping every review's right/wrong, so
that plans can be compared review by review (paired). Finished models are remembered
(benchmarks/results/memo/held_out.json; lavin_table1's tables show their held-out accuracy); a killed run resumes.

    python benchmarks/held_out.py --task imdb --seeds 0 1 --plans 14,17 14,25 16,17   # ~35 min per model, 1 core
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time

from common import RESULTS, Memo, Report
from lavin_table1 import HELD_OUT, METHODS_RUN, N_LAYERS, Bench, held_out, held_out_key, n_held_out, recipe_of

from archskip import SkipPlan
from archskip.errors import PlanError

RECIPES = sorted({recipe_of(m) for m in METHODS_RUN})  # as lavin_table1 trains its rows


def plan_of(text: str) -> tuple[SkipPlan, str]:
    """A --plans value as (plan, recipe): "none" or block indices joined by commas, optionally "+<switches>" as in
    lavin_table1's rows (e.g. "12,13,14,15,25,26+teacher"); a bad one stops the script, named."""
    blocks, recipe = text.partition("+")[0], recipe_of(text)
    if recipe not in RECIPES:
        raise SystemExit(f"--plans {text}: unknown training recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    try:
        skip = () if blocks == "none" else tuple(int(b) for b in blocks.split(","))
    except ValueError:
        raise SystemExit(f"--plans {text}: expected 'none' or block indices 0..{N_LAYERS - 1} joined by commas, "
                         "optionally +<recipe>") from None
    try:
        return SkipPlan(skip, N_LAYERS), recipe
    except PlanError as e:
        raise SystemExit(f"--plans {text}: {e}") from None


def outcomes(bench: Bench, memo: Memo, plan: SkipPlan, recipe: str, extra: list[dict]) -> dict:
    """Per review 1 (right) or 0 of the model trained under `plan` and `recipe`: {'test': [...], 'held_out': [...],
    'seconds'} (remembered as strings of 0 and 1, one character a review)."""
    key = held_out_key(bench.budget, len(extra), plan, recipe)

    def compute() -> dict:
        t0 = time.perf_counter()
        model, task, _ = bench.trained(plan, recipe)
        right = {split: "".join(str(int(p["prediction"] == p["answer"])) for p in task.predict_dataset(model, rows, batch_size=16))
                 for split, rows in (("test", bench.test), ("held_out", extra))}
        return {**right, "seconds": round(time.perf_counter() - t0, 1)}

    found = memo.get(key, compute)
    return {"test": [int(c) for c in found["test"]], "held_out": [int(c) for c in found["held_out"]], "seconds": found["seconds"]}


def paired(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """Mean difference a - b in points and its standard error, per review averaged over the seeds (rows)."""
    d = [statistics.mean(x[i] - y[i] for x, y in zip(a, b)) for i in range(len(a[0]))]
    return 100 * statistics.mean(d), 100 * statistics.stdev(d) / math.sqrt(len(d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: 16 training, 8 test and {n_held_out(True)} held-out reviews, 2 steps")
    ap.add_argument("--task", default="imdb", choices=["polarity", "imdb"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--plans", nargs="+", default=["14,17", "14,25"], help="skipped blocks per plan ('none': no skip), optionally +<recipe> as lavin_table1's rows "
                    "(reassess there trains last-k's plan only)")
    ap.add_argument("--n-held-out", type=int, default=HELD_OUT, help="more test reviews, never trained or tested on")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--out", default=None, help="results file name (default: held_out-<task>)")
    args = ap.parse_args()
    plans = {text: plan_of(text) for text in args.plans}  # a bad plan fails here, before any training
    n_extra = n_held_out(True) if args.quick else args.n_held_out
    report = Report(args.out or f"held_out-{args.task}", f"Plans on {args.task} tested on {n_extra} more reviews",
                    args.seeds, args.quick)
    memo = Memo("held_out", args.quick)
    runs: dict[str, list[dict]] = {text: [] for text in plans}
    for seed in args.seeds:
        bench = Bench(args.task, args.quick, seed, args.n_train, args.n_test, args.epochs)
        extra = held_out(args.task, len(bench.train), len(bench.test), n_extra)
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
        note=f"Training: lavin_table1's budget ({len(bench.train)} reviews, {args.epochs:g} epochs), recipe adapters "
             "unless the plan names one, re-run here (a re-run can differ from lavin_table1's memo by a few test reviews: training on CPU is not bitwise "
             "repeatable across code versions).")
    pairs = []
    for a, b in itertools.combinations(plans, 2):
        row = {"plans": f"{a} minus {b}"}
        for split, label in (("test", f"on the {len(bench.test)} test reviews"), ("held_out", f"on {n_extra} held-out")):
            m, se = paired([r[split] for r in runs[a]], [r[split] for r in runs[b]])
            row[label] = f"{m:+.2f} ± {se:.2f}"
        pairs.append(row)
    report.table("Paired differences (points, ± one standard error over reviews)", pairs, list(pairs[0]) if pairs else ["plans"],
                 note="Per review, the difference of the two plans' right/wrong averaged over the seeds; its mean and "
                      "standard error over the reviews. Seeds share the reviews, so the error is the test set's.")
    if not args.quick:
        from archskip.io import atomic_write_text

        summary = {"task": args.task, "seeds": args.seeds, "n_test": len(bench.test), "n_held_out": n_extra,
                   "plans": {t: {"test": [statistics.mean(r["test"]) for r in rs],
                                 "held_out": [statistics.mean(r["held_out"]) for r in rs]} for t, rs in runs.items()}}
        atomic_write_text(RESULTS / f"{args.out or f'held_out-{args.task}'}.json", json.dumps(summary, indent=2))
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
