"""GPT-2 blocks (pre-LN, sequential): h = x + attn(ln_1(x)); out = h + mlp(ln_2(h)).

The attention adapter reads x (the input of `ln_1`) and is added to the attention output (after GPT-2's
residual dropout, which sits inside `attn`); the MLP adapter reads h (the input of `ln_2`) and is added to
the MLP output. With `add_cross_attention` the cross-attention's residual add happens between the two, so h
is the stream after it.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, has_modules, pre_norm_spec


@register_family("gpt2")
def match(block: nn.Module) -> BlockSpec | None:
    if has_modules(block, "ln_1", "attn", "ln_2", "mlp"):
        return pre_norm_spec("gpt2", "ln_1", "attn", "ln_2", "mlp", is_decoder=True)
    return None
