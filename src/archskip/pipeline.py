"""The stages as plain functions: config -> model -> search -> plan -> train -> artifact -> eval/profile.

Each stage reads a `RunConfig` and writes its output into `output_dir`; the next stage reads that
output (a search result JSON, an artifact directory), never a list copied by hand.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import ConcatDataset

from .artifact import SEARCH_ADAPTERS, load_artifact, load_search_adapters, save_artifact, save_search_adapters
from .config import RunConfig
from .data.splits import Splits
from .errors import ConfigError, DataError, PlanError
from .io import atomic_write_text, check_writable, ensure_dir
from .models import load_pretrained
from .plan import SearchResult, SkipPlan, load_plan_source, resolve_plan
from .profile import compare_models
from .report import plot_gates
from .runlog import RunLogger
from .search import METHODS, RESULT_FILE, SearchRun
from .skipping import SkipModel
from .tasks import Task, assemble, build_task, task_class, to_device
from .teacher import TeacherLoss, load_teacher
from .train import Trainer, gathered, is_main_process


def load_splits(cfg: RunConfig) -> Splits:
    """The data of a run, read by its task (text files, arrow files, QA sources), eval splits capped."""
    return task_class(cfg.task.name).load_splits(cfg).capped(cfg.data.eval_limit)


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


def _start(cfg: RunConfig) -> Path:
    """Create the output directory and record the run's config: after the inputs were read and checked, so a bad
    input leaves no directory behind."""
    out = Path(cfg.output_dir)
    if is_main_process():  # one writer; the others read what it wrote (a shared filesystem)
        ensure_dir(out)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
    return out


def _logger(out: Path, cfg: RunConfig, resume: bool) -> RunLogger:
    return RunLogger(out if is_main_process() else None, cfg.train.tensorboard, resume)


def search(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> SearchResult:
    """Find a skip plan with `cfg.search.method`; writes search_result.json and gates.png."""
    check_writable(cfg.output_dir)
    torch.manual_seed(cfg.seed)  # (before the adapters and the head are initialised)
    splits = load_splits(cfg)
    model, task = build_model(cfg, splits.train)
    out = _start(cfg)
    t0 = time.perf_counter()
    run = SearchRun(model, task, splits.train, cfg.search, cfg.train, seed=cfg.seed, out_dir=out, resume=resume,
                    progress=progress, logger=_logger(out, cfg, resume))
    result = METHODS[cfg.search.method](run)
    result.seed = cfg.seed
    result.config = {**result.config, **cfg.to_dict()}  # keeps what the method recorded (e.g. block costs)
    result.base_model = {"name_or_path": model.name_or_path, "fingerprint": model.fingerprint}
    result.wall_time_s = time.perf_counter() - t0
    with gathered(model):  # (FSDP: the adapters are sharded; every process takes part in gathering them)
        if is_main_process():
            result.save(out / RESULT_FILE)
            plot_gates(result, out / "gates.png")
            if result.config.get("supernet"):  # adapters worth starting from (train.warm_start)
                save_search_adapters(model, out)
            else:  # (an earlier search's adapters in this directory would no longer match its record)
                (out / SEARCH_ADAPTERS).unlink(missing_ok=True)
    return result


def check_plan_source(spec, model: SkipModel) -> None:
    """A search result made on another base model is refused."""
    spec = load_plan_source(spec)
    if isinstance(spec, SearchResult) and spec.base_model.get("fingerprint") not in (None, "", model.fingerprint):
        raise PlanError(
            f"the search result was made on {spec.base_model.get('name_or_path')!r} (fingerprint "
            f"{spec.base_model['fingerprint']}); this base model has fingerprint {model.fingerprint}"
        )


def check_warm_start(path: str) -> None:
    """`train.warm_start` names a search that trained a supernet and kept its adapters (the default search trains
    none); a search directory's record decides, so adapters an earlier search left there are never taken."""
    p = Path(path)
    record = p / RESULT_FILE
    if p.is_dir() and record.is_file() and not SearchResult.load(record).config.get("supernet"):
        raise ConfigError(f"train.warm_start={path!r}: that search has no search adapters to start from (it trained "
                          "no supernet; the default search measures plans on the frozen model); run the search with "
                          "--search.supernet on to keep its adapters, or leave train.warm_start unset")
    if not (p / SEARCH_ADAPTERS if p.is_dir() else p).is_file():
        raise ConfigError(f"train.warm_start={path!r}: expected a search output directory holding {SEARCH_ADAPTERS} "
                          "(a search run with a supernet) or that file itself")


def _unfrozen(cfg: RunConfig, plan) -> int:
    """train.unfreeze_kept, or the count a search result's training recipe asks for (the 'reassess' baseline)
    when the user left it at 0."""
    plan = load_plan_source(plan)
    recipe = plan.config.get("train_recipe", {}) if isinstance(plan, SearchResult) else {}
    if cfg.train.unfreeze_kept or "unfreeze_kept" not in recipe:
        return cfg.train.unfreeze_kept
    if is_main_process():
        print(f"the {plan.method} search result asks for train.unfreeze_kept={recipe['unfreeze_kept']}: the last "
              f"{recipe['unfreeze_kept']} kept blocks are fine-tuned in full (train.unfreeze_kept N sets another count)")
    return int(recipe["unfreeze_kept"])


