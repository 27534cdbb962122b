"""OPT decoder blocks, pre-LN (`do_layer_norm_before=True`: OPT-125m, 1.3b and larger) or post-LN (OPT-350m).

pre-LN:  h = x + attn(self_attn_layer_norm(x)); out = h + fc2(act(fc1(final_layer_norm(h))))
post-LN: h = self_attn_layer_norm(x + attn(x)); out = final_layer_norm(h + fc2(act(fc1(h))))

pre-LN: the attention adapter reads x (the input of `self_attn_layer_norm`), the MLP adapter reads h (the
input of `final_layer_norm`); they are added to the outputs of `self_attn` and `fc2`.
post-LN (as BERT): the adapters read each sub-layer's input (x: the input of `self_attn`; h: the input of
`fc1`) and are added before the post-LayerNorm: self_attn_layer_norm(x + attn(x) + a_attn(x)). A post-LN
block has no norm before attention, so LaVIN's sequential adapter and skip_norm='block' are refused.
In training, OPT's residual dropout (a function, not a module) also applies to the adapters' outputs.
"""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, ParallelSite, has_modules, pre_norm_spec


@register_family("opt")
def match(block: nn.Module) -> BlockSpec | None:
    if not has_modules(block, "self_attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"):
        return None
    if getattr(block, "do_layer_norm_before", True):
        return pre_norm_spec("opt", "self_attn_layer_norm", "self_attn", "final_layer_norm", "fc2", is_decoder=True)
    return BlockSpec(
        family="opt",
        parallel=(ParallelSite("attn", "self_attn", "self_attn"), ParallelSite("mlp", "fc1", "fc2")),
        sequential_norm=None,
        input_norm=None,
        is_decoder=True,
    )
