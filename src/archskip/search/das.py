"""The DAS search: adapter training interleaved with policy updates (docs/method.md).

Every training micro-batch runs under a configuration sampled from the policy; every T
micro-batches after the warm-up, M configurations are scored on a *reward batch* in eval mode
under no_grad, and the gates move. Unlike the authors' code (B5, B6), reward batches come from a slice
held out of the training data, and a new one is drawn at every update.

The default (mode 'verified', plans measured on the frozen model) reads no supernet, so it trains
none (`search.supernet`): `frozen_search` (search/removal.py) measures the plans directly, as `removal-loss` does.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Subset

from ..config import ConfigError, SearchConfig, TrainConfig
from ..data.loader import batches_per_rank, eval_view, make_loader
from ..data.text import split_examples
from ..nn_utils import eval_mode
from ..plan import SearchResult, SkipPlan
from ..profile import block_costs as measure_block_costs
from ..profile import kept_cost
from ..runlog import RunLogger
from ..skipping import SkipModel
from ..tasks.base import Task, to_device
from ..train import Trainer, forward_ready, is_main_process
from .finals import FINALS_FILE, check_finals, run_finals
from .fitted import check_fitted, frozen_measurement
from .policy import SkipPolicy
from .registry import SearchRun, register_method
from .verify import PlanMeter, check_verify_metric, top_k, verify


class DASHooks:
    """StepHooks for `Trainer`: sample a configuration per micro-batch, update the policy every T."""

    def __init__(
        self,
        model: SkipModel,
        task: Task,
        policy: SkipPolicy,
        cfg: SearchConfig,
        reward_examples: list[dict],
        batch_size: int,
        *,
        seed: int,
        trainer: Trainer,
        logger: RunLogger,
        block_costs: list[float] | None = None,
    ):
        self.model, self.task, self.policy, self.cfg = model, task, policy, cfg
        self.reward_examples, self.batch_size, self.seed = reward_examples, batch_size, seed
        self.trainer, self.logger = trainer, logger
        self.block_costs = block_costs
        self.update_every = cfg.update_every
        self.per_epoch: int | None = None  # with updates_per_epoch: this process's micro-batches per epoch
        self.counter = 0
        self.reward_batches_used = 0
        self.history: list[dict] = []
        self._reward_iter = None

    # ---- StepHooks ---------------------------------------------------------------------------
    def before_batch(self, micro: int, epoch: float) -> None:
        uniform = self.cfg.supernet_sampling == "uniform"
        self.model.set_skip(self.policy.sample_uniform() if uniform else self.policy.sample())

    def after_batch(self, micro: int, epoch: float) -> None:
        self.counter += 1
        if epoch < self.cfg.warmup_epochs:
            return
        if self.per_epoch:  # exactly updates_per_epoch updates per epoch, evenly spaced, on any number of processes
            upe = self.cfg.updates_per_epoch
            if (micro * upe) // self.per_epoch > ((micro - 1) * upe) // self.per_epoch:
                self.update(micro, epoch)
        elif self.counter >= self.update_every:
            self.counter = 0
            self.update(micro, epoch)

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(), "counter": self.counter,
            "reward_batches_used": self.reward_batches_used, "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.counter, self.reward_batches_used = state["counter"], state["reward_batches_used"]
        self.history = state["history"]
        self._reward_iter = None

    # ---- policy update ---------------------------------------------------------------------------
    def _next_reward_batch(self) -> dict:
        """The next batch of the held-out slice; reshuffled every pass, so it changes at every update."""
        per_pass = batches_per_rank(len(self.reward_examples), self.batch_size, self.trainer.world)  # >= 1: run_search
        if self._reward_iter is None:
            p, start = divmod(self.reward_batches_used, per_pass)
            self._reward_iter = self._passes(p, start)
        self.reward_batches_used += 1
        return next(self._reward_iter)

    def _passes(self, first_pass: int, start: int):
        p = first_pass
        while True:
            yield from make_loader(
                self.reward_examples, self.task.collate, self.batch_size, shuffle=True,
                seed=self.seed + 7919, epoch=p, start=start, rank=self.trainer.rank, world=self.trainer.world,
            )
            p, start = p + 1, 0

    def config_cost(self, config) -> float:
        """cost_weight x the share of the candidates' compute that `config` keeps (0 when costs are unknown)."""
        if not self.cfg.cost_weight:
            return 0.0
        return kept_cost(self.cfg.cost_weight, self.block_costs or [1.0] * self.model.num_candidates, config)

    @torch.no_grad()
    def update(self, micro: int, epoch: float) -> None:
        batch = to_device(self._next_reward_batch(), self.trainer.device)
        configs = self.policy.sample_candidates(self.cfg.samples)
        losses = self.evaluate_configs(configs, batch)
        costs = [self.config_cost(c) for c in configs] if self.cfg.cost_weight else None
        upd = self.policy.update(configs, losses, costs)
        gates = self.policy.gates.tolist()
        entry = {"micro_step": micro, "epoch": round(epoch, 4), "gates": gates, **upd.__dict__}
        if self.trainer.world > 1:  # every process must hold the same policy: check it, bit for bit
            entry["ranks_agree"] = self._gates_agree()
            if not entry["ranks_agree"]:
                raise RuntimeError(f"policy gates diverged across processes at micro-batch {micro}")
        self.history.append(entry)
        self.logger.log(
            "policy", micro, epoch=epoch, reward_mean=upd.baseline,
            **{f"gate_{i}": g for i, g in enumerate(gates)},
        )

    def _gates_agree(self) -> bool:
        gathered = self.trainer.accelerator.gather(self.policy.gates[None].to(self.trainer.device))  # (world, N)
        return bool((gathered == gathered[0]).all())

    def evaluate_configs(self, configs, batch) -> list[float]:
        """Loss of each configuration on one batch, eval mode (dropout off), no_grad; duplicates scored once."""
        cache: dict[tuple, float] = {}
        # (every process scores the same configurations, in the same order: under FSDP they gather alike)
        with eval_mode(self.model), self.trainer.accelerator.autocast(), forward_ready(self.model):
            for c in configs:
                key = tuple(sorted(c))
                if key not in cache:
                    self.model.set_skip(key)
                    cache[key] = float(self.task.loss(self.model, batch))
        losses = [cache[tuple(sorted(c))] for c in configs]
        if self.trainer.world > 1:  # each process scored its own reward batch: average, so all update alike
            t = torch.tensor(losses, dtype=torch.float64, device=self.trainer.device)
            losses = self.trainer.accelerator.reduce(t, reduction="mean").tolist()
        return losses


