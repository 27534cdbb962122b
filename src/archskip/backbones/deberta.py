"""DeBERTa-v2 / v3 blocks (post-LN, as BERT's; the block returns (hidden, attention weights)).

Both sub-layers end in `Output(h, input_tensor)` = LN(dense(h) + input_tensor); the adapter reads the
sub-layer input and is added before the post-LayerNorm, as for BERT. Registered before `bert`, whose module
paths these blocks also have (told apart by DeBERTa's `query_proj`).

With `conv_kernel_size > 0` (deberta-v2-xlarge/xxlarge) the encoder applies a convolution to the output of
the block at position 0; pruning then keeps every candidate in its place (the frozen weights of skipped blocks
are deleted), so the convolution still follows candidate 0.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, ResidualArgSite, has_modules


@register_family("deberta_v2")
def match(block: nn.Module) -> BlockSpec | None:
    if not has_modules(block, "attention.self.query_proj", "attention.output.LayerNorm", "intermediate",
                       "output.LayerNorm"):
        return None
    config = getattr(block.get_submodule("output"), "config", None)
    return BlockSpec(
        family="deberta_v2",
        parallel=(ResidualArgSite("attn", "attention.output"), ResidualArgSite("mlp", "output")),
        sequential_norm=None,
        input_norm=None,
        returns_tuple=True,
        keep_positions=(getattr(config, "conv_kernel_size", 0) or 0) > 0,
    )
