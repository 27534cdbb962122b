"""Downstream tasks: head, collate, loss, metrics and data loading, one file per task, and the TASKS
registry. The imports below register the built-in tasks."""

from __future__ import annotations

# isort: off
from . import classification, causal_lm, vqa, nlvr2, retrieval, language_qa, scienceqa  # noqa: F401  (registration)
# isort: on
from ..config import AdapterConfig, ModelConfig, TaskConfig
from ..models.base import trainable_names
from ..skipping import SkipModel
from .base import Task, evaluate, to_device
from .causal_lm import CausalLM
from .classification import SequenceClassification
from .generative_qa import ANSWER_PREFIX, GenerativeQA
from .language_qa import CSQA, GSM8K, SIQA, BoolQ
from .nlvr2 import NLVR2
from .registry import TASKS, register_task, task_class
from .retrieval import Retrieval
from .scienceqa import ScienceQA
from .vqa import VQA

__all__ = [
    "ANSWER_PREFIX", "CSQA", "GSM8K", "NLVR2", "SIQA", "TASKS", "VQA", "BoolQ", "CausalLM", "GenerativeQA", "Retrieval",
    "ScienceQA", "SequenceClassification", "Task", "assemble", "build_task", "evaluate", "register_task", "task_class",
    "task_from_info", "to_device",
]


def assemble(base, task: Task, adapter: AdapterConfig, model_cfg: ModelConfig, extras: dict | None = None,
             name_or_path: str | None = None) -> SkipModel:
    """Backbone -> (task's changes to it) -> SkipModel with adapters -> task head: the trainable model."""
    task.prepare_backbone(base)
    model = SkipModel(base, adapter, layers=model_cfg.layers, trainable=[*model_cfg.trainable, *trainable_names(base)],
                      name_or_path=name_or_path or model_cfg.name_or_path)
    task.attach_head(model, extras or {})
    return model


def build_task(cfg: TaskConfig, tokenizer, train_examples=None, *, images: bool = False) -> Task:
    """The task of `cfg`; classification learns its label set and VQA its answer list from the training data."""
    return task_class(cfg.name).from_config(cfg, tokenizer, train_examples, images=images)


def task_from_info(info: dict, tokenizer) -> Task:
    """Rebuild a task from the `info()` an artifact stored."""
    return task_class(info.get("name")).from_info(info, tokenizer)
