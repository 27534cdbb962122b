"""What an original METER pretraining checkpoint looks like: its config, its keys, their METERModel names and shapes.

The converter (`convert/meter.py`) checks a checkpoint against these tables before reading any tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from transformers import CLIPVisionConfig, RobertaConfig

from ..meter import METERConfig

ORIGINAL_IMAGE_SIZE = 288  # the pretraining resolution: the checkpoint's position table is 18 x 18 + 1 rows

# OpenAI CLIP ViT-B/16 as METER builds it: one block fewer than CLIP (METER's Transformer builds layers-1 blocks),
# QuickGELU, torch LayerNorm's default eps 1e-5, no attention dropout.
ORIGINAL_VISION_CONFIG: Mapping[str, Any] = MappingProxyType({
    "hidden_size": 768,
    "intermediate_size": 3072,  # 4 * width
    "num_hidden_layers": 11,
    "num_attention_heads": 12,  # width // 64
    "num_channels": 3,
    "patch_size": 16,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
})
"""CLIPVisionConfig kwargs of the original vision tower, without image_size (read-only)."""

# roberta-base as loaded by RobertaModel.from_pretrained("roberta-base").
ORIGINAL_TEXT_CONFIG: Mapping[str, Any] = MappingProxyType({
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 514,  # 512 positions + RoBERTa's padding offset 2
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
})
"""RobertaConfig kwargs of the original text encoder (read-only)."""

# METER builds its cross layers from `RobertaConfig(vocab_size, hidden_size, num_layers, num_heads,
# hidden_size * mlp_ratio, max_text_len, drop_rate, drop_rate)`: layer_norm_eps and hidden_act are the config
# class defaults (1e-12, "gelu"), NOT roberta-base's 1e-5.
ORIGINAL_FUSION_CONFIG: Mapping[str, Any] = MappingProxyType({
    "hidden_size": 768,
    "num_fusion_layers": 6,  # num_top_layer, per stream
    "num_attention_heads": 12,
    "intermediate_size": 3072,  # hidden_size * mlp_ratio 4
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,  # drop_rate
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "modality_type_vocab_size": 2,  # token_type_embeddings [2, 768]: 0 = text, 1 = image
})
"""METERConfig kwargs of the fusion part (read-only)."""

POSITION_KEY = "vit_model.visual.positional_embedding"  # [1 + g*g, Dv]; resized to the config's grid

DROPPED_KEYS = frozenset({
    "text_transformer.embeddings.position_ids",  # [1, 514] int64: non-persistent in transformers >= 4.31
    "text_transformer.pooler.dense.weight",  # METER runs embeddings + encoder layers itself: never used
    "text_transformer.pooler.dense.bias",
    "vit_model.positional_embedding",  # [77, 512]: leftovers of CLIP's text tower, never used
    "vit_model.ln_final.weight",
    "vit_model.ln_final.bias",
})
"""Original keys dropped on purpose. None is required: a checkpoint without them converts the same."""

UNCHECKED_SHAPE_KEYS = frozenset({"vit_model.positional_embedding", "vit_model.ln_final.weight",
                                  "vit_model.ln_final.bias"})
"""Dropped keys whose shapes depend on CLIP's text tower, which the config does not describe: not shape-checked."""

_CLIP_TEXT_CONTEXT, _CLIP_TEXT_WIDTH = 77, 512  # OpenAI ViT-B/16's text tower (the shapes in the real checkpoint)
QKV_NAMES = ("q_proj", "k_proj", "v_proj")  # order of the row blocks of CLIP's fused in_proj


def _config_with(base: Mapping[str, Any], overrides: Any) -> dict[str, Any]:
    """base updated by a dict override (or a config object's to_dict())."""
    if overrides is None:
        return dict(base)
    return {**base, **(overrides if isinstance(overrides, Mapping) else overrides.to_dict())}


def original_meter_config(image_size: int = ORIGINAL_IMAGE_SIZE, **overrides: Any) -> METERConfig:
    """The METERConfig of the original METER-CLIP16-RoBERTa checkpoint at `image_size`, with `overrides` applied.

    `overrides` are METERConfig kwargs; `vision_config` / `text_config` given as dicts are merged into the original
    CLIP / RoBERTa values (so a tiny test config need only name what it changes); a vision `image_size` there wins.
    The three LayerNorm eps differ on purpose: CLIP 1e-5, roberta-base 1e-5, fusion layers 1e-12 (see
    ORIGINAL_FUSION_CONFIG).
    """
    vision = _config_with({**ORIGINAL_VISION_CONFIG, "image_size": image_size}, overrides.pop("vision_config", None))
    text = _config_with(ORIGINAL_TEXT_CONFIG, overrides.pop("text_config", None))
    return METERConfig(vision_config=CLIPVisionConfig(**vision).to_dict(), text_config=RobertaConfig(**text).to_dict(),
                       **{**ORIGINAL_FUSION_CONFIG, **overrides})


# ---- key map ----------------------------------------------------------------------------------------------------------

