"""Pre-LN vision encoder blocks: ViLT, ViT, DINOv2. The parallel adapter: x + sublayer(LN(x)) + adapter(x)."""

from __future__ import annotations

from torch import nn

from .registry import register_family
from .spec import BlockSpec, has_modules, pre_norm_spec


@register_family("vilt")
def match_vilt(block: nn.Module) -> BlockSpec | None:
    # ViltOutput(h, input_tensor) adds the residual itself; the block returns a tuple
    if has_modules(block, "layernorm_before", "layernorm_after", "attention", "intermediate", "output"):
        return pre_norm_spec("vilt", "layernorm_before", "attention", "layernorm_after", "output", returns_tuple=True)
    return None


@register_family("vit")
def match_vit(block: nn.Module) -> BlockSpec | None:
    if has_modules(block, "layernorm_before", "layernorm_after", "attention", "mlp"):
        return pre_norm_spec("vit", "layernorm_before", "attention", "layernorm_after", "mlp")
    return None


@register_family("dinov2")
def match_dinov2(block: nn.Module) -> BlockSpec | None:
    # the adapter is added to the layer-scaled branch output
    if has_modules(block, "norm1", "attention", "layer_scale1", "norm2", "mlp", "layer_scale2"):
        return pre_norm_spec("dinov2", "norm1", "layer_scale1", "norm2", "layer_scale2")
    return None
