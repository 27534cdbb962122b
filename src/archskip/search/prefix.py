"""Prefix states: a measured plan runs from the first block it skips, not from the first block.

Every plan the verified search measures (search/verify.py) runs the same fixed model, and the hidden states
entering candidate f are the same for every plan that keeps candidates 0..f-1. The measurement keeps those
states for each measurement batch (in CPU memory, up to `search.prefix_states_mb`) at the first skipped block of
the plans it measures, and starts a later plan at the latest kept boundary at or before its own first skipped
block: the blocks before that boundary are skipped and the boundary's input is replaced by the kept state. On a
decoder whose good plans skip blocks in the middle, a plan then costs about half a forward pass.

That is exact only where candidate f's input is the chain of the candidates before it and nothing else reads an
earlier block's output. So the shortcut is used only where a whole forward pass calls the candidates in order
0..N-1 (a model with two towers, e.g. METER, calls them interleaved: never), and each boundary b is checked
once, the first time a plan would start there: the model's outputs on the first measurement batch under plan
(b,) (every later block runs, so any block reading a replaced output would show) with and without the shortcut
must agree, or the boundary is dropped and never used.
"""

from __future__ import annotations

import contextlib
import dataclasses
from types import SimpleNamespace

import torch

from ..skipping import CACHE_KWARGS, SkipModel

Plan = tuple[int, ...]


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]  # (as SkippableLayer.forward reads it)


class NotAPrefix(RuntimeError):
    """A model call that continues cached keys/values (a task whose score generates): its hidden states depend on
    the tokens generated so far, so they are not the same for every plan."""


def _check_fresh(args: tuple, kwargs: dict) -> None:
    """(Called on the first candidate, before any block of this call wrote to the cache.)"""
    caches = [kwargs.get(k) for k in CACHE_KWARGS] + list(args[1:])
    if any(hasattr(c, "get_seq_length") and c.get_seq_length() > 0 for c in caches):
        raise NotAPrefix("a model call continued a KV cache")


def _fingerprint(x: torch.Tensor) -> tuple:
    """What the first candidate's input of a model call looks like: a kept state is replayed only into a call whose
    input matches the call it was kept from (a task generating without a cache feeds each plan its own tokens)."""
    x = x.detach().double()
    return tuple(x.shape), float(x.sum()), float(x.abs().sum())


def _flat_tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x.keys(), key=str) for t in _flat_tensors(x[k])]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _flat_tensors(v)]
    if isinstance(x, SimpleNamespace) or (dataclasses.is_dataclass(x) and not isinstance(x, type)):  # (METER's outputs)
        return _flat_tensors(vars(x))
    return []  # (e.g. a KV cache: which of its layers hold entries differs by design)


def same_outputs(a, b) -> bool:
    """Whether two recorded model outputs (tensors, ModelOutputs, tuples, namespaces) agree to float rounding;
    outputs with no tensor to compare never agree."""
    ta, tb = _flat_tensors(a), _flat_tensors(b)
    if not ta or len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return False
        if x.is_floating_point():
            x, y = x.float(), y.float()
            if not torch.allclose(x, y, rtol=1e-4, atol=1e-5 * (1.0 + x.abs().max().item())):
                return False
        elif not torch.equal(x, y):
            return False
    return True


