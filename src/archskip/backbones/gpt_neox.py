"""GPT-NeoX / Pythia blocks, with or without `use_parallel_residual`.

parallel:   out = x + drop(attn(input_layernorm(x))) + drop(mlp(post_attention_layernorm(x)))
sequential: h = x + drop(attn(input_layernorm(x))); out = h + drop(mlp(post_attention_layernorm(h)))

The attention adapter reads x (the input of `input_layernorm`); the MLP adapter reads the input of
`post_attention_layernorm`, which is x for parallel blocks and h for sequential ones. Each is added to
its sub-layer's contribution to the residual stream: the output of `post_attention_dropout` /
`post_mlp_dropout` (after the residual dropout). The same sites serve both layouts.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, has_modules, pre_norm_spec


@register_family("gpt_neox")
def match(block: nn.Module) -> BlockSpec | None:
    if has_modules(block, "input_layernorm", "attention", "post_attention_dropout", "post_attention_layernorm",
                   "mlp", "post_mlp_dropout"):
        return pre_norm_spec("gpt_neox", "input_layernorm", "post_attention_dropout", "post_attention_layernorm",
                             "post_mlp_dropout", is_decoder=True)
    return None
