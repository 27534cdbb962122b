"""Fine-tune adapters + head on a frozen backbone: AdamW, warm-up + linear decay, gradient
accumulation, accelerate for devices and mixed precision, periodic checkpoints and exact resume.

The search (`search.py`) is this same loop with `StepHooks` that sample a configuration before
every micro-batch and update the policy every T micro-batches: training and search run together,
as in the paper.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .data.loader import batches_per_rank, make_loader
from .distill import distill_replacements, start_replacements_from_fits
from .errors import TrainingError
from .io import atomic_write
from .models.base import checkpointing_module
from .runlog import RunLogger
from .skipping import SkipModel
from .tasks.base import Task, to_device

CHECKPOINT = "checkpoint.pt"

_FSDP_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""SkipModel -> the FSDP wrapper `Trainer.fit` prepared it into, so that code holding only the model (evaluation,
the search's rewards and plan measurements, pipeline.search's adapter file) can gather what FSDP sharded, also
after the Trainer is gone. (The wrapper refers to its model, so an entry stays for the process's life: one per
model prepared under FSDP, i.e. one per command.)"""


def gathered(model: SkipModel, *, writeback: bool = False, root_only: bool = False):
    """A context in which `model`'s tensors are whole on every process; nothing to do unless FSDP sharded it.

    FSDP shards every wrapped block (`SkippableLayer`) and, in the root unit, whatever lies outside them
    (embeddings, final norm, LM / task head). Between optimiser steps everything is sharded, and a direct call
    of the model (not through the FSDP wrapper) would meet empty embedding and head weights. With
    `root_only`, only the root unit's tensors are gathered: each wrapped block still gathers its own in its
    forward and frees them after, so evaluating a sharded model never holds more than one whole block plus the
    root's tensors (what sharding is for). Collective: every process must enter, and run the same forwards."""
    engine = _FSDP_ENGINES.get(model)
    if engine is None:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(engine, writeback=writeback, recurse=not root_only)


def idle_parameters(model: SkipModel) -> set[int]:
    """ids of the tensors the current skip configuration leaves out of the forward: a skipped candidate's block and
    adapters, a kept candidate's replacement (what `SkippableLayer.drop_unused` deletes)."""
    parts = [m for layer in model.candidates for m in ((layer.block, layer.sites) if layer.skipped else (layer.replacement,))]
    return {id(p) for m in parts if m is not None for p in m.parameters()}


def forward_ready(model: SkipModel):
    """Around calls of the model outside the training step (evaluation, rewards, plan measurements): `gathered`
    with only the FSDP root unit's tensors gathered. Every process must call the model alike inside."""
    return gathered(model, root_only=True)


class StepHooks(Protocol):
    def before_batch(self, micro: int, epoch: float) -> None: ...
    def after_batch(self, micro: int, epoch: float) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class _LossModule(nn.Module):
    """model + task in one forward, so a distributed wrapper sees the whole computation."""

    def __init__(self, model: SkipModel, task: Task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: dict) -> torch.Tensor:
        return self.task.loss(self.model, batch)


@dataclass
class FitResult:
    steps: int
    micro_steps: int
    train_loss: float
    eval_history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def final_eval(self) -> dict:
        return self.eval_history[-1] if self.eval_history else {}


def is_main_process() -> bool:
    """True in a single process, and in the first of the processes `accelerate launch` / torchrun start
    (both set RANK). Read from the environment, so stages can ask before any Trainer exists."""
    return int(os.environ.get("RANK", "0")) == 0


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device='cuda' but no CUDA device is available")
    # skipped blocks leave their adapters without gradient in a step: DDP must allow that
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    acc = Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, kwargs_handlers=[ddp])
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.distributed_type != DistributedType.FSDP:
        # accelerate selects FSDP only on a device accelerator: launched on CPU, an FSDP config runs as DDP
        warnings.warn(f"the accelerate config asks for FSDP, but accelerate runs this launch as "
                      f"{acc.distributed_type.value} (no GPU): every process holds the whole model", stacklevel=2)
    return acc


