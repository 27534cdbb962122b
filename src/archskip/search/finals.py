"""The verified search's final round: the leading plans, and the cheap heuristics' plans, each trained briefly.

Every measurement before this round reads a model that no plan has been trained for (the frozen base) or
one trained for all plans at once (the supernet). On decoders neither tells reliably how well a plan's own
adapters will learn the task: the frozen model ranks plans by how much of its zero-shot behaviour
survives, which on SmolLM2 IMDB put block influence's plan tenth of sixteen while it trains 3.5 pp better
than the measured best (docs/benchmarks.md). The final round measures what the user will get: each
finalist's adapters (and task head) are trained from the same fresh start for `search.final_epochs` on
most of the training data, and judged on the rest (`search.final_fraction`) by the task's selection metric.

The finalists are the `search.finalists` best measured plans and always block influence's and last-k's
plans: a free heuristic that trains better than every measured plan wins here, so the search is not
worse than it except by the noise of a short training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..config import SearchConfig, TrainConfig
from ..data.loader import eval_view, make_loader
from ..data.text import split_examples
from ..errors import ConfigError
from ..skipping import SkipModel
from ..tasks.base import Task, evaluate
from ..train import Trainer
from .verify import Plan

FINALS_FILE = "finalists.json"


def finalists(verification: dict, count: int) -> list[Plan]:
    """The final round's plans, from a verified search's `config["verification"]`: its `count` best measured
    plans (the table is best first), then its proposals (block influence's and last-k's plans) not among them."""
    out: list[Plan] = []
    for plan in [m["plan"] for m in verification["measured"][:count]] + list(verification["proposals"].values()):
        if tuple(plan) not in out:
            out.append(tuple(plan))
    return out


def check_finals(cfg: SearchConfig, train_size: int) -> None:
    """Refuse, before any work, a final round whose split leaves no training or no judging examples, or one under
    an FSDP config (the finalists would retrain adapters inside the sharded model, which is not supported)."""
    if not cfg.finalists:
        return
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise ConfigError(f"search.finalists={cfg.finalists} under an FSDP config: the final round retrains each "
                          "finalist's adapters, which archskip does not do on a sharded model; set "
                          "--search.finalists 0 (the best measured plan is the result) or run without FSDP")
    held = int(round(cfg.final_fraction * train_size))
    if held < 1 or held >= train_size:
        raise ConfigError(f"search.final_fraction={cfg.final_fraction} of {train_size} training examples leaves "
                          f"{held} to judge the finalists and {train_size - held} to train them; both must be "
                          "non-empty (or set search.finalists=0)")


def play_finals(model: SkipModel, task: Task, train, plans: Sequence[Plan], cfg: SearchConfig, train_cfg: TrainConfig,
                *, initial: dict, seed: int = 0, known: dict[Plan, dict] | None = None,
                on_measured: Callable[[Plan, dict], None] | None = None, penalty: Callable[[Plan], float] | None = None,
                progress: bool = False) -> tuple[Plan, list[dict]]:
    """(the winning plan, each finalist's held-out metrics best first). Each plan's adapters start from `initial`
    (a `trainable_state_dict()` of fresh adapters and head) and train with `train_cfg`'s optimiser for
    `cfg.final_epochs`, with no distillation, teacher or warm start; the model's trainable weights (a supernet's,
    which `train.warm_start` reads) are as they were before, on return. `known`: metrics of finalists a killed
    run had judged; `on_measured(plan, metrics)` after each; `penalty(plan)`: added to a loss, subtracted from
    another metric, as in the verification (`search.cost_weight`)."""
    judge, fit = split_examples(train, (cfg.final_fraction,), seed)
    # collated once for every finalist (every process judges every example)
    batches = list(make_loader(eval_view(judge), task.collate, cfg.reward_batch_size or train_cfg.batch_size))
    short = replace(train_cfg, epochs=cfg.final_epochs, distill_steps=0, teacher=None, warm_start=None,
                    eval_every=None, checkpoint_every=None, tensorboard=False)
    metric = judged_by(task, cfg)
    measured = dict(known or {})
    before = model.trainable_state_dict()
    try:
        for plan in plans:
            if plan in measured:
                continue
            model.load_trainable_state_dict(initial)
            model.set_skip(plan)
            trainer = Trainer(model, task, short, seed=seed, progress=progress, desc=f"finalist {list(plan)}")
            trainer.fit(fit)
            measured[plan] = evaluate(model, task, batches, trainer.device)
            if metric not in measured[plan]:
                raise ConfigError(f"search.verify_metric={metric!r}: the {task.name} task's measurements have no "
                                  f"{metric!r} (they have {sorted(measured[plan])})")
            if on_measured is not None:
                on_measured(plan, measured[plan])
    finally:
        model.load_trainable_state_dict(before)
        model.set_skip([])

    def cost(plan: Plan) -> float:
        return penalty(plan) if penalty else 0.0

    def key(plan: Plan) -> tuple:
        m = measured[plan]
        value = (m[metric] if metric.endswith("loss") else -m[metric]) + cost(plan)
        return (value if math.isfinite(value) else math.inf, m["loss"], plan)

    ranked = sorted(plans, key=key)
    return ranked[0], [{"plan": list(p), "metrics": measured[p], "selection": metric, "penalty": cost(p)}
                       for p in ranked]


def judged_by(task: Task, cfg: SearchConfig) -> str:
    """The metric the final round ranks its trained finalists by: the measurement's (`search.verify_metric`), but
    the task's selection metric in place of 'text_loss', which reads how much of the frozen model's text survives,
    not what a finalist's adapters trained for, and the options' plain cross-entropy in place of its re-fitted
    one (a trained finalist has learnt what the re-fit stands in for)."""
    if cfg.verify_metric == "choice_refit_loss":
        return "choice_loss"
    return task.selection_metric if cfg.verify_metric in ("task", "text_loss") else cfg.verify_metric


def run_finals(model: SkipModel, task: Task, train, verification: dict, cfg: SearchConfig, train_cfg: TrainConfig, *,
               initial: dict, seed: int, log=None, penalty=None, progress: bool = False) -> tuple[Plan, dict]:
    """The final round of a verified search whose measurements are `verification`: (the winner, the round's
    record for `config["finals"]`). `log`: a MeasurementLog (search/removal.py) that a resumed run reads."""
    t0 = time.perf_counter()
    plans = finalists(verification, cfg.finalists)
    best, table = play_finals(model, task, train, plans, cfg, train_cfg, initial=initial, seed=seed,
                              known=log.measured if log else None, on_measured=log.record if log else None,
                              penalty=penalty, progress=progress)
    judged = int(round(cfg.final_fraction * len(train)))
    return best, {"plans": table, "epochs": cfg.final_epochs, "judged_on": judged, "trained_on": len(train) - judged,
                  "seconds": round(time.perf_counter() - t0, 1)}
