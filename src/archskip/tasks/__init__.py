"""Downstream tasks: head, collate, loss and metrics, one file per task."""

from __future__ import annotations

from ..config import AdapterConfig, ConfigError, ModelConfig, TaskConfig
from ..skipping import SkipModel
from ..data.text import LabelVocab
from .base import Task, evaluate, to_device
from .causal_lm import CausalLM
from .classification import SequenceClassification

__all__ = ["CausalLM", "SequenceClassification", "Task", "assemble", "build_task", "evaluate", "task_from_info", "to_device"]


def assemble(base, task: Task, adapter: AdapterConfig, model_cfg: ModelConfig, extras: dict | None = None,
             name_or_path: str | None = None) -> SkipModel:
    """Backbone -> (task's changes to it) -> SkipModel with adapters -> task head: the trainable model."""
    task.prepare_backbone(base)
    model = SkipModel(base, adapter, layers=model_cfg.layers, trainable=model_cfg.trainable,
                      name_or_path=name_or_path or model_cfg.name_or_path)
    task.attach_head(model, extras or {})
    return model


def build_task(cfg: TaskConfig, tokenizer, train_examples: list[dict] | None = None) -> Task:
    if cfg.name == "classification":
        if train_examples is None:
            raise ConfigError("a classification task needs training examples to learn its label set")
        labels = LabelVocab.from_examples(train_examples)
        if cfg.num_labels is not None and cfg.num_labels != len(labels):
            raise ConfigError(f"task.num_labels={cfg.num_labels} but the training data has {len(labels)} labels {labels.names[:10]}")
        return SequenceClassification(tokenizer, labels, cfg.max_length, cfg.pooling)
    if cfg.name == "causal_lm":
        return CausalLM(tokenizer, cfg.max_length)
    raise ConfigError(f"unknown task {cfg.name!r}; expected 'classification' or 'causal_lm'")


def task_from_info(info: dict, tokenizer) -> Task:
    """Rebuild a task from the `info()` an artifact stored."""
    name = info.get("name")
    if name == "classification":
        return SequenceClassification(tokenizer, LabelVocab(info["labels"]), info["max_length"], info["pooling"])
    if name == "causal_lm":
        return CausalLM(tokenizer, info["max_length"])
    raise ConfigError(f"artifact names an unknown task {name!r}")
