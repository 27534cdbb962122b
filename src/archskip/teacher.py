"""A trained no-skip model as the teacher of a skipped one (knowledge distillation, Hinton et al. 2015).

The skipped model's loss gains `weight` x T^2 x KL(teacher || student) on the predictions softened by the
temperature T: the student learns the teacher's whole output distribution, not only the labels. For a
classification task the predictions are the class logits; for a generative task, the next-token
distribution at each token of the target, or with `tokens="text"` at every token of the prompt and the target
(the whole sequence: many more targets per example, as Minitron's distillation of pruned LLMs). The teacher
is an artifact of the same base model trained with no skip (`archskip train --plan none`); it is frozen and
runs under no_grad next to the student, one extra forward pass per micro-batch (docs/method.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ArtifactError, ConfigError
from .skipping import SkipModel
from .tasks.base import Task


def check_per_token(task: Task | type[Task]) -> None:
    """Refuse train.teacher_tokens 'text' for a task (or task class) without one prediction per token: it needs
    `text_logits` and `answer_rows` (generative tasks have them)."""
    if not (callable(getattr(task, "text_logits", None)) and callable(getattr(task, "answer_rows", None))):
        raise ConfigError(f"train.teacher_tokens='text': the {task.name} task makes one prediction per example, "
                          "not one per token; set train.teacher_tokens to 'answer'")


class TeacherLoss(Task):
    """`task` with its loss extended by the teacher's term; everything else is `task`'s (only the training
    loss changes: evaluation, predictions, generation, metrics and the artifact are the plain task's)."""

    def __init__(self, task: Task, teacher: SkipModel, *, weight: float = 1.0, temperature: float = 2.0,
                 tokens: str = "answer"):
        if not (callable(getattr(task, "logits", None)) and callable(getattr(task, "logit_loss", None))):
            raise ConfigError(f"the {task.name} task cannot learn from a teacher (it needs `logits` and `logit_loss`); "
                              "leave train.teacher unset")
        if tokens not in ("answer", "text"):
            raise ConfigError(f"train.teacher_tokens={tokens!r}: expected 'answer' or 'text'")
        if tokens == "text":
            check_per_token(task)
        if callable(getattr(task, "check_teachable", None)):  # e.g. generation on a model that shifts positions
            task.check_teachable(teacher)
        self.task, self.teacher, self.weight, self.temperature = task, teacher.eval(), weight, temperature
        self.tokens = tokens
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.name, self.selection_metric = task.name, task.selection_metric
        self.writes_predictions, self.generates, self.models_text = task.writes_predictions, task.generates, task.models_text

    def __getattr__(self, name: str):  # what Task does not define (generate, logits, choose_options, ...): task's
        if name == "task":  # (not set yet: copying or unpickling)
            raise AttributeError(name)
        return getattr(self.task, name)

    def collate(self, examples):
        return self.task.collate(examples)

    def loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        rows = self.task.text_logits if self.tokens == "text" else self.task.logits
        student = rows(model, batch)  # (N, C): N examples, target tokens or text tokens
        with torch.no_grad():
            teacher = rows(self.teacher.to(student.device), batch)
        t = self.temperature
        kd = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                      reduction="batchmean") * t * t  # mean KL per row
        answer = student[self.task.answer_rows(batch)] if self.tokens == "text" else student
        return self.task.logit_loss(answer, batch) + self.weight * kd

    def score(self, model: SkipModel, batch: dict) -> dict[str, float]:
        return self.task.score(model, batch)

    def finalize(self, sums):
        return self.task.finalize(sums)

    def evaluate_dataset(self, model, examples, batch_size=32, device=None, num_workers=0):
        return self.task.evaluate_dataset(model, examples, batch_size, device, num_workers)

    def predict_dataset(self, model, examples, batch_size=32, device=None):
        return self.task.predict_dataset(model, examples, batch_size, device)

    def why_no_predictions(self):
        return self.task.why_no_predictions()

    def example_batch(self, batch_size, seq_len):
        return self.task.example_batch(batch_size, seq_len)

    def info(self):
        return self.task.info()


def load_teacher(path: str, student: SkipModel, task: Task, base: str) -> SkipModel:
    """The teacher artifact at `path`, its base model loaded from `base`; refused unless it was made for the
    student's base model and predicts the same classes."""
    from .artifact import load_artifact

    teacher, teacher_task = load_artifact(path, base)
    if teacher.fingerprint != student.fingerprint:
        raise ArtifactError(f"teacher {path!r} was made for another base model (fingerprint {teacher.fingerprint}; "
                            f"the student's is {student.fingerprint})")
    mine, theirs = task.info(), teacher_task.info()
    if (theirs.get("name"), theirs.get("labels")) != (mine.get("name"), mine.get("labels")):
        raise ArtifactError(f"teacher {path!r} solves another task: {theirs.get('name')} with labels "
                            f"{theirs.get('labels')} (the student: {mine.get('name')} with labels {mine.get('labels')})")
    if teacher.plan.k:
        print(f"note: teacher {path!r} itself skips blocks {list(teacher.plan.skip)}; a no-skip teacher is the usual choice")
    return teacher
