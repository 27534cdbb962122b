"""Parameters, FLOPs (torch's FLOP counter) and latency (warm-up, interleaved repeats, medians).

Latency is only ever reported as a ratio measured side by side in one process: the models take
turns in every round (in a shuffled order), so machine noise hits them alike.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .nn_utils import eval_mode, parameter_counts  # noqa: F401  (parameter_counts: also imported from here)
from .skipping import SkipModel


@torch.no_grad()
def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (matmuls and convolutions, as torch.utils.flop_counter counts them)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Latency:
    median_s: float
    p10_s: float
    p90_s: float
    samples: int

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how noisy the measurement was."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s else float("nan")


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fns: dict[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 20, seed: int = 0, device=None,
    grad: bool = False,
) -> dict[str, Latency]:
    """Median wall time of each callable, measured in interleaved rounds (under no_grad unless `grad`)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    with torch.enable_grad() if grad else torch.no_grad():
        return _interleaved(fns, warmup, repeats, seed, device)


def _interleaved(fns, warmup: int, repeats: int, seed: int, device) -> dict[str, Latency]:
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            _sync(device)
            t = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
        out[name] = Latency(statistics.median(ts), q[0], q[-1], len(ts))
    return out


def ratios(lat: dict[str, Latency], reference: str) -> dict[str, float]:
    ref = lat[reference].median_s
    return {n: v.median_s / ref for n, v in lat.items()}


def compare_models(models: dict[str, tuple[SkipModel, bool]], task, batch: dict, *, repeats: int = 20,
                   warmup: int = 3, device=None) -> list[dict]:
    """One row per model: params, FLOPs, median latency and both as ratios to the first model.

    models: name -> (model, adapters_off). adapters_off=True measures the frozen base model.
    """
    def runner(m: SkipModel, base_only: bool):
        def run():
            if base_only:
                with m.adapters_disabled():
                    return task.loss(m, batch)
            return task.loss(m, batch)
        return run

    for m, _ in models.values():
        m.eval()
    fns = {name: runner(m, off) for name, (m, off) in models.items()}
    flops = {name: count_flops(fn) for name, fn in fns.items()}
    lat = measure_latency(fns, warmup=warmup, repeats=repeats, device=device)
    first = next(iter(models))
    rows = []
    for name, (m, off) in models.items():
        trainable, total = parameter_counts(m) if not off else (0, _base_params(m))
        rows.append({
            "model": name, "trainable_params": trainable, "total_params": total, "gflops": flops[name] / 1e9,
            "flops_ratio": flops[name] / flops[first], "latency_ms": lat[name].median_s * 1e3,
            "latency_ratio": lat[name].median_s / lat[first].median_s, "latency_spread": lat[name].spread,
        })
    return rows


def _base_params(m: SkipModel) -> int:
    adapters = {id(p) for layer in m.candidates for part in (layer.sites, layer.replacement) if part is not None
                for p in part.parameters()}
    head = {id(p) for p in m.head.parameters()} if m.head is not None else set()
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values() if id(p) not in adapters | head)


def kept_cost(weight: float, costs: list[float], skip) -> float:
    """`weight` x the share of the candidates' compute (`costs`, one per candidate) that skipping `skip` keeps: the
    FLOPs-aware search's cost of a plan (`search.cost_weight`)."""
    skipped = set(skip)
    return weight * sum(c for i, c in enumerate(costs) if i not in skipped) / sum(costs)


@torch.no_grad()
def block_costs(model: SkipModel, task, batch: dict) -> list[float]:
    """FLOPs each candidate costs on `batch`: FLOPs with nothing skipped minus FLOPs with it skipped.

    METER's image-side fusion half-layers see ~577 tokens at 384 px against ~50 text tokens, so which
    blocks are skipped decides the saving; the FLOPs-aware search reward uses these costs."""
    if model.pruned:
        raise ValueError("measure block costs on the unpruned model")
    before = [layer.index for layer in model.candidates if layer.skipped]
    try:
        with eval_mode(model):
            model.set_skip([])
            full = count_flops(lambda: task.loss(model, batch))
            costs = []
            for i in range(model.num_candidates):
                model.set_skip([i])
                costs.append(float(max(0, full - count_flops(lambda: task.loss(model, batch)))))
    finally:
        model.set_skip(before)
    return costs


def compare_generation(models: dict[str, SkipModel], task, batch: dict, *, new_tokens: int, repeats: int = 5,
                       warmup: int = 1, device=None) -> dict[str, Latency]:
    """Seconds per question of generating exactly `new_tokens` tokens (greedy, KV cache) for a prompt batch,
    each model in turn in every round (the paper's "inference time" column, measured side by side)."""
    n = len(batch["input_ids"])

    def runner(m: SkipModel):
        return lambda: task.generate(m, batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    lat = measure_latency({name: runner(m) for name, m in models.items()}, warmup=warmup, repeats=repeats, device=device)
    return {name: Latency(v.median_s / n, v.p10_s / n, v.p90_s / n, v.samples) for name, v in lat.items()}
