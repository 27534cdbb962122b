"""VQAv2 as ViLT/METER train it: 3,129 answers with soft targets, BCE scaled by the number of answers.

Targets: an answer given by 1/2/3/>=4 of the 10 annotators scores 0.3/0.6/0.9/1.0 (the arrow files
carry these scores). Loss = BCE-with-logits(mean over all B x A entries) x A, as the reference (so
r = exp(-loss) is small in the search: the faithful reward, docs/method.md). Metric: the VQA
score, i.e. the target score of the predicted answer. Test splits have no answers: `predict` gives
the [{question_id, answer}] list that the EvalAI server takes, and needs a name for every answer class
(`why_no_predictions`). Questions without an in-vocabulary answer (test splits, `--keep-unanswerable`) are
not scored: `score` counts them apart and a split with none labelled reports no score
(docs/errors.md, "Unlabelled splits and answer vocabularies").
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from ..config import TaskConfig
from ..data.images import ImageSpec
from ..data.loader import make_loader
from ..data.vilt_arrow import VQADataset
from ..errors import DataError
from ..nn_utils import eval_mode
from ..skipping import SkipModel
from .base import to_device
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


def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, A), (B, A) -> (B,): the soft target of each predicted (argmax) answer."""
    return targets.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)


@register_task
class VQA(VisionLanguageTask):
    name = "vqa"
    writes_predictions = True  # the EvalAI submission JSON
    vocabulary_file: Path | None = None  # where the answer names of a task built from a run config come from

    def __init__(self, tokenizer, num_answers: int = 3129, max_length: int = 40, answers: list[str] | None = None,
                 image: ImageSpec = ImageSpec()):
        self.tokenizer, self.num_answers, self.max_length = tokenizer, num_answers, max_length
        self.answers, self.image = answers, image

    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> VQA:
        task = cls(tokenizer, cfg.num_labels or 3129, cfg.max_length, answer_vocabulary(train), image_spec(cfg))
        task.vocabulary_file = vocabulary_file(train)
        return task

    @classmethod
    def from_info(cls, info: dict, tokenizer) -> VQA:
        return cls(tokenizer, info["num_answers"], info["max_length"], info.get("answers"),
                   image_spec_from_info(info.get("image")))

    @classmethod
    def make_dataset(cls, root, names, transform, *, train, num_answers=3129, negatives=0):
        return VQADataset(root, names, transform, num_answers=num_answers, require_answers=train)

    def attach_head(self, model: SkipModel, extras: dict | None = None) -> None:
        d = model.config.hidden_size  # hidden width 2D: ViLT 768 -> 1536, METER [text ; image] 1536 -> 1536
        model.head = mlp_head(pooled_size(model), 2 * d, self.num_answers).to(next(model.base.parameters()).device)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = {**encode_texts(self.tokenizer, [e["text"] for e in examples], self.max_length),
                 **image_batch([e["image"] for e in examples])}
        targets = torch.zeros(len(examples), self.num_answers)
        for i, e in enumerate(examples):
            for label, score in zip(e.get("labels", []), e.get("scores", [])):
                targets[i, label] = score
        batch["targets"] = targets
        batch["question_id"] = torch.tensor([e.get("question_id", -1) for e in examples])
        return batch

    def logits(self, model: SkipModel, batch: dict) -> torch.Tensor:
        pooled = model(**vilt_inputs(batch)).pooler_output  # (B, D)
        return model.head(pooled.float())  # (B, A)

    def loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        targets = batch["targets"]
        return F.binary_cross_entropy_with_logits(self.logits(model, batch), targets) * targets.shape[1]

    def score(self, model: SkipModel, batch: dict) -> dict[str, float]:
        """Loss and VQA score over the labelled questions (an in-vocabulary answer: every target is >= 0.3)."""
        logits, targets = self.logits(model, batch), batch["targets"]
        labelled = (targets > 0).any(1)  # (B,)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1)  # (B,)
        return {"n": len(targets), "labelled": int(labelled.sum()), "loss_sum": bce[labelled].sum().item(),
                "vqa_score_sum": vqa_score(logits, targets)[labelled].sum().item()}

    def why_no_predictions(self) -> str | None:
        """Why an EvalAI file cannot be written: an answer class without a name (it would be answered "")."""
        named = sum(1 for a in (self.answers or [])[: self.num_answers] if a)
        if named == self.num_answers:
            return None
        n, file = self.num_answers, self.vocabulary_file
        if file is None:  # rebuilt from an artifact: the vocabulary was fixed when it was trained
            source = "the artifact's VQA answer vocabulary"
            fix = "train it again with the full list in vqa_answer_vocab.json in data.root (docs/vilt.md)"
        else:
            source = (f"the VQA answer vocabulary {file}" if file.is_file() else
                      f"the VQA answer vocabulary (read from the training rows' answers: there is no {file})")
            fix = (f"put the {n:,} answers in {file} (a JSON list, index = label id; "
                   "`python tools/prepare_arrows.py vqa-vocab` writes it, docs/vilt.md)")
        return (f"{source} names {named:,} of the {n:,} answer classes (task.num_labels), so the predictions file "
                f"for EvalAI would answer \"\" for the other {n - named:,}: {fix}")

    @torch.no_grad()
    def predict(self, model: SkipModel, batch: dict) -> list[dict]:
        """[{question_id, answer}] for a batch (the test-dev submission format)."""
        if problem := self.why_no_predictions():
            raise DataError(problem)
        pred = self.logits(model, batch).argmax(-1).tolist()
        return [{"question_id": int(q), "answer": self.answers[p]} for q, p in zip(batch["question_id"].tolist(), pred)]

    def predict_dataset(self, model: SkipModel, examples, batch_size: int = 32, device=None) -> list[dict]:
        if problem := self.why_no_predictions():  # before any batch is run
            raise DataError(problem)
        device = device or next(model.parameters()).device
        with eval_mode(model):
            return [p for b in make_loader(examples, self.collate, batch_size) for p in self.predict(model, to_device(b, device))]

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, self.tokenizer.vocab_size, (batch_size, seq_len))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                **example_images(batch_size, *self.image.largest), "targets": torch.zeros(batch_size, self.num_answers)}

    def info(self) -> dict:
        return {"name": self.name, "num_answers": self.num_answers, "max_length": self.max_length,
                "answers": self.answers, "image": asdict(self.image)}


def answer_vocabulary(train) -> list[str] | None:
    """Label id -> answer string of a VQA training set (a VQADataset or a Subset of one), else None."""
    if isinstance(train, Subset):
        train = train.dataset
    return train.answer_vocabulary() if isinstance(train, VQADataset) else None


def vocabulary_file(train) -> Path | None:
    """The answer-vocabulary file `answer_vocabulary` reads for a VQA training set (it may not exist), else None."""
    if isinstance(train, Subset):
        train = train.dataset
    return train.root / "vqa_answer_vocab.json" if isinstance(train, VQADataset) else None
