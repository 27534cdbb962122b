"""What a backbone family tells the skipping machinery about one block.

A `BlockSpec` names sub-modules of one block: where each adapter taps the residual stream and
where it adds its output. `skipping.SkippableLayer` attaches adapters there with hooks, so the
frozen block keeps its class, its code and its parameter names. The spec also owns what skipping
changes outside the block: the KV-cache slot of a decoder block and the model config's per-layer
fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import BackboneError  # noqa: F401  (raised here; imported from here too)


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
    """A causal-LM block with a KV-cache slot (its attention's `layer_idx`)."""
    keep_positions: bool = False
    """Pruning keeps every candidate in its place (its frozen block deleted) instead of compacting the list:
    for models whose forward pairs blocks by index (METER's two streams)."""

    def set_cache_slot(self, block: nn.Module, slot: int) -> None:
        """Point the block's KV-cache slot at `slot`. Skipped decoder layers must not leave holes in the
        cache: it is indexed by each attention's `layer_idx`, and `cache.get_seq_length()` reads slot 0,
        so the layers that run are numbered 0..n-1. Encoders have no cache: nothing to do."""
        if not self.is_decoder:
            return
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = slot

    def shrink_config(self, config, keep: tuple[int, ...]) -> None:
        """Make a model config describe only the kept layers (num_hidden_layers and per-layer lists)."""
        if self.keep_positions:  # the list keeps every place: the config stays as it is
            return
        config.num_hidden_layers = len(keep)
        for key in ("layer_types", "sliding_window_pattern_list"):
            value = getattr(config, key, None)
            if isinstance(value, list) and len(value) > max(keep, default=-1):
                setattr(config, key, [value[i] for i in keep])


def pre_norm_spec(family: str, norm1: str, attn: str, norm2: str, mlp: str, *, is_decoder: bool = False,
                  returns_tuple: bool = False) -> BlockSpec:
    """x + attn(norm1(x)), then h + mlp(norm2(h)) (LLaMA-like decoders, ViT/CLIP-like encoders): the parallel
    adapters tap each norm's input (the residual stream) and add to the output of `attn` / `mlp`.

    Parallel attention + MLP, x + attn(norm1(x)) + mlp(norm2(x)) (GPT-J, Falcon, Phi; norm2 may be norm1), is the
    same spec: the MLP adapter then reads x, the input of the MLP's norm. `attn` / `mlp` name whatever module's
    output is added to the stream (a sandwich post-norm, a layer scale, a residual dropout)."""
    return BlockSpec(
        family=family,
        parallel=(ParallelSite("attn", norm1, attn), ParallelSite("mlp", norm2, mlp)),
        sequential_norm=norm1,
        input_norm=norm1,
        returns_tuple=returns_tuple,
        is_decoder=is_decoder,
    )


def has_modules(block: nn.Module, *paths: str) -> bool:
    """Does `block` have every dotted sub-module path in `paths`?"""
    for p in paths:
        try:
            block.get_submodule(p)
        except AttributeError:
            return False
    return True
