"""Encoder blocks of Hugging Face models: BERT/RoBERTa/MiniLM (post-LN), ViT/ViLT and DINOv2 (pre-LN).

Where the paper's parallel adapters go (das-reference §1.2, §1.3):
- post-LN (BERT-style, as METER's fusion layers): `LN(dense(h) + x + adapter(x))`, i.e. the adapter
  reads the sub-layer input x and is added before the post-LayerNorm;
- pre-LN (ViT/ViLT/DINOv2): `x + sublayer(LN(x)) + adapter(x)`.
"""

from __future__ import annotations

from torch import nn

from .hf_decoder import pre_norm_spec
from .spec import BlockSpec, ParallelSite, ResidualArgSite


def _has(block: nn.Module, *paths: str) -> bool:
    for p in paths:
        try:
            block.get_submodule(p)
        except AttributeError:
            return False
    return True


def match(block: nn.Module) -> BlockSpec | None:
    if _has(block, "attention.output.LayerNorm", "intermediate", "output.LayerNorm"):
        # BERT, RoBERTa, MiniLM, ELECTRA, XLM-R: both sub-layers end in `Output(h, input_tensor)`
        return BlockSpec(
            family="bert",
            parallel=(ResidualArgSite("attn", "attention.output"), ResidualArgSite("mlp", "output")),
            sequential_norm=None,
            input_norm=None,
        )
    if _has(block, "layernorm_before", "layernorm_after", "attention", "intermediate", "output"):
        # ViLT: ViltOutput(h, input_tensor) adds the residual itself; the block returns a tuple
        return BlockSpec(
            family="vilt",
            parallel=(ParallelSite("attn", "layernorm_before", "attention"), ParallelSite("mlp", "layernorm_after", "output")),
            sequential_norm="layernorm_before",
            input_norm="layernorm_before",
            returns_tuple=True,
        )
    if _has(block, "layernorm_before", "layernorm_after", "attention", "mlp"):
        return BlockSpec(
            family="vit",
            parallel=(ParallelSite("attn", "layernorm_before", "attention"), ParallelSite("mlp", "layernorm_after", "mlp")),
            sequential_norm="layernorm_before",
            input_norm="layernorm_before",
        )
    if _has(block, "layer_norm1", "self_attn", "layer_norm2", "mlp"):
        # CLIP / SigLIP vision and text towers
        return pre_norm_spec("clip", "layer_norm1", "self_attn", "layer_norm2", "mlp")
    if _has(block, "norm1", "attention", "layer_scale1", "norm2", "mlp", "layer_scale2"):
        return BlockSpec(
            family="dinov2",
            parallel=(ParallelSite("attn", "norm1", "layer_scale1"), ParallelSite("mlp", "norm2", "layer_scale2")),
            sequential_norm="norm1",
            input_norm="norm1",
        )
    return None
