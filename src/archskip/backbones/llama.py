"""Decoder blocks with LLaMA's layout: LLaMA, Mistral, Qwen2, Qwen3, Gemma, Phi3, StableLM (sequential
residual), SmolLM2, and MoE decoders whose block has this layout (Mixtral, Qwen2-MoE: the sparse MoE is the
block's `mlp`, the whole block is the candidate).

Block: h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h)).
The attention adapter reads x (the input of `input_layernorm`) and is added to the attention output; the MLP
adapter reads h (the input of `post_attention_layernorm`) and is added to the MLP output.
LaVIN's sequential adapter sits on the output of `input_layernorm` (docs/lavin.md).

A block with further norms among its children (Gemma2/Gemma3's sandwich norms, see `gemma2.py`) is not this
layout: its sub-layer outputs are normalised again before the residual add, so it is not matched here.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, pre_norm_spec

NAMES = {"input_layernorm", "post_attention_layernorm", "self_attn", "mlp"}


@register_family("llama")
def match(block: nn.Module) -> BlockSpec | None:
    names = {n for n, _ in block.named_children()}
    if not NAMES <= names or any("norm" in n.lower() for n in names - NAMES):
        return None
    return pre_norm_spec("llama", "input_layernorm", "self_attn", "post_attention_layernorm", "mlp", is_decoder=True)
