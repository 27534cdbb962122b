"""A batch order that is a pure function of (seed, epoch, rank), so a run can resume mid-epoch exactly.

With W processes, epoch e's shuffled global batches are dealt round-robin: rank r takes global
batches r, r + W, r + 2W, ... Every rank gets the same number (the last G mod W batches are dropped,
as DistributedSampler's drop_last), so no rank waits for another at the end of an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


def batches_per_rank(n: int, batch_size: int, world: int = 1) -> int:
    total = -(-n // batch_size)
    return total if world == 1 else total // world


class BatchOrder(Sampler[list[int]]):
    """Index batches of epoch `epoch` for `rank` of `world`, from this rank's batch `start` on."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, start: int = 0,
                 rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch, self.start = n, batch_size, shuffle, seed, epoch, start
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return max(0, batches_per_rank(self.n, self.batch_size, self.world) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in range(self.start, batches_per_rank(self.n, self.batch_size, self.world)):
            b = i * self.world + self.rank
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


def make_loader(
    examples: list, collate: Callable, batch_size: int, *, shuffle: bool = False, seed: int = 0,
    epoch: int = 0, start: int = 0, num_workers: int = 0, rank: int = 0, world: int = 1,
) -> DataLoader:
    order = BatchOrder(len(examples), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, start=start, rank=rank, world=world)
    # A private generator: building a DataLoader iterator otherwise draws from the global RNG (for worker
    # seeds), which would shift dropout masks whenever a loader is rebuilt, e.g. after a resume.
    worker_seeds = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(examples, batch_sampler=order, collate_fn=collate, num_workers=num_workers, generator=worker_seeds)


class AugmentedDataset(Dataset):
    """A dataset whose training items are augmented (e.g. RandAugment on images); `eval_view` gives the
    same items without augmentation, as reward and evaluation batches need them."""

    def eval_view(self) -> Dataset:
        raise NotImplementedError


def eval_view(examples):
    """`examples` without training augmentation, if it has any (an AugmentedDataset or a Subset of one)."""
    if isinstance(examples, Subset) and isinstance(examples.dataset, AugmentedDataset):
        return Subset(examples.dataset.eval_view(), examples.indices)
    return examples.eval_view() if isinstance(examples, AugmentedDataset) else examples


def measurement_examples(train, count: int, seed: int) -> Subset:
    """A seeded sample of `count` training examples, read as in evaluation (no augmentation): what the frozen
    measurement (search/removal.py) and the fitted start (distill.py) read."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(eval_view(train), order[:count])
