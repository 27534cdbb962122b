"""The task interface: what search, train and eval need to know about a downstream task.

A task class knows how it is built (from a `TaskConfig`, or from the `info()` an artifact stored),
where its data comes from (`load_splits`), and declares its optional capabilities as class
attributes (`writes_predictions`, `generates`) instead of leaving callers to probe for methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from ..config import RunConfig, TaskConfig
from ..data.splits import Splits, text_splits
from ..data.text import read_examples
from ..nn_utils import eval_mode
from ..skipping import SkipModel


class Task(ABC):
    """A head (optional), a collate function, a loss and metrics, for one kind of downstream task."""

    name: str = ""
    writes_predictions: bool = False
    """`predict_dataset` gives per-example predictions worth a file (VQA's EvalAI JSON, generated answers)."""
    generates: bool = False
    """`generate(model, prompt_batch, **kwargs)` produces text; `profile --generate_tokens` times it."""
    models_text: bool = False
    """`score` reports 'text_loss': the language model's next-token loss on every token of the example (a causal
    language model's tasks), which `search.verify_metric: text_loss` ranks plans by."""
    selection_metric: str = "loss"
    """The metric (a key of `finalize`'s output) the verified search ranks plans by: 'loss' is minimised, any
    other metric maximised, ties broken by the loss. The loss is the default: measured on a thousand
    examples it separates plans better than accuracy, which moves in steps of one example."""

    # ---- construction and data --------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> Task:
        """The task of `cfg`; `train` (the training examples) lets a task learn e.g. its label set;
        `images` says the backbone reads images (LaVIN). Needed to run a task from the command line."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a TaskConfig (define from_config)")

    @classmethod
    def from_info(cls, info: dict, tokenizer) -> Task:
        """Rebuild the task from what `info()` returned (an artifact stores it). Needed to load artifacts."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from an artifact (define from_info)")

    @classmethod
    def load_splits(cls, cfg: RunConfig) -> Splits:
        """The run's data. Default: CSV/JSONL text files with validation/test held out when not given."""
        return text_splits(cfg.data, cfg.seed)

    def load_eval_data(self, data: str, *, text_column: str = "text", label_column: str = "label",
                       text_pair_column: str | None = None, encoding: str = "utf-8") -> dict[str, Sequence]:
        """Named splits for `archskip eval --data`: by default one CSV/JSONL file."""
        return {"data": read_examples(data, text_column, label_column, text_pair_column, encoding, "--encoding")}

    # ---- model ------------------------------------------------------------------------------------
    def prepare_backbone(self, base) -> None:
        """Change the frozen backbone before it is wrapped, if the task needs to (e.g. NLVR2's third
        token type). Default: nothing."""

    def attach_head(self, model: SkipModel, extras: dict | None = None) -> None:
        """Create the task head on `model.head` (trainable); `extras` are tensors a checkpoint converter
        found besides the backbone (e.g. a pretrained ITM head). Default: no head."""

    @abstractmethod
    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Examples -> a batch of tensors (CPU)."""

    @abstractmethod
    def loss(self, model: SkipModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of the batch under the model's current skip configuration (a scalar)."""

    @abstractmethod
    def score(self, model: SkipModel, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sums over the batch to be aggregated by `evaluate`: must include 'n' (examples) and 'loss_sum'.
        A task whose examples can lack labels (VQA's test splits) adds 'labelled', the examples its sums cover."""

    # ---- metrics ----------------------------------------------------------------------------------
    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed scores into metrics (default: every key except n divided by n).

        With 'labelled' in the sums, only labelled examples are scored: the sums are divided by their count
        (also 'n'), and a split with unlabelled examples reports 'examples' (all) and 'labelled' besides; with
        none labelled it reports only those two, no loss and no score (docs/errors.md)."""
        n = sums.get("n", 0.0)
        labelled = sums.get("labelled", n)
        if n and not labelled:
            return {"examples": int(n), "labelled": 0}
        out = {k.removesuffix("_sum"): v / max(labelled, 1.0) for k, v in sums.items() if k not in ("n", "labelled")}
        out["n"] = labelled
        if labelled != n:
            out.update(examples=int(n), labelled=int(labelled))
        return out

    def evaluate_dataset(self, model: SkipModel, examples, batch_size: int = 32, device=None, num_workers: int = 0) -> dict:
        """Metrics over a whole split (batched `score` by default; retrieval ranks the whole split)."""
        from ..data.loader import make_loader

        return evaluate(model, self, make_loader(examples, self.collate, batch_size, num_workers=num_workers), device)

    def predict_dataset(self, model: SkipModel, examples, batch_size: int = 32, device=None) -> list[dict]:
        """Per-example predictions (tasks with `writes_predictions`)."""
        raise NotImplementedError(f"the {self.name} task does not write predictions")

    def why_no_predictions(self) -> str | None:
        """Why this task cannot write a useful predictions file (VQA: an answer class without a name), else None.
        A run that would write one asks before it trains."""
        return None

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        """A synthetic batch of the given shape, for FLOP counting and latency."""
        raise NotImplementedError

    def info(self) -> dict:
        """What an artifact must store to rebuild this task (JSON-serialisable)."""
        return {"name": self.name}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: SkipModel, task: Task, loader, device=None) -> dict[str, float]:
    """Metrics of `task` over `loader`, in eval mode, under no_grad."""
    device = device or next(model.parameters()).device
    sums: dict[str, float] = {}
    with eval_mode(model):
        for batch in loader:
            for k, v in task.score(model, to_device(batch, device)).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    return task.finalize(sums)
