"""What a backbone family tells the skipping machinery about one block."""

from __future__ import annotations

from dataclasses import dataclass


class BackboneError(ValueError):
    """The model's layout is not one archskip knows how to wrap."""


@dataclass(frozen=True)
class ParallelSite:
    """adapter(x) added to the output of `branch`, where x is the input of `tap` (the residual stream)."""

    name: str
    tap: str
    branch: str


@dataclass(frozen=True)
class ResidualArgSite:
    """`module(h, input_tensor)` adds `input_tensor` itself (post-LN BERT): input_tensor += adapter(input_tensor)."""

    name: str
    module: str


@dataclass(frozen=True)
class BlockSpec:
    family: str
    parallel: tuple[ParallelSite | ResidualArgSite, ...]
    """Adapter sites of the 'parallel' style (one per sub-layer)."""
    sequential_norm: str | None
    """The norm whose output feeds attention; the 'sequential' (LaVIN) adapter sits on its output."""
    input_norm: str | None
    """The block's first norm, copied (frozen) as the replacement adapter's norm when skip_norm='block'."""
    returns_tuple: bool = False
    """The block returns (hidden, ...) instead of a tensor."""
    is_decoder: bool = False
    keep_positions: bool = False
    """Pruning keeps every candidate in its place (its frozen block deleted) instead of compacting the list:
    for models whose forward pairs blocks by index (METER's two streams)."""
