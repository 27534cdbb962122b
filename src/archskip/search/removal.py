"""Removal loss: plans measured on the frozen model with their blocks removed (no adapters, no training).

Block influence (ShortGPT) scores each block alone by how little it changes its input; removing several
blocks together can hurt more or less than their scores add up to. This method measures whole plans
instead: the task's selection metric (the loss unless the task says otherwise) of the frozen model with
the plan's blocks skipped as identity maps and every adapter off, on up to `search.verify_examples`
training examples (the perplexity criterion of "Shortened LLaMA", Kim et al. 2024, applied to plans).
A model with a trained-from-scratch task head gets the head re-fitted per plan by cross-fitting, as in the
verified search (search/verify.py): a linear probe of the pruned representation.

Which plans: all of them when there are at most `search.shortlist`; otherwise the block-influence plan and
last-k, then a greedy local search over one-swap neighbours of the best plan so far (most skippable by
block influence first) until `search.shortlist` plans are measured.

`frozen_search` runs it as a search: on accelerate's devices and processes, resumable plan by plan. The
default DAS search (mode 'verified', plans measured on the frozen model) is this measurement when it trains
no supernet (`search.supernet`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object

from ..config import SearchConfig, TrainConfig
from ..data.loader import batches_per_rank, make_loader, measurement_examples
from ..errors import ConfigError
from ..io import atomic_write_text
from ..plan import SearchResult, SkipPlan, check_k
from ..profile import block_costs as measure_block_costs
from ..profile import kept_cost
from ..skipping import SkipModel
from ..tasks.base import Task, to_device
from ..train import CHECKPOINT, Trainer, forward_ready
from .baselines import block_influence, last_k
from .fitted import check_fitted, frozen_measurement
from .registry import SearchRun, register_method
from .verify import Plan, PlanMeter, check_verify_metric, verify

MEASURED_FILE = "measured_plans.json"


class MeasurementLog:
    """Plan measurements written to `measured_plans.json` in the run's directory as they are made, so that a killed
    search resumed with the same settings measures only the plans it had not (on a large model one plan is a
    forward pass over every measurement example). Every process reads the file: `output_dir` must be shared."""

    def __init__(self, out_dir: str | Path | None, settings: dict, *, resume: bool, write: bool,
                 name: str = MEASURED_FILE):
        self.path = Path(out_dir) / name if out_dir else None
        self.settings = json.loads(json.dumps(settings))  # (as it reads back)
        self.write = write and self.path is not None
        self.measured: dict[Plan, dict] = {}
        if resume and self.path is not None and self.path.is_file():
            saved = json.loads(self.path.read_text())
            then = saved.get("settings", {})
            changed = sorted(k for k in then.keys() | self.settings.keys() if then.get(k) != self.settings.get(k))
            if changed:
                raise ConfigError(f"resume: {self.path} holds measurements made with other settings ("
                                  + "; ".join(f"{k}: {then.get(k)!r} then, {self.settings.get(k)!r} now" for k in changed)
                                  + "); resume with the same settings, or start again without --resume")
            self.measured = {tuple(m["plan"]): m["metrics"] for m in saved["measured"]}

    def record(self, plan: Plan, metrics: dict) -> None:
        self.measured[plan] = metrics
        if self.write:
            rows = [{"plan": list(p), "metrics": m} for p, m in self.measured.items()]
            atomic_write_text(self.path, json.dumps({"settings": self.settings, "measured": rows}, indent=1))


def digest(obj, h=None) -> str:
    """A stable hash of examples or tensors (what a resumed measurement must see again)."""
    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for v in obj:
            digest(v, h)
    elif isinstance(obj, torch.Tensor):
        h.update(str((obj.dtype, tuple(obj.shape))).encode())
        h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, (str, int, float, bool, type(None))):
        h.update(repr(obj).encode())
    elif hasattr(obj, "tobytes"):  # numpy arrays, PIL images
        h.update(obj.tobytes())
    else:  # (never repr(): it may hold a memory address)
        h.update(type(obj).__name__.encode())
    return h.hexdigest()[:16] if top else ""


def removal_loss(model: SkipModel, task, examples, k: int, *, shortlist: int = 16, batch_size: int = 16,
                 refit_steps: int = 30, refit_lr: float = 1e-3, seed: int = 0, device=None, autocast=None,
                 rank: int = 0, world: int = 1, reduce=None, penalty=None, known=None, on_measured=None,
                 prefix_mb: float = 0.0, batches: list | None = None, metric: str = "task",
                 replacement: str = "identity") -> SearchResult:
    """Measure plans on the frozen model and return the best. With several processes, each measures its share of
    `examples` and `reduce` sums across them, so every process decides alike; `penalty(plan)` is subtracted from
    the selection metric (the FLOPs-aware search's cost). `known`: plan -> metrics measured before (a resumed
    run), not measured again; `on_measured(plan, metrics)` is called after each new measurement; `prefix_mb`: memory
    for hidden states that let a plan start at its first skipped block (search/prefix.py); `batches`: this process's
    share of `examples`, already collated; `metric`: what ranks plans (`search.verify_metric`); `replacement`: what a
    skipped block becomes while measured (`search.verify_replacement`: 'identity', or 'fitted', search/fitted.py)."""
    n = model.num_candidates
    check_k(k, n)
    t0 = time.perf_counter()
    device = device or next(model.parameters()).device
    # (block influence reads the first batches of `examples` on every process and sums them: one plan everywhere)
    bi = block_influence(model, task, examples, k, batch_size=batch_size, reduce=reduce)
    with frozen_measurement(model, task, examples, replacement, batch_size=batch_size, device=device, rank=rank,
                            world=world, reduce=reduce, autocast=autocast, batches=batches) as (batches, record):
        meter = PlanMeter(model, task, examples, batch_size, device=device, autocast=autocast, rank=rank, world=world,
                          reduce=reduce, refit_steps=refit_steps, refit_lr=refit_lr, known=known, on_measured=on_measured,
                          prefix_mb=prefix_mb, batches=batches, metric=metric)
        best, table = verify(meter, n, k, bi.scores, {"last-k": last_k(n, k).plan.skip}, shortlist, penalty=penalty,
                             gates_name="block influence")  # block influence's scores steer the local search
    model.set_skip([])
    return SearchResult(plan=SkipPlan(best, n), method="removal-loss", scores=bi.scores, seed=seed,
                        history=bi.history, config={"verification": {"examples": meter.examples, "measured": table,
                                                                      "measured_on": "frozen",
                                                                      **record,
                                                                      "proposals": {"block influence": list(bi.plan.skip),
                                                                                    "last-k": list(last_k(n, k).plan.skip)},
                                                                      "head_refit_steps": meter.refit_steps,
                                                                      "prefix_states": meter.prefix.summary()}},
                        base_model={"name_or_path": model.name_or_path, "fingerprint": model.fingerprint},
                        wall_time_s=time.perf_counter() - t0)


def frozen_search(model: SkipModel, task: Task, train, cfg: SearchConfig, train_cfg: TrainConfig, *, method: str,
                  seed: int = 0, out_dir: str | Path | None = None, resume: bool = False, progress: bool = False,
                  block_costs: list[float] | None = None) -> SearchResult:
    """`removal_loss` as a search run: on `search.verify_examples` seeded training examples, on the devices and
    processes accelerate gives (each process measures its share; under an FSDP config the model is sharded for
    the forwards), with the FLOPs penalty of `search.cost_weight`, each measurement written to out_dir as it is
    made so that `resume` measures only the plans a killed run had not."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    check_verify_metric(task, cfg.verify_metric)
    check_fitted(cfg)
    if model.head is not None and cfg.verify_refit_steps == 0:
        raise ConfigError("search.verify_refit_steps=0 with no trained supernet would measure every plan through the "
                          "task head as initialised (untrained); set it > 0 (the head is re-fitted to each plan), or "
                          "train the supernet's head with --search.supernet on")
    trainer = Trainer(model, task, train_cfg, seed=seed, out_dir=out_dir, progress=False, desc="search")
    acc, world = trainer.accelerator, trainer.world
    examples = measurement_examples(train, cfg.verify_examples, seed)
    batch_size = cfg.reward_batch_size or train_cfg.batch_size
    if batches_per_rank(len(examples), batch_size, world) == 0:
        raise ConfigError(f"search.verify_examples={cfg.verify_examples}: {len(examples)} training examples make no "
                          f"measurement batch of {batch_size} for each of {world} processes; use more examples, a "
                          "smaller search.reward_batch_size or fewer processes")
    if resume and out_dir and not (Path(out_dir) / MEASURED_FILE).is_file():
        if (Path(out_dir) / CHECKPOINT).is_file():
            raise ConfigError(f"resume: {out_dir} holds the checkpoint of a search that trained a supernet; resume it "
                              "with --search.supernet on, or start again without --resume")
        if trainer.is_main:
            print(f"resume: no {MEASURED_FILE} in {out_dir} yet; measuring every plan")
    # what a plan's measurement depends on: a resumed run must match it. The examples are read (images decoded) and
    # collated once, here; their digest covers every process's share.
    batches = list(make_loader(examples, task.collate, batch_size, rank=trainer.rank, world=world))
    shares = gather_object([digest(batches)]) if world > 1 else [digest(batches)]
    refit_lr = train_cfg.lr * train_cfg.head_lr_mult
    settings = {"base_model": model.name_or_path, "architecture": model.fingerprint,
                "dtype": str(next(model.parameters()).dtype), "task": type(task).__name__, "k": cfg.k,
                "examples": len(examples), "examples_digest": digest(shares),
                "initial_adapters_and_head": digest(model.trainable_state_dict()), "seed": seed,
                "batch_size": batch_size, "refit_steps": cfg.verify_refit_steps, "refit_lr": refit_lr,
                "processes": world, "mixed_precision": train_cfg.mixed_precision,
                **({"replacement": cfg.verify_replacement} if cfg.verify_replacement != "identity" else {}),
                # (every other metric is measured whatever ranks the plans; this one only when it does)
                **({"metric": cfg.verify_metric} if cfg.verify_metric == "choice_refit_loss" else {})}
    log = MeasurementLog(out_dir, settings, resume=resume, write=trainer.is_main)
    model.to(trainer.device)
    penalty = None
    if cfg.cost_weight:  # FLOPs-aware: a plan's measured loss pays for the compute it keeps
        if block_costs is None:
            block_costs = measure_block_costs(model, task, to_device(task.collate([train[0]]), trainer.device))
        penalty = lambda plan: kept_cost(cfg.cost_weight, block_costs, plan)  # noqa: E731
    if trainer.sharded:
        trainer.shard()
    total = min(math.comb(model.num_candidates, cfg.k), cfg.shortlist)
    bar = tqdm(total=total, initial=len(log.measured), desc="measuring plans", disable=not (progress and trainer.is_main))

    def measured(plan: Plan, metrics: dict) -> None:
        log.record(plan, metrics)
        bar.update(1)

    reduce = (lambda t: acc.reduce(t, reduction="sum")) if world > 1 else None
    with forward_ready(model), bar:  # (every process measures the same plans in the same order)
        result = removal_loss(
            model, task, examples, cfg.k, shortlist=cfg.shortlist, batch_size=batch_size,
            refit_steps=cfg.verify_refit_steps, refit_lr=refit_lr, seed=seed, device=trainer.device,
            autocast=acc.autocast, rank=trainer.rank, world=world, reduce=reduce, penalty=penalty, known=log.measured,
            on_measured=measured, prefix_mb=0.0 if trainer.sharded else cfg.prefix_states_mb, batches=batches,
            metric=cfg.verify_metric, replacement=cfg.verify_replacement,
        )  # (sharded: every process must run the same blocks, and prefix states are each process's own)
    result.method = method
    result.config = {"search": cfg.__dict__, "train": train_cfg.__dict__, "block_costs": block_costs,
                     "world_size": world, "supernet": False, **result.config}
    result.wall_time_s = time.perf_counter() - t0
    return result


@register_method("removal-loss")
def removal_loss_method(run: SearchRun) -> SearchResult:
    return frozen_search(run.model, run.task, run.train, run.search, run.train_cfg, method="removal-loss", seed=run.seed,
                         out_dir=run.out_dir, resume=run.resume, progress=run.progress)
