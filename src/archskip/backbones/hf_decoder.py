"""Decoder blocks of Hugging Face causal LMs with LLaMA's layout (LLaMA, Qwen2, Mistral, SmolLM2...).

Block: h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h)).
LaVIN's sequential adapter sits on the output of `input_layernorm` (das-reference §1.4).

Skipped layers must not leave holes in the KV cache: the cache is indexed by each attention's
`layer_idx`, and `cache.get_seq_length()` reads slot 0. So the layers that run are renumbered
0..n-1, and a pruned model's config lists only the layers it still has.
"""

from __future__ import annotations

from torch import nn

from .spec import BlockSpec, ParallelSite


def match(block: nn.Module) -> BlockSpec | None:
    names = {n for n, _ in block.named_children()}
    if {"input_layernorm", "post_attention_layernorm", "self_attn", "mlp"} <= names:
        return pre_norm_spec("llama", "input_layernorm", "self_attn", "post_attention_layernorm", "mlp", is_decoder=True)
    return None


def pre_norm_spec(family: str, norm1: str, attn: str, norm2: str, mlp: str, *, is_decoder: bool = False) -> BlockSpec:
    """x + attn(norm1(x)), then h + mlp(norm2(h)): LLaMA-like decoders and CLIP-like encoders."""
    return BlockSpec(
        family=family,
        parallel=(ParallelSite("attn", norm1, attn), ParallelSite("mlp", norm2, mlp)),
        sequential_norm=norm1,
        input_norm=norm1,
        is_decoder=is_decoder,
    )


def set_cache_slot(block: nn.Module, slot: int) -> None:
    """Point every `layer_idx` inside `block` (its attention's KV-cache slot) at `slot`."""
    for m in block.modules():
        if isinstance(getattr(m, "layer_idx", None), int):
            m.layer_idx = slot


def shrink_config(config, keep: tuple[int, ...]) -> None:
    """Make a model config describe only the kept layers (num_hidden_layers, per-layer types)."""
    config.num_hidden_layers = len(keep)
    for key in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) > max(keep, default=-1):
            setattr(config, key, [value[i] for i in keep])
