"""Replacement adapters distilled from the blocks they replace, before training with a fixed plan.

A freshly skipped block's replacement adapter starts as a near-identity (or random) map, so the pruned
model starts far from the model it came from, and a short training run may not close the gap. As
LLM-Streamline does for its light replacement network, each replacement is first fitted to its block:
on the task's training data, with the plan applied, a skipped block's input x is fed to the frozen
block and to the replacement, and the replacement learns x -> block(x) (mean squared error). Only the
replacements change; the task loss plays no part here.
"""

from __future__ import annotations

import torch

from .adapters import ReplacementAdapter
from .data.loader import make_loader, measurement_examples
from .errors import ConfigError
from .nn_utils import eval_mode
from .skipping import SkipModel
from .tasks.base import Task, to_device


def distill_replacements(model: SkipModel, task: Task, examples, *, steps: int, lr: float, batch_size: int,
                         device=None, seed: int = 0) -> list[float]:
    """Fit every skipped candidate's replacement to its block for `steps` micro-batches; returns the losses."""
    layers = [layer for layer in model.candidates if layer.skipped and layer.replacement is not None]
    params = [p for layer in layers for p in layer.replacement.parameters() if p.requires_grad]
    if not layers or not params or steps <= 0:
        return []
    device = device or next(model.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    epoch = 0
    try:
        for layer in layers:
            layer.distilling = True
        with eval_mode(model):
            while len(losses) < steps:
                for batch in make_loader(examples, task.collate, batch_size, shuffle=True, seed=seed + 4099, epoch=epoch):
                    for layer in layers:
                        layer.distill_loss = None
                    with torch.no_grad():  # the model's own forward builds no graph; each replacement builds its own
                        task.loss(model, to_device(batch, device))
                    loss = sum(layer.distill_loss for layer in layers) / len(layers)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                    if len(losses) >= steps:
                        break
                epoch += 1
    finally:
        for layer in layers:
            layer.distilling, layer.distill_loss = False, None
    return losses


def start_replacements_from_fits(model: SkipModel, task: Task, examples, *, batch_size: int, count: int = 1024,
                                 device=None, seed: int = 0) -> list[float]:
    """Start every skipped candidate's replacement adapter at the closed-form least-squares fit of its block
    (search/fitted.py: rank skip_hidden / 2, on the no-skip frozen model's activations over `count` training
    examples drawn with `seed`), the closed-form counterpart of `distill_replacements`; returns the share of each
    fitted block's change the fit leaves unexplained."""
    from .search.fitted import fit_replacements, start_from_fit  # (search imports train, which imports this)

    skipped = [layer.index for layer in model.candidates if layer.skipped]
    if not skipped:
        return []
    kinds = {type(model.candidates[i].replacement).__name__ for i in skipped
             if not isinstance(model.candidates[i].replacement, ReplacementAdapter)}
    if kinds:
        raise ConfigError(f"train.fit_replacements starts ReLU bottleneck replacements; this model's are {sorted(kinds)} "
                          "(adapter.kind='router'): set train.fit_replacements false, or use train.distill_steps")
    sample = measurement_examples(examples, count, seed)
    device = device or next(model.parameters()).device
    with eval_mode(model):
        fit = fit_replacements(model, task, list(make_loader(sample, task.collate, batch_size)), device=device,
                               candidates=skipped)
    for i in skipped:
        start_from_fit(model.candidates[i].replacement, fit["modules"][i])
    return [fit["unexplained"][i] for i in skipped]
