"""Convert the original ViLT Lightning checkpoint (dandelin/ViLT, `vilt_200k_mlm_itm.ckpt`) to HF `ViltModel`.

DAS starts from this checkpoint, not from the Hugging Face hub copy, so archskip reads it directly. The original
module is a timm ViT-B/32 (`transformer.*`) plus BERT text embeddings and its own heads; HF's `ViltModel` holds the
same tensors under other names and with the fused `qkv` projection split into query/key/value.

Safety: the file is read with `torch.load(..., weights_only=True)` only. A checkpoint that needs arbitrary Python
objects to unpickle is refused, since unpickling them can run any code the file's author chose.

The original checkpoint has 167 keys; docs/vilt.md lists how they map.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor
from transformers import ViltConfig, ViltModel

from .checkpoint import CheckpointError, check_keys, load_strict, read_checkpoint, state_dict_of

__all__ = [
    "DROPPED_KEYS",
    "ORIGINAL_TEXT_LAYER_NORM_EPS",
    "ORIGINAL_VILT_CONFIG",
    "ORIGINAL_VIT_LAYER_NORM_EPS",
    "CheckpointError",
    "convert_vilt_state_dict",
    "expected_original_shapes",
    "load_original_vilt",
    "original_vilt_config",
    "rank_output_from_itm",
    "vilt_key_map",
]




# The timm ViT LayerNorms (blocks' norm1/norm2 and the final norm) use eps 1e-6; BERT's text-embedding
# LayerNorm uses BertConfig's default 1e-12. HF ViltConfig has ONE `layer_norm_eps` for all of them.
ORIGINAL_VIT_LAYER_NORM_EPS = 1e-6
ORIGINAL_TEXT_LAYER_NORM_EPS = 1e-12

ORIGINAL_VILT_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "image_size": 384,
        "patch_size": 32,
        "num_channels": 3,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,  # hidden_size * mlp_ratio 4
        "hidden_act": "gelu",  # timm nn.GELU: exact erf GELU
        "max_position_embeddings": 40,  # max_text_len
        "vocab_size": 30522,  # bert-base-uncased
        "type_vocab_size": 2,  # BertEmbeddings.token_type_embeddings [2, 768]
        "modality_type_vocab_size": 2,  # token_type_embeddings [2, 768]: 0 = text, 1 = image
        "qkv_bias": True,
        "layer_norm_eps": ORIGINAL_VIT_LAYER_NORM_EPS,  # 25 of the 26 LayerNorms; see original_vilt_config
        "hidden_dropout_prob": 0.1,  # drop_rate; only matters in training
        "attention_probs_dropout_prob": 0.0,  # timm attn_drop_rate default
        "max_image_length": -1,  # keep every valid patch (see original_vilt_config)
        "tie_word_embeddings": False,  # the original MLM decoder is its own tensor
    }
)
"""ViltConfig kwargs of the original ViLT-B/32 checkpoint (read-only; build a config with `original_vilt_config`)."""

DROPPED_KEYS = frozenset({"text_embeddings.position_ids"})
"""Original keys dropped on purpose: position_ids [1, 40] int64 is a non-persistent buffer in transformers >= 4.31."""

QKV_NAMES = ("query", "key", "value")  # order of the row blocks of the fused timm qkv projection


def original_vilt_config(**overrides: Any) -> ViltConfig:
    """The transformers ViltConfig of the original ViLT-B/32 checkpoint, with `overrides` applied.

    Unavoidable differences from the original module:
    - HF uses one `layer_norm_eps` for every LayerNorm. It is 1e-6 here (the 25 timm ViT LayerNorms); the original
      text-embedding LayerNorm used 1e-12. `load_original_vilt` sets that one module's eps back to 1e-12 on the
      instance; the config cannot record it, so a model saved and reloaded through the config gets 1e-6 there
      (an effect far below fp32 noise for normal embedding variances, but not bit-exact).
    - The pretraining run sampled at most 200 image patches (`max_image_len=200` in task_mlm_itm); the original
      default, used for fine-tuning, is -1 (all patches), which is what this config keeps. At 384x384 there are only
      144 patches, so both agree there.
    """
    return ViltConfig(**{**ORIGINAL_VILT_CONFIG, **overrides})


def _fixed_key_map() -> dict[str, str]:
    """Original key -> HF ViltModel key for the tensors outside the transformer blocks."""
    text = ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
            "LayerNorm.weight", "LayerNorm.bias")
    fixed = {f"text_embeddings.{k}": f"embeddings.text_embeddings.{k}" for k in text}
    fixed.update({
        "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",  # modality type [2, H]
        "transformer.cls_token": "embeddings.cls_token",  # [1, 1, H]
        "transformer.pos_embed": "embeddings.position_embeddings",  # [1, (S/P)^2 + 1, H], the same 3-D parameter
        "transformer.patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",  # [H, C, P, P]
        "transformer.patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "transformer.norm.weight": "layernorm.weight",
        "transformer.norm.bias": "layernorm.bias",
        "pooler.dense.weight": "pooler.dense.weight",
        "pooler.dense.bias": "pooler.dense.bias",
    })
    return fixed


# Inside one block: original `transformer.blocks.N.<k>` -> HF `encoder.layer.N.<v>` (qkv handled separately).
BLOCK_KEY_MAP = MappingProxyType({
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "intermediate.dense.weight",
    "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight",
    "mlp.fc2.bias": "output.dense.bias",
})


def vilt_key_map(config: ViltConfig | None = None) -> dict[str, tuple[str, ...]]:
    """Every backbone key of the original checkpoint -> the HF ViltModel key(s) it becomes.

    A fused `attn.qkv.{weight,bias}` maps to three keys (query, key, value: its row thirds, in that order).
    Heads and DROPPED_KEYS are not in this map.
    """
    config = config or original_vilt_config()
    out = {k: (v,) for k, v in _fixed_key_map().items()}
    for i in range(config.num_hidden_layers):
        src, dst = f"transformer.blocks.{i}.", f"encoder.layer.{i}."
        out.update({src + k: (dst + v,) for k, v in BLOCK_KEY_MAP.items()})
        for kind in ("weight", "bias"):
            out[f"{src}attn.qkv.{kind}"] = tuple(f"{dst}attention.attention.{n}.{kind}" for n in QKV_NAMES)
    return out


def _backbone_shapes(config: ViltConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every original backbone key under `config`."""
    h, inter, v = config.hidden_size, config.intermediate_size, config.vocab_size
    p, grid = config.patch_size, config.image_size // config.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "text_embeddings.word_embeddings.weight": (v, h),
        "text_embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "text_embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "text_embeddings.LayerNorm.weight": (h,),
        "text_embeddings.LayerNorm.bias": (h,),
        "token_type_embeddings.weight": (config.modality_type_vocab_size, h),
        "transformer.cls_token": (1, 1, h),
        "transformer.pos_embed": (1, grid * grid + 1, h),  # CLS + patch grid
        "transformer.patch_embed.proj.weight": (h, config.num_channels, p, p),
        "transformer.patch_embed.proj.bias": (h,),
        "transformer.norm.weight": (h,),
        "transformer.norm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    block = {
        "norm1.weight": (h,), "norm1.bias": (h,), "norm2.weight": (h,), "norm2.bias": (h,),
        "attn.qkv.weight": (3 * h, h), "attn.qkv.bias": (3 * h,),  # rows: [query; key; value]
        "attn.proj.weight": (h, h), "attn.proj.bias": (h,),
        "mlp.fc1.weight": (inter, h), "mlp.fc1.bias": (inter,),
        "mlp.fc2.weight": (h, inter), "mlp.fc2.bias": (h,),
    }
    for i in range(config.num_hidden_layers):
        shapes.update({f"transformer.blocks.{i}.{k}": s for k, s in block.items()})
    return shapes


