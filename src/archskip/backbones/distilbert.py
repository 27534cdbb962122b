"""DistilBERT blocks (post-LN): h = sa_layer_norm(attention(x) + x); out = output_layer_norm(ffn(h) + h).

As BERT's: each adapter reads its sub-layer's input (x: the input of `attention`; h: the input of `ffn`) and
is added to the sub-layer's output before the post-LayerNorm: sa_layer_norm(attention(x) + x + a_attn(x)).
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, ParallelSite, has_modules


@register_family("distilbert")
def match(block: nn.Module) -> BlockSpec | None:
    if not has_modules(block, "attention", "sa_layer_norm", "ffn", "output_layer_norm"):
        return None
    return BlockSpec(
        family="distilbert",
        parallel=(ParallelSite("attn", "attention", "attention"), ParallelSite("mlp", "ffn", "ffn")),
        sequential_norm=None,
        input_norm=None,
    )