# Inside one CLIP block: original `vit_model.visual.transformer.resblocks.N.<k>` -> `vision.encoder.layers.N.<v>`.
VISION_BLOCK_KEY_MAP = MappingProxyType({
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
})

_LINEAR = ("weight", "bias")
_BERT_ATTENTION = ("self.query", "self.key", "self.value", "output.dense", "output.LayerNorm")


def _bert_layer_keys(cross: bool) -> list[str]:
    """Parameter names of a post-LN BERT layer (16), with a cross-attention block (26) when `cross`."""
    modules = [f"attention.{m}" for m in _BERT_ATTENTION]
    if cross:
        modules += [f"crossattention.{m}" for m in _BERT_ATTENTION]
    modules += ["intermediate.dense", "output.dense", "output.LayerNorm"]
    return [f"{m}.{p}" for m in modules for p in _LINEAR]


def _text_keys(text: RobertaConfig) -> list[str]:
    """The persistent keys of RobertaModel(add_pooling_layer=False), which METER's `text_transformer` also has."""
    emb = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
           "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    layers = [f"encoder.layer.{i}.{k}" for i in range(text.num_hidden_layers) for k in _bert_layer_keys(cross=False)]
    return emb + layers


def _vision_key_map(vision: CLIPVisionConfig) -> dict[str, tuple[str, ...]]:
    """`vit_model.visual.*` -> `vision.*` (the flat CLIPVisionModel names of transformers 5)."""
    src, dst = "vit_model.visual.", "vision."
    out = {
        f"{src}class_embedding": (f"{dst}embeddings.class_embedding",),  # [Dv]
        f"{src}conv1.weight": (f"{dst}embeddings.patch_embedding.weight",),  # [Dv, C, p, p], no bias in either
        POSITION_KEY: (f"{dst}embeddings.position_embedding.weight",),  # [1 + g*g, Dv], resized to the config
        f"{src}ln_pre.weight": (f"{dst}pre_layrnorm.weight",),  # HF's own spelling
        f"{src}ln_pre.bias": (f"{dst}pre_layrnorm.bias",),
        f"{src}ln_post.weight": (f"{dst}post_layernorm.weight",),
        f"{src}ln_post.bias": (f"{dst}post_layernorm.bias",),
    }
    for i in range(vision.num_hidden_layers):
        s, d = f"{src}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
        out.update({s + k: (d + v,) for k, v in VISION_BLOCK_KEY_MAP.items()})
        for kind in _LINEAR:  # fused [3Dv, Dv] / [3Dv] -> q, k, v row thirds
            out[f"{s}attn.in_proj_{kind}"] = tuple(f"{d}self_attn.{n}.{kind}" for n in QKV_NAMES)
    return out


def meter_key_map(config: METERConfig | None = None) -> dict[str, tuple[str, ...]]:
    """Every backbone key of the original checkpoint -> the METERModel key(s) it becomes.

    A fused `attn.in_proj_{weight,bias}` maps to three keys (q, k, v: its row thirds, in that order). Heads and
    DROPPED_KEYS are not in this map; neither is `token4classifier`, which the original does not have.
    """
    config = config or original_meter_config()
    out = _vision_key_map(CLIPVisionConfig(**config.vision_config))
    out.update({f"text_transformer.{k}": (f"text.{k}",) for k in _text_keys(RobertaConfig(**config.text_config))})
    same = ["cross_modal_text_transform.weight", "cross_modal_text_transform.bias", "cross_modal_image_transform.weight",
            "cross_modal_image_transform.bias", "token_type_embeddings.weight",
            "cross_modal_text_pooler.dense.weight", "cross_modal_text_pooler.dense.bias",
            "cross_modal_image_pooler.dense.weight", "cross_modal_image_pooler.dense.bias"]
    out.update({k: (k,) for k in same})
    n = config.num_fusion_layers
    for i in range(n):  # text side -> fusion.i, image side -> fusion.(n + i)
        for k in _bert_layer_keys(cross=True):
            out[f"cross_modal_text_layers.{i}.{k}"] = (f"fusion.{i}.{k}",)
            out[f"cross_modal_image_layers.{i}.{k}"] = (f"fusion.{n + i}.{k}",)
    return out


# ---- expected shapes --------------------------------------------------------------------------------------------------


def _bert_layer_shapes(h: int, inter: int, cross: bool) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter of a BERT layer of width h and FFN width inter."""
    out: dict[str, tuple[int, ...]] = {}
    for k in _bert_layer_keys(cross):
        module, kind = k.rsplit(".", 1)
        if module.endswith("LayerNorm"):
            out[k] = (h,)
        elif module == "intermediate.dense":
            out[k] = (inter, h) if kind == "weight" else (inter,)
        elif module == "output.dense":
            out[k] = (h, inter) if kind == "weight" else (h,)
        else:  # attention projections
            out[k] = (h, h) if kind == "weight" else (h,)
    return out


def grid_size(config: METERConfig) -> int:
    """Patches per side at the config's image size (HF's CLIPVisionEmbeddings: image_size // patch_size)."""
    return config.vision_config["image_size"] // config.vision_config["patch_size"]


