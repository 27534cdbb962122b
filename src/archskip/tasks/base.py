"""The task interface: what search, train and eval need to know about a downstream task."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..skipping import SkipModel


class Task(ABC):
    """A head (optional), a collate function, a loss and metrics, for one kind of downstream task."""

    name: str = ""

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
        """Sums over the batch to be aggregated by `evaluate`: must include 'n' (examples) and 'loss_sum'."""

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed scores into metrics (default: every key except n divided by n)."""
        n = max(sums.get("n", 0.0), 1.0)
        out = {k.removesuffix("_sum"): v / n for k, v in sums.items() if k != "n"}
        out["n"] = sums.get("n", 0.0)
        return out

    def evaluate_dataset(self, model: SkipModel, examples, batch_size: int = 32, device=None, num_workers: int = 0) -> dict:
        """Metrics over a whole split (batched `score` by default; retrieval ranks the whole split)."""
        from ..data.loader import make_loader

        return evaluate(model, self, make_loader(examples, self.collate, batch_size, num_workers=num_workers), device)

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
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    sums: dict[str, float] = {}
    try:
        for batch in loader:
            for k, v in task.score(model, to_device(batch, device)).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        model.train(was_training)
    return task.finalize(sums)