def run_search(
    model: SkipModel,
    task: Task,
    train: list[dict],
    cfg: SearchConfig,
    train_cfg: TrainConfig,
    *,
    seed: int = 0,
    out_dir: str | Path | None = None,
    logger: RunLogger | None = None,
    resume: bool = False,
    progress: bool = True,
    block_costs: list[float] | None = None,
) -> SearchResult:
    """Run the DAS search and return its result (out_dir: where its checkpoints and logs go)."""
    if cfg.k < 1:
        raise ConfigError(f"search.k={cfg.k}: a search needs k >= 1 blocks to skip")
    finals = cfg.mode == "verified" and cfg.finalists > 0
    if cfg.mode == "verified":
        check_verify_metric(task, cfg.verify_metric)
        check_finals(cfg, len(train))
        check_fitted(cfg)
    initial = model.trainable_state_dict() if finals else None  # (the finalists' fresh start)
    if not cfg.trains_supernet:  # nothing reads a supernet: measure plans on the frozen model (search/removal.py)
        from .removal import frozen_search  # (`das` registers before the baselines do)

        result = frozen_search(model, task, train, cfg, train_cfg, method=f"das-{cfg.mode}", seed=seed,
                               out_dir=out_dir, resume=resume, progress=progress, block_costs=block_costs)
    else:
        result = bandit_search(model, task, train, cfg, train_cfg, seed=seed, out_dir=out_dir, logger=logger,
                               resume=resume, progress=progress, block_costs=block_costs)
    if finals:
        result = with_finals(result, model, task, train, cfg, train_cfg, initial=initial, seed=seed, out_dir=out_dir,
                             resume=resume, progress=progress)
    return result


