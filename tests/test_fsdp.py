"""FSDP (the sharded path of configs/accelerate/*fsdp.yaml) on two CPU processes over gloo: `archskip search`
then `archskip train` on a tiny random LLaMA end with the same gates, plan and adapters as one process.

accelerate (1.16) selects FSDP only on a device accelerator: on a machine without one, `accelerate launch` with
an FSDP config starts CPU processes that run DDP (the distributed type is MULTI_CPU and the FSDP plugin is
dropped; `fsdp_sync_module_states: true` is even refused on CPU). So the child below keeps everything else and
switches the accelerator to FSDP after accelerate chose: accelerate's own FSDP1 preparation (`Accelerator.prepare`)
then wraps the model with torch's FullyShardedDataParallel, with the settings of configs/accelerate/cpu-2proc-fsdp.yaml
as accelerate reads them from the launcher's environment (FULL_SHARD, one unit per SkippableLayer, use_orig_params).
The child records how the model was sharded, so that a run that fell back to DDP cannot pass.

One process with batches of 16 sees what two processes with batches of 8 see: process r takes global batch
2i + r of the same shuffled order, and each example's answer is 2 tokens (a word and EOS), so the token-mean
loss of 16 examples is the mean of the two processes' losses, and so are the averaged gradients, the rewards
(reward batches follow the batch size) and the plan measurements (summed over processes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import DEC, classification_examples, tiny_tokenizer
from safetensors.torch import load_file

from archskip.cli import main
from archskip.data import text as text_data
from archskip.plan import SkipPlan

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

CONFIG = Path(__file__).parent.parent / "configs" / "accelerate" / "cpu-2proc-fsdp.yaml"
LAYERS = 4

# Run several archskip CLI commands (a JSON list of argv lists) in each launched process, under FSDP.
CHILD = """
import json, os, sys
import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FullyShardedDataParallel
from archskip import cli, train

make = train.make_accelerator

def make_fsdp(cfg):
    acc = make(cfg)
    if acc.distributed_type != DistributedType.FSDP:  # accelerate runs FSDP configs on CPU as DDP: switch
        assert acc.distributed_type == DistributedType.MULTI_CPU and os.environ["ACCELERATE_USE_FSDP"] == "true"
        for shared in (PartialState._shared_state, acc.state.__dict__):  # (the state accelerate's helpers read)
            shared["distributed_type"] = DistributedType.FSDP
            shared["device"] = torch.device("cpu")  # FSDP's compute device on CPU; accelerate says cpu:0
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # the config's fsdp_* settings, from the launcher
    return acc

fit = train.Trainer.fit

def fit_and_record(self, *args, **kwargs):
    result = fit(self, *args, **kwargs)
    units = FullyShardedDataParallel.fsdp_modules(self._engine)
    record = {"units": len(units), "wrapped": sorted({type(u.module).__name__ for u in units}),
              "local": sum(p.numel() for p in self.model.parameters())}  # use_orig_params: this process's share
    with self.full_params():
        record["full"] = sum(p.numel() for p in self.model.parameters())
    (self.out_dir / f"fsdp-{self.desc}-{self.rank}.json").write_text(json.dumps(record))
    return result

shard = train.Trainer.shard

def shard_and_record(self):  # the default search shards for its measurements only
    shard(self)
    units = FullyShardedDataParallel.fsdp_modules(self._engine)
    record = {"units": len(units), "wrapped": sorted({type(u.module).__name__ for u in units}),
              "local": sum(p.numel() for p in self.model.parameters())}
    with self.full_params():
        record["full"] = sum(p.numel() for p in self.model.parameters())
    (self.out_dir / f"fsdp-measure-{self.rank}.json").write_text(json.dumps(record))

train.make_accelerator, train.Trainer.fit, train.Trainer.shard = make_fsdp, fit_and_record, shard_and_record
# Both commands in one launch (half the start-up time): between them every rank waits (the next command reads
# what the writer wrote), and the process group is ended once, after the last.
end, cli.end_process_group = cli.end_process_group, torch.distributed.barrier
for argv in json.loads(sys.argv[1]):
    cli.main(argv)
end()
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**DEC, "num_hidden_layers": LAYERS})).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 100 rows: 10 validation, 10 test, 80 training (5 batches of 16); the search holds out 16 for rewards (64 left)
    rows = classification_examples(100, seed=5, labels=("w50", "w51"))  # answers: one word + EOS
    return str(text_data.write_csv(tmp_path_factory.mktemp("data") / "d.csv", rows))


