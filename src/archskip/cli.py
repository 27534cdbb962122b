"""`archskip search | train | eval | profile | export | demo`: a thin layer over `pipeline`, `export` and `demo`.

Every subcommand takes `--config recipe.yaml` (keys = the parameter names below) and any
`--section.key value` override; `archskip <cmd> --help` lists them all with their docs.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from typing import Literal

from .config import (
    AdapterConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    SearchConfig,
    TaskConfig,
    TrainConfig,
    load_mapping,
)
from .errors import USER_ERRORS, ConfigError
from .train import is_main_process


def search(
    model: ModelConfig,
    data: DataConfig,
    search: SearchConfig = SearchConfig(),
    task: TaskConfig = TaskConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    train: TrainConfig = TrainConfig(),
    seed: int = 0,
    output_dir: str = "runs/search",
    resume: bool = False,
) -> None:
    """Find which blocks the task does not need; writes search_result.json, gates.png and logs.

    Args:
        model: the frozen backbone (hub id or local path).
        data: training data; plans are measured on search.verify_examples of it (a search that trains the
            bandit's supernet holds out search.reward_fraction of it for rewards).
        search: the method (a name in archskip.search.METHODS), k, the measurement and the policy settings.
        task: head and loss.
        adapter: adapter shapes and initialisations.
        train: optimisation of adapters + head in a search that trains (epochs = search length); the batch
            size and the head re-fit's learning rate (lr x head_lr_mult) of plan measurements.
        seed: seeds data order, policy sampling and initialisation.
        output_dir: where results, logs and checkpoints go.
        resume: continue from output_dir: a trained search from its checkpoint.pt, plan measurements from
            measured_plans.json.
    """
    from . import pipeline

    cfg = RunConfig(model=model, task=task, data=data, adapter=adapter, search=search, train=train, seed=seed, output_dir=output_dir)
    result = pipeline.search(cfg, resume=resume)
    if not is_main_process():
        return
    print(f"plan: skip {list(result.plan.skip)} of {result.plan.num_candidates} ({result.method}, {result.wall_time_s:.1f}s)")
    print(f"wrote {output_dir}/search_result.json and {output_dir}/gates.png")


def train(
    model: ModelConfig,
    data: DataConfig,
    plan: str,
    task: TaskConfig = TaskConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    train: TrainConfig = TrainConfig(),
    seed: int = 0,
    output_dir: str = "runs/train",
    resume: bool = False,
) -> None:
    """Train adapters + head with a fixed skip plan; writes the artifact to output_dir/artifact.

    Args:
        model: the frozen backbone (hub id or local path).
        data: train / validation / test files (or fractions held out of train).
        plan: a search_result.json, an index list such as "3,5", or "none" for no skip.
        task: head and loss.
        adapter: adapter shapes and initialisations (use the search's).
        train: optimisation settings.
        seed: seeds data order and initialisation.
        output_dir: where the artifact, metrics, logs and checkpoints go.
        resume: continue from output_dir/checkpoint.pt.
    """
    from . import pipeline

    cfg = RunConfig(model=model, task=task, data=data, adapter=adapter, train=train, seed=seed, output_dir=output_dir)
    metrics = pipeline.train(cfg, plan, resume=resume)
    if not is_main_process():
        return
    print(json.dumps(metrics, indent=2))
    print(f"wrote {output_dir}/artifact")


def evaluate(
    artifact: str,
    data: str,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    batch_size: int = 32,
    base: str | None = None,
    predictions: str | None = None,
    encoding: str = "utf-8",
) -> None:
    """Evaluate a trained artifact (pruned, as shipped) on a CSV/JSONL file or ViLT-format arrow file(s).

    Args:
        artifact: directory written by `archskip train` (output_dir/artifact).
        data: CSV or JSONL file with the text and label columns, or .arrow file(s) joined by commas
            (each reported on its own, e.g. nlvr2_dev.arrow,nlvr2_test1.arrow).
        base: load the base model from here instead of the recorded id/path.
        predictions: also write the predictions here (VQA: the test-dev submission JSON).
        encoding: the text encoding of a CSV/JSONL file (UTF-8, with or without a byte-order mark, by default).
    """
    from . import pipeline

    print(json.dumps(pipeline.evaluate_artifact(artifact, data, text_column=text_column, label_column=label_column,
                                                text_pair_column=text_pair_column, batch_size=batch_size, base=base,
                                                predictions=predictions, encoding=encoding), indent=2))


def profile(
    artifact: str | None = None,
    model: ModelConfig = ModelConfig(),
    task: TaskConfig = TaskConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    ks: list[int] = [0, 1, 2, 3],  # noqa: B006 (read-only default)
    batch_size: int = 8,
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    base: str | None = None,
    device: str = "cpu",
    output: str | None = None,
    params: bool = False,
    generate_tokens: int = 0,
    plans: list[str] | None = None,
    data: DataConfig | None = None,
    search: SearchConfig | None = None,
    train: TrainConfig | None = None,
    plan: str | None = None,
    seed: int = 0,
    output_dir: str | None = None,
) -> None:
    """Parameters, FLOPs and latency, measured side by side against the frozen base model.

    Either a trained artifact (base model vs the pruned artifact model), or a model (e.g.
    --model.name_or_path random:vilt-b32) with DAS-k for every k in --ks (the last k blocks skipped).

    Args:
        artifact: directory written by `archskip train`; if unset, --model/--task/--adapter/--ks are profiled.
        model: the backbone (random:<preset> gives the full-size architecture with random weights).
        task: the task whose head and inputs are measured (images at task.image_size / max_image_side).
        adapter: adapter shapes.
        ks: numbers of skipped blocks to measure (0 = adapters, no skip).
        batch_size: examples per forward.
        seq_len: tokens per example.
        repeats: interleaved timed rounds (medians are reported).
        warmup: untimed calls per model first.
        base: with an artifact: load the base model from here instead of the recorded id/path.
        device: cpu or cuda.
        output: also write the table (markdown) to this file.
        params: only count parameters for each k (random:<preset> models are built on the meta device,
            e.g. LLaMA-7B + CLIP ViT-L/14 for the paper's Table 1).
        generate_tokens: generative tasks: also time generating this many tokens per question (greedy, KV
            cache) and report seconds per question and its ratio to k = 0 (Table 1's inference time).
        plans: explicit skip sets to measure instead of --ks (e.g. '["none", "0,1,2,3", "6,7,8,9"]').
        data: not used (accepted so that a stage recipe can be given with --config).
        search: not used (as data).
        train: not used (as data).
        plan: not used (as data).
        seed: not used (as data).
        output_dir: not used (as data).
    """
    from . import pipeline, variants
    from .io import atomic_write_text
    from .report import markdown_table

    if params:
        rows = variants.parameter_table(RunConfig(model=model, task=task, adapter=adapter), ks)
    elif artifact:
        rows = pipeline.profile_artifact(artifact, batch_size=batch_size, seq_len=seq_len, repeats=repeats, warmup=warmup,
                                         base=base, device=device)
    else:
        cfg = RunConfig(model=model, task=task, adapter=adapter)
        rows = variants.profile_model(cfg, ks, batch_size=batch_size, seq_len=seq_len, repeats=repeats, warmup=warmup,
                                      device=device, generate_tokens=generate_tokens, plans=plans)
    columns = list(dict.fromkeys(k for r in rows for k in r))  # every key, first-seen order
    table = markdown_table(rows, columns)
    print(table)
    if output:
        atomic_write_text(output, table + "\n")


def export(
    artifact: str,
    out: str,
    format: Literal["hf", "onnx"] = "hf",
    base: str | None = None,
    check: bool = True,
) -> None:
    """Write a trained artifact's pruned model so that it loads without archskip (docs/export.md).

    Args:
        artifact: directory written by `archskip train` (output_dir/artifact).
        out: the directory to write (absent, empty, or an earlier export, which is replaced).
        format: 'hf': a Hugging Face model directory (N - k blocks, adapters, head, tokenizer, the base model's
            processor or image processor if it has one, model code) for
            `AutoModel*.from_pretrained(out, trust_remote_code=True)`; 'onnx': an encoder as out/model.onnx.
        base: load the base model from here instead of the recorded id/path.
        check: load what was written back and compare its outputs with the model's first.
    """
    from .artifact import load_artifact
    from .export import export_onnx, save_pretrained
    from .export.hf import base_processor

    model, task = load_artifact(artifact, base)
    write = save_pretrained if format == "hf" else export_onnx
    # the artifact keeps the tokenizer (its task's); a processor of images comes from the base model's directory
    result = write(model, out, task=task, processor=base_processor(base or model.name_or_path), check=check)
    print(json.dumps(result, indent=2))


def demo(output_dir: str = "runs/demo", seed: int = 0, quick: bool = False) -> None:
    """The embedded default: DAS on all-MiniLM-L6-v2 and Pang & Lee sentence polarity, offline, on CPU.

    Searches k=2 of 6 blocks, trains adapters with no skip, with the DAS plan and with the last 2
    blocks dropped, then prints params / FLOPs / latency / test accuracy and writes a report.

    Args:
        output_dir: where the report, gate plot, search result and artifact go.
        seed: seeds the split, the search and the training.
        quick: a much smaller run (for smoke tests).
    """
    from .demo import run_demo

    run_demo(output_dir, seed=seed, quick=quick)


COMMANDS = {"search": search, "train": train, "eval": evaluate, "profile": profile, "export": export, "demo": demo}


def normalize_flags(argv: list[str]) -> list[str]:
    """Accept `--output-dir` for `--output_dir` (and `--search.update-every` ...): option names only."""
    out = []
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


def config_files(argv: list[str]) -> list[str]:
    return [argv[i + 1] if a == "--config" else a.split("=", 1)[1] for i, a in enumerate(argv)
            if (a == "--config" and i + 1 < len(argv)) or a.startswith("--config=")]


@contextlib.contextmanager
def registry_choices():
    """Show the registered tasks and search methods as the choices of --task.name and --search.method
    (the parser reads choices from a field's type): the fields are typed `str` and validated against the
    registries; while the command line is parsed they are typed as a Literal of the names registered now."""
    from .search import METHODS
    from .tasks import TASKS

    fields = ((TaskConfig, "name", TASKS), (SearchConfig, "method", METHODS))
    saved = [cls.__annotations__[name] for cls, name, _ in fields]
    for cls, name, registry in fields:
        cls.__annotations__[name] = Literal[tuple(registry)]
    try:
        yield
    finally:
        for (cls, name, _), annotation in zip(fields, saved):
            cls.__annotations__[name] = annotation


def main(argv: list[str] | None = None) -> None:
    """The command line. A user's mistake (a bad option, recipe, file, plan, path) ends in one line on stderr and
    exit code 2; `--debug` shows the traceback instead."""
    from jsonargparse import ArgumentError, auto_cli, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # the config fields' docs appear in --help
    argv = normalize_flags(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        command = argv[0] if argv and argv[0] in COMMANDS else None
        for path in config_files(argv):  # a broken recipe: name the file, not just a line number
            mapping = load_mapping(path)
            if command:
                check_recipe_keys(command, mapping, path)
        if command:
            check_flags(command, argv[1:])
        with registry_choices():
            auto_cli(COMMANDS, args=argv, as_positional=False, exit_on_error=False)
    except (ArgumentError, *USER_ERRORS) as e:
        if debug:
            raise
        message = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
        print(f"archskip: error: {message}" + ("" if isinstance(e, USER_ERRORS) else
                                               f" (archskip {command or ''} --help lists the options)".replace("  ", " ")),
              file=sys.stderr)
        sys.exit(2)
    end_process_group()


BUILTIN_OPTIONS = ("help", "config", "print_config", "debug")


def command_keys(command: str) -> dict[str, list[str]]:
    """{parameter: its config fields (empty for a plain value)} of a subcommand: the keys a recipe may hold."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(COMMANDS[command])
    return {name: [f.name for f in dataclasses.fields(hints[name])] if dataclasses.is_dataclass(hints.get(name)) else []
            for name in inspect.signature(COMMANDS[command]).parameters}


def unknown_key(key: str, command: str, where: str) -> ConfigError:
    """The error for a key `command` does not take, with the nearest valid key."""
    import difflib

    keys = command_keys(command)
    valid = [k for k, sub in keys.items() if not sub] + [f"{k}.{f}" for k, sub in keys.items() for f in sub]
    valid += [k for k, sub in keys.items() if sub]
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not near and "." in key:  # a field of a known section: the section's closest field, else its list
        section = key.split(".")[0]
        near = difflib.get_close_matches(key, [f"{section}.{f}" for f in keys.get(section, [])], n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown key {key!r} {where}{hint} (archskip {command} --help lists every key)")


def check_recipe_keys(command: str, mapping: dict, path: str) -> None:
    """Every key of a recipe is an option of `command` (nested sections or dotted keys)."""
    keys = command_keys(command)
    for top, value in mapping.items():
        head, _, rest = str(top).partition(".")
        if head not in keys and head not in BUILTIN_OPTIONS:
            raise unknown_key(str(top), command, f"in {path}")
        fields = [rest] if rest else list(value) if isinstance(value, dict) and keys.get(head) else []
        for f in fields:
            if f not in keys[head]:
                raise unknown_key(f"{head}.{f}", command, f"in {path}")


def check_flags(command: str, args: list[str]) -> None:
    """Every `--name` / `--section.field` option is one `command` takes."""
    keys = command_keys(command)
    for a in args:
        if not a.startswith("--") or len(a) < 3:
            continue
        head, _, field = a[2:].split("=", 1)[0].partition(".")
        if head in BUILTIN_OPTIONS:
            continue
        if head not in keys or (field and field not in keys[head]):
            raise unknown_key(a[2:].split("=", 1)[0], command, "on the command line")


def end_process_group() -> None:
    """After a successful multi-process command: wait for every rank, then tear the process group down
    while the interpreter is alive. Left to interpreter exit, gloo's worker threads can abort a rank
    ("terminate called without an active exception", exit code -6) after all its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
