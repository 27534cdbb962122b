"""Image-text retrieval (Flickr30k / COCO) with a single-stream model, as ViLT's IR/TR fine-tuning.

Training: each (image, caption) pair is scored against `negatives` (15) random captions of other
images; listwise cross-entropy with the true caption first. The score is `rank_output(pooled)`, a
linear head initialised from the "match" row of the pretrained ITM head when the checkpoint has one.

With `task.itm_weight` w > 0 (the METER recipes: 1, as METER's reference code, docs/meter.md) the loss
adds w x an image-text matching term, as METER's `compute_itm`: every training item also carries a
random other image; in each batch n // 2 captions (at random) keep their image and the others are shown
with that other image; the checkpoint's pretrained ITM head, frozen, classifies [pooled] as match / no
match (cross-entropy). The search's rewards use the same loss.

Evaluation: every image against every caption of the split (1k x 5k on Karpathy test), in batches
of captions per image; recall@1/5/10 for text retrieval (image -> its captions) and image retrieval
(caption -> its image). Ties count against the model: a candidate scoring *equal* to the true one
ranks above it, so a model that scores everything alike gets recall 0, not a lucky draw.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from ..config import RunConfig, TaskConfig
from ..data.images import ImageSpec, pad_images
from ..data.splits import Splits
from ..data.vilt_arrow import RetrievalDataset
from ..errors import ConfigError
from ..nn_utils import eval_mode
from ..skipping import SkipModel
from .registry import register_task
from .vl import (
    VisionLanguageTask,
    encode_texts,
    example_images,
    image_spec,
    image_spec_from_info,
    pooled_size,
    vilt_inputs,
)

KS = (1, 5, 10)


def recall_at_k(scores: torch.Tensor, caption_image: list[int] | torch.Tensor, ks=KS) -> dict[str, float]:
    """scores (I, C): image i vs caption c; caption_image[c] = its image. Returns tr_r{k}, ir_r{k}."""
    owner = torch.as_tensor(caption_image)
    n_img, n_cap = scores.shape
    is_pos = owner[None, :] == torch.arange(n_img)[:, None]  # (I, C)
    # text retrieval: rank of the best true caption of each image among that image's row
    best_pos = scores.masked_fill(~is_pos, float("-inf")).max(1).values  # (I,)
    tr_rank = 1 + ((scores >= best_pos[:, None]) & ~is_pos).sum(1)  # (I,)
    # image retrieval: rank of the true image of each caption among that caption's column
    true = scores[owner, torch.arange(n_cap)]  # (C,)
    ir_rank = 1 + ((scores >= true[None, :]) & ~is_pos).sum(0)  # (C,)
    out = {}
    for k in ks:
        out[f"tr_r{k}"] = (tr_rank <= k).float().mean().item()
        out[f"ir_r{k}"] = (ir_rank <= k).float().mean().item()
    return out


class MatchingDataset(RetrievalDataset):
    """Retrieval items; with `false_images` set, training items also carry `false_image`, a random other
    image (the no-match example of the ITM loss; METER's `false_image_0`)."""

    false_images: bool = False

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if self.false_images and len(self.images) > 1:
            k = item["image_index"]
            j = int(torch.randint(len(self.images) - 1, ()))  # torch's RNG: seeded per run, restored on resume
            j += j >= k  # any image but the item's own
            item["false_image"], item["false_image_index"] = self.image(j), j
        return item


@register_task
class Retrieval(VisionLanguageTask):
    name = "retrieval"

    def __init__(self, tokenizer, max_length: int = 40, negatives: int = 15, image: ImageSpec = ImageSpec(),
                 text_batch: int = 64, itm_weight: float = 0.0):
        self.tokenizer, self.max_length, self.negatives = tokenizer, max_length, negatives
        self.image, self.text_batch, self.itm_weight = image, text_batch, itm_weight
        self.itm_head: nn.Linear | None = None  # the pretrained ITM head, frozen (set by attach_head)

    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> Retrieval:
        return cls(tokenizer, cfg.max_length, cfg.negatives, image_spec(cfg), itm_weight=cfg.itm_weight)

    @classmethod
    def from_info(cls, info: dict, tokenizer) -> Retrieval:
        return cls(tokenizer, info["max_length"], info["negatives"], image_spec_from_info(info.get("image")),
                   info.get("text_batch", 64), info.get("itm_weight", 0.0))

    @classmethod
    def make_dataset(cls, root, names, transform, *, train, num_answers=3129, negatives=0):
        return MatchingDataset(root, names, transform, negatives=negatives if train else 0)

    @classmethod
    def load_splits(cls, cfg: RunConfig) -> Splits:
        splits = super().load_splits(cfg)
        if cfg.task.itm_weight > 0 and splits.train is not None:  # the ITM loss needs a no-match image per item
            train = splits.train.dataset if isinstance(splits.train, Subset) else splits.train
            train.false_images = True
        return splits

    def attach_head(self, model: SkipModel, extras: dict | None = None) -> None:
        head = nn.Linear(pooled_size(model), 1)
        itm_w, itm_b = (extras or {}).get("itm_score.fc.weight"), (extras or {}).get("itm_score.fc.bias")
        with torch.no_grad():
            if itm_w is not None and itm_b is not None:
                head.weight.copy_(itm_w[1:2])  # the "match" row of the pretrained ITM head
                head.bias.copy_(itm_b[1:2])
            else:
                warnings.warn("the checkpoint has no ITM head: the retrieval head starts from random weights", stacklevel=2)
                nn.init.normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)
        device = next(model.base.parameters()).device
        model.head = head.to(device)
        self.itm_head = None
        if self.itm_weight > 0 and itm_w is not None and itm_b is not None:
            # kept on the task, not the model: frozen, never saved, only the training loss reads it
            itm = nn.Linear(itm_w.shape[1], itm_w.shape[0])
            with torch.no_grad():
                itm.weight.copy_(itm_w)
                itm.bias.copy_(itm_b)
            self.itm_head = itm.requires_grad_(False).to(device)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Pairs (B x (1 + negatives)): every image with its caption then its negative captions; items with a
        `false_image` add the ITM batch: n // 2 captions (at random) with their image, the others with it."""
        texts = [t for e in examples for t in [e["text"], *e.get("negatives", [])]]
        per = len(texts) // len(examples)
        values, mask = pad_images([e["image"] for e in examples])
        batch = {**encode_texts(self.tokenizer, texts, self.max_length),
                 "pixel_values": values.repeat_interleave(per, 0), "pixel_mask": mask.repeat_interleave(per, 0),
                 "pairs_per_image": torch.tensor(per)}
        if all("false_image" in e for e in examples):
            n = len(examples)
            match = torch.zeros(n, dtype=torch.long)
            match[torch.randperm(n)[: n // 2]] = 1  # as METER's compute_itm: n // 2 matched pairs
            images = [e["image"] if m else e["false_image"] for e, m in zip(examples, match.tolist())]
            batch["itm_pixel_values"], batch["itm_pixel_mask"] = pad_images(images)
            batch["itm_labels"] = match
        return batch

    def scores(self, model: SkipModel, batch: dict) -> torch.Tensor:
        return model.head(model(**vilt_inputs(batch)).pooler_output.float()).squeeze(-1)  # (pairs,)

    def listwise_loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        per = int(batch["pairs_per_image"])
        s = self.scores(model, batch).view(-1, per)  # (B, 1 + negatives); the true caption is column 0
        return F.cross_entropy(s, torch.zeros(len(s), dtype=torch.long, device=s.device))

    def itm_loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        """Cross-entropy of the frozen ITM head on each true caption with its image or a random other one."""
        if self.itm_head is None:
            raise ConfigError(f"task.itm_weight={self.itm_weight} needs the pretrained ITM head (itm_score.fc.*) of "
                              "an original checkpoint (.ckpt) and this model has none; set --task.itm_weight 0")
        per = int(batch["pairs_per_image"])
        texts = {k: batch[k][::per] for k in ("input_ids", "attention_mask", "token_type_ids")}  # the true captions
        pooled = model(**texts, pixel_values=batch["itm_pixel_values"], pixel_mask=batch["itm_pixel_mask"]).pooler_output
        head = self.itm_head.to(pooled.device)
        return F.cross_entropy(head(pooled.float()), batch["itm_labels"])

    def loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        """The listwise loss, plus itm_weight x the ITM loss on batches that carry its inputs (training)."""
        loss = self.listwise_loss(model, batch)
        if self.itm_weight > 0 and "itm_labels" in batch:
            loss = loss + self.itm_weight * self.itm_loss(model, batch)
        return loss

    def score(self, model: SkipModel, batch: dict) -> dict[str, float]:
        per = int(batch["pairs_per_image"])
        s = self.scores(model, batch).view(-1, per)
        target = torch.zeros(len(s), dtype=torch.long, device=s.device)
        return {"n": len(s), "loss_sum": F.cross_entropy(s, target, reduction="sum").item(),
                "listwise_accuracy_sum": (s.argmax(-1) == 0).sum().item()}

    @torch.no_grad()
    def score_matrix(self, model: SkipModel, dataset, device=None) -> torch.Tensor:
        """(images, captions) scores over a whole split, one image at a time, captions in batches."""
        device = device or next(model.parameters()).device
        encoded = [encode_texts(self.tokenizer, dataset.captions[i : i + self.text_batch], self.max_length)
                   for i in range(0, len(dataset.captions), self.text_batch)]
        rows = []
        for k in range(len(dataset.images)):
            img = dataset.image(k)[None].to(device)  # (1, 3, H, W)
            mask = torch.ones(1, *img.shape[-2:], dtype=torch.long, device=device)
            row = []
            for enc in encoded:
                n = len(enc["input_ids"])
                batch = {**{kk: v.to(device) for kk, v in enc.items()},
                         "pixel_values": img.expand(n, -1, -1, -1), "pixel_mask": mask.expand(n, -1, -1)}
                row.append(self.scores(model, batch).float().cpu())
            rows.append(torch.cat(row))
        return torch.stack(rows)

    def evaluate_dataset(self, model: SkipModel, dataset, batch_size: int = 0, device=None, num_workers: int = 0) -> dict:
        with eval_mode(model):
            s = self.score_matrix(model, dataset, device)
        return {**recall_at_k(s, dataset.caption_image), "images": s.shape[0], "captions": s.shape[1]}

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, self.tokenizer.vocab_size, (batch_size, seq_len))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                **example_images(batch_size, *self.image.largest), "pairs_per_image": torch.tensor(1)}

    def info(self) -> dict:
        return {"name": self.name, "max_length": self.max_length, "negatives": self.negatives,
                "image": asdict(self.image), "text_batch": self.text_batch, "itm_weight": self.itm_weight}
