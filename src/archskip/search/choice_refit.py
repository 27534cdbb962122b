"""The options' cross-entropy after the re-fit training makes first: `search.verify_metric: choice_refit_loss`.

A frozen, untuned decoder barely tells a task's answers apart, and how it leans between them (which option it
prefers a priori, how confident it is) changes with every plan. Training fixes that lean in its first steps,
so a plan should not be judged by it. This measurement re-fits, per plan, exactly that: one temperature and one
bias per option on the options' logits at the answer's first token, fitted by cross-fitting (each example is
scored by a fit made without it, `FOLDS` folds), and reports the cross-entropy of the right option under the
fits. What is left is how well the plan's model separates the answers, the decoder's analogue of the task head
re-fitted per plan on encoders (search/verify.py). A fit of the whole final hidden state (a linear probe) is
not used: it reads sentiment the last blocks would have carried to the answer tokens, so it rated dropping the
last blocks as harmless where training could not recover them (docs/benchmarks.md). This re-fit is milder but
can err the same way (polarity, k = 4 and 6), so it is an option, not the default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FOLDS = 5
RIDGE = 1e-3  # pulls the temperature towards 1 and the biases towards 0: keeps a separable fold's fit finite


def _fit(logits: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale (), bias (O,)) minimising the mean cross-entropy of scale * logits + bias, (N, O) float64."""
    scale = torch.ones((), dtype=logits.dtype, requires_grad=True)
    bias = torch.zeros(logits.shape[1], dtype=logits.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([scale, bias], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(scale * logits + bias, gold) + RIDGE * ((scale - 1) ** 2 + bias.square().sum())
        loss.backward()
        return loss

    opt.step(closure)
    return scale.detach(), bias.detach()


def refit_choice_losses(logits: torch.Tensor, gold: torch.Tensor, folds: int = FOLDS) -> torch.Tensor:
    """Each example's cross-entropy of its right option under a temperature and option biases fitted on the other
    folds (example i is in fold i % folds), (N,) float64. `logits`: (N, O) the options' logits; `gold`: (N,)."""
    logits, gold = logits.detach().double().cpu(), gold.long().cpu()
    n = len(gold)
    if n < 2:
        raise ValueError(f"choice_refit_loss needs at least 2 measured examples to cross-fit, got {n}")
    fold = torch.arange(n) % min(folds, n)
    out = torch.empty(n, dtype=torch.float64)
    with torch.enable_grad():
        for f in fold.unique():
            held = fold == f
            scale, bias = _fit(logits[~held], gold[~held])
            out[held] = F.cross_entropy(scale * logits[held] + bias, gold[held], reduction="none")
    return out


def gathered(rows: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None, rank: int,
             world: int) -> torch.Tensor:
    """Every process's `rows` (n_p, C), in process order: the same (sum n_p, C) tensor on every process, through
    the meter's sum across processes (a zero-padded slot per process)."""
    if reduce is None or world == 1:
        return rows
    device = rows.device
    counts = torch.zeros(world, dtype=torch.float64, device=device)
    counts[rank] = len(rows)
    counts = reduce(counts).long().tolist()
    slots = torch.zeros(world, max(counts), rows.shape[1], dtype=torch.float64, device=device)
    slots[rank, : len(rows)] = rows.double()
    slots = reduce(slots)
    return torch.cat([slots[p, : counts[p]] for p in range(world)])
