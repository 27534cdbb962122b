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
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from ..data.loader import eval_view
from ..errors import ConfigError
from ..io import atomic_write_text
from ..plan import SearchResult, SkipPlan, check_k
from ..skipping import SkipModel
from .baselines import block_influence, last_k
from .registry import SearchRun, register_method
from .verify import Plan, PlanMeter, removed_as_identity, verify

MEASURED_FILE = "measured_plans.json"


class MeasurementLog:
    """Plan measurements written to `measured_plans.json` in the run's directory as they are made, so that a killed
    search resumed with the same settings measures only the plans it had not (on a large model one plan is a
    forward pass over every measurement example)."""

    def __init__(self, out_dir: str | Path | None, settings: dict, *, resume: bool, write: bool):
        self.path = Path(out_dir) / MEASURED_FILE if out_dir else None
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


def measurement_examples(train, count: int, seed: int) -> Subset:
    """A seeded sample of `count` training examples, read as in evaluation (no augmentation)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(eval_view(train), order[:count])


def removal_loss(model: SkipModel, task, examples, k: int, *, shortlist: int = 16, batch_size: int = 16,
                 refit_steps: int = 30, refit_lr: float = 1e-3, seed: int = 0, device=None, autocast=None,
                 rank: int = 0, world: int = 1, reduce=None, penalty=None, known=None, on_measured=None) -> SearchResult:
    """Measure plans on the frozen model and return the best. With several processes, each measures its share of
    `examples` and `reduce` sums across them, so every process decides alike; `penalty(plan)` is subtracted from
    the selection metric (the FLOPs-aware search's cost). `known`: plan -> metrics measured before (a resumed
    run), not measured again; `on_measured(plan, metrics)` is called after each new measurement."""
    n = model.num_candidates
    check_k(k, n)
    t0 = time.perf_counter()
    device = device or next(model.parameters()).device
    # (block influence reads the first batches of `examples` on every process and sums them: one plan everywhere)
    bi = block_influence(model, task, examples, k, batch_size=batch_size, reduce=reduce)
    with removed_as_identity(model):
        meter = PlanMeter(model, task, examples, batch_size, device=device, autocast=autocast, rank=rank, world=world,
                          reduce=reduce, refit_steps=refit_steps, refit_lr=refit_lr, known=known, on_measured=on_measured)
        best, table = verify(meter, n, k, bi.scores, {"last-k": last_k(n, k).plan.skip}, shortlist, penalty=penalty,
                             gates_name="block influence")  # block influence's scores steer the local search
    model.set_skip([])
    return SearchResult(plan=SkipPlan(best, n), method="removal-loss", scores=bi.scores, seed=seed,
                        history=bi.history, config={"verification": {"examples": len(examples), "measured": table,
                                                                      "measured_on": "frozen",
                                                                      "head_refit_steps": meter.refit_steps}},
                        base_model={"name_or_path": model.name_or_path, "fingerprint": model.fingerprint},
                        wall_time_s=time.perf_counter() - t0)


@register_method("removal-loss")
def removal_loss_method(run: SearchRun) -> SearchResult:
    cfg, tc = run.search, run.train_cfg
    examples = measurement_examples(run.train, cfg.verify_examples, run.seed)
    return removal_loss(run.model, run.task, examples, cfg.k, shortlist=cfg.shortlist,
                        batch_size=cfg.reward_batch_size or tc.batch_size, refit_steps=cfg.verify_refit_steps,
                        refit_lr=tc.lr * tc.head_lr_mult, seed=run.seed)
