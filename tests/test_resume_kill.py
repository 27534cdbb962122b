"""A run killed with SIGKILL mid-way, then resumed, ends bit-identical to an uninterrupted run.

The child process kills itself at a chosen checkpoint, either right after writing it or half-way through writing
it (temporary file written, rename not done): deterministic, unlike a parent polling the checkpoint from outside,
which on a loaded machine can miss the window and find the run already finished."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import classification_examples
from safetensors.torch import load_file

from archskip.cli import main
from archskip.data import text as text_data

STEPS_PER_EPOCH = 40  # 320 training examples / batch 8
EPOCHS = 3


def write_csv(path, rows):
    return str(text_data.write_csv(path, rows))  # the CLI takes the path as a string


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "d.csv", classification_examples(400, seed=5))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import make_bert, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    make_bert().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def reference(model_dir, data, tmp_path_factory):
    """The uninterrupted runs, once per stage."""
    out = {stage: tmp_path_factory.mktemp(f"ref-{stage}") for stage in ("train", "search")}
    for stage, d in out.items():
        main(args(stage, model_dir, data, d))
    return out


def args(stage, model_dir, data, out):
    common = ["--model.name_or_path", str(model_dir), "--data.train", data, "--adapter.hidden", "8",
              "--adapter.skip_hidden", "16", "--train.batch_size", "8", "--train.checkpoint_every", "1",
              "--train.log_every", "1", "--train.lr", "0.003", "--seed", "3", "--output_dir", str(out)]
    if stage == "train":
        return ["train", *common, "--plan", "1", "--train.epochs", str(EPOCHS)]
    return ["search", *common, "--search.k", "1", "--search.update_every", "2", "--search.supernet", "on", "--search.warmup_epochs", "1.0",
            "--train.epochs", str(EPOCHS)]


def checkpoint_step(out) -> int:
    try:
        return int(torch.load(out / "checkpoint.pt", weights_only=True)["step"])
    except FileNotFoundError:
        return -1


# Run the CLI with Trainer._save wrapped so that the process SIGKILLs itself at checkpoint `kill_at`.
CHILD = """
import os, signal, sys
from archskip import cli, train

kill_at, mode = int(sys.argv[1]), sys.argv[2]
save = train.Trainer._save

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def dying_write(path, write):  # the temporary file is written, the rename over `path` never happens
    tmp = str(path) + ".partial.tmp"
    write(tmp)
    die()

def _save(self, optimizer, scheduler, micro, step, history):
    if step >= kill_at and mode == "mid-write":
        train.atomic_write = dying_write
    save(self, optimizer, scheduler, micro, step, history)
    # only the writer dies: the other processes of a 2-process run then fail at their next collective and the
    # launcher stops them; were they to die first, the launcher could stop the writer before its checkpoint is in
    if step >= kill_at and self.is_main:
        die()

train.Trainer._save = _save
cli.main(sys.argv[3:])
"""


def run_and_kill(stage, model_dir, data, out, kill_at: int, mode: str = "after-write") -> int:
    """Run the stage in a child that SIGKILLs itself at checkpoint `kill_at`; the step of the checkpoint left."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(kill_at), mode, *args(stage, model_dir, data, out)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, f"the run was not killed (exit {child.returncode}): {child.stderr}"
    return checkpoint_step(out)


@pytest.mark.parametrize(("kill_at", "mode"), [(3, "after-write"), (45, "mid-write"), (100, "after-write")])
def test_train_killed_and_resumed_is_bit_identical(model_dir, data, reference, tmp_path, kill_at, mode):
    ref = load_file(reference["train"] / "artifact" / "adapter_model.safetensors")
    out = tmp_path / "killed"
    reached = run_and_kill("train", model_dir, data, out, kill_at, mode)
    # a checkpoint killed half-way through its write leaves the previous one whole
    assert reached == (kill_at - 1 if mode == "mid-write" else kill_at)
    assert not (out / "artifact").exists()
    main(args("train", model_dir, data, out) + ["--resume", "true"])
    resumed = load_file(out / "artifact" / "adapter_model.safetensors")
    assert set(resumed) == set(ref) and all(torch.equal(resumed[k], ref[k]) for k in ref)
    steps = [int(r["step"]) for r in csv.DictReader(open(out / "train.csv"))]
    assert steps == sorted(set(steps)) and steps[-1] == EPOCHS * STEPS_PER_EPOCH  # no step logged twice


@pytest.mark.parametrize(("kill_at", "mode"), [(10, "after-write"), (60, "mid-write")])
def test_search_killed_and_resumed_is_bit_identical(model_dir, data, reference, tmp_path, kill_at, mode):
    ref = json.loads((reference["search"] / "search_result.json").read_text())
    out = tmp_path / "killed"
    reached = run_and_kill("search", model_dir, data, out, kill_at, mode)
    assert reached == (kill_at - 1 if mode == "mid-write" else kill_at)
    assert not (out / "search_result.json").exists()
    main(args("search", model_dir, data, out) + ["--resume", "true"])
    resumed = json.loads((out / "search_result.json").read_text())
    assert resumed["scores"] == ref["scores"] and resumed["plan"] == ref["plan"]
    assert [h["gates"] for h in resumed["history"]] == [h["gates"] for h in ref["history"]]
    micro = [int(r["step"]) for r in csv.DictReader(open(out / "policy.csv"))]
    assert micro == sorted(set(micro))
