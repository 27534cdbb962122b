"""`archskip profile` without an artifact: DAS-k variants of a configured model, built side by side.

`parameter_table` counts trainable parameters for each k (on the meta device for `random:` presets, so
LLaMA-7B + CLIP ViT-L/14 fit anywhere); `profile_model` measures FLOPs and latency of the frozen base
model against each variant in one process (weights do not change FLOPs or latency).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from .config import RunConfig
from .models import load_pretrained
from .plan import SkipPlan, resolve_plan
from .profile import compare_generation, compare_models
from .skipping import SkipModel
from .tasks import assemble, build_task, to_device


def _task(cfg: RunConfig, tokenizer):
    labels = [{"label": i} for i in range(cfg.task.num_labels or 2)]  # classification needs a label set
    return build_task(cfg.task, tokenizer, labels if cfg.task.name == "classification" else None,
                      images=cfg.model.vision is not None)


def parameter_table(cfg: RunConfig, ks: list[int]) -> list[dict]:
    """Trainable and total parameters of DAS-k for each k (the last k blocks skipped, unused adapters removed).

    `random:<preset>` models are built on the meta device: no memory, so LLaMA-7B + CLIP ViT-L/14 fit anywhere."""
    meta = cfg.model.name_or_path.startswith("random:")
    base, tokenizer, extras = load_pretrained(cfg.model, device="meta" if meta else None)
    task = _task(cfg, tokenizer)
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
    task = _task(cfg, tokenizer)

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
    if generate_tokens and task.generates:
        prompts = {k: v for k, v in batch.items() if k != "labels"}
        das = {name: m for name, (m, off) in models.items() if not off}  # generation needs the adapters' routing
        speed = compare_generation(das, task, prompts, new_tokens=generate_tokens, repeats=repeats, warmup=1, device=device)
        first = next(iter(das))
        for r in rows:
            if r["model"] in speed:
                r["s_per_question"] = speed[r["model"]].median_s
                r["generation_ratio"] = speed[r["model"]].median_s / speed[first].median_s
    return rows
