"""Decoder blocks with sandwich norms: Gemma2 and Gemma3 (text).

Block: h = x + post_attention_layernorm(attn(input_layernorm(x)));
       out = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h))).
The attention adapter reads x (the input of `input_layernorm`) and the MLP adapter reads h (the input of
`pre_feedforward_layernorm`); each adds its output to the residual stream, i.e. to the output of the
sub-layer's post-norm (`post_attention_layernorm`, `post_feedforward_layernorm`), not before it. Registered
before `llama`, whose two norm names these blocks also have.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, has_modules, pre_norm_spec


@register_family("gemma2")
def match(block: nn.Module) -> BlockSpec | None:
    if not has_modules(block, "input_layernorm", "self_attn", "post_attention_layernorm",
                       "pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"):
        return None
    return pre_norm_spec("gemma2", "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                         "post_feedforward_layernorm", is_decoder=True)
