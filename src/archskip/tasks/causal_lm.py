"""Prompt -> answer on a causal LM: the loss of the answer tokens (prompt tokens are masked).

Exact match is measured teacher-forced: an answer counts as correct when every answer token is the
model's argmax given the correct prefix, which is exactly when greedy decoding reproduces it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TaskConfig
from ..nn_utils import pad_rows
from ..skipping import SkipModel
from .base import Task
from .registry import register_task

IGNORE = -100
FLOAT_COPY = 2**26  # float32 logits next_token_losses copies at once (256 MB; SmolLM2: ~13 rows of 100 tokens)


@register_task
class CausalLM(Task):
    name = "causal_lm"
    models_text = True

    def __init__(self, tokenizer, max_length: int = 256):
        self.tokenizer, self.max_length = tokenizer, max_length

    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> CausalLM:
        return cls(tokenizer, cfg.max_length)

    @classmethod
    def from_info(cls, info: dict, tokenizer) -> CausalLM:
        return cls(tokenizer, info["max_length"])

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
        input_ids, attention = pad_rows([ids for ids, _ in rows], pad_id(tok))  # right padding
        labels = answer_labels(input_ids, [len(ids) for ids, _ in rows], [n for _, n in rows])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def _token_losses(self, model: SkipModel, batch: dict):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        target = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at t-1
        mask = target != IGNORE
        # every token's loss against the text itself (the answer's labels are its tokens), so that `score`'s
        # text loss reads the same numbers
        nll = next_token_losses(logits, batch["input_ids"])  # (B, T-1)
        return logits[:, :-1], target, mask, nll

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
            "text_loss_sum": text_loss_sum(nll, batch["attention_mask"]),
        }

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.tokenizer.vocab_size, (batch_size, seq_len))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def info(self) -> dict:
        return {"name": self.name, "max_length": self.max_length}


def next_token_losses(logits: torch.Tensor, input_ids: torch.Tensor, inserted: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T-1) float32 cross-entropy of every input token t+1 given the text up to t. `logits`: (B, T', V) with
    row b's prediction of token t+1 at position t + inserted[b] (`inserted`: the tokens a model such as LaVIN puts
    after BOS, which differ between rows with and without an image; None: 0). A row whose logits end early (LaVIN
    sizes them to the longest unpadded row) gets 0 after them. Consecutive rows that insert the same number share
    one cross-entropy, at most FLOAT_COPY elements of float32 logits at a time (transformers' own loss copies the
    whole (B, T, V) to float32)."""
    B, T = input_ids.shape
    V = logits.shape[-1]
    starts = [0] * B if inserted is None else inserted.tolist()
    most = max(1, FLOAT_COPY // max(1, (T - 1) * V))  # rows per cross-entropy
    nll = torch.zeros(B, T - 1, dtype=torch.float32, device=logits.device)
    b = 0
    while b < B:
        e = b + 1
        while e < B and e - b < most and starts[e] == starts[b]:
            e += 1
        n = max(0, min(T - 1, logits.shape[1] - starts[b]))  # positions this group's logits have
        rows = logits[b:e, starts[b] : starts[b] + n].float()  # (e-b, n, V)
        nll[b:e, :n] = F.cross_entropy(rows.flatten(0, 1), input_ids[b:e, 1 : 1 + n].flatten(), reduction="none").view(e - b, n)
        b = e
    return nll


def text_loss_sum(nll: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """The next-token loss of every real token of each row (prompt and answer alike: the text's perplexity, as
    perplexity-based block pruning measures it), averaged per row and summed over rows: what
    `search.verify_metric: text_loss` ranks plans by. `nll`: (B, T-1), every token's loss against the row's
    next token (position t predicting token t+1)."""
    mask = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1): a real token after a real one
    return float(((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).sum())


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def answer_labels(input_ids: torch.Tensor, lengths: list[int], answer_lengths: list[int]) -> torch.Tensor:
    """(B, T) labels of right-padded rows: each row's last `answer_length` real tokens, IGNORE elsewhere."""
    labels = torch.full_like(input_ids, IGNORE)
    for b, (n, a) in enumerate(zip(lengths, answer_lengths)):
        labels[b, n - a : n] = input_ids[b, n - a : n]
    return labels
