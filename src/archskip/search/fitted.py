"""Fitted replacements: the frozen measurement with each skipped block replaced by what its adapter can learn.

The frozen measurement (search/removal.py) removes a plan's blocks as identities. After training, a skipped
block is not the identity: its replacement adapter, x + f(norm(x)), learns part of what the block did. A block
whose change to the residual stream is nearly linear in its input loses little when it is replaced, however
much its removal hurts; the identity measurement cannot see that.

`search.verify_replacement: fitted` measures plans with each skipped block replaced by the closed-form fit of
that map: on the measurement examples, the no-skip frozen model's input x and output y of every candidate block
are read once, and the least-squares linear map from [norm(x), 1] to y - x of rank r (reduced-rank regression)
stands in for the block. r is half the replacement adapter's width: a ReLU bottleneck of width 2r represents
any rank-r linear map exactly (relu(h) - relu(-h) = h), so the fit is a point the adapter can reach. No
gradient step is taken; the cost is one forward pass over the measurement examples and, per block, the solve
of a (D+1)-square system. The statistics are 2 (D+1) D floats per candidate (float64, summed on the device
the model runs on; solved on the CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..data.loader import make_loader
from ..skipping import SkipModel
from ..tasks.base import Task, to_device
from .verify import removed_as_identity

RIDGE = 1e-4  # relative to the mean variance of the normalised inputs: keeps the solve well-posed


class FittedReplacement(nn.Module):
    """x + norm(x) @ A[:D] @ V.T + A[D] @ V.T: the rank-r least-squares stand-in for one block, (..., D) -> (..., D)."""

    def __init__(self, norm: nn.Module, a: torch.Tensor, v: torch.Tensor):
        super().__init__()
        dim, rank = v.shape
        self.norm = norm
        self.down = nn.Linear(dim, rank)  # (D -> r): A's rows for norm(x), its last row the bias
        self.up = nn.Linear(rank, dim, bias=False)  # (r -> D): the fit's top-r output directions
        with torch.no_grad():
            self.down.weight.copy_(a[:dim].T)
            self.down.bias.copy_(a[dim])
            self.up.weight.copy_(v)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(self.norm(x)))


def _hidden_and_output(args: tuple, kwargs: dict, out) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = args[0] if args else kwargs["hidden_states"]
    return hidden, (out[0] if isinstance(out, tuple) else out)


def fit_replacements(model: SkipModel, task: Task, batches: list, *, device,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     autocast=None, candidates: list[int] | None = None) -> dict:
    """One pass of the no-skip frozen model over `batches` (this process's share; `reduce` sums the statistics
    across processes), then the rank-r fit of every candidate block (or of `candidates`). Returns {"modules":
    [FittedReplacement per candidate, None where not fitted], "rank": r, "unexplained": [share of each fitted
    block's squared change the fit leaves, None where not fitted]}."""
    rank = max(1, model.adapter_config.skip_hidden // 2)
    n = model.num_candidates
    which = range(n) if candidates is None else sorted(candidates)
    dim = None
    stats: list[list[torch.Tensor] | None] = [None] * n  # per candidate: [Z'^T Z', Z'^T Y, sum |Y|^2]
    mask: dict[str, torch.Tensor | None] = {"now": None}

    def hook(i: int):
        def read(layer, args, kwargs, out):
            nonlocal dim
            x, y = _hidden_and_output(args, kwargs, out)
            dim = x.shape[-1]
            # (float32 whatever the backbone's dtype or autocast: adapters, and so their fits, are float32)
            with torch.autocast(x.device.type, enabled=False):
                z = _norm_of(layer)(x.float()).float().reshape(-1, dim)  # (B*T, D)
                d = (y.float() - x.float()).reshape(-1, dim)  # (B*T, D)
                m = mask["now"]
                if m is not None and m.shape == x.shape[:2]:  # text tokens: padding positions are not data
                    keep = m.reshape(-1).bool()
                    z, d = z[keep], d[keep]
                z1 = torch.cat([z, torch.ones_like(z[:, :1])], 1)  # (B*T, D+1): the bias column
                # (summed where the activations are, in float64 where the device has it: no sync per batch)
                where = dict(device="cpu") if x.device.type == "mps" else {}
                parts = [(z1.T @ z1).to(torch.float64, **where), (z1.T @ d).to(torch.float64, **where),
                         (d * d).sum().to(torch.float64, **where).reshape(1)]
            stats[i] = parts if stats[i] is None else [s + p for s, p in zip(stats[i], parts)]
        return read

    handles = [model.candidates[i].register_forward_hook(hook(i), with_kwargs=True) for i in which]
    try:
        with torch.no_grad(), model.adapters_disabled(), (autocast() if autocast else contextlib.nullcontext()):
            for batch in batches:
                batch = to_device(batch, device)
                mask["now"] = batch.get("attention_mask") if isinstance(batch, dict) else None
                task.loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    modules: list[nn.Module | None] = [None] * n
    unexplained: list[float | None] = [None] * n
    for i in which:
        layer = model.candidates[i]
        if stats[i] is None:
            raise RuntimeError(f"candidate {i} did not run on the measurement batches: nothing to fit its replacement to")
        s, c, yy = stats[i]
        if reduce is not None:  # every process fits the same map from the summed statistics
            s, c, yy = (reduce(t.to(device)) for t in (s, c, yy))
        s, c, yy = s.cpu(), c.cpu(), yy.cpu()  # (the solves: float64 on the CPU, once per block)
        ridge = RIDGE * s.diagonal()[:dim].mean() * torch.eye(dim + 1, dtype=s.dtype)
        w = torch.linalg.solve(s + ridge, c)  # (D+1, D): the full-rank least-squares map
        _, vecs = torch.linalg.eigh(w.T @ s @ w)  # the fitted outputs' directions, ascending variance
        v = vecs[:, -rank:]  # (D, r)
        a = w @ v  # (D+1, r)
        wr = a @ v.T
        left = float(yy) - 2 * float((c * wr).sum()) + float((wr * (s @ wr)).sum())
        unexplained[i] = round(left / max(float(yy), 1e-30), 4)
        ref = layer.replacement.up.weight if layer.replacement is not None else next(model.parameters())
        modules[i] = FittedReplacement(_norm_of(layer), a.float(), v.float()).to(device=ref.device)
    return {"modules": modules, "rank": min(rank, dim), "unexplained": unexplained}  # (no map has rank > D)


def start_from_fit(adapter: nn.Module, fitted: FittedReplacement) -> None:
    """Write a fit into a replacement adapter x + scale * up(relu(down(norm(x)))) of width >= 2r, exactly:
    relu(h) - relu(-h) = h, so down = [A; -A], up = [V, -V] / scale (units beyond 2r stay zero)."""
    from ..adapters import ReplacementAdapter

    if not isinstance(adapter, ReplacementAdapter):
        raise TypeError(f"a fit can start a ReLU bottleneck replacement, not a {type(adapter).__name__}")
    rank = fitted.up.weight.shape[1]
    width = adapter.down.out_features
    if width < 2 * rank:
        raise ValueError(f"a rank-{rank} fit needs a replacement of width >= {2 * rank}, this one has {width}")
    with torch.no_grad():
        for p in (adapter.down.weight, adapter.down.bias, adapter.up.weight, adapter.up.bias):
            p.zero_()
        w, b, v = fitted.down.weight, fitted.down.bias, fitted.up.weight / adapter.scale
        adapter.down.weight[:rank].copy_(w)
        adapter.down.weight[rank:2 * rank].copy_(-w)
        adapter.down.bias[:rank].copy_(b)
        adapter.down.bias[rank:2 * rank].copy_(-b)
        adapter.up.weight[:, :rank].copy_(v)
        adapter.up.weight[:, rank:2 * rank].copy_(-v)


def _norm_of(layer) -> nn.Module:
    """The norm the layer's replacement reads (its block's input norm, or its own); none: the identity."""
    norm = getattr(layer.replacement, "norm", None)
    return norm if norm is not None else nn.Identity()


@contextlib.contextmanager
def frozen_measurement(model: SkipModel, task: Task, examples, replacement: str, *, batch_size: int, device,
                       rank: int = 0, world: int = 1, reduce=None, autocast=None, batches: list | None = None):
    """Inside: the frozen model on which plans are measured, a skipped block removed as the identity
    (`replacement='identity'`) or replaced by its fit on `examples` ('fitted'; this process's share of them:
    `batches` if given, else collated here). Yields (batches, record): the batches (None where the identity
    measurement needs none collated yet) and what the search's result records of the replacement."""
    if replacement == "identity":
        with removed_as_identity(model):
            yield batches, {"replacement": "identity"}
        return
    if replacement != "fitted":
        raise ValueError(f"replacement {replacement!r}: expected 'identity' or 'fitted'")
    if batches is None:
        batches = list(make_loader(examples, task.collate, batch_size, rank=rank, world=world))
    fit = fit_replacements(model, task, batches, device=device, reduce=reduce, autocast=autocast)
    with fitted_as_replacement(model, fit["modules"]):
        yield batches, {"replacement": "fitted", "fit": {"rank": fit["rank"], "unexplained": fit["unexplained"]}}


@contextlib.contextmanager
def fitted_as_replacement(model: SkipModel, modules: list[nn.Module]):
    """Inside: the frozen base model in which a skipped block runs its fitted replacement (every adapter bypassed);
    the replacement adapters are restored on exit."""
    saved = [layer.replacement for layer in model.candidates]
    with model.adapters_disabled():
        try:
            for layer, fitted in zip(model.candidates, modules):
                layer.replacement = fitted
            yield model
        finally:
            for layer, replacement in zip(model.candidates, saved):
                layer.replacement = replacement


def check_fitted(cfg) -> None:
    """Refuse, before any work, fitted replacements under an FSDP config: the measurement swaps modules inside
    the model's blocks, which a sharded model does not allow."""
    if cfg.verify_replacement != "fitted":
        return
    from accelerate.utils import parse_flag_from_env

    from ..errors import ConfigError

    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise ConfigError("search.verify_replacement='fitted' under an FSDP config: the measurement swaps each "
                          "skipped block's replacement inside the sharded model, which archskip does not do; use "
                          "search.verify_replacement='identity' or run without FSDP")
