"""Decoder blocks with LLaMA's layout (LLaMA, Qwen2, Mistral, SmolLM2...).

Block: h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h)).
LaVIN's sequential adapter sits on the output of `input_layernorm` (docs/lavin.md).
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, pre_norm_spec


@register_family("llama")
def match(block: nn.Module) -> BlockSpec | None:
    names = {n for n, _ in block.named_children()}
    if {"input_layernorm", "post_attention_layernorm", "self_attn", "mlp"} <= names:
        return pre_norm_spec("llama", "input_layernorm", "self_attn", "post_attention_layernorm", "mlp", is_decoder=True)
    return None