def _vision_shapes(vision: CLIPVisionConfig, grid: int) -> dict[str, tuple[int, ...]]:
    """Expected shape of every `vit_model.visual.*` key; the position table at `grid` x `grid` patches."""
    d, inter, p = vision.hidden_size, vision.intermediate_size, vision.patch_size
    src = "vit_model.visual."
    shapes: dict[str, tuple[int, ...]] = {
        f"{src}class_embedding": (d,),
        f"{src}conv1.weight": (d, vision.num_channels, p, p),
        POSITION_KEY: (grid * grid + 1, d),  # CLS + patch grid
        f"{src}ln_pre.weight": (d,), f"{src}ln_pre.bias": (d,),
        f"{src}ln_post.weight": (d,), f"{src}ln_post.bias": (d,),
    }
    block = {
        "attn.in_proj_weight": (3 * d, d), "attn.in_proj_bias": (3 * d,),  # rows: [q; k; v]
        "attn.out_proj.weight": (d, d), "attn.out_proj.bias": (d,),
        "ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
        "mlp.c_fc.weight": (inter, d), "mlp.c_fc.bias": (inter,),
        "mlp.c_proj.weight": (d, inter), "mlp.c_proj.bias": (d,),
    }
    for i in range(vision.num_hidden_layers):
        shapes.update({f"{src}transformer.resblocks.{i}.{k}": s for k, s in block.items()})
    return shapes


def _text_shapes(text: RobertaConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every `text_transformer.*` backbone key."""
    h = text.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (text.vocab_size, h),
        "embeddings.position_embeddings.weight": (text.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (text.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    layer = _bert_layer_shapes(h, text.intermediate_size, cross=False)
    for i in range(text.num_hidden_layers):
        shapes.update({f"encoder.layer.{i}.{k}": s for k, s in layer.items()})
    return {f"text_transformer.{k}": s for k, s in shapes.items()}


def backbone_shapes(config: METERConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every original backbone key under `config` (the keys of meter_key_map)."""
    vision, text = CLIPVisionConfig(**config.vision_config), RobertaConfig(**config.text_config)
    d = config.hidden_size
    shapes = {**_vision_shapes(vision, grid_size(config)), **_text_shapes(text)}
    shapes.update({
        "cross_modal_text_transform.weight": (d, text.hidden_size), "cross_modal_text_transform.bias": (d,),
        "cross_modal_image_transform.weight": (d, vision.hidden_size), "cross_modal_image_transform.bias": (d,),
        "token_type_embeddings.weight": (config.modality_type_vocab_size, d),
        "cross_modal_text_pooler.dense.weight": (d, d), "cross_modal_text_pooler.dense.bias": (d,),
        "cross_modal_image_pooler.dense.weight": (d, d), "cross_modal_image_pooler.dense.bias": (d,),
    })
    layer = _bert_layer_shapes(d, config.intermediate_size, cross=True)
    for i in range(config.num_fusion_layers):
        for side in ("text", "image"):
            shapes.update({f"cross_modal_{side}_layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


def head_shapes(config: METERConfig) -> dict[str, tuple[int, ...]]:
    """Expected shapes of the pretraining heads (ITM and MLM), kept under their original names."""
    d, v = config.hidden_size, config.text_config["vocab_size"]
    return {
        "itm_score.fc.weight": (2, 2 * d),  # on [text pooled ; image pooled]; row 0: no match, row 1: match
        "itm_score.fc.bias": (2,),
        "mlm_score.bias": (v,),
        "mlm_score.transform.dense.weight": (d, d),
        "mlm_score.transform.dense.bias": (d,),
        "mlm_score.transform.LayerNorm.weight": (d,),
        "mlm_score.transform.LayerNorm.bias": (d,),
        "mlm_score.decoder.weight": (v, d),  # no bias tensor: mlm_score.bias is added separately
    }


def _dropped_shapes(config: METERConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of DROPPED_KEYS; the CLIP text-tower leftovers as in the real (ViT-B/16) checkpoint."""
    text = config.text_config
    h = text["hidden_size"]
    return {
        "text_transformer.embeddings.position_ids": (1, text["max_position_embeddings"]),  # int64 buffer
        "text_transformer.pooler.dense.weight": (h, h),
        "text_transformer.pooler.dense.bias": (h,),
        "vit_model.positional_embedding": (_CLIP_TEXT_CONTEXT, _CLIP_TEXT_WIDTH),
        "vit_model.ln_final.weight": (_CLIP_TEXT_WIDTH,),
        "vit_model.ln_final.bias": (_CLIP_TEXT_WIDTH,),
    }


def expected_original_shapes(config: METERConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Every key of an original METER pretraining checkpoint saved at `config`'s image size, with its shape
    (backbone, heads, dropped). The converter also accepts a position table of another square grid."""
    config = config or original_meter_config()
    return {**backbone_shapes(config), **head_shapes(config), **_dropped_shapes(config)}
