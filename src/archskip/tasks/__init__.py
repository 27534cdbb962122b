"""Downstream tasks: head, collate, loss and metrics, one file per task."""

from __future__ import annotations

from ..config import AdapterConfig, ConfigError, ModelConfig, TaskConfig
from ..data.images import ImageSpec, SquareImageSpec
from ..data.text import LabelVocab
from ..skipping import SkipModel
from .base import Task, evaluate, to_device
from .causal_lm import CausalLM
from .classification import SequenceClassification
from .generative_qa import ANSWER_PREFIX, QA_TASKS, GenerativeQA
from .nlvr2 import NLVR2
from .retrieval import Retrieval
from .vqa import VQA

__all__ = ["NLVR2", "VQA", "CausalLM", "GenerativeQA", "Retrieval", "SequenceClassification", "Task", "assemble", "build_task", "evaluate", "task_from_info", "to_device"]


def assemble(base, task: Task, adapter: AdapterConfig, model_cfg: ModelConfig, extras: dict | None = None,
             name_or_path: str | None = None) -> SkipModel:
    """Backbone -> (task's changes to it) -> SkipModel with adapters -> task head: the trainable model."""
    task.prepare_backbone(base)
    trainable = [*model_cfg.trainable, *(base.trainable_names() if hasattr(base, "trainable_names") else [])]
    model = SkipModel(base, adapter, layers=model_cfg.layers, trainable=trainable,
                      name_or_path=name_or_path or model_cfg.name_or_path)
    task.attach_head(model, extras or {})
    return model


def image_spec(cfg: TaskConfig) -> ImageSpec | SquareImageSpec:
    if cfg.image_resize == "square":
        return SquareImageSpec(cfg.image_size, cfg.image_norm)
    return ImageSpec(cfg.image_size, cfg.max_image_side, cfg.image_patch)


def build_task(cfg: TaskConfig, tokenizer, train_examples=None, *, images: bool = False) -> Task:
    """The task of `cfg`; classification learns its label set and VQA its answer list from the training data."""
    if cfg.name == "classification":
        if train_examples is None:
            raise ConfigError("a classification task needs training examples to learn its label set")
        labels = LabelVocab.from_examples(train_examples)
        if cfg.num_labels is not None and cfg.num_labels != len(labels):
            raise ConfigError(f"task.num_labels={cfg.num_labels} but the training data has {len(labels)} labels {labels.names[:10]}")
        return SequenceClassification(tokenizer, labels, cfg.max_length, cfg.pooling)
    if cfg.name == "causal_lm":
        return CausalLM(tokenizer, cfg.max_length)
    if cfg.name == "vqa":
        answers = train_examples.answer_vocabulary() if hasattr(train_examples, "answer_vocabulary") else None
        return VQA(tokenizer, cfg.num_labels or 3129, cfg.max_length, answers, image_spec(cfg))
    if cfg.name == "nlvr2":
        return NLVR2(tokenizer, cfg.max_length, image_spec(cfg))
    if cfg.name == "retrieval":
        return Retrieval(tokenizer, cfg.max_length, cfg.negatives, image_spec(cfg))
    if cfg.is_generative_qa:
        # images only for a model that reads them (LaVIN); a text-only LLaMA gets the text of ScienceQA
        spec = SquareImageSpec(cfg.image_size, cfg.image_norm) if images else None
        return GenerativeQA(tokenizer, cfg.name, cfg.max_length, cfg.max_new_tokens, spec)
    raise ConfigError(f"unknown task {cfg.name!r}; expected classification, causal_lm, vqa, nlvr2 or retrieval")


def task_from_info(info: dict, tokenizer) -> Task:
    """Rebuild a task from the `info()` an artifact stored."""
    name = info.get("name")
    raw = info.get("image")
    image = (ImageSpec(**raw) if "shorter" in raw else SquareImageSpec(**raw)) if isinstance(raw, dict) else ImageSpec()
    if name == "classification":
        return SequenceClassification(tokenizer, LabelVocab(info["labels"]), info["max_length"], info["pooling"])
    if name == "causal_lm":
        return CausalLM(tokenizer, info["max_length"])
    if name == "vqa":
        return VQA(tokenizer, info["num_answers"], info["max_length"], info.get("answers"), image)
    if name == "nlvr2":
        return NLVR2(tokenizer, info["max_length"], image)
    if name == "retrieval":
        return Retrieval(tokenizer, info["max_length"], info["negatives"], image, info.get("text_batch", 64))
    if name in QA_TASKS:
        spec = SquareImageSpec(**info["image"]) if info.get("image") else None
        return GenerativeQA(tokenizer, name, info["max_length"], info["max_new_tokens"], spec,
                            info.get("option_letters"), info.get("answer_prefix", ANSWER_PREFIX))
    raise ConfigError(f"artifact names an unknown task {name!r}")