def with_finals(result: SearchResult, model: SkipModel, task: Task, train, cfg: SearchConfig, train_cfg: TrainConfig,
                *, initial: dict, seed: int, out_dir=None, resume: bool = False, progress: bool = False) -> SearchResult:
    """`result` (a verified search's) with its plan decided by the final round (search/finals.py); each finalist's
    judgement is written to out_dir as it is made, so that a resumed run trains only those it had not."""
    from .removal import MeasurementLog, digest

    settings = {"base_model": model.name_or_path, "architecture": model.fingerprint, "k": cfg.k, "seed": seed,
                "finalists": cfg.finalists, "final_epochs": cfg.final_epochs, "final_fraction": cfg.final_fraction,
                "verify_metric": cfg.verify_metric, "train_examples": len(train), "initial": digest(initial),
                "train": {k: v for k, v in train_cfg.__dict__.items() if k not in ("tensorboard", "log_every")}}
    log = MeasurementLog(out_dir, settings, resume=resume, write=is_main_process(), name=FINALS_FILE)
    costs = result.config.get("block_costs")
    penalty = (lambda plan: kept_cost(cfg.cost_weight, costs, plan)) if cfg.cost_weight and costs else None
    best, record = run_finals(model, task, train, result.config["verification"], cfg, train_cfg, initial=initial,
                              seed=seed, log=log, penalty=penalty, progress=progress)
    result.config["finals"] = record
    result.plan = SkipPlan(best, model.num_candidates)
    result.wall_time_s += record["seconds"]
    return result


def bandit_search(model: SkipModel, task: Task, train: list[dict], cfg: SearchConfig, train_cfg: TrainConfig, *,
                  seed: int = 0, out_dir=None, logger: RunLogger | None = None, resume: bool = False,
                  progress: bool = True, block_costs: list[float] | None = None) -> SearchResult:
    """The bandit: a supernet trained under plans drawn from the gates, the gates moved by rewards; in mode
    'verified' its shortlist measured at the end (`verify_plans`)."""
    policy = SkipPolicy(model.num_candidates, cfg.k, lr=cfg.gate_step, mode=cfg.update_rule, reward=cfg.reward_kind,
                        seed=seed)
    reward_examples, rest = split_examples(train, (cfg.reward_fraction,), seed)
    reward_examples = eval_view(reward_examples)  # rewards are measured like evaluation: no augmentation
    if not reward_examples or not rest:
        raise ConfigError(
            f"search.reward_fraction={cfg.reward_fraction} of {len(train)} training examples leaves "
            f"{len(reward_examples)} for rewards and {len(rest)} for training; both must be non-empty"
        )
    t0 = time.perf_counter()
    trainer = Trainer(model, task, train_cfg, seed=seed, out_dir=out_dir, logger=logger, progress=progress, desc="search")
    reward_batch = cfg.reward_batch_size or train_cfg.batch_size
    if batches_per_rank(len(reward_examples), reward_batch, trainer.world) == 0:
        # (each process scores its own reward batches; with none, the reward stream would never yield)
        raise ConfigError(
            f"search.reward_fraction={cfg.reward_fraction} of {len(train)} training examples leaves "
            f"{len(reward_examples)} reward examples: not one batch of {reward_batch} for each of {trainer.world} "
            "processes; raise search.reward_fraction, lower search.reward_batch_size or use fewer processes"
        )
    if logger is None:
        trainer.logger = logger = RunLogger(out_dir if trainer.is_main else None, resume=resume)
    hooks = DASHooks(
        model, task, policy, cfg, reward_examples, reward_batch,
        seed=seed, trainer=trainer, logger=logger, block_costs=block_costs,
    )
    if cfg.cost_weight and block_costs is None:  # FLOPs-aware reward: measure what each block costs
        probe = task.collate([rest[0]])
        model.to(trainer.device)
        hooks.block_costs = measure_block_costs(model, task, to_device(probe, trainer.device))
    if cfg.updates_per_epoch:  # counted in this process's micro-batches: the same updates per epoch on any world size
        hooks.per_epoch = batches_per_rank(len(rest), train_cfg.batch_size, trainer.world)
    trainer.hooks = hooks
    trainer.fit(rest, resume=resume)
    if not hooks.history:
        raise ConfigError(
            "the search made no policy update: train longer than search.warmup_epochs "
            f"({cfg.warmup_epochs}) plus search.update_every ({cfg.update_every}) micro-batches"
        )
    plan = policy.top_k()
    config = {"search": cfg.__dict__, "train": train_cfg.__dict__, "block_costs": hooks.block_costs,
              "world_size": trainer.world, "supernet": True}
    if cfg.mode == "verified":
        penalty = hooks.config_cost if cfg.cost_weight else None  # the FLOPs-aware reward's cost, as a loss
        plan, config["verification"] = verify_plans(model, task, reward_examples, rest, cfg, policy, trainer, penalty)
    model.set_skip([])
    return SearchResult(
        plan=plan, method=f"das-{cfg.mode}", scores=policy.gates.tolist(), seed=seed, history=hooks.history,
        config=config, base_model={"name_or_path": model.name_or_path, "fingerprint": model.fingerprint},
        wall_time_s=time.perf_counter() - t0,
    )


