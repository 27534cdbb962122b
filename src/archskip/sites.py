"""Adapters attached to a frozen block by forward hooks, at the places its family's `BlockSpec` names.

The block keeps its class, its code and its parameter names; a site only adds what its adapter
computes. Hooks are bound methods, so a deep copy of the model copies them with it.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import ParallelSite, ResidualArgSite, get_submodule


def run_adapter(adapter: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Adapters stay float32 when the backbone is bf16/fp16: compute in theirs, return in x's dtype."""
    w = adapter.up.weight
    return adapter(x.to(w.dtype)).to(x.dtype) if x.dtype != w.dtype else adapter(x)


def add_adapter(adapter: nn.Module, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """target + adapter(x), fused (`Bottleneck.add_to`), in the adapter's dtype and returned in target's."""
    w = adapter.up.weight
    if x.dtype == w.dtype and target.dtype == w.dtype:
        return adapter.add_to(target, x)
    return adapter.add_to(target.to(w.dtype), x.to(w.dtype)).to(target.dtype)


class Site(nn.Module):
    """One adapter attached to a frozen block by forward hooks (bound methods: safe under deepcopy)."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.active = True  # False: the hooks pass everything through (the frozen base model)
        self._hooked: list[nn.Module] = []

    def attach(self, block: nn.Module) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        for m in self._hooked:
            for hooks in (m._forward_hooks, m._forward_pre_hooks):
                for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is self]:
                    hooks.pop(key)
                    m._forward_hooks_with_kwargs.pop(key, None)
                    m._forward_pre_hooks_with_kwargs.pop(key, None)
        self._hooked = []


class ParallelAdapterSite(Site):
    """x -> adapter(x) at the input of `tap`, added to the output of `branch`."""

    def __init__(self, adapter: nn.Module, spec: ParallelSite):
        super().__init__(adapter)
        self.spec = spec
        self._pending: torch.Tensor | None = None  # the tap's input, until the branch's output is known

    def attach(self, block: nn.Module) -> None:
        tap, branch = get_submodule(block, self.spec.tap), get_submodule(block, self.spec.branch)
        tap.register_forward_pre_hook(self._on_tap, with_kwargs=True)
        branch.register_forward_hook(self._on_branch)
        self._hooked = [tap, branch]

    def _on_tap(self, module, args, kwargs):
        if not self.active:
            return
        x = args[0] if args else kwargs["hidden_states"] if "hidden_states" in kwargs else next(iter(kwargs.values()))
        self._pending = x  # (the adapter runs at the branch: its up-projection adds straight into the output)

    def _on_branch(self, module, args, output):
        if not self.active:
            return
        x, self._pending = self._pending, None
        if x is None:
            raise RuntimeError(f"adapter site {self.spec.name!r}: {self.spec.branch!r} ran before {self.spec.tap!r}")
        if isinstance(output, tuple):
            return (add_adapter(self.adapter, output[0], x), *output[1:])
        return add_adapter(self.adapter, output, x)


class ResidualAdapterSite(Site):
    """`module(h, input_tensor)` that adds input_tensor: give it input_tensor + adapter(input_tensor)."""

    def __init__(self, adapter: nn.Module, spec: ResidualArgSite):
        super().__init__(adapter)
        self.spec = spec

    def attach(self, block: nn.Module) -> None:
        m = get_submodule(block, self.spec.module)
        m.register_forward_pre_hook(self._on_call, with_kwargs=True)
        self._hooked = [m]

    def _on_call(self, module, args, kwargs):
        if not self.active:
            return
        if len(args) >= 2:
            x = args[1]
            return (args[0], add_adapter(self.adapter, x, x), *args[2:]), kwargs
        x = kwargs["input_tensor"]
        return args, {**kwargs, "input_tensor": add_adapter(self.adapter, x, x)}


class SequentialAdapterSite(Site):
    """LaVIN: the output z of the attention's input norm becomes z + f(z)."""

    def __init__(self, adapter: nn.Module, norm_name: str):
        super().__init__(adapter)
        self.norm_name = norm_name

    def attach(self, block: nn.Module) -> None:
        m = get_submodule(block, self.norm_name)
        m.register_forward_hook(self._on_norm)
        self._hooked = [m]

    def _on_norm(self, module, args, output):
        if self.active:
            return run_adapter(self.adapter, output)