def _head_shapes(config: ViltConfig) -> dict[str, tuple[int, ...]]:
    """Expected shapes of the pretraining heads (ITM and MLM), kept under their original names."""
    h, v = config.hidden_size, config.vocab_size
    return {
        "itm_score.fc.weight": (2, h),  # row 0: no match, row 1: match
        "itm_score.fc.bias": (2,),
        "mlm_score.bias": (v,),
        "mlm_score.transform.dense.weight": (h, h),
        "mlm_score.transform.dense.bias": (h,),
        "mlm_score.transform.LayerNorm.weight": (h,),
        "mlm_score.transform.LayerNorm.bias": (h,),
        "mlm_score.decoder.weight": (v, h),  # no bias tensor: mlm_score.bias is added separately
    }


def expected_original_shapes(config: ViltConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Every key of an original ViLT pretraining checkpoint under `config`, with its shape (backbone, heads, dropped)."""
    config = config or original_vilt_config()
    shapes = _backbone_shapes(config)
    shapes.update(_head_shapes(config))
    shapes["text_embeddings.position_ids"] = (1, config.max_position_embeddings)  # int64 buffer, dropped
    return shapes


def _check_keys(keys: set[str], config: ViltConfig, require_heads: bool) -> None:
    check_keys(keys, set(_backbone_shapes(config)), set(_head_shapes(config)), DROPPED_KEYS, require_heads=require_heads,
               what="an original ViLT pretraining checkpoint for this config "
                    f"({config.num_hidden_layers} layers, hidden {config.hidden_size})")


def _check_shapes(original: Mapping[str, Tensor], config: ViltConfig) -> None:
    """Raise CheckpointError naming every key whose shape differs from the one `config` implies."""
    expected = expected_original_shapes(config)
    bad = [
        f"{k}: expected {list(expected[k])}, got {list(t.shape)}"
        for k, t in original.items()
        if tuple(t.shape) != expected[k]
    ]
    if bad:
        raise CheckpointError(f"{len(bad)} shape mismatch(es) against the ViLT config: " + "; ".join(bad))


def convert_vilt_state_dict(
    original: Mapping[str, Tensor], config: ViltConfig | None = None, *, require_heads: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(backbone_state, heads): the original state dict in HF `ViltModel` names, and the pretraining heads.

    backbone_state has exactly the persistent keys of `ViltModel(config)` (no "vilt." prefix). heads keeps
    `itm_score.fc.{weight,bias}` and `mlm_score.*` under their original names. Keys and shapes are checked first,
    and nothing reads tensor data, so meta tensors work. Split q/k/v are copies (clone), so the result holds no
    two tensors sharing storage (safetensors refuses those); every other tensor is the input object itself.
    With require_heads=False the heads may be absent (whatever is present is still checked and returned).
    """
    config = config or original_vilt_config()
    _check_keys(set(original), config, require_heads)
    _check_shapes(original, config)
    backbone: dict[str, Tensor] = {}
    for src, dsts in vilt_key_map(config).items():
        if len(dsts) == 1:
            backbone[dsts[0]] = original[src]
        else:  # fused qkv: [3H, H] or [3H] -> three [H, H] or [H] row blocks
            parts = original[src].split(config.hidden_size, dim=0)
            backbone.update({d: part.clone() for d, part in zip(dsts, parts)})
    heads = {k: original[k] for k in _head_shapes(config) if k in original}
    return backbone, heads


def load_original_vilt(
    path: str | os.PathLike[str],
    config: ViltConfig | None = None,
    *,
    text_layer_norm_eps: float | None = ORIGINAL_TEXT_LAYER_NORM_EPS,
) -> tuple[ViltModel, dict[str, Tensor]]:
    """(ViltModel in eval mode, heads) from an original ViLT `.ckpt` (Lightning dict or bare state dict).

    `text_layer_norm_eps` (default 1e-12, the original BertEmbeddings value) is set on the text-embedding
    LayerNorm instance, because ViltConfig has a single eps (1e-6 here, the ViT value); None keeps the config's.
    """
    config = config or original_vilt_config()
    original = state_dict_of(read_checkpoint(path, "vilt_state_dict.pt"), path)
    backbone, heads = convert_vilt_state_dict(original, config)
    model = ViltModel(config)
    load_strict(model, backbone)
    if text_layer_norm_eps is not None:
        model.embeddings.text_embeddings.LayerNorm.eps = text_layer_norm_eps
    return model.eval(), heads


def rank_output_from_itm(heads: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(weight [1, H], bias [1]) for the retrieval head: the "match" row 1 of the ITM head, as ViLT/DAS initialise
    `rank_output` (`itm_score.fc.weight[1:]`, `itm_score.fc.bias[1:]`). Copies, so training it leaves heads intact."""
    missing = [k for k in ("itm_score.fc.weight", "itm_score.fc.bias") if k not in heads]
    if missing:
        raise CheckpointError(f"no ITM head to initialise rank_output from; missing {', '.join(missing)}")
    w, b = heads["itm_score.fc.weight"], heads["itm_score.fc.bias"]  # [2, H], [2]
    if w.dim() != 2 or w.shape[0] != 2 or tuple(b.shape) != (2,):
        raise CheckpointError(f"ITM head must be weight [2, H] and bias [2]; got {list(w.shape)} and {list(b.shape)}")
    return w[1:2].clone(), b[1:2].clone()  # [1, H], [1]
