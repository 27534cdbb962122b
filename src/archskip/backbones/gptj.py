"""GPT-J blocks (pre-LN, parallel attention + MLP): out = x + attn(ln_1(x)) + mlp(ln_1(x)).

Both adapters read x (the input of `ln_1`, the block's input) and are added to the attention and MLP
outputs, so out = x + attn + a_attn(x) + mlp + a_mlp(x).
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, has_modules, pre_norm_spec


@register_family("gptj")
def match(block: nn.Module) -> BlockSpec | None:
    names = {n for n, _ in block.named_children()}
    if not has_modules(block, "ln_1", "attn", "mlp") or "ln_2" in names:
        return None
    return pre_norm_spec("gptj", "ln_1", "attn", "ln_1", "mlp", is_decoder=True)
