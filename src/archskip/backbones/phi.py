"""Decoder blocks with parallel attention + MLP on one shared norm: Phi (phi-1, phi-1.5, phi-2) and StableLM
with `use_parallel_residual=True`: out = x + drop(attn(input_layernorm(x))) + drop(mlp(input_layernorm(x))).

Both adapters read x (the input of `input_layernorm`, the block's input) and are added to the outputs of
`self_attn` and `mlp`. Matched only when the block's children are exactly these (plus dropout), so a block with
another norm is never taken for this layout.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, pre_norm_spec

NAMES = {"input_layernorm", "self_attn", "mlp"}
DROPOUTS = {"resid_dropout", "dropout"}


@register_family("phi")
def match(block: nn.Module) -> BlockSpec | None:
    names = {n for n, _ in block.named_children()}
    if not NAMES <= names or names - NAMES - DROPOUTS:
        return None
    return pre_norm_spec("phi", "input_layernorm", "self_attn", "input_layernorm", "mlp", is_decoder=True)
