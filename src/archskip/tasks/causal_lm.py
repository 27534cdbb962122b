"""Prompt -> answer on a causal LM: the loss of the answer tokens (prompt tokens are masked).

Exact match is measured teacher-forced: an answer counts as correct when every answer token is the
model's argmax given the correct prefix, which is exactly when greedy decoding reproduces it.
"""

from __future__ import annotations

import torch

from ..skipping import SkipModel
from .base import Task

IGNORE = -100


class CausalLM(Task):
    name = "causal_lm"

    def __init__(self, tokenizer, max_length: int = 256):
        self.tokenizer, self.max_length = tokenizer, max_length

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        rows = []
        for e in examples:
            prompt = tok(e["text"], add_special_tokens=True)["input_ids"]
            answer = tok(str(e.get("label", "")), add_special_tokens=False)["input_ids"]
            if tok.eos_token_id is not None:
                answer = answer + [tok.eos_token_id]
            ids = (prompt + answer)[-self.max_length :]  # keep the answer when truncating
            n_answer = min(len(answer), len(ids))
            rows.append((ids, n_answer))
        width = max(len(ids) for ids, _ in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for b, (ids, n_answer) in enumerate(rows):  # right padding
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention[b, : len(ids)] = 1
            labels[b, len(ids) - n_answer : len(ids)] = torch.tensor(ids[len(ids) - n_answer :])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def _token_losses(self, model: SkipModel, batch: dict):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        target = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at t-1
        mask = target != IGNORE
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target.clamp(min=0), reduction="none"
        )  # (B, T-1)
        return logits, target, mask, nll

    def loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        _, _, mask, nll = self._token_losses(model, batch)
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    def score(self, model: SkipModel, batch: dict) -> dict[str, float]:
        logits, target, mask, nll = self._token_losses(model, batch)
        right = (logits.argmax(-1) == target) | ~mask
        per_example = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
        return {
            "n": target.shape[0],
            "loss_sum": per_example.sum().item(),
            "exact_match_sum": right.all(1).sum().item(),
        }

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.tokenizer.vocab_size, (batch_size, seq_len))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def info(self) -> dict:
        return {"name": self.name, "max_length": self.max_length}