def lr_multiplier(name: str, cfg: TrainConfig) -> float:
    if name.startswith("head."):
        return cfg.head_lr_mult
    return next((m for pattern, m in cfg.lr_mult.items() if pattern in name), 1.0)


def param_groups(model: SkipModel, cfg: TrainConfig) -> list[dict]:
    """Weight decay except on biases and norms; lr * head_lr_mult for the head, * lr_mult by name pattern."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.trainable_named_parameters().items():
        decay = not (name.endswith(".bias") or ".norm." in name or "LayerNorm" in name)
        groups.setdefault((lr_multiplier(name, cfg), decay), []).append(p)
    return [
        {"params": ps, "lr": cfg.lr * mult, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (mult, decay), ps in sorted(groups.items())
    ]


def lr_schedule(total_steps: int, warmup_ratio: float, kind: str = "linear"):
    """Linear warm-up, then linear decay to 0 (ViLT/METER) or a half-cycle cosine to 0 (LaVIN)."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return factor


class Trainer:
    def __init__(
        self,
        model: SkipModel,
        task: Task,
        cfg: TrainConfig,
        *,
        seed: int = 0,
        out_dir: str | Path | None = None,
        hooks: StepHooks | None = None,
        logger: RunLogger | None = None,
        progress: bool = True,
        desc: str = "train",
    ):
        self.model, self.task, self.cfg, self.seed = model, task, cfg, seed
        self.out_dir = Path(out_dir) if out_dir else None
        self.hooks, self.logger, self.progress, self.desc = hooks, logger or RunLogger(None), progress, desc
        self.accelerator = make_accelerator(cfg)
        self._engine = None  # the prepared (possibly wrapped) model, once fit() has run

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return is_main_process()

    def fit(self, train: list[dict], evaluation: list[dict] | None = None, resume: bool = False) -> FitResult:
        """Train; with N processes each takes every N-th batch (DDP averages the gradients)."""
        cfg, acc, model = self.cfg, self.accelerator, self.model
        if not train:
            raise TrainingError("the training split is empty")
        t0 = time.perf_counter()
        model.to(self.device)
        if cfg.fit_replacements and not resume:  # (before DDP wraps the model, as below)
            left = start_replacements_from_fits(model, self.task, train, batch_size=cfg.batch_size, device=self.device,
                                                seed=self.seed)
            if left:
                self.logger.log("fit_replacements", 0, mean_unexplained=sum(left) / len(left), blocks=len(left))
        if cfg.distill_steps and not resume:  # (before DDP wraps the model: it starts every process from rank 0's)
            losses = distill_replacements(model, self.task, train, steps=cfg.distill_steps, lr=cfg.distill_lr,
                                          batch_size=cfg.batch_size, device=self.device, seed=self.seed)
            if losses:
                self.logger.log("distill", 0, first_loss=losses[0], last_loss=losses[-1], steps=len(losses))
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        per_epoch = batches_per_rank(len(train), cfg.batch_size, self.world)
        if per_epoch == 0:
            raise TrainingError(f"{len(train)} training examples make no batch of {cfg.batch_size} for each of {self.world} processes")
        total_micro = cfg.max_steps * cfg.grad_accum if cfg.max_steps else max(1, math.ceil(cfg.epochs * per_epoch))
        total_steps = math.ceil(total_micro / cfg.grad_accum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(total_steps, cfg.warmup_ratio, cfg.schedule))
        engine, optimizer = acc.prepare(_LossModule(model, self.task), optimizer)
        self._engine = engine
        if self.sharded:
            _FSDP_ENGINES[model] = engine

        micro = step = 0
        history: list[dict] = []
        if resume:
            micro, step, history = self._restore(optimizer, scheduler)  # also restores the RNG state
            for stream, at in (("train", step), ("eval", step), ("policy", micro)):
                self.logger.rewind(stream, at)
        else:
            torch.manual_seed(self.seed)  # dropout masks
        engine.train()
        running, seen, last_loss = 0.0, 0, float("nan")
        idle: set[int] | None = None  # FSDP: tensors no micro-batch of this optimiser step has used
        bar = tqdm(total=total_micro, initial=micro, desc=self.desc, disable=not (self.progress and self.is_main),
                   dynamic_ncols=True)
        while micro < total_micro:
            epoch, start = divmod(micro, per_epoch)
            loader = make_loader(
                train, self.task.collate, cfg.batch_size, shuffle=True, seed=self.seed, epoch=epoch, start=start,
                num_workers=cfg.num_workers, rank=self.rank, world=self.world,
            )
            for batch in loader:
                if self.hooks:
                    self.hooks.before_batch(micro, micro / per_epoch)
                boundary = (micro + 1) % cfg.grad_accum == 0 or micro + 1 == total_micro
                if self.sharded:
                    now = idle_parameters(model)
                    idle = now if idle is None else idle & now
                # gradients are averaged across processes once per optimiser step, not per micro-batch
                with acc.autocast(), (contextlib.nullcontext() if boundary else acc.no_sync(engine)):
                    loss = engine(to_device(batch, self.device))
                    if not torch.isfinite(loss):
                        bar.close()
                        kept = self.out_dir is not None and (self.out_dir / CHECKPOINT).is_file()
                        where = f"; the last checkpoint is kept in {self.out_dir / CHECKPOINT}" if kept else ""
                        raise TrainingError(f"loss is {loss.item()} at optimiser step {step} (micro-batch {micro}){where}")
                    acc.backward(loss / cfg.grad_accum)
                running, seen = running + loss.item(), seen + 1
                micro += 1
                bar.update(1)
                if boundary:
                    if idle:
                        # FSDP hands back a zero gradient (a slice of its flat gradient) for a tensor no forward used,
                        # where one process or DDP leave it None; AdamW moves a tensor with a zero gradient (momentum,
                        # weight decay) but skips one without. Without this, the adapters of the blocks a search step
                        # skipped would drift under FSDP only. (FSDP reads None back as zeros.)
                        for p in model.trainable_named_parameters().values():
                            if id(p) in idle:
                                p.grad = None
                    idle = None
                    if cfg.max_grad_norm:
                        # FSDP: each process holds a shard of every gradient, so the norm must be FSDP's (all shards);
                        # accelerate uses it when given all of the wrapped model's parameters (frozen ones have no
                        # gradient and add nothing). The trainable tensors alone would give each process the norm of
                        # its own shard and a different clipping factor.
                        params = list(engine.parameters()) if self.sharded else [
                            p for g in optimizer.param_groups for p in g["params"]]
                        acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if step % cfg.log_every == 0 or micro == total_micro:
                        last_loss = running / max(seen, 1)
                        self.logger.log("train", step, loss=last_loss, lr=scheduler.get_last_lr()[0], epoch=micro / per_epoch)
                        bar.set_postfix(loss=f"{last_loss:.4f}")
                        running, seen = 0.0, 0
                if self.hooks:  # e.g. a policy update; before the checkpoint, so a resume does not repeat or skip it
                    self.hooks.after_batch(micro, micro / per_epoch)
                if boundary:
                    epoch_end = micro % per_epoch == 0 or micro == total_micro
                    if evaluation and ((cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and epoch_end)):
                        metrics = self.evaluate(evaluation)
                        history.append({"step": step, **metrics})
                        self.logger.log("eval", step, **metrics)
                    if self.out_dir and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or epoch_end):
                        acc.wait_for_everyone()
                        self._save(optimizer, scheduler, micro, step, history)
                if micro >= total_micro:
                    break
        bar.close()
        if seen:
            last_loss = running / seen
        return FitResult(step, micro, last_loss, history, time.perf_counter() - t0)

    def evaluate(self, examples) -> dict[str, float]:
        # (every process evaluates the whole split, so under FSDP all run the same forwards)
        with self.accelerator.autocast(), forward_ready(self.model):
            return self.task.evaluate_dataset(self.model, examples, self.cfg.batch_size, self.device, self.cfg.num_workers)

    # ---- checkpoints -------------------------------------------------------------------------
    def _save(self, optimizer, scheduler, micro: int, step: int, history: list[dict]) -> None:
        """Every process gathers (FSDP), one writes; every process reads the file on resume."""
        with self.full_params():
            trainable = self.model.trainable_state_dict()
        if not self.is_main:
            return
        state = {
            "trainable": trainable,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "micro": micro,
            "step": step,
            "history": history,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "hooks": self.hooks.state_dict() if self.hooks else {},
            "plan": self.model.plan.to_dict() if self.model.plan else None,
            "train_config": asdict(self.cfg),
            "world_size": self.world,
        }
        atomic_write(self.out_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def _restore(self, optimizer, scheduler) -> tuple[int, int, list[dict]]:
        path = self.out_dir / CHECKPOINT if self.out_dir else None
        if path is None or not path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt file or a pickle that needs arbitrary code
            raise TrainingError(f"cannot read checkpoint {path}: {e}") from None
        plan = self.model.plan.to_dict() if self.model.plan else None
        if state.get("plan") != plan:
            raise TrainingError(f"checkpoint {path} was made with plan {state.get('plan')}, this run has {plan}")
        with self.full_params(writeback=True):
            self.model.load_trainable_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.hooks:
            self.hooks.load_state_dict(state["hooks"])
        micro, step, saved_world = state["micro"], state["step"], state.get("world_size", 1)
        if saved_world != self.world:  # same data seen so far, in this run's per-process micro-batches
            micro = micro * saved_world // self.world
            step = micro // self.cfg.grad_accum
            scheduler.last_epoch = step
            warnings.warn(f"resuming a {saved_world}-process run with {self.world} process(es): continuing from "
                          f"micro-batch {micro} (the data order and schedule are continued approximately)", stacklevel=2)
        return micro, step, state["history"]

    @property
    def sharded(self) -> bool:
        """Does FSDP shard the model (an accelerate FSDP config)?"""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def shard(self) -> None:
        """Under an FSDP config, wrap the model for forwards only, without training it (a search that measures plans
        on the frozen model): its forwards then run sharded inside `forward_ready`, as after `fit`."""
        if self.sharded and self._engine is None:
            self._engine = self.accelerator.prepare(_LossModule(self.model, self.task))
            _FSDP_ENGINES[self.model] = self._engine

    def full_params(self, writeback: bool = False):
        """A context in which every trainable tensor is whole on every process: FSDP shards them (adapters
        live inside the blocks' flat parameters); DDP and single processes need nothing."""
        return gathered(self.model, writeback=writeback)

    def checksum(self) -> list[float]:
        """A fingerprint of the trainable tensors (to check that all processes hold the same adapters)."""
        return [float(p.detach().double().sum()) for p in self.model.trainable_named_parameters().values()]

    def ranks_agree(self) -> bool:
        """Do all processes hold bit-identical trainable tensors?"""
        if self.world == 1:
            return True
        with self.full_params():
            flat = torch.cat([p.detach().reshape(-1).float() for p in self.model.trainable_named_parameters().values()])
        gathered = self.accelerator.gather(flat[None].to(self.device))  # (world, P)
        return bool((gathered == gathered[0]).all())


def enable_gradient_checkpointing(model: SkipModel) -> None:
    """Recompute block activations in the backward pass (HF models; non-reentrant: inputs may be frozen)."""
    base = checkpointing_module(model.base)
    if not hasattr(base, "gradient_checkpointing_enable"):
        raise TrainingError(f"{type(base).__name__} does not support gradient checkpointing")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
