"""Backbone families: where a model's skip candidates are and where adapters attach inside a block.

Each family is one file that registers a matcher (`registry.register_family`); the import lines
below register them, in the order they are tried. Model code and loading live in `archskip.models`.
"""

from __future__ import annotations

# isort: off
# Registration order is match order: METER's fusion half-layer has a BERT layer's children plus
# cross-attention, so it is tried before BERT; Gemma2's sandwich-norm block has LLaMA's norm names, so it is
# tried before LLaMA; DeBERTa-v2's block has BERT's module paths, so it is tried before BERT.
from . import meter, gemma2, llama, phi, gpt2, gptj, gpt_neox, opt, falcon, deberta, bert, distilbert, vit, clip  # noqa: F401
# isort: on
from .registry import FAMILIES, find_layers, get_submodule, register_family, spec_for
from .spec import BackboneError, BlockSpec, ParallelSite, ResidualArgSite, pre_norm_spec

__all__ = [
    "FAMILIES", "BackboneError", "BlockSpec", "ParallelSite", "ResidualArgSite", "find_layers", "get_submodule",
    "pre_norm_spec", "register_family", "spec_for",
]
