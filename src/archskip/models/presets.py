"""Named architectures for `random:<name>` models: full-size configs with random weights, for FLOP and
latency measurements (and parameter counts on the meta device) without downloading anything."""

from __future__ import annotations

from ..backbones.spec import BackboneError


def _vilt_b32():
    from .convert.vilt import original_vilt_config

    # ViLT-B/32 as the paper fine-tunes it: 384-px position grid, 32-px patches, 40 text positions
    return original_vilt_config()


def _bert_base():
    from transformers import BertConfig

    return BertConfig()


def _minilm_l6():
    from transformers import BertConfig

    return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


def _llama_7b():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
                       architectures=["LlamaForCausalLM"])


def _smollm2_135m():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, rope_theta=100000.0, architectures=["LlamaForCausalLM"])


def _clip_vit_l14():
    from transformers import CLIPVisionConfig

    # OpenAI CLIP ViT-L/14 (224 px), LaVIN's vision encoder
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")


def _dinov2_small():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518)


def _meter():
    from .convert.meter_layout import original_meter_config

    # METER-CLIP16-RoBERTa as the paper fine-tunes it (288-px position grid; other sizes are interpolated)
    return original_meter_config(288)


PRESETS = {
    "meter": _meter,
    "clip-vit-l14": _clip_vit_l14,
    "dinov2-small": _dinov2_small,
    "vilt-b32": _vilt_b32,
    "bert-base": _bert_base,
    "minilm-l6": _minilm_l6,
    "llama-7b": _llama_7b,
    "smollm2-135m": _smollm2_135m,
}
# the tokenizer each preset's vocabulary belongs to (hub id; packaged copies are used when present)
PRESET_TOKENIZERS = {"meter": "roberta-base", "vilt-b32": "bert-base-uncased", "bert-base": "bert-base-uncased", "minilm-l6": "bert-base-uncased"}


def preset_config(name: str):
    if name not in PRESETS:
        raise BackboneError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()
