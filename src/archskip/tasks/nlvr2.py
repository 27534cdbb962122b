"""NLVR2: is the sentence true of the image pair? Two ViLT passes, one per image, their pooled
features concatenated into a 2-way classifier (docs/vilt.md).

The second image is marked with a third modality token type, initialised as a copy of the image
row (as ViLT and DAS do); it is trainable with the other token-type embeddings.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TaskConfig
from ..data.images import ImageSpec
from ..data.vilt_arrow import NLVR2Dataset
from ..skipping import SkipModel
from .registry import register_task
from .vl import (
    VisionLanguageTask,
    encode_texts,
    example_images,
    image_batch,
    image_spec,
    image_spec_from_info,
    mlp_head,
    pooled_size,
    vilt_inputs,
)


def add_image_token_type(base: nn.Module) -> None:
    """Grow the modality embedding (ViLT, METER) from [text, image] to [text, image, image 2]; row 2 := row 1."""
    owner = base.embeddings if hasattr(base, "embeddings") and hasattr(base.embeddings, "token_type_embeddings") else base
    emb = owner.token_type_embeddings
    if emb.num_embeddings >= 3:
        return
    grown = nn.Embedding(3, emb.embedding_dim).to(device=emb.weight.device, dtype=emb.weight.dtype)
    with torch.no_grad():
        grown.weight[:2] = emb.weight
        grown.weight[2] = emb.weight[1]
    grown.weight.requires_grad_(emb.weight.requires_grad)
    owner.token_type_embeddings = grown
    base.config.modality_type_vocab_size = 3


@register_task
class NLVR2(VisionLanguageTask):
    name = "nlvr2"

    def __init__(self, tokenizer, max_length: int = 40, image: ImageSpec = ImageSpec()):
        self.tokenizer, self.max_length, self.image = tokenizer, max_length, image

    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> NLVR2:
        return cls(tokenizer, cfg.max_length, image_spec(cfg))

    @classmethod
    def from_info(cls, info: dict, tokenizer) -> NLVR2:
        return cls(tokenizer, info["max_length"], image_spec_from_info(info.get("image")))

    @classmethod
    def make_dataset(cls, root, names, transform, *, train, num_answers=3129, negatives=0):
        return NLVR2Dataset(root, names, transform)

    def prepare_backbone(self, base) -> None:
        add_image_token_type(base)

    def attach_head(self, model: SkipModel, extras: dict | None = None) -> None:
        d = model.config.hidden_size  # two passes concatenated: ViLT 1536 -> 1536, METER 3072 -> 1536
        model.head = mlp_head(2 * pooled_size(model), 2 * d, 2).to(next(model.base.parameters()).device)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return {**encode_texts(self.tokenizer, [e["text"] for e in examples], self.max_length),
                **image_batch([e["image_0"] for e in examples], "0_"), **image_batch([e["image_1"] for e in examples], "1_"),
                "labels": torch.tensor([e.get("label", 0) for e in examples])}

    def logits(self, model: SkipModel, batch: dict) -> torch.Tensor:
        pooled = [model(**vilt_inputs(batch, f"{i}_"), image_token_type_idx=i + 1).pooler_output for i in (0, 1)]
        return model.head(torch.cat(pooled, dim=-1).float())  # (B, 2D) -> (B, 2)

    def loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"])

    def score(self, model: SkipModel, batch: dict) -> dict[str, float]:
        logits, labels = self.logits(model, batch), batch["labels"]
        return {"n": len(labels), "loss_sum": F.cross_entropy(logits, labels, reduction="sum").item(),
                "accuracy_sum": (logits.argmax(-1) == labels).sum().item()}

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, self.tokenizer.vocab_size, (batch_size, seq_len))
        img = example_images(batch_size, *self.image.largest)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                **{f"{p}_{k}": v for p in "01" for k, v in img.items()}, "labels": torch.zeros(batch_size, dtype=torch.long)}

    def info(self) -> dict:
        return {"name": self.name, "max_length": self.max_length, "image": asdict(self.image)}