def commands(model_dir, data, out: Path, batch: int) -> list[list[str]]:
    common = ["--model.name_or_path", str(model_dir), "--data.train", data, "--task.name", "causal_lm",
              "--adapter.hidden", "8", "--adapter.skip_hidden", "16", "--train.batch_size", str(batch),
              "--train.lr", "0.003", "--train.log_every", "1", "--seed", "3"]
    search = ["search", *common, "--output_dir", str(out / "search"), "--search.k", "1", "--search.update_every", "2", "--search.supernet", "on",
              "--search.warmup_epochs", "0.5", "--search.reward_fraction", "0.2", "--train.epochs", "3"]
    # from the search's plan and adapters (written from the shards); gradients clipped (every step at 0.05) with the
    # last kept block fine-tuned in full: its tensors lie in both processes' shards, so a norm of one shard would
    # clip differently (the adapters alone happen to lie in one shard at this size)
    train = ["train", *common, "--output_dir", str(out / "train"), "--plan", str(out / "search" / "search_result.json"),
             "--train.warm_start", str(out / "search"), "--train.epochs", "2", "--train.max_grad_norm", "0.05",
             "--train.unfreeze_kept", "1"]
    # the default search: no supernet, plans measured on the frozen model (sharded under FSDP)
    default = ["search", *common, "--output_dir", str(out / "default"), "--search.k", "1"]
    return [search, train, default]


# Tolerances: the runs differ only in float reduction order (sums over 8 or 16 examples, FSDP's reduce-scatter),
# ~1e-7 relative per step; seen: gates 7.5e-7, adapters 4e-7 (values up to 1), losses 3e-8 relative. What FSDP
# broke before it was fixed moved them by 1e-3 (per-shard clipping) to 2e-2 (unused adapters given zero gradients).
def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{what} {name}: {m}")


def test_fsdp_search_and_train_match_one_process(model_dir, data, tmp_path):
    two, one = tmp_path / "fsdp", tmp_path / "one"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), str(script),
              json.dumps(commands(model_dir, data, two, batch=8))]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    for argv in commands(model_dir, data, one, batch=16):
        main(argv)

    # the two processes really sharded the model: one FSDP unit per block plus the root, each process holding a part
    for stage, name in (("search", "search"), ("train", "train"), ("default", "measure")):
        records = [json.loads((two / stage / f"fsdp-{name}-{r}.json").read_text()) for r in (0, 1)]
        assert all(r["units"] == 1 + LAYERS and "SkippableLayer" in r["wrapped"] for r in records), records
        assert all(r["local"] < r["full"] for r in records), records
        assert records[0]["local"] + records[1]["local"] >= records[0]["full"], records  # (shards are padded)

    s2, s1 = (json.loads((d / "search" / "search_result.json").read_text()) for d in (two, one))
    assert s2["config"]["world_size"] == 2 and s1["config"]["world_size"] == 1
    assert s2["plan"] == s1["plan"]
    assert len(s2["history"]) == len(s1["history"]) >= 4
    assert all(h["ranks_agree"] is True for h in s2["history"])
    for h2, h1 in zip(s2["history"], s1["history"]):
        assert h2["micro_step"] == h1["micro_step"]
        torch.testing.assert_close(torch.tensor(h2["gates"]), torch.tensor(h1["gates"]), rtol=0, atol=1e-5)
    v2, v1 = s2["config"]["verification"], s1["config"]["verification"]
    assert [m["plan"] for m in v2["measured"]] == [m["plan"] for m in v1["measured"]] and len(v1["measured"]) == LAYERS
    for m2, m1 in zip(v2["measured"], v1["measured"]):
        assert m2["metrics"]["loss"] == pytest.approx(m1["metrics"]["loss"], rel=1e-5)
    assert_same_tensors(load_file(two / "search" / "search_adapters.safetensors"),
                        load_file(one / "search" / "search_adapters.safetensors"), "search adapters")

    # the default search (no supernet) measures the same plans with the same losses, and ships the same plan
    d2, d1 = (json.loads((d / "default" / "search_result.json").read_text()) for d in (two, one))
    assert d2["config"]["supernet"] is False and d2["config"]["world_size"] == 2 and d2["plan"] == d1["plan"]
    m2, m1 = d2["config"]["verification"]["measured"], d1["config"]["verification"]["measured"]
    assert [m["plan"] for m in m2] == [m["plan"] for m in m1] and len(m1) == LAYERS
    assert [m["metrics"]["loss"] for m in m2] == pytest.approx([m["metrics"]["loss"] for m in m1], rel=1e-5)

    t2, t1 = (json.loads((d / "train" / "metrics.json").read_text()) for d in (two, one))
    assert t2["processes"] == 2 and t2["plan"] == t1["plan"] == list(SkipPlan.from_dict(s1["plan"]).skip)
    assert t2["steps"] == t1["steps"] == 10 and t2["trainable_params"] == t1["trainable_params"] > 0
    for m2, m1 in ((t2["validation"], t1["validation"]), (t2["test"]["test"], t1["test"]["test"])):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5) and m2["exact_match"] == m1["exact_match"]
    assert_same_tensors(load_file(two / "train" / "artifact" / "adapter_model.safetensors"),
                        load_file(one / "train" / "artifact" / "adapter_model.safetensors"), "trained adapters")
