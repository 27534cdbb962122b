"""Small torch helpers every stage uses: evaluation mode, parameter counts, padding rows of tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run the body in eval mode (dropout off), then restore the mode the module had."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) over unique parameters (tied weights counted once)."""
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def pad_rows(rows: Sequence[Sequence[int] | torch.Tensor], value: float = 0, *, left: bool = False,
             like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths -> (padded (B, T[, D]), attention mask (B, T)), padded on the right or the left.

    Rows are token lists or tensors (T_b,) / (T_b, D); `like` gives the dtype and device of the padded tensor
    (default: long tokens on the CPU)."""
    rows = [r if isinstance(r, torch.Tensor) else torch.tensor(list(r), dtype=torch.long) for r in rows]
    ref = like if like is not None else rows[0]
    width = max(len(r) for r in rows)
    padded = torch.full((len(rows), width, *rows[0].shape[1:]), value, dtype=ref.dtype, device=ref.device)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=ref.device)
    for b, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        padded[b, sl], mask[b, sl] = r, 1
    return padded, mask