class PrefixStates:
    """The hidden states entering some candidate blocks, per (measurement batch, model call), of the model as it
    is now (callers make a new one whenever the weights change)."""

    def __init__(self, model: SkipModel, budget_mb: float, batches: int = 1):
        self.model, self.budget, self.batches = model, budget_mb * 2**20, batches
        # boundary -> (batch, call) -> (the call's fingerprint, the state entering the boundary (B, T, C))
        self.states: dict[int, dict[tuple[int, int], tuple[tuple, torch.Tensor]]] = {}
        self.usable: dict[int, bool] = {}  # boundary -> the check's verdict (absent: not checked yet)
        self.recent: list[int] = []  # boundaries, least recently used first
        self.batch = 0  # the measurement batch the model runs on now (the meter sets it)
        self.passes = [0, 0]  # (candidate-block passes run, passes saved by starting later), checks included
        self.off = None if budget_mb > 0 else "search.prefix_states_mb is 0"  # why nothing is kept
        self.in_order: bool | None = None  # whether a whole pass calls the candidates 0..N-1 (None: not seen yet)

    @property
    def enabled(self) -> bool:
        return self.off is None

    def start(self, plan: Plan) -> int:
        """The boundary `plan` would start at: the latest kept one at or before its first skipped block (0: none)."""
        if not plan or not self.enabled:
            return 0
        first = min(plan)
        return max((b for b in self.states if b <= first and self.usable.get(b, True)), default=0)

    def disable(self, why: str) -> None:
        self.off, self.states, self.recent = why, {}, []

    def needs_check(self, boundary: int) -> bool:
        return boundary > 0 and boundary not in self.usable

    def checked(self, boundary: int, ok: bool) -> None:
        self.usable[boundary] = ok
        if not ok and boundary in self.states:
            del self.states[boundary]
            self.recent.remove(boundary)

    @contextlib.contextmanager
    def running(self, plan: Plan, *, start: int, record: bool = True):
        """Inside: calls of the model run `plan` from boundary `start` (from `self.start(plan)`; its earlier blocks
        are skipped, their output replaced by the kept state) and, with `record`, keep the states entering the
        plan's first skipped block. The model's plan is `plan` again on exit."""
        first = min(plan) if plan else 0
        record = record and self.enabled and first > start and first not in self.states and self.usable.get(first, True)
        hooks, calls = [], {}
        candidates = self.model.candidates

        def call_index(name: str) -> tuple[int, int]:
            key = (name, self.batch)
            calls[key] = calls.get(key, -1) + 1
            return self.batch, calls[key]

        entered = [None]  # the fingerprint of the current model call's input to the first candidate

        def enter(module, args, kwargs):
            _check_fresh(args, kwargs)
            entered[0] = _fingerprint(_hidden(args, kwargs))

        def replay(module, args, kwargs):
            hidden = _hidden(args, kwargs)
            fingerprint, state = self.states[start].get(call_index("replay"), (None, None))
            if fingerprint != entered[0] or state.shape != hidden.shape or state.dtype != hidden.dtype:
                raise NotAPrefix("a model call differs from the one its states were kept from")
            state = state.to(hidden.device, copy=True)  # (a block may change its input in place)
            if args:
                return (state, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": state}

        kept: dict[tuple[int, int], tuple] = {}
        size = [0]  # bytes kept; -1: over the budget, nothing more kept

        def keep(module, args, kwargs):
            if size[0] < 0:
                return
            hidden = _hidden(args, kwargs)
            size[0] += hidden.numel() * hidden.element_size()
            # one boundary would not fit (judged by its first batch): keep none, now or later (every boundary of a
            # chain holds states of one shape)
            if max(size[0], size[0] * self.batches // max(1, self.batch + 1)) > self.budget:
                kept.clear()
                size[0] = -1
                self.disable(f"one boundary's states exceed search.prefix_states_mb={self.budget / 2**20:g}")
            else:
                kept[call_index("keep")] = (entered[0], hidden.detach().to("cpu", copy=True))

        if start > 0 or record:
            hooks.append(candidates[0].register_forward_pre_hook(enter, with_kwargs=True))
        if start > 0:
            hooks.append(candidates[start].register_forward_pre_hook(replay, with_kwargs=True))
        if record:
            hooks.append(candidates[first].register_forward_pre_hook(keep, with_kwargs=True))
        self.model.set_skip(sorted(set(plan) | set(range(start))))
        try:
            yield start
        finally:
            for h in hooks:
                h.remove()
            self.model.set_skip(plan)
        if start > 0:  # (used now: the last to be forgotten)
            self.recent.remove(start)
            self.recent.append(start)
        if record and kept and self.enabled:
            self._keep(first, kept)

    @contextlib.contextmanager
    def watching_order(self):
        """Inside: a whole pass; on exit `in_order` says whether every model call ran the candidates 0..N-1, and a
        model that did not is never shortcut."""
        order: list[int] = []
        hooks = [layer.register_forward_pre_hook(lambda m, a, i=layer.index: order.append(i))
                 for layer in self.model.candidates]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
        n = self.model.num_candidates
        self.in_order = bool(order) and order == list(range(n)) * (len(order) // n)
        if not self.in_order:
            self.disable("a whole pass does not run the candidate blocks in order, one chain")

    def counted_check(self, start: int) -> None:
        """Count a boundary check's cost: a whole pass and a pass from `start`, on one batch."""
        self.passes[0] += 2 * self.model.num_candidates - start

    def measured(self, plan: Plan, start: int, batches: int) -> None:
        """Count a measured plan's candidate positions: run through, and saved by starting at `start`."""
        self.passes[0] += (self.model.num_candidates - start) * batches
        self.passes[1] += start * batches

    def _keep(self, boundary: int, kept: dict) -> None:
        self.states[boundary] = kept
        self.recent.append(boundary)
        while self.recent and self._bytes() > self.budget:  # over budget: forget the least recently used
            self.states.pop(self.recent.pop(0))

    def _bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.states.values() for _, t in s.values())

    def summary(self) -> dict:
        run, saved = self.passes
        return {"budget_mb": self.budget / 2**20, "off": self.off, "boundaries": sorted(self.states),
                "rejected": sorted(b for b, ok in self.usable.items() if not ok),
                "block_passes_saved": round(saved / (run + saved), 4) if run + saved else 0.0}

