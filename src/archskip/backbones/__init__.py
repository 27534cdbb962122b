"""Backbone families: where a model's skip candidates are and where adapters attach inside a block.

A family module (hf_encoder, hf_decoder, ...) offers `match(block) -> BlockSpec | None`. The spec
names sub-modules of one block; `skipping.SkippableLayer` attaches adapters there with hooks, so
the frozen block keeps its class, its code and its parameter names.
"""

from __future__ import annotations

from torch import nn

from . import hf_decoder, hf_encoder, meter
from .spec import BackboneError, BlockSpec, ParallelSite, ResidualArgSite

__all__ = ["BackboneError", "BlockSpec", "ParallelSite", "ResidualArgSite", "find_layers", "spec_for"]


FAMILIES = (meter, hf_decoder, hf_encoder)

# Dotted paths of the candidate ModuleList, tried in order when none is given.
KNOWN_LAYER_PATHS = (
    "llm.model.layers", "fusion", "model.layers", "layers", "model.decoder.layers", "decoder.layers",
    "encoder.layer", "encoder.layers", "model.encoder.layer", "transformer.h", "h",
)


def spec_for(block: nn.Module) -> BlockSpec:
    for fam in FAMILIES:
        spec = fam.match(block)
        if spec is not None:
            return spec
    children = ", ".join(name for name, _ in block.named_children())
    raise BackboneError(
        f"don't know where adapters go in a {type(block).__name__} block (children: {children}); "
        "supported: LLaMA-like decoders, BERT/RoBERTa, ViT/ViLT and DINOv2 blocks"
    )


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise BackboneError(f"{type(root).__name__} has no sub-module {path!r}") from None


def find_layers(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The ModuleList of candidate blocks: at `path` if given, else a known path, else the longest
    ModuleList of same-class modules."""
    if path:
        mlist = get_submodule(model, path)
        if not isinstance(mlist, nn.ModuleList):
            raise BackboneError(f"{path!r} in {type(model).__name__} is a {type(mlist).__name__}, not a ModuleList of blocks")
        return path, mlist
    for p in KNOWN_LAYER_PATHS:
        try:
            m = model.get_submodule(p)
        except AttributeError:
            continue
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            return p, m
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(x) for x in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise BackboneError(f"found no ModuleList of blocks in {type(model).__name__}; pass layers='path.to.list'")
    return best
