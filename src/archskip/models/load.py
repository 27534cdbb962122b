"""Load a pretrained backbone and its tokenizer by hub id or local path (or a random preset).

`name_or_path` may be
- a Hugging Face hub id or a local directory (anything `from_pretrained` accepts);
- an original ViLT or METER Lightning checkpoint (`*.ckpt`; METER if `kind='meter'` or its file name says
  so), converted on load (read with weights_only=True);
- `random:<preset>` (see `presets.PRESETS`): the full-size architecture with random weights.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch

from ..backbones.spec import BackboneError
from ..config import ModelConfig
from .meter import METERModel, load_meter  # (importing it registers METER with AutoConfig)
from .packaged import PACKAGED_MODELS, PACKAGED_TOKENIZERS, packaged_dir
from .presets import PRESET_TOKENIZERS, preset_config


class Loaded(NamedTuple):
    model: torch.nn.Module
    tokenizer: object
    extras: dict  # tensors a converter found besides the backbone (e.g. the ITM head of an original ViLT checkpoint)


def resolve_name(name_or_path: str) -> str:
    """A local directory for `name_or_path` if a packaged copy exists, else the name unchanged."""
    if not name_or_path:
        raise BackboneError("model.name_or_path is empty; give a Hugging Face hub id or a local directory")
    if os.path.exists(name_or_path):
        return name_or_path
    local = packaged_dir(name_or_path, PACKAGED_MODELS)
    if local:
        return local
    if name_or_path.startswith((".", "/", "~")) or name_or_path.endswith(".ckpt"):
        raise BackboneError(f"model path {name_or_path!r} does not exist")
    return name_or_path


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = name_or_path if os.path.exists(name_or_path) else packaged_dir(name_or_path, PACKAGED_TOKENIZERS) or name_or_path
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise BackboneError(f"cannot load a tokenizer from {name_or_path!r}: {_first_line(e)}") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


DECODER_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3_text", "phi",
                 "phi3", "olmo", "olmo2", "smollm3", "granite", "stablelm", "gpt2", "gpt_neox", "falcon", "opt", "gptj"}


def is_decoder_config(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or (not archs and config.model_type in DECODER_TYPES):
        return True
    return bool(getattr(config, "is_decoder", False)) and not getattr(config, "is_encoder_decoder", False)


VLM_TYPES = {"llava", "llava_next", "paligemma", "gemma3", "idefics3", "smolvlm", "qwen2_vl"}
"""Vision-language models whose language model's blocks are the candidates (tested: docs/families.md)."""


def is_vlm_config(config) -> bool:
    """A vision-language model that generates text (a vision tower + a decoder language model): one of VLM_TYPES,
    or another model type transformers loads with AutoModelForImageTextToText that has a vision and a text config."""
    if config.model_type in VLM_TYPES:
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return (config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            and getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None)


def _vision_class(config):
    from transformers import AutoModel, CLIPVisionModel

    # a full CLIP checkpoint: keep only its vision tower
    return CLIPVisionModel if config.model_type in ("clip", "clip_vision_model") else AutoModel


def _build(cls, config, dtype, device: str | None):
    """A model with random weights from a config; on the meta device no memory is used."""
    with torch.device(device) if device else contextlib.nullcontext():
        # the Auto* factories build from a config with `from_config`; concrete model classes take the config
        model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    if isinstance(model, METERModel) and device != "meta":
        model.init_classifier_token()
    return model.to(dtype) if device != "meta" else model


def load_vision(name: str, dtype, device: str | None = None) -> torch.nn.Module:
    """A vision encoder by hub id / local path, or random:<preset>."""
    from transformers import AutoConfig

    if name.startswith("random:"):
        config = preset_config(name.removeprefix("random:"))
        return _build(_vision_class(config), config, dtype, device).eval()
    path = resolve_name(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise BackboneError(f"cannot load a vision model config from {name!r}: {e}") from None
    return _vision_class(config).from_pretrained(path, dtype=dtype).eval()


def _model_class(config, kind: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, ViltModel

    if kind == "auto":
        kind = config.model_type if config.model_type in ("vilt", "meter") else "decoder" if (
            is_vlm_config(config) or is_decoder_config(config)) else "encoder"
    if kind == "decoder" and is_vlm_config(config):  # the VLM with its LM head; its language model's blocks skip
        return AutoModelForImageTextToText
    return {"vilt": ViltModel, "meter": METERModel, "decoder": AutoModelForCausalLM, "encoder": AutoModel}[kind]


def load_pretrained(cfg: ModelConfig, device: str | None = None) -> Loaded:
    """(model, tokenizer, extras) for `cfg`; the model is in eval mode and on the CPU.

    `device="meta"` builds `random:` presets without memory (parameter counts of 7B models)."""
    from transformers import AutoConfig

    dtype = getattr(torch, cfg.dtype)
    name = cfg.name_or_path
    extras: dict = {}
    if name.startswith("random:"):
        preset = name.removeprefix("random:")
        config = preset_config(preset)
        model = _build(_model_class(config, cfg.kind), config, dtype, device)
        tokenizer_name = cfg.tokenizer or PRESET_TOKENIZERS.get(preset)
    elif name.endswith(".ckpt"):  # an original Lightning checkpoint of the paper's models
        if cfg.kind == "meter" or (cfg.kind == "auto" and "meter" in os.path.basename(name).lower()):
            from .convert.meter import load_original_meter

            model, extras = load_original_meter(resolve_name(name), image_size=cfg.image_size or 288)
            tokenizer_name = cfg.tokenizer or "roberta-base"
        else:
            from .convert.vilt import load_original_vilt

            model, extras = load_original_vilt(resolve_name(name))
            tokenizer_name = cfg.tokenizer or "bert-base-uncased"
        model = model.to(dtype)
    else:
        path = resolve_name(name)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise BackboneError(f"model directory {name!r} has no config.json; expected a Hugging Face model directory "
                                "(config.json and the weights, as save_pretrained writes them)")
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:  # (ValueError: a config.json transformers does not recognise)
            raise BackboneError(f"cannot load a model config from {name!r}: {_first_line(e)}") from None
        cls = _model_class(config, cfg.kind)
        if config.model_type == "meter":
            model = load_meter(path, dtype)
        else:
            try:
                model = cls.from_pretrained(path, dtype=dtype)
            except OSError as e:  # no or unreadable weights
                raise BackboneError(f"cannot load the model weights from {name!r}: {_first_line(e)}") from None
        tokenizer_name = cfg.tokenizer or path
    model.config._name_or_path = name
    tokenizer = load_tokenizer(tokenizer_name) if tokenizer_name else None
    if cfg.vision:
        from .lavin import LaVIN

        vision = load_vision(cfg.vision, dtype, device)
        model = LaVIN(model, vision, tokenizer, image_tokens=cfg.image_tokens, projector_hidden=cfg.projector_hidden)
    return Loaded(model.eval(), tokenizer, extras)