def verify_plans(model: SkipModel, task: Task, held_out, train, cfg: SearchConfig, policy: SkipPolicy,
                 trainer: Trainer, penalty=None) -> tuple[SkipPlan, dict]:
    """Measure a shortlist of plans on the held-out training data (search/verify.py), on the frozen model with the
    plans' blocks removed (`verify_on='frozen'`) or under the trained supernet ('supernet')."""
    from .baselines import block_influence, last_k  # (here: `das` registers before the baselines do)

    n, k, acc = model.num_candidates, cfg.k, trainer.accelerator
    frozen = cfg.verify_on == "frozen"
    batch_size = cfg.reward_batch_size or trainer.cfg.batch_size
    reduce = (lambda t: acc.reduce(t, reduction="sum")) if trainer.world > 1 else None
    extra = max(0, cfg.verify_examples - len(held_out))  # the held-out slice, topped up with training examples
    examples = ConcatDataset([held_out, Subset(eval_view(train), range(min(extra, len(train))))]) if extra else held_out
    gates = policy.gates.tolist()
    batches, record = None, {}
    with contextlib.ExitStack() as inside:
        inside.enter_context(forward_ready(model))
        if frozen:  # the plans' blocks removed: as identities, or replaced by their fits (search/fitted.py)
            batches, record = inside.enter_context(frozen_measurement(
                model, task, examples, cfg.verify_replacement, batch_size=batch_size, device=trainer.device,
                rank=trainer.rank, world=trainer.world, reduce=reduce, autocast=acc.autocast))
        # (every process measures the same plans, each on its own share of the batches)
        meter = PlanMeter(model, task, examples, batch_size, device=trainer.device, autocast=acc.autocast,
                          rank=trainer.rank, world=trainer.world, reduce=reduce, refit_steps=cfg.verify_refit_steps,
                          refit_lr=trainer.cfg.lr * trainer.cfg.head_lr_mult,
                          prefix_mb=0.0 if trainer.sharded else cfg.prefix_states_mb, metric=cfg.verify_metric,
                          batches=batches)
        proposals, steer = {"last-k": last_k(n, k).plan.skip}, None
        # needed where not every plan is measured, and by the final round (which always hears block influence)
        if math.comb(n, k) > cfg.shortlist or cfg.finalists:
            # summed over processes: every process proposes the same plan; on the frozen model it is ShortGPT's
            bi = block_influence(model, task, held_out, k, batch_size=batch_size, reduce=reduce)
            proposals["block influence"] = bi.plan.skip
            steer = bi.scores if frozen else None  # the frozen measurement's local search follows the frozen model
        best, table = verify(meter, n, k, gates, proposals, cfg.shortlist, penalty=penalty, steer=steer)
    return SkipPlan(best, n), {"examples": meter.examples, "held_out": len(held_out), "measured": table,
                               "measured_on": cfg.verify_on, "gates_top_k": list(top_k(gates, k)),
                               **record,
                               "proposals": {name: list(plan) for name, plan in proposals.items()},
                               "head_refit_steps": meter.refit_steps, "prefix_states": meter.prefix.summary()}


@register_method("das")
def das_method(run: SearchRun) -> SearchResult:
    return run_search(run.model, run.task, run.train, run.search, run.train_cfg, seed=run.seed, out_dir=run.out_dir,
                      logger=run.logger, resume=run.resume, progress=run.progress)
