"""The splits of a run: training data, validation data and named test sets, from the data config.

Every task reads its splits through one of these helpers (see `Task.load_splits`): text files with
held-out fractions, ViLT-format arrow files, or question-answering sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch.utils.data import Subset

from ..config import DataConfig
from ..errors import DataError
from .text import read_examples, split_examples
from .vilt_arrow import split_names


@dataclass
class Splits:
    train: Sequence  # a list of example dicts or a Dataset
    validation: Sequence | None
    test: dict[str, Sequence]  # name -> split, each evaluated and reported on its own

    def capped(self, limit: int | None) -> Splits:
        """At most `limit` examples per validation / test split (quick runs)."""
        if not limit:
            return self

        def cap(s):
            if s is None:
                return s
            return s[:limit] if isinstance(s, list) else Subset(s, range(min(limit, len(s))))

        return Splits(self.train, cap(self.validation), {k: cap(v) for k, v in self.test.items()})


def text_splits(d: DataConfig, seed: int) -> Splits:
    """CSV/JSONL files; validation and test are held out of the training file when not given."""
    if not d.train:
        raise DataError("data.train is not set: give a CSV or JSONL file of (text, label) rows")
    read = lambda p: read_examples(p, d.text_column, d.label_column, d.text_pair_column, d.encoding)
    train = read(d.train)
    validation = read(d.validation) if d.validation else None
    test = read(d.test) if d.test else None
    fractions = tuple(f for f, given in ((d.val_fraction, validation), (d.test_fraction, test)) if given is None)
    parts = split_examples(train, fractions, seed) if fractions else [train]
    if validation is None:
        validation = parts.pop(0)
    if test is None:
        test = parts.pop(0)
    train = parts[0][: d.limit] if d.limit else parts[0]
    if not train:
        raise DataError(f"the training split of {d.train!r} is empty after holding out validation/test data")
    return Splits(train, validation, {"test": test} if test else {})


def arrow_splits(d: DataConfig, task: str, dataset: Callable[[str, bool], Sequence]) -> Splits:
    """ViLT-format arrow files under data.root; `dataset(names, train)` builds one split."""
    if not d.root:
        raise DataError(f"data.root is not set: the {task} task reads ViLT-format arrow files from a directory")
    if not d.train and not d.test:
        raise DataError("data.train / data.test name no arrow files (e.g. data.train='vqav2_train,vqav2_trainable_val')")
    train = dataset(d.train, True) if d.train else None
    if train is not None and d.limit:
        train = Subset(train, range(min(d.limit, len(train))))
    validation = dataset(d.validation, False) if d.validation else None
    test = {name: dataset(name, False) for name in split_names(d.test)} if d.test else {}
    return Splits(train, validation, test)


def named_splits(d: DataConfig, load: Callable[[str], list]) -> Splits:
    """Sources named by the data config (train, validation, comma-separated tests), each read by `load`."""
    train = load(d.train) if d.train else []
    if d.limit:
        train = train[: d.limit]
    validation = load(d.validation) if d.validation else None
    test = {t: load(t) for t in (x.strip() for x in d.test.split(",")) if t} if d.test else {}
    return Splits(train, validation, test)
