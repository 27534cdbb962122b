"""The search methods: name -> a function `method(run: SearchRun) -> SearchResult`.

Everything else (the CLI's choices, `SearchConfig.method` validation, error messages) reads
`METHODS`. A new method is one file with a function decorated by `register_method("name")`, plus
one import line in `search/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import SearchConfig, TrainConfig
from ..plan import SearchResult
from ..runlog import RunLogger
from ..skipping import SkipModel
from ..tasks.base import Task


@dataclass
class SearchRun:
    """What a search method gets: the wrapped model, the task, the training data and the settings."""

    model: SkipModel
    task: Task
    train: Sequence
    """The training examples; a method holds out its own reward or verification data from them."""
    search: SearchConfig
    train_cfg: TrainConfig
    """Optimisation of adapters + head for methods that train (DAS, exhaustive's supernet)."""
    seed: int = 0
    out_dir: Path | None = None
    """Where checkpoints and logs go (the caller writes the result itself)."""
    resume: bool = False
    progress: bool = True
    logger: RunLogger | None = None


SearchMethod = Callable[[SearchRun], SearchResult]

METHODS: dict[str, SearchMethod] = {}
"""Method name -> function; `archskip search --search.method NAME` runs METHODS[NAME]."""


def register_method(name: str) -> Callable[[SearchMethod], SearchMethod]:
    def add(fn: SearchMethod) -> SearchMethod:
        if name in METHODS:
            raise ValueError(f"search method {name!r} is already registered")
        METHODS[name] = fn
        return fn

    return add
