"""What the generic code may ask of a backbone, declared once instead of probed with `hasattr`.

Hugging Face models are used as they are; the models archskip builds itself (METER, LaVIN) subclass
`BackboneModel` and override what differs. The functions below answer for any backbone.
"""

from __future__ import annotations

import torch
from torch import nn


class BackboneModel(nn.Module):
    """Base of the models archskip builds itself."""

    generate_returns_prompt: bool = True
    """`generate` returns the prompt followed by the new tokens (as Hugging Face decoders do); False when it
    generates from input embeddings and returns the new tokens only (LaVIN)."""

    def trainable_names(self) -> list[str]:
        """Names of parameters outside the candidate blocks that always train (e.g. LaVIN's projector)."""
        return []

    def checkpointing_module(self) -> nn.Module:
        """The Hugging Face model whose `gradient_checkpointing_enable` recomputes the frozen blocks."""
        return self

    def inserted_tokens(self, input_ids: torch.Tensor, has_image: torch.Tensor | None) -> torch.Tensor:
        """(B,) positions the model inserts after each row's first token (LaVIN: its prefix and image tokens), so
        that its output at input position t >= 1 sits at t + this; zeros for a model that inserts none."""
        return no_inserts(input_ids)


def no_inserts(input_ids: torch.Tensor) -> torch.Tensor:
    """(B,) zeros: what a model that inserts no tokens (every plain Hugging Face model) inserts per row."""
    return torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device)


def trainable_names(base: nn.Module) -> list[str]:
    return base.trainable_names() if isinstance(base, BackboneModel) else []


def generate_returns_prompt(base: nn.Module) -> bool:
    return base.generate_returns_prompt if isinstance(base, BackboneModel) else True


def inserted_tokens(base: nn.Module, batch: dict) -> torch.Tensor:
    """(B,) tokens `base` inserts after each row's first token of a batch ({input_ids, [has_image]})."""
    if isinstance(base, BackboneModel):
        return base.inserted_tokens(batch["input_ids"], batch.get("has_image"))
    return no_inserts(batch["input_ids"])


def checkpointing_module(base: nn.Module) -> nn.Module:
    return base.checkpointing_module() if isinstance(base, BackboneModel) else base
