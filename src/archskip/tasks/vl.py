"""What the ViLT/METER vision-language tasks share: arrow data, text + image batching, ViLT's head shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig, TaskConfig
from ..data.images import ImageSpec, SquareImageSpec, pad_images
from ..data.splits import Splits, arrow_splits
from .base import Task


def image_spec(cfg: TaskConfig) -> ImageSpec | SquareImageSpec:
    """How images are resized and normalised: ViLT's aspect-keeping resize or a square crop (METER, CLIP)."""
    if cfg.image_resize == "square":
        return SquareImageSpec(cfg.image_size, cfg.image_norm)
    return ImageSpec(cfg.image_size, cfg.max_image_side, cfg.image_patch)


def image_spec_from_info(raw: dict | None) -> ImageSpec | SquareImageSpec:
    """The image spec an artifact's task info stored (`asdict` of either kind)."""
    if not isinstance(raw, dict):
        return ImageSpec()
    return ImageSpec(**raw) if "shorter" in raw else SquareImageSpec(**raw)


class VisionLanguageTask(Task):
    """A task on ViLT-format arrow files (VQAv2, NLVR2, Flickr30k)."""

    image: ImageSpec | SquareImageSpec
    num_answers: int = 3129  # VQA's answer count (other tasks: unused)

    @classmethod
    def make_dataset(cls, root: str, names: str, transform, *, train: bool, num_answers: int = 3129,
                     negatives: int = 0) -> Sequence:
        """The arrow dataset of this task over `names` (comma-separated files in `root`)."""
        raise NotImplementedError

    @classmethod
    def load_splits(cls, cfg: RunConfig) -> Splits:
        t, spec = cfg.task, image_spec(cfg.task)

        def dataset(names: str, train: bool):
            return cls.make_dataset(cfg.data.root, names, spec.transform(randaugment=train and t.randaugment),
                                    train=train, num_answers=t.num_labels or 3129, negatives=t.negatives)

        return arrow_splits(cfg.data, cls.name, dataset)

    def load_eval_data(self, data: str, **columns) -> dict[str, Sequence]:
        """`.arrow` files joined by commas, each evaluated on its own."""
        files = [Path(p) for p in data.split(",") if p.strip()]
        return {f.stem: self.make_dataset(str(f.parent), f.stem, self.image.transform(), train=False,
                                          num_answers=self.num_answers) for f in files}


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
