"""The artifact a training run ships: everything needed to rebuild the fine-tuned, pruned model
on top of the (unchanged) base model.

    <dir>/adapter_model.safetensors   adapters of the plan, task head, unfrozen base tensors
    <dir>/archskip.json               format version, base model id/path + config fingerprint,
                                      adapter config, plan, task, metrics

Both files are written atomically; the JSON is written last, so a directory with a readable
archskip.json always has complete weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .config import AdapterConfig, ModelConfig
from .errors import ArtifactError
from .io import atomic_write, atomic_write_text
from .models import load_pretrained
from .plan import SkipPlan
from .skipping import SkipModel, config_fingerprint
from .tasks import Task, assemble, task_from_info

ARTIFACT_FORMAT = 1
WEIGHTS = "adapter_model.safetensors"
META = "archskip.json"




def save_artifact(
    model: SkipModel,
    task: Task,
    out_dir: str | Path,
    *,
    model_config: ModelConfig | None = None,
    metrics: dict | None = None,
    run_config: dict | None = None,
) -> Path:
    """Write the artifact. `model_config` says how the base model was loaded (tokenizer, kind, dtype);
    `run_config` (the training run's settings) is stored for the record."""
    if model.plan is None:
        raise ArtifactError("apply a plan before saving an artifact: the plan travels inside it")
    out = Path(out_dir)
    state = {k: v.contiguous() for k, v in model.trainable_state_dict().items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    meta = {
        "format": ARTIFACT_FORMAT,
        "kind": "archskip.artifact",
        "archskip_version": __version__,
        "base_model": {
            **asdict(model_config or ModelConfig(name_or_path=model.name_or_path)),
            "layers": model.layers_path,
            "trainable": sorted(model.extra_trainable),  # full names: each is a pattern matching itself
            "unfrozen_blocks": model.unfrozen_blocks,  # kept blocks fine-tuned in full (their weights are stored)
            "fingerprint": model.fingerprint,
            "num_candidates": model.num_candidates,
        },
        "adapter": asdict(model.adapter_config),
        "plan": model.plan.to_dict(),
        "task": task.info(),
        "metrics": metrics or {},
        "run_config": run_config or {},
    }
    atomic_write_text(out / META, json.dumps(meta, indent=2))
    return out


def read_meta(path: str | Path) -> dict:
    p = Path(path) / META
    if not p.is_file():
        raise ArtifactError(f"{str(path)!r} is not an archskip artifact (no {META})")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p} is corrupt: {e}") from None
    if meta.get("kind") != "archskip.artifact":
        raise ArtifactError(f"{p} is not an archskip artifact (kind={meta.get('kind')!r})")
    if not isinstance(meta.get("format"), int) or meta["format"] > ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{p} has format {meta.get('format')!r}; this archskip ({__version__}) reads formats up to {ARTIFACT_FORMAT}: upgrade archskip"
        )
    missing = [k for k in ("base_model", "adapter", "plan", "task") if not isinstance(meta.get(k), dict)]
    missing += [f"base_model.{k}" for k in ("name_or_path", "fingerprint") if k not in meta.get("base_model", {})]
    if missing:
        raise ArtifactError(f"{p} is incomplete or corrupt: it lacks {missing}")
    return meta


def load_artifact(
    path: str | Path,
    base: str | nn.Module | None = None,
    tokenizer=None,
    *,
    prune: bool = True,
) -> tuple[SkipModel, Task]:
    """(model, task) from an artifact. `base`: a loaded model, a hub id or local path to use instead of
    the one recorded (e.g. a local copy), or None for the recorded one."""
    meta = read_meta(path)
    bm = meta["base_model"]
    model_cfg = ModelConfig(**{k: bm[k] for k in ModelConfig.__dataclass_fields__ if k in bm})
    extras: dict = {}
    if base is None or isinstance(base, str):
        if isinstance(base, str):
            model_cfg.name_or_path = base
        base, tokenizer, extras = load_pretrained(model_cfg)
    if tokenizer is None:
        raise ArtifactError("pass the tokenizer together with an already loaded base model")
    got = config_fingerprint(base.config)
    if got != bm["fingerprint"]:
        raise ArtifactError(
            f"artifact {str(path)!r} was made for base model {bm['name_or_path']!r} (config fingerprint {bm['fingerprint']}); "
            f"the given base model {getattr(base.config, '_name_or_path', '?')!r} has fingerprint {got}: a different architecture or size"
        )
    task = task_from_info(meta["task"], tokenizer)
    model = assemble(base, task, AdapterConfig(**meta["adapter"]), model_cfg, extras, name_or_path=bm["name_or_path"])
    model.apply_plan(SkipPlan.from_dict(meta["plan"]))
    if bm.get("unfrozen_blocks"):
        model.unfreeze_kept(len(bm["unfrozen_blocks"]))
        if model.unfrozen_blocks != bm["unfrozen_blocks"]:
            raise ArtifactError(f"artifact {str(path)!r}: its fine-tuned blocks {bm['unfrozen_blocks']} are not the last kept "
                                f"blocks of its plan ({model.unfrozen_blocks})")
    try:
        state = load_file(str(Path(path) / WEIGHTS))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise ArtifactError(f"cannot read {Path(path) / WEIGHTS}: {e}") from None
    try:
        model.load_trainable_state_dict(state)
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"artifact {str(path)!r}: {e}") from None
    if prune:
        model.prune()
    return model.eval(), task


SEARCH_ADAPTERS = "search_adapters.safetensors"


def save_search_adapters(model: SkipModel, out_dir: str | Path) -> Path:
    """The adapters and head a search trained (its supernet), for `train.warm_start`."""
    state = {k: v.contiguous() for k, v in model.trainable_state_dict().items()}
    return atomic_write(Path(out_dir) / SEARCH_ADAPTERS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def load_search_adapters(model: SkipModel, path: str | Path) -> int:
    """Copy a search's adapters (a search output directory or its adapters file) into `model`: the tensors of
    the model's plan and its head; the other adapters of the supernet are not used. Returns how many loaded."""
    p = Path(path)
    p = p / SEARCH_ADAPTERS if p.is_dir() else p
    try:
        state = load_file(str(p))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise ArtifactError(f"train.warm_start: cannot read the search's adapters {str(p)!r}: {e}") from None
    own = {n: p for n, p in model.trainable_named_parameters().items() if ".block." not in n}  # (unfrozen blocks
    missing = sorted(set(own) - set(state))                                                     # start from the base)
    if missing:
        raise ArtifactError(f"train.warm_start: {str(p)!r} lacks {len(missing)} tensor(s) this model trains, e.g. "
                            f"{missing[:3]}; was it written by a search on this model and task?")
    try:
        model.load_trainable_state_dict({k: state[k] for k in own}, strict=False)
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"train.warm_start: {e}") from None
    return len(own)
