"""The tasks: name -> Task class. Everything else (the CLI's choices, `TaskConfig.name` validation,
rebuilding a task from an artifact) reads `TASKS`. A new task is one file whose class is decorated
with `@register_task`, plus one import line in `tasks/__init__.py`."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Task

TASKS: dict[str, type[Task]] = {}
"""Task name -> class; `archskip train --task.name NAME` uses TASKS[NAME]."""


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add `cls` under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name to register under")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered (by {TASKS[cls.name].__name__})")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
