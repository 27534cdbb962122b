"""Cheap search methods beside DAS, on the same interface: each returns a SearchResult.

- block influence (ShortGPT): BI_i = 1 - cos(input_i, output_i) per token on the frozen model
  (adapters off); low influence = skippable;
- last-k: skip the deepest k blocks (the usual layer-dropping heuristic);
- reassess: "Reassessing Layer Pruning in LLMs" (Lu et al., 2024): last-k's plan, trained with the
  last 3 kept blocks fine-tuned in full; the result carries that training recipe (`train_recipe`);
- random: k blocks at random (seeded);
- exhaustive leave-k-out: the loss of every k-subset with the model as it is (e.g. after adapter
  training); exact but C(N, k) evaluations.
"""

from __future__ import annotations

import itertools
import math
import time

import torch
import torch.nn.functional as F

from ..data.loader import make_loader
from ..data.text import split_examples
from ..nn_utils import eval_mode
from ..plan import SearchResult, SkipPlan, check_k
from ..skipping import SkipModel
from ..tasks.base import Task, to_device
from ..train import Trainer
from .registry import SearchRun, register_method
from .supernet import RandomConfigs

MAX_EXHAUSTIVE_PLANS = 5000


def _result(scores: list[float], k: int, method: str, seed: int, model: SkipModel | None = None, **extra) -> SearchResult:
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    base = {"name_or_path": model.name_or_path, "fingerprint": model.fingerprint} if model is not None else {}
    return SearchResult(plan=SkipPlan(tuple(order[:k]), n), method=method, scores=scores, seed=seed, base_model=base, **extra)


def last_k(num_candidates: int, k: int) -> SearchResult:
    check_k(k, num_candidates)
    return _result([float(i) for i in range(num_candidates)], k, "last-k", 0)


def random_plan(num_candidates: int, k: int, seed: int = 0) -> SearchResult:
    check_k(k, num_candidates)
    g = torch.Generator().manual_seed(seed)
    return _result(torch.rand(num_candidates, generator=g, dtype=torch.float64).tolist(), k, "random", seed)


def _batches(task: Task, examples: list[dict], batch_size: int, max_batches: int | None):
    loader = make_loader(examples, task.collate, batch_size)
    return list(itertools.islice(loader, max_batches))


@torch.no_grad()
def block_influence(
    model: SkipModel, task: Task, examples: list[dict], k: int, *, batch_size: int = 16, max_batches: int | None = 8,
    reduce=None,
) -> SearchResult:
    """ShortGPT's score on the frozen model (adapters off). `reduce` sums tensors across processes, so that
    processes reading different examples agree on the scores."""
    check_k(k, model.num_candidates)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    sums = torch.zeros(model.num_candidates, dtype=torch.float64)
    count = 0.0
    captured: dict[int, torch.Tensor] = {}

    def pre(layer, args, kwargs):
        captured[-1] = (args[0] if args else kwargs["hidden_states"]).detach()

    def post(layer, args, kwargs, out):
        captured[layer.index] = (captured.pop(-1), out[0] if isinstance(out, tuple) else out)

    handles = [h for layer in model.candidates for h in (
        layer.register_forward_pre_hook(pre, with_kwargs=True),
        layer.register_forward_hook(post, with_kwargs=True),
    )]
    try:
        with eval_mode(model), model.adapters_disabled():
            for batch in _batches(task, examples, batch_size, max_batches):
                batch = to_device(batch, device)
                captured.clear()
                task.loss(model, batch)
                mask = batch.get("attention_mask")
                for i, (x_in, x_out) in ((i, v) for i, v in captured.items() if i >= 0):
                    cos = F.cosine_similarity(x_in.float(), x_out.float(), dim=-1)  # (B, T)
                    m = mask.to(cos.dtype) if mask is not None and mask.shape == cos.shape else torch.ones_like(cos)
                    sums[i] += float(((1 - cos) * m).sum())
                count += float(m.sum())
    finally:
        for h in handles:
            h.remove()
    if reduce is not None:
        both = reduce(torch.cat([sums, torch.tensor([count], dtype=torch.float64)]).to(device)).cpu()
        sums, count = both[:-1], float(both[-1])
    influence = (sums / max(count, 1.0)).tolist()
    return _result([-x for x in influence], k, "block-influence", 0, model, wall_time_s=time.perf_counter() - t0,
                   history=[{"block_influence": influence}])


@torch.no_grad()
def exhaustive(
    model: SkipModel, task: Task, examples: list[dict], k: int, *, batch_size: int = 16, max_batches: int | None = 8
) -> SearchResult:
    n = model.num_candidates
    check_k(k, n)
    if math.comb(n, k) > MAX_EXHAUSTIVE_PLANS:
        raise ValueError(f"exhaustive search over C({n}, {k}) = {math.comb(n, k)} plans is too many (max {MAX_EXHAUSTIVE_PLANS})")
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    batches = [to_device(b, device) for b in _batches(task, examples, batch_size, max_batches)]
    losses: dict[tuple[int, ...], float] = {}
    try:
        with eval_mode(model):
            for combo in itertools.combinations(range(n), k):
                model.set_skip(combo)
                losses[combo] = sum(float(task.loss(model, b)) for b in batches) / len(batches)
    finally:
        model.set_skip([])
    best = min(losses, key=lambda c: (losses[c], c))
    scores = [-min((v for c, v in losses.items() if i in c), default=math.inf) for i in range(n)]
    result = _result(scores, k, "exhaustive", 0, model, wall_time_s=time.perf_counter() - t0,
                     history=[{"plan": list(c), "loss": v} for c, v in sorted(losses.items(), key=lambda kv: kv[1])])
    result.plan = SkipPlan(best, n)
    return result


# ---- registered methods ----------------------------------------------------------------------------


@register_method("last-k")
def last_k_method(run: SearchRun) -> SearchResult:
    return last_k(run.model.num_candidates, run.search.k)


REASSESS_UNFROZEN = 3  # the paper fine-tunes the head and the last kept blocks; 3 is its setting for LLaMA-3


@register_method("reassess")
def reassess_method(run: SearchRun) -> SearchResult:
    """The plan of last-k; `archskip train` on this result also fine-tunes the last 3 kept blocks in full."""
    result = last_k(run.model.num_candidates, run.search.k)
    result.method = "reassess"
    result.config = {"train_recipe": {"unfreeze_kept": REASSESS_UNFROZEN}}
    return result


@register_method("random")
def random_method(run: SearchRun) -> SearchResult:
    return random_plan(run.model.num_candidates, run.search.k, run.seed)


@register_method("block-influence")
def block_influence_method(run: SearchRun) -> SearchResult:
    return block_influence(run.model, run.task, run.train, run.search.k, batch_size=run.train_cfg.batch_size)


@register_method("exhaustive")
def exhaustive_method(run: SearchRun) -> SearchResult:
    """Train a supernet under random configurations, then score every k-subset on held-out training data."""
    held, rest = split_examples(run.train, (run.search.reward_fraction,), run.seed)
    trainer = Trainer(run.model, run.task, run.train_cfg, seed=run.seed, out_dir=run.out_dir, logger=run.logger,
                      hooks=RandomConfigs(run.model, run.search.k, run.seed), progress=run.progress, desc="supernet")
    trainer.fit(rest, resume=run.resume)
    return exhaustive(run.model, run.task, held, run.search.k, batch_size=run.train_cfg.batch_size, max_batches=None)
