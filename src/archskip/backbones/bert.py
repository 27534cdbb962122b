"""Post-LN encoder blocks: BERT, RoBERTa, MiniLM, ELECTRA, XLM-R.

Both sub-layers end in `Output(h, input_tensor)` = LN(dense(h) + input_tensor); the parallel adapter
reads the sub-layer input and is added before the post-LayerNorm: `LN(dense(h) + x + adapter(x))`.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, ResidualArgSite, has_modules


@register_family("bert")
def match(block: nn.Module) -> BlockSpec | None:
    if not has_modules(block, "attention.output.LayerNorm", "intermediate", "output.LayerNorm"):
        return None
    return BlockSpec(
        family="bert",
        parallel=(ResidualArgSite("attn", "attention.output"), ResidualArgSite("mlp", "output")),
        sequential_norm=None,
        input_norm=None,
    )
