"""METER's co-attention fusion half-layer (post-LN): self-attention, cross-attention, FFN (docs/meter.md).

Three parallel adapters: beside self- and cross-attention, added before their post-LayerNorm
(`LN(dense(a) + h + adapter(h))`), and beside the FFN, added after its LayerNorm. The forward pairs
text and image half-layers by index, so pruning keeps every place.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, ParallelSite, ResidualArgSite, has_modules


@register_family("meter")
def match(block: nn.Module) -> BlockSpec | None:
    # by class name: a BERT decoder layer with cross-attention has the same children but a compact list
    if type(block).__name__ != "FusionLayer" or not has_modules(block, "attention.output", "crossattention.output"):
        return None
    return BlockSpec(
        family="meter",
        parallel=(ResidualArgSite("attn", "attention.output"), ResidualArgSite("cross", "crossattention.output"),
                  ParallelSite("ffn", "intermediate", "output")),
        sequential_norm=None,
        input_norm=None,
        keep_positions=True,
    )
