"""The backbone families: name -> a matcher that returns the `BlockSpec` of a block it recognises.

Families are tried in registration order; the first whose matcher returns a spec wins. A new family
is one file that calls `register_family` plus one import line in `backbones/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .spec import BackboneError, BlockSpec

Matcher = Callable[[nn.Module], "BlockSpec | None"]

FAMILIES: dict[str, Matcher] = {}
"""Family name -> matcher, in the order they are tried."""


def register_family(name: str) -> Callable[[Matcher], Matcher]:
    """Decorator: `@register_family("gpt2") def match(block): ...` adds a family."""

    def add(match: Matcher) -> Matcher:
        if name in FAMILIES:
            raise ValueError(f"backbone family {name!r} is already registered")
        FAMILIES[name] = match
        return match

    return add


def spec_for(block: nn.Module) -> BlockSpec:
    for match in FAMILIES.values():
        spec = match(block)
        if spec is not None:
            return spec
    children = ", ".join(name for name, _ in block.named_children())
    raise BackboneError(
        f"don't know where adapters go in a {type(block).__name__} block (children: {children}); "
        f"known block families: {', '.join(FAMILIES)}"
    )


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise BackboneError(f"{type(root).__name__} has no sub-module {path!r}") from None


# Dotted paths of the candidate ModuleList, tried in order when none is given. Vision-language models
# (LLaVA, LLaVA-NeXT, PaliGemma, Qwen2-VL: `model.language_model`; Idefics3, SmolVLM: `model.text_model`) name
# their language model's blocks, so the vision tower's list (often the longer one) is never taken.
KNOWN_LAYER_PATHS = (
    "llm.model.layers", "fusion", "model.language_model.layers", "model.text_model.layers", "language_model.layers",
    "text_model.layers", "model.layers", "layers", "model.decoder.layers", "decoder.layers",
    "encoder.layer", "encoder.layers", "model.encoder.layer", "transformer.h", "h",
)


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


def layers_config(model: nn.Module, path: str):
    """The config that describes the blocks at `path` (their number, their per-layer lists, their width): that of
    the nearest module above the list that has one. For a vision-language model it is the language model's
    config (the same object as `config.text_config`), not the composite config; for other models it is the
    model's own config. None if no module on the path has a config."""
    parts = path.split(".") if path else []
    for i in range(len(parts) - 1, -1, -1):
        cfg = getattr(get_submodule(model, ".".join(parts[:i])) if i else model, "config", None)
        if cfg is not None:
            return cfg
    return None
