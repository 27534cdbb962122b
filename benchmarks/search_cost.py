"""What the DAS search costs over plain adapter training for the same number of steps, measured in one run.

all-MiniLM-L6-v2 on sentence polarity: (a) adapter training with no skip, (b) adapter training
under a random configuration per step (the search's training half alone), (c) the full DAS search
(M = 3 configurations scored every T micro-batches) for T = 10 (the paper) and T = 2 (the demo).
Runs alternate (a, b, c...) for several rounds; medians and the ratio to (a) are reported.

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
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    base, tok, _ = load_pretrained(ModelConfig(name_or_path=MODEL))
    _, _, train = split_examples(load_rotten_tomatoes(), (0.1, 0.1), seed=0)
    steps = 4 if args.quick else 60
    cfg = TrainConfig(epochs=1, max_steps=steps, batch_size=8 if args.quick else 32, lr=2e-3, log_every=1000)
    n_examples = steps * cfg.batch_size * 10 // 9 + cfg.batch_size  # the search holds out 10% for rewards
    data = train[:n_examples]

    fresh, plain = minilm_runs(base, tok, data, cfg)

    def random_configs():
        model, task = fresh()
        Trainer(model, task, cfg, hooks=RandomConfigs(model, 2, 0), progress=False).fit(data)

    def das(t: int):
        def run():
            model, task = fresh()
            run_search(model, task, data, SearchConfig(k=2, update_every=t, warmup_epochs=0.0, reward_batch_size=cfg.batch_size,
                                                             supernet="on"),
                       cfg, progress=False)
        return run

    t_paper, t_demo = (2, 1) if args.quick else (10, 2)
    variants = {"adapter training, no skip": plain, "training under random configurations": random_configs,
                f"DAS search, T = {t_paper} (paper: 10)": das(t_paper), f"DAS search, T = {t_demo} (demo: 2)": das(t_demo)}
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
    report = Report("search_cost", "Search cost: the DAS search against plain adapter training, same steps", [0], args.quick)
    report.table("Wall time for the same number of optimiser steps", rows, ["run", "median s", "ratio to adapter training", "rounds"],
                 note=f"{steps} steps of batch {cfg.batch_size}, max 64 tokens; the search's warm-up is 0 here so that "
                      "every run makes policy updates (M = 3, reward batch = training batch); rounds alternate the runs.")
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
