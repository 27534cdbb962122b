"""What the DAS search costs, measured in one run.

1. Training: all-MiniLM-L6-v2 on sentence polarity: (a) adapter training with no skip, (b) adapter training
   under a random configuration per step (the search's training half alone), (c) the bandit's search, its
   supernet trained (M = 3 configurations scored every T micro-batches; mode exact, no measurement of plans
   after it) for T = 10 (the paper) and T = 2.
   Runs alternate (a, b, c...) for several rounds; medians and the ratio to (a) are reported.
2. Measurement: the default search (no supernet: it measures a shortlist of plans on the frozen model) with
   prefix states off and on (`search.prefix_states_mb`: a plan starts at its first skipped block), on MiniLM
   (k = 2, every plan) and SmolLM2-135M (k = 6 of 30, 16 plans), alternating; the plans must be the same.

    python benchmarks/search_cost.py            # full
    python benchmarks/search_cost.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import Report, minilm_runs

from archskip import ModelConfig, SearchConfig, TrainConfig
from archskip.data.movie_reviews import load_rotten_tomatoes
from archskip.data.text import split_examples
from archskip.models.load import load_pretrained
from archskip.search import RandomConfigs, run_search
from archskip.train import Trainer

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--sections", nargs="+", default=["training", "measurement"], choices=["training", "measurement"])
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    report = Report("search_cost", "Search cost: what the DAS search costs, and what makes it cheaper", [0], args.quick)
    if "training" in args.sections:
        training_section(args.quick, rounds, report)
    if "measurement" in args.sections:
        measurement_section(args.quick, rounds, report)
    print(f"wrote {report.write()}")


def training_section(quick: bool, rounds: int, report: Report) -> None:
    base, tok, _ = load_pretrained(ModelConfig(name_or_path=MODEL))
    _, _, train = split_examples(load_rotten_tomatoes(), (0.1, 0.1), seed=0)
    steps = 4 if quick else 60
    cfg = TrainConfig(epochs=1, max_steps=steps, batch_size=8 if quick else 32, lr=2e-3, log_every=1000)
    n_examples = steps * cfg.batch_size * 10 // 9 + cfg.batch_size  # the search holds out 10% for rewards
    data = train[:n_examples]

    fresh, plain = minilm_runs(base, tok, data, cfg)

    def random_configs():
        model, task = fresh()
        Trainer(model, task, cfg, hooks=RandomConfigs(model, 2, 0), progress=False).fit(data)

    def das(t: int):
        def run():
            model, task = fresh()
            # mode exact: the bandit alone (its plan is the top-k gates); the default search's measurement of plans
            # is section 2's
            run_search(model, task, data, SearchConfig(k=2, mode="exact", update_every=t, warmup_epochs=0.0,
                                                       reward_batch_size=cfg.batch_size),
                       cfg, progress=False)
        return run

    t_paper, t_demo = (2, 1) if quick else (10, 2)
    variants = {"adapter training, no skip": plain, "training under random configurations": random_configs,
                f"bandit search, T = {t_paper} (paper: 10)": das(t_paper), f"bandit search, T = {t_demo}": das(t_demo)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    plain()  # untimed: the first run pays for allocations and kernel selection
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["adapter training, no skip"])
    rows = [{"run": name, "median s": round(statistics.median(ts), 2), "ratio to adapter training": round(statistics.median(ts) / ref, 3),
             "rounds": len(ts)} for name, ts in times.items()]
    report.table("1. Training: the bandit's search against plain adapter training, same steps", rows, ["run", "median s", "ratio to adapter training", "rounds"],
                 note=f"{steps} steps of batch {cfg.batch_size}, max 64 tokens; the search's warm-up is 0 here so that "
                      "every run makes policy updates (M = 3, reward batch = training batch); rounds alternate the runs. "
                      "The default search trains no supernet; it measures plans (section 2).")


def measurement_section(quick: bool, rounds: int, report: Report) -> None:
    from lavin_table1 import Bench

    # MiniLM: the demo's search (every one of the 15 plans of k = 2, 1,024 examples), the demo's model and task
    base, tok, _ = load_pretrained(ModelConfig(name_or_path=MODEL))
    _, _, train = split_examples(load_rotten_tomatoes(), (0.1, 0.1), seed=0)
    minilm_data = train[: 64 if quick else 2400]
    minilm, _ = minilm_runs(base, tok, minilm_data, None)

    # SmolLM2: lavin_table1's search (reviews as "Sentiment: positive|negative", LaVIN adapters)
    bench = Bench("polarity", quick, 0, 200, 8, 1.0)
    cases = [("all-MiniLM-L6-v2, k = 2 of 6", minilm, minilm_data, 2, 32 if quick else 1024, 8 if quick else 32),
             ("SmolLM2-135M, k = 6 of 30", bench.fresh, bench.train, 2 if quick else 6, 16 if quick else 200, bench.train_cfg.batch_size)]
    rows = []
    for name, fresh, data, k, examples, batch in cases:
        times: dict[float, list[float]] = {0.0: [], SearchConfig.prefix_states_mb: []}
        found: dict[float, set] = {mb: set() for mb in times}
        saved = 0.0
        for _ in range(rounds):
            for mb in times:
                model, task = fresh()
                cfg = SearchConfig(k=k, verify_examples=examples, reward_batch_size=batch, prefix_states_mb=mb,
                                   shortlist=4 if quick else SearchConfig.shortlist)
                train_cfg = TrainConfig(epochs=1, batch_size=batch, lr=2e-3, log_every=1000)
                t0 = time.perf_counter()
                r = run_search(model, task, data, cfg, train_cfg, progress=False)
                times[mb].append(time.perf_counter() - t0)
                found[mb].add(r.plan.skip)
                saved = r.config["verification"]["prefix_states"]["block_passes_saved"] if mb else saved
        off, on = (statistics.median(t) for t in times.values())
        plans = {tuple(p) for ps in found.values() for p in ps}
        rows.append({"model and plans": name, "examples": examples, "prefix states off, median s": round(off, 1),
                     "on, median s": round(on, 1), "on / off": round(on / off, 3), "block passes saved": f"{100 * saved:.0f}%",
                     "same plan": "yes" if len(plans) == 1 else f"NO: {sorted(plans)}", "rounds": rounds})
    report.table("2. Measurement: the default search with and without prefix states", rows,
                 ["model and plans", "examples", "prefix states off, median s", "on, median s", "on / off",
                  "block passes saved", "same plan", "rounds"],
                 note="The default search (mode verified, verify_on frozen, no supernet): block influence, then plans "
                      "measured on the frozen model with their blocks removed and, for MiniLM, its classification head "
                      "re-fitted per plan. 'block passes saved': the share of candidate-block positions a measured plan "
                      "did not run because it started at a kept boundary. Rounds alternate off and on.")


if __name__ == "__main__":
    main()
