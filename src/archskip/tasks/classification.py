"""Sequence classification on any Hugging Face encoder: pooled hidden state -> linear head, CE loss."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig, TaskConfig
from ..data.splits import Splits
from ..data.text import LabelVocab, check_labels
from ..errors import ConfigError
from ..skipping import SkipModel
from .base import Task
from .registry import register_task


def _takes_token_types(base: nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(base.forward).parameters


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.out(self.dropout(pooled))


@register_task
class SequenceClassification(Task):
    name = "classification"

    def __init__(self, tokenizer, labels: LabelVocab, max_length: int = 128, pooling: str = "cls"):
        self.tokenizer, self.labels, self.max_length, self.pooling = tokenizer, labels, max_length, pooling

    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> SequenceClassification:
        """Learns its label set from the training examples (integer labels 0..C-1 keep their ids)."""
        if train is None:
            raise ConfigError("a classification task needs training examples to learn its label set")
        labels = LabelVocab.from_examples(train)
        if cfg.num_labels is not None and cfg.num_labels != len(labels):
            raise ConfigError(f"task.num_labels={cfg.num_labels} but the training data has {len(labels)} labels {labels.names[:10]}")
        return cls(tokenizer, labels, cfg.max_length, cfg.pooling)

    @classmethod
    def from_info(cls, info: dict, tokenizer) -> SequenceClassification:
        return cls(tokenizer, LabelVocab(info["labels"]), info["max_length"], info["pooling"])

    @classmethod
    def load_splits(cls, cfg: RunConfig) -> Splits:
        """The text splits, their labels checked before any model is loaded (data.text.check_labels)."""
        splits = super().load_splits(cfg)
        check_labels(splits.train, {"validation": splits.validation or [], **splits.test})
        return splits

    def load_eval_data(self, data: str, **columns) -> dict[str, Sequence]:
        """The file's labels must be classes the artifact knows: checked before anything is evaluated."""
        splits = super().load_eval_data(data, **columns)
        for split in splits.values():
            for e in split:
                if e.get("label") is not None:
                    self.labels.encode(e["label"], f"{e.get('_row', data)}: ")
        return splits

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def attach_head(self, model: SkipModel, extras: dict | None = None) -> None:
        ref = next(model.base.parameters())
        model.head = ClassificationHead(model.config.hidden_size, self.num_labels).to(ref.device)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if "text_pair" in examples[0] else None
        enc = self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = dict(enc)
        if "label" in examples[0]:
            batch["labels"] = torch.tensor([self.labels.encode(e["label"]) for e in examples])
        return batch

    def logits(self, model: SkipModel, batch: dict) -> torch.Tensor:
        accepted = ("input_ids", "attention_mask", "token_type_ids") if _takes_token_types(model.base) else ("input_ids", "attention_mask")
        inputs = {k: v for k, v in batch.items() if k in accepted}
        hidden = model(**inputs).last_hidden_state  # (B, T, D)
        if self.pooling == "mean":
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, 0]
        return model.head(pooled.float())

    def loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        return self.logit_loss(self.logits(model, batch), batch)

    def logit_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits, batch["labels"])

    def score(self, model: SkipModel, batch: dict) -> dict[str, float]:
        logits = self.logits(model, batch)
        labels = batch["labels"]
        return {
            "n": labels.numel(),
            "loss_sum": F.cross_entropy(logits, labels, reduction="sum").item(),
            "accuracy_sum": (logits.argmax(-1) == labels).sum().item(),
        }

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        vocab = self.tokenizer.vocab_size
        return {
            "input_ids": torch.randint(1000 if vocab > 2000 else 1, vocab, (batch_size, seq_len)),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.zeros(batch_size, dtype=torch.long),
        }

    def info(self) -> dict:
        return {"name": self.name, "labels": self.labels.names, "max_length": self.max_length, "pooling": self.pooling}
