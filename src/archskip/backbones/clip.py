"""CLIP / SigLIP vision and text tower blocks (pre-LN): x + attn(layer_norm1(x)), then h + mlp(layer_norm2(h))."""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, has_modules, pre_norm_spec


@register_family("clip")
def match(block: nn.Module) -> BlockSpec | None:
    if has_modules(block, "layer_norm1", "self_attn", "layer_norm2", "mlp"):
        return pre_norm_spec("clip", "layer_norm1", "self_attn", "layer_norm2", "mlp")
    return None
