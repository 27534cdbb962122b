"""A batch order that is a pure function of (seed, epoch), so a run can resume mid-epoch exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class BatchOrder(Sampler[list[int]]):
    """Index batches of epoch `epoch`, starting at batch `start` (shuffled with seed + epoch)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, start: int = 0):
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch, self.start = n, batch_size, shuffle, seed, epoch, start

    def __len__(self) -> int:
        return max(0, -(-self.n // self.batch_size) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for b in range(self.start, -(-self.n // self.batch_size)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


def make_loader(
    examples: list, collate: Callable, batch_size: int, *, shuffle: bool = False, seed: int = 0,
    epoch: int = 0, start: int = 0, num_workers: int = 0,
) -> DataLoader:
    order = BatchOrder(len(examples), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, start=start)
    # A private generator: building a DataLoader iterator otherwise draws from the global RNG (for worker
    # seeds), which would shift dropout masks whenever a loader is rebuilt, e.g. after a resume.
    worker_seeds = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(examples, batch_sampler=order, collate_fn=collate, num_workers=num_workers, generator=worker_seeds)
