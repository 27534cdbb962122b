"""Two CPU processes (gloo): one policy across ranks, identical adapters, one writer, resume with 1 process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_resume_kill import CHILD, checkpoint_step, data, model_dir  # noqa: F401  (module fixtures)

from archskip.cli import main
from archskip.plan import SkipPlan

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "archskip.cli", *argv]


CONFIGS = Path(__file__).parent.parent / "configs" / "accelerate"


def accelerate_launch(*argv: str) -> list[str]:
    """The shipped 2-process CPU config (MULTI_GPU on a machine without GPUs = CPU processes over gloo)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu-2proc.yaml"),
            "-m", "archskip.cli", *argv]


def common(model_dir, data, out):  # noqa: F811
    return ["--model.name_or_path", str(model_dir), "--data.train", data, "--adapter.hidden", "8", "--adapter.skip_hidden", "16",
            "--train.batch_size", "8", "--train.lr", "0.003", "--train.log_every", "1", "--seed", "3", "--output_dir", str(out)]


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_search_on_two_processes_keeps_one_policy(model_dir, data, tmp_path):  # noqa: F811
    out = tmp_path / "search"
    run(torchrun("search", *common(model_dir, data, out), "--search.k", "1", "--search.update_every", "2", "--search.supernet", "on",
                 "--search.warmup_epochs", "0.5", "--train.epochs", "2"))
    result = json.loads((out / "search_result.json").read_text())
    assert result["config"]["world_size"] == 2 and len(result["history"]) >= 5
    assert all(h["ranks_agree"] is True for h in result["history"])  # gates gathered and compared bit for bit
    plan = SkipPlan.from_dict(result["plan"])
    final = result["history"][-1]["gates"]
    verification = result["config"]["verification"]  # the default mode measures every plan (losses summed over ranks)
    assert verification["gates_top_k"] == [max(range(4), key=lambda i: (final[i], -i))]
    assert len(verification["measured"]) == 4 and list(plan.skip) == verification["measured"][0]["plan"]
    rows = (out / "policy.csv").read_text().splitlines()
    assert len(rows) == 1 + len(result["history"])  # one writer: no row written twice


def test_the_default_search_on_two_processes_measures_every_plan_once(model_dir, data, tmp_path):  # noqa: F811
    """No supernet: each process measures its share, the sums decide, one process writes; with a final round, the
    finalists train on both processes and each process judges every held-out example. (That two processes measure
    what one does is checked on a decoder, without a head re-fit, in test_fsdp.py.)"""
    out = tmp_path / "default"
    run(torchrun("search", *common(model_dir, data, out), "--search.k", "2", "--search.finalists", "2"))
    result = json.loads((out / "search_result.json").read_text())
    assert result["config"]["world_size"] == 2 and result["config"]["supernet"] is False
    measured = result["config"]["verification"]["measured"]
    finals = result["config"]["finals"]["plans"]
    assert len(measured) == 6 and result["plan"]["skip"] == finals[0]["plan"]
    assert {tuple(m["plan"]) for m in finals} >= {tuple(m["plan"]) for m in measured[:2]}
    assert json.loads((out / "finalists.json").read_text())["measured"]  # written by the main process
    log = json.loads((out / "measured_plans.json").read_text())  # written as measured, by the main process
    assert log["settings"]["processes"] == 2 and sorted(m["plan"] for m in log["measured"]) == sorted(m["plan"] for m in measured)
    n = log["settings"]["examples"]  # drawn; the batches (of 8) that do not divide between the 2 processes are not measured
    assert result["config"]["verification"]["examples"] == min(n, (-(-n // 8) // 2) * 16)
    assert not (out / "policy.csv").exists() and not (out / "search_adapters.safetensors").exists()


def test_training_on_two_processes_ends_with_identical_adapters(model_dir, data, tmp_path):  # noqa: F811
    out = tmp_path / "train"
    run(accelerate_launch("train", *common(model_dir, data, out), "--plan", "2", "--train.epochs", "2",
                          "--train.grad_accum", "2"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["adapters_identical_across_processes"] is True
    assert (out / "artifact" / "adapter_model.safetensors").is_file()
    # 320 examples / batch 8 = 40 global batches per epoch, 20 per process, 2 micro-batches per step: 10 steps per epoch
    assert metrics["steps"] == 20


def test_two_process_search_killed_then_resumed_with_one_process(model_dir, data, tmp_path):  # noqa: F811
    out = tmp_path / "search"
    argv = [*common(model_dir, data, out), "--search.k", "1", "--search.update_every", "2", "--search.supernet", "on", "--search.warmup_epochs", "0.5",
            "--train.epochs", "4", "--train.checkpoint_every", "1"]
    # the writer SIGKILLs itself right after the checkpoint of step 25, the launcher stops the other worker
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
              "25", "after-write", "search", *argv]
    child = subprocess.run(launch, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert child.returncode != 0, "the run was not killed"
    assert checkpoint_step(out) == 25 and not (out / "search_result.json").exists(), child.stderr[-3000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["world_size"] == 2
    with pytest.warns(UserWarning, match="resuming a 2-process run with 1 process"):
        main(["search", *argv, "--resume", "true"])
    result = json.loads((out / "search_result.json").read_text())
    plan = SkipPlan.from_dict(result["plan"])
    assert plan.num_candidates == 4 and plan.k == 1 and result["config"]["world_size"] == 1


def test_shipped_accelerate_configs_are_consistent():
    import yaml

    for path in CONFIGS.glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        gpus = 2 if cfg.get("use_cpu") is False and "cpu" in path.stem else 8
        assert cfg["num_processes"] == cfg["num_machines"] * gpus, path.name
        if cfg["distributed_type"] == "FSDP":
            fsdp = cfg["fsdp_config"]
            assert fsdp["fsdp_use_orig_params"] is True and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "SkippableLayer"


def test_updates_per_epoch_gives_the_same_number_of_updates_on_two_processes(model_dir, data, tmp_path):  # noqa: F811
    """T counts each process's own micro-batches, so updates_per_epoch means the same on any number of processes."""
    counts = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        args = ("search", *common(model_dir, data, out), "--search.k", "1", "--search.mode", "faithful",
                "--search.updates_per_epoch", "4", "--search.warmup_epochs", "1", "--train.epochs", "2")
        run(torchrun(*args) if procs == 2 else [sys.executable, "-m", "archskip.cli", *args])
        history = json.loads((out / "search_result.json").read_text())["history"]
        counts[procs] = sum(1 <= h["epoch"] < 2 for h in history)  # updates during the epoch after the warm-up
    assert counts[1] == counts[2] == 4, counts
