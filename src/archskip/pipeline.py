"""The stages as plain functions: config -> model -> search -> plan -> train -> artifact -> eval/profile.

Each stage reads a `RunConfig` and writes its output into `output_dir`; the next stage reads that
output (a search result JSON, an artifact directory), never a list copied by hand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .artifact import load_artifact, save_artifact
from .backbones.load import load_pretrained
from .config import ConfigError, RunConfig
from .data.loader import make_loader
from .data.text import DataError, read_examples, split_examples
from .io import atomic_write_text, ensure_dir
from .plan import PlanError, SearchResult, SkipPlan, resolve_plan
from .policy import SkipPolicy
from .profile import count_flops, measure_latency, parameter_counts
from .report import plot_gates
from .runlog import RunLogger
from .scorers import block_influence, exhaustive, last_k, random_plan
from .search import RESULT_FILE, run_search
from .skipping import SkipModel
from .tasks import Task, assemble, build_task, evaluate, to_device
from .train import Trainer


@dataclass
class Splits:
    train: list[dict]
    validation: list[dict]
    test: list[dict]


def load_splits(cfg: RunConfig) -> Splits:
    d = cfg.data
    if not d.train:
        raise DataError("data.train is not set: give a CSV or JSONL file of (text, label) rows")
    label = d.label_column
    read = lambda p: read_examples(p, d.text_column, label, d.text_pair_column)  # noqa: E731
    train = read(d.train)
    validation = read(d.validation) if d.validation else None
    test = read(d.test) if d.test else None
    fractions = tuple(f for f, given in ((d.val_fraction, validation), (d.test_fraction, test)) if given is None)
    parts = split_examples(train, fractions, cfg.seed) if fractions else [train]
    if validation is None:
        validation = parts.pop(0)
    if test is None:
        test = parts.pop(0)
    train = parts[0]
    if d.limit:
        train = train[: d.limit]
    if not train:
        raise DataError(f"the training split of {d.train!r} is empty after holding out validation/test data")
    return Splits(train, validation, test)


def build_model(cfg: RunConfig, train_examples) -> tuple[SkipModel, Task]:
    base, tokenizer, extras = load_pretrained(cfg.model)
    task = build_task(cfg.task, tokenizer, train_examples)
    return assemble(base, task, cfg.adapter, cfg.model, extras), task


def _start(cfg: RunConfig) -> Path:
    out = ensure_dir(cfg.output_dir)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
    torch.manual_seed(cfg.seed)
    return out


class _RandomConfigs:
    """StepHooks that train a 'supernet': a uniformly random k-subset per micro-batch, no policy update."""

    def __init__(self, model: SkipModel, k: int, seed: int):
        self.model, self.policy = model, SkipPolicy(model.num_candidates, k, seed=seed)

    def before_batch(self, micro, epoch):
        self.model.set_skip(self.policy.sample())

    def after_batch(self, micro, epoch):
        pass

    def state_dict(self):
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state):
        self.policy.load_state_dict(state["policy"])


def search(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> SearchResult:
    """Find a skip plan with `cfg.search.method`; writes search_result.json and gates.png."""
    out = _start(cfg)
    splits = load_splits(cfg)
    model, task = build_model(cfg, splits.train)
    s, n = cfg.search, model.num_candidates
    t0 = time.perf_counter()
    if s.method == "das":
        result = run_search(model, task, splits.train, s, cfg.train, seed=cfg.seed, out_dir=out, resume=resume,
                            progress=progress, logger=RunLogger(out, cfg.train.tensorboard, resume))
    elif s.method == "last-k":
        result = last_k(n, s.k)
    elif s.method == "random":
        result = random_plan(n, s.k, cfg.seed)
    elif s.method == "block-influence":
        result = block_influence(model, task, splits.train, s.k, batch_size=cfg.train.batch_size)
    elif s.method == "exhaustive":
        held, rest = split_examples(splits.train, (s.reward_fraction,), cfg.seed)
        trainer = Trainer(model, task, cfg.train, seed=cfg.seed, out_dir=out, hooks=_RandomConfigs(model, s.k, cfg.seed),
                          progress=progress, desc="supernet")
        trainer.fit(rest, resume=resume)
        result = exhaustive(model, task, held, s.k, batch_size=cfg.train.batch_size, max_batches=None)
    else:
        raise ConfigError(f"unknown search.method {s.method!r}")
    result.seed = cfg.seed
    result.config = cfg.to_dict()
    result.base_model = {"name_or_path": model.name_or_path, "fingerprint": model.fingerprint}
    result.wall_time_s = time.perf_counter() - t0
    result.save(out / RESULT_FILE)
    plot_gates(result, out / "gates.png")
    return result


def check_plan_source(spec, model: SkipModel) -> None:
    """A search result made on another base model is refused."""
    if isinstance(spec, str) and spec.endswith(".json"):
        spec = SearchResult.load(spec)
    if isinstance(spec, SearchResult) and spec.base_model.get("fingerprint") not in (None, "", model.fingerprint):
        raise PlanError(
            f"the search result was made on {spec.base_model.get('name_or_path')!r} (fingerprint "
            f"{spec.base_model['fingerprint']}); this base model has fingerprint {model.fingerprint}"
        )


def train(cfg: RunConfig, plan: str | SkipPlan | SearchResult, *, resume: bool = False, progress: bool = True) -> dict:
    """Train adapters + head with a fixed plan; writes the artifact into output_dir. Returns metrics."""
    out = _start(cfg)
    splits = load_splits(cfg)
    model, task = build_model(cfg, splits.train)
    check_plan_source(plan, model)
    skip_plan = resolve_plan(plan, model.num_candidates)
    model.apply_plan(skip_plan)
    trainer = Trainer(model, task, cfg.train, seed=cfg.seed, out_dir=out,
                      logger=RunLogger(out, cfg.train.tensorboard, resume), progress=progress)
    fit = trainer.fit(splits.train, splits.validation, resume=resume)
    test = trainer.evaluate(splits.test) if splits.test else {}
    trainable, total = model.parameter_counts()
    metrics = {
        "plan": list(skip_plan.skip), "validation": fit.final_eval, "test": test, "trainable_params": trainable,
        "steps": fit.steps, "train_wall_time_s": round(fit.wall_time_s, 2),
    }
    save_artifact(model, task, out / "artifact", model_config=cfg.model, metrics=metrics,
                  run_config={**cfg.to_dict(), "plan": str(plan)})
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def evaluate_artifact(artifact: str | Path, data_file: str, *, text_column: str = "text", label_column: str = "label",
                      text_pair_column: str | None = None, batch_size: int = 32, base: str | None = None) -> dict:
    """Metrics of a saved artifact (pruned, as shipped) on a CSV/JSONL file."""
    model, task = load_artifact(artifact, base)
    examples = read_examples(data_file, text_column, label_column, text_pair_column)
    return evaluate(model, task, make_loader(examples, task.collate, batch_size))


def profile_artifact(artifact: str | Path, *, batch_size: int = 8, seq_len: int = 128, repeats: int = 20,
                     base: str | None = None, device: str = "cpu") -> list[dict]:
    """Parameters, FLOPs and latency of the frozen base model vs the pruned artifact model, side by side."""
    model, task = load_artifact(artifact, base)
    reference, _ = load_artifact(artifact, base, prune=False)  # same weights, for the base model
    batch = to_device(task.example_batch(batch_size, seq_len), device)
    model.to(device)
    reference.to(device)
    return compare_models({"base": (reference, True), "archskip": (model, False)}, task, batch, repeats=repeats, device=device)


def compare_models(models: dict[str, tuple[SkipModel, bool]], task: Task, batch: dict, *, repeats: int = 20,
                   warmup: int = 3, device=None) -> list[dict]:
    """One row per model: params, FLOPs, median latency and both as ratios to the first model.

    models: name -> (model, adapters_off). adapters_off=True measures the frozen base model.
    """
    def runner(m: SkipModel, base_only: bool):
        def run():
            if base_only:
                with m.adapters_disabled():
                    return task.loss(m, batch)
            return task.loss(m, batch)
        return run

    for m, _ in models.values():
        m.eval()
    fns = {name: runner(m, off) for name, (m, off) in models.items()}
    flops = {name: count_flops(fn) for name, fn in fns.items()}
    lat = measure_latency(fns, warmup=warmup, repeats=repeats, device=device)
    first = next(iter(models))
    rows = []
    for name, (m, off) in models.items():
        trainable, total = parameter_counts(m) if not off else (0, _base_params(m))
        rows.append({
            "model": name, "trainable_params": trainable, "total_params": total, "gflops": flops[name] / 1e9,
            "flops_ratio": flops[name] / flops[first], "latency_ms": lat[name].median_s * 1e3,
            "latency_ratio": lat[name].median_s / lat[first].median_s, "latency_spread": lat[name].spread,
        })
    return rows


def _base_params(m: SkipModel) -> int:
    adapters = {id(p) for layer in m.candidates for part in (layer.sites, layer.replacement) if part is not None
                for p in part.parameters()}
    head = {id(p) for p in m.head.parameters()} if m.head is not None else set()
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values() if id(p) not in adapters | head)

