"""Pieces the vision-language tasks share: text + image batching and ViLT's head shapes."""

from __future__ import annotations

import torch
from torch import nn

from ..data.images import pad_images


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Padded input_ids / attention_mask / token_type_ids (B, T), T <= max_length."""
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    out["token_type_ids"] = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return out


def image_batch(images: list[torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    values, mask = pad_images(images)
    return {f"{prefix}pixel_values": values, f"{prefix}pixel_mask": mask}


def vilt_inputs(batch: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {**{k: batch[k] for k in keys}, "pixel_values": batch[f"{prefix}pixel_values"],
            "pixel_mask": batch[f"{prefix}pixel_mask"]}


def pooled_size(model) -> int:
    """Width of the pooled feature a VL head reads: ViLT's pooler (D), METER's [text ; image] (2D)."""
    return getattr(model.config, "pooled_size", model.config.hidden_size)


def mlp_head(dim_in: int, dim_hidden: int, dim_out: int) -> nn.Sequential:
    """ViLT's classifier: Linear -> LayerNorm -> GELU -> Linear, initialised like its heads (N(0, 0.02))."""
    head = nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.LayerNorm(dim_hidden), nn.GELU(), nn.Linear(dim_hidden, dim_out))
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return head


def example_images(batch_size: int, height: int, width: int) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(batch_size, 3, height, width),
            "pixel_mask": torch.ones(batch_size, height, width, dtype=torch.long)}
