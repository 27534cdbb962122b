"""Falcon decoder blocks in their three layouts (the block returns (hidden, attention weights)).

- parallel, one norm (Falcon-7B; `parallel_attn`): out = x + attn(input_layernorm(x)) + mlp(input_layernorm(x));
- parallel, two norms (Falcon-40B/180B; `new_decoder_architecture`): out = x + attn(ln_attn(x)) + mlp(ln_mlp(x));
- sequential (`parallel_attn=False`): h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h)).

The attention adapter reads x (the input of the attention's norm); the MLP adapter reads the input of the MLP's
norm (x for the parallel layouts, h for the sequential one). They are added to the outputs of
`self_attention` and `mlp`.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, has_modules, pre_norm_spec


@register_family("falcon")
def match(block: nn.Module) -> BlockSpec | None:
    if not has_modules(block, "self_attention", "mlp"):
        return None
    if has_modules(block, "ln_attn", "ln_mlp"):
        attn_norm, mlp_norm = "ln_attn", "ln_mlp"
    elif has_modules(block, "input_layernorm", "post_attention_layernorm"):
        attn_norm, mlp_norm = "input_layernorm", "post_attention_layernorm"
    elif has_modules(block, "input_layernorm"):
        attn_norm = mlp_norm = "input_layernorm"
    else:
        return None
    return pre_norm_spec("falcon", attn_norm, "self_attention", mlp_norm, "mlp", is_decoder=True, returns_tuple=True)