def train(cfg: RunConfig, plan: str | SkipPlan | SearchResult, *, resume: bool = False, progress: bool = True) -> dict:
    """Train adapters + head with a fixed plan; writes the artifact into output_dir. Returns metrics."""
    source = load_plan_source(plan)  # before any work: a missing or broken plan fails at once (read once, too)
    if cfg.train.warm_start and not resume:  # (a resumed training restores its own checkpoint instead)
        check_warm_start(cfg.train.warm_start)
    check_writable(cfg.output_dir)
    torch.manual_seed(cfg.seed)  # (before the adapters and the head are initialised)
    splits = load_splits(cfg)
    model, task = build_model(cfg, splits.train)
    if splits.test:  # every test split gets a predictions file: refused before any training
        refuse_unwritable_predictions(task, "or leave data.test unset (then no predictions file is written)")
    check_plan_source(source, model)
    skip_plan = resolve_plan(source, model.num_candidates)
    model.apply_plan(skip_plan)
    model.unfreeze_kept(_unfrozen(cfg, source))
    if cfg.train.warm_start and not resume:
        record = Path(cfg.train.warm_start) / RESULT_FILE
        if record.is_file():  # the search's record says which base model its adapters belong to
            check_plan_source(str(record), model)
        load_search_adapters(model, cfg.train.warm_start)
    taught = task
    if cfg.train.teacher:
        teacher = load_teacher(cfg.train.teacher, model, task, cfg.model.name_or_path)
        taught = TeacherLoss(task, teacher, weight=cfg.train.teacher_weight, temperature=cfg.train.teacher_temperature,
                             tokens=cfg.train.teacher_tokens)
    out = _start(cfg)
    trainable, total = model.parameter_counts()  # (before FSDP, which would leave each process its shard to count)
    trainer = Trainer(model, taught, cfg.train, seed=cfg.seed, out_dir=out, logger=_logger(out, cfg, resume),
                      progress=progress)
    fit = trainer.fit(splits.train, splits.validation, resume=resume)
    test = {}
    for name, split in splits.test.items():
        test[name] = trainer.evaluate(split)
        if task.writes_predictions and trainer.is_main:
            path = write_predictions(model, task, split, out / f"predictions_{name}.json", cfg.train.batch_size)
            test[name]["predictions"] = str(path)
        label_note(test[name])
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


def refuse_unwritable_predictions(task: Task, alternative: str) -> None:
    """A run that would write a useless predictions file (VQA: answer classes without a name) stops here."""
    problem = task.why_no_predictions() if task.writes_predictions else None
    if problem:
        raise DataError(f"{problem}; {alternative}")


def label_note(metrics: dict, unlabelled_hint: str = "") -> dict:
    """Say in `metrics` (one split's) that the split has no labels, or that only part of it was scored."""
    if metrics.get("labelled") == 0:
        metrics["note"] = f"no example has a label: not scored{unlabelled_hint}"
    elif "labelled" in metrics:
        metrics["note"] = f"scored on its {metrics['labelled']} labelled examples of {metrics['examples']}"
    return metrics


def evaluate_artifact(artifact: str | Path, data: str, *, text_column: str = "text", label_column: str = "label",
                      text_pair_column: str | None = None, batch_size: int = 32, base: str | None = None,
                      predictions: str | None = None, encoding: str = "utf-8") -> dict:
    """Metrics of a saved artifact (pruned, as shipped) on a CSV/JSONL file or ViLT-format arrow file(s).

    With `predictions`, also write the task's predictions there (VQA: the test-dev submission JSON)."""
    model, task = load_artifact(artifact, base)
    if predictions:
        refuse_unwritable_predictions(task, "or leave out --predictions")
    splits = task.load_eval_data(data, text_column=text_column, label_column=label_column,
                                 text_pair_column=text_pair_column, encoding=encoding)
    hint = "" if predictions or not task.writes_predictions else "; --predictions FILE writes its predictions"
    metrics = {name: label_note(task.evaluate_dataset(model, split, batch_size), hint) for name, split in splits.items()}
    if predictions and task.writes_predictions:
        write_predictions(model, task, ConcatDataset(list(splits.values())), predictions, batch_size)
    return metrics["data"] if list(metrics) == ["data"] else metrics


def profile_artifact(artifact: str | Path, *, batch_size: int = 8, seq_len: int = 128, repeats: int = 20,
                     warmup: int = 3, base: str | None = None, device: str = "cpu") -> list[dict]:
    """Parameters, FLOPs and latency of the frozen base model vs the pruned artifact model, side by side."""
    model, task = load_artifact(artifact, base)
    reference, _ = load_artifact(artifact, base, prune=False)  # same weights, for the base model
    batch = to_device(task.example_batch(batch_size, seq_len), device)
    models = {"base": (reference.to(device), True), "archskip": (model.to(device), False)}
    return compare_models(models, task, batch, repeats=repeats, warmup=warmup, device=device)
