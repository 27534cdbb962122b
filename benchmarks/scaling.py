"""How the DAS search's cost grows with the number of processes, with k, M and the depth N.

(a) One search step with 1 and with 2 processes (torchrun, gloo on CPU; NCCL on GPUs): wall time of a
    fixed number of micro-batches per process, examples per second.
(b) FLOPs (torch's counter; exact) of the pieces of a search on all-MiniLM-L6-v2 (N = 6) and
    SmolLM2-135M (N = 30): one training micro-batch under k skipped blocks, one policy update
    (M configurations scored on a reward batch), and the search's overhead over plain training,
    1 + M x forward / (T x (forward + backward)).

    python benchmarks/scaling.py            # full
    python benchmarks/scaling.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Report

from archskip import AdapterConfig, ModelConfig, SkipModel, TaskConfig
from archskip.data.movie_reviews import load_rotten_tomatoes
from archskip.data.text import write_csv
from archskip.models.load import load_pretrained
from archskip.profile import count_flops
from archskip.tasks import build_task

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def processes(quick: bool) -> list[dict]:
    """Wall time of the same per-process work with 1 and 2 processes."""
    rows_data = load_rotten_tomatoes()
    tmp = Path(tempfile.mkdtemp())
    data = str(write_csv(tmp / "train.csv", rows_data[:: 4]))
    steps = 4 if quick else 30
    out = []
    for n in (1, 2):
        threads = str(max(1, (os.cpu_count() or 2) // n))  # the same cores, split between the processes
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads}
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)] if n > 1 else [sys.executable]
        cmd = [*launch, "-m", "archskip.cli", "search", "--model.name_or_path", MINILM, "--data.train", data,
               "--task.max_length", "64", "--task.pooling", "mean", "--adapter.hidden", "64", "--adapter.skip_hidden", "128",
               "--search.k", "2", "--search.update_every", "2", "--search.warmup_epochs", "0.0", "--search.supernet", "on", "--train.batch_size", "16",
               "--train.max_steps", str(steps), "--train.log_every", "1000", "--output_dir", str(tmp / f"p{n}")]
        if quick:  # (the smoke run: 4 plans measured on a few examples, not 15 on the default 1,024)
            cmd += ["--search.verify_examples", "64", "--search.shortlist", "4"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # its output is captured: show why it failed
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            raise SystemExit(f"the {n}-process search exited with status {done.returncode}: {' '.join(cmd)}")
        wall = time.perf_counter() - t0
        result = json.loads((tmp / f"p{n}" / "search_result.json").read_text())
        search_s = result["wall_time_s"]
        out.append({"processes": n, "threads each": threads, "micro-batches per process": steps,
                    "examples": steps * 16 * n, "search s": round(search_s, 1), "examples / s": round(steps * 16 * n / search_s, 1),
                    "wall s (incl. start-up)": round(wall, 1)})
    return out


def flops_rows(name: str, model_cfg: ModelConfig, task_cfg: TaskConfig, adapter: AdapterConfig, batch: dict) -> list[dict]:
    base, tok, _ = load_pretrained(model_cfg)
    model = SkipModel(base, adapter)
    task = build_task(task_cfg, tok, [{"label": 0}, {"label": 1}] if task_cfg.name == "classification" else None)
    task.attach_head(model)
    n = model.num_candidates
    rows = []
    for k in sorted({0, 2, n // 5, n // 3}):
        model.set_skip(list(range(n - k, n)))
        fwd = count_flops(lambda: task.loss(model, batch))
        model.train()

        def step():
            with torch.enable_grad():
                task.loss(model, batch).backward()

        train = count_flops(step)
        model.zero_grad(set_to_none=True)
        model.eval()
        for m in (1, 3):
            for t in (2, 10):
                rows.append({"model": name, "N": n, "k": k, "M": m, "T": t, "forward GFLOPs": round(fwd / 1e9, 3),
                             "train step GFLOPs": round(train / 1e9, 3), "update GFLOPs (M x forward)": round(m * fwd / 1e9, 3),
                             "search overhead": f"{1 + m * fwd / (t * train):.3f}x"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    report = Report("scaling", "Scaling of the DAS search: processes, k, M, depth", [0], args.quick)
    report.table("(a) One search on 1 and 2 processes (same micro-batches per process)", processes(args.quick),
                 ["processes", "threads each", "micro-batches per process", "examples", "search s", "examples / s",
                  "wall s (incl. start-up)"],
                 note="all-MiniLM-L6-v2, batch 16 per process, 64 tokens, k = 2, T = 2, M = 3; the two runs share the "
                      "machine's cores (threads split between processes). Per update, the processes exchange M losses "
                      "(all-reduce) and the N gates (gather, to check they agree): a few hundred bytes.")
    ids = torch.randint(1000, 20000, (16, 64))
    rows = flops_rows("all-MiniLM-L6-v2", ModelConfig(name_or_path=MINILM), TaskConfig(max_length=64, pooling="mean"),
                      AdapterConfig(hidden=64, skip_hidden=128),
                      {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(16, dtype=torch.long)})
    if not args.quick:
        from archskip.models.packaged import smollm2

        ids = torch.randint(100, 40000, (4, 128))
        rows += flops_rows("SmolLM2-135M", ModelConfig(name_or_path=str(smollm2())), TaskConfig(name="boolq"),
                           AdapterConfig.lavin(), {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    report.table("(b) FLOPs of the search's pieces", rows,
                 ["model", "N", "k", "M", "T", "forward GFLOPs", "train step GFLOPs", "update GFLOPs (M x forward)", "search overhead"],
                 note="MiniLM: batch 16 x 64 tokens; SmolLM2: batch 4 x 128 tokens, the k skipped blocks being the last ones. "
                      "A training micro-batch costs about 2 forwards (the backward through the frozen blocks computes input "
                      "gradients only, no weight gradients); an update costs M forwards every T micro-batches, so the "
                      "overhead is about 1 + M/(2T): 1.15x for the paper's M = 3, T = 10, whatever N and k (both costs "
                      "scale with the N - k blocks that run) and the number of processes (each scores its own reward batch).")
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
