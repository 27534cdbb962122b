"""Write a pruned SkipModel as a self-contained Hugging Face model directory (docs/export.md).

    <dir>/config.json                  the base model's config with N - k layers (and its per-layer lists cut to
                                       match), model_type "archskip", an `archskip` section (where every adapter
                                       goes) and `auto_map` naming the classes of modeling_archskip.py
    <dir>/model.safetensors            the kept blocks, the rest of the base model, adapters, replacements, head
    <dir>/modeling_archskip.py         the model code: transformers + torch, no archskip
    <dir>/generation_config.json       decoders
    <dir>/tokenizer files              when a tokenizer is known
    <dir>/processor files              when a processor or image processor is known (processor_config.json ...)

The model is written by transformers itself (`save_pretrained` of the class modeling_archskip.py defines, built
on the meta device and given the SkipModel's own tensors, so nothing is copied), into a temporary directory that
replaces `out` only after the written directory, loaded back, computed what the SkipModel computes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..adapters import Bottleneck, ReplacementAdapter, RMSNorm, SequentialAdapter
from ..errors import BackboneError, OutputError, PlanError
from ..sites import ParallelAdapterSite, ResidualAdapterSite, SequentialAdapterSite
from . import modeling_archskip as template

TEMPLATE = Path(template.__file__)


class ExportError(BackboneError):
    """A model archskip cannot write as a plain transformers model directory (the message says why)."""


AUTO_CLASSES = {
    # the auto classes config.json maps to the model class: decoders load as causal LMs, classifiers with their head
    "decoder": ("AutoModelForCausalLM", "AutoModel"),
    "vision-language": ("AutoModelForImageTextToText", "AutoModelForCausalLM", "AutoModel"),
    "encoder": ("AutoModel",),
    "classifier": ("AutoModelForSequenceClassification", "AutoModel"),
}


def save_pretrained(model, out_dir: str | Path, *, task=None, tokenizer=None, processor=None,
                    check: bool = True) -> dict:
    """Write `model` (a SkipModel with a plan; pruned or not, it is left as it is) to `out_dir`, with the tokenizer
    (`tokenizer`, else the task's) and `processor` (a vision-language model's processor, or an image processor),
    each saved by its own save_pretrained. Returns what was written: {"dir", "classes", "kept", "max_abs_diff"}
    (max_abs_diff: of the reloaded directory's output against the model's on a probe input, None with
    check=False)."""
    refuse(model, task)
    save_preprocessing = preprocessing(task, tokenizer, processor)
    base = model.base
    keep, skip = tuple(model.plan.keep), tuple(model.plan.skip)
    section = export_section(model, task)
    config = _export_config(model, keep, section)
    head = section["head"] is not None
    kind = "classifier" if head else "encoder" if not model.is_decoder else (
        "decoder" if _layers_config(model) is base.config else "vision-language")
    class_name = template.PREFIX + type(base).__name__ + (template.HEAD if head else "")
    config.auto_map = {"AutoConfig": f"modeling_archskip.{template.PREFIX}{type(base.config).__name__}",
                       **{auto: f"modeling_archskip.{class_name}" for auto in AUTO_CLASSES[kind]}}
    if head:
        config.id2label = dict(enumerate(section["head"]["labels"]))
        config.label2id = {n: i for i, n in enumerate(section["head"]["labels"])}
    model_class = getattr(template, class_name)
    with torch.device("meta"):
        exported = model_class(config)
    _give_tensors(exported, _tensors(model, keep, skip))
    if getattr(base, "generation_config", None) is not None and exported.can_generate():
        exported.generation_config = copy.deepcopy(base.generation_config)

    def fill(tmp: Path) -> float | None:
        exported.save_pretrained(tmp)
        shutil.copyfile(TEMPLATE, tmp / TEMPLATE.name)
        save_preprocessing(tmp)
        (tmp / "README.md").write_text(_readme(section, config.auto_map), encoding="utf-8")
        return _check(model, task, model_class, tmp) if check else None

    diff = write_dir(out_dir, fill)
    return {"dir": str(out_dir), "classes": config.auto_map, "kept": list(keep), "max_abs_diff": diff}


def write_dir(out_dir: str | Path, fill):
    """`fill(tmp)` writes a new directory, which then replaces `out_dir` (empty, absent, or an earlier export);
    if `fill` fails, `out_dir` is left as it was. Returns what `fill` returns."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_export_dir(out))):
        raise OutputError(f"{str(out)!r} exists and is not an archskip export: choose another directory (an earlier "
                          "export there is replaced)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot write {str(out)!r}: {e}") from None
    try:
        result = fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---- tokenizer and processor ------------------------------------------------------------------------------------
def preprocessing(task, tokenizer, processor):
    """`save(dir)`, which writes what turns a user's text and images into the model's inputs: the tokenizer
    (`tokenizer`, else the task's) and `processor`, each with its own save_pretrained and loaded back (a file
    that transformers cannot read back would leave the user without it). A processor that holds a tokenizer is
    saved with the tokenizer the model was trained with in its place (the task's: e.g. archskip gives a tokenizer
    without a pad token the end-of-sequence token as one), so both files agree; an explicit `tokenizer` that is
    not the processor's own is refused, since one of the two would be overwritten."""
    from transformers import FeatureExtractionMixin, ImageProcessingMixin, PreTrainedTokenizerBase, ProcessorMixin

    if processor is not None:
        if isinstance(processor, PreTrainedTokenizerBase):
            raise ExportError(f"processor= got a tokenizer ({type(processor).__name__}): pass it as tokenizer=")
        if not isinstance(processor, (ProcessorMixin, ImageProcessingMixin, FeatureExtractionMixin)):
            raise ExportError(f"processor= must be a transformers processor or image processor (AutoProcessor, "
                              f"AutoImageProcessor), not a {type(processor).__name__}")
        own = getattr(processor, "tokenizer", None)
        if own is not None and tokenizer is not None and tokenizer is not own:
            raise ExportError(f"the {type(processor).__name__} holds a tokenizer and tokenizer= is another one: pass "
                              "one of them (the processor saves its tokenizer)")
        task_tokenizer = getattr(task, "tokenizer", None)
        if own is not None and tokenizer is None and task_tokenizer is not None and task_tokenizer is not own:
            processor = copy.copy(processor)  # (the caller's processor keeps its tokenizer)
            processor.tokenizer = task_tokenizer
        if own is not None:
            tokenizer = None  # saved by the processor
    elif tokenizer is None:
        tokenizer = getattr(task, "tokenizer", None)

    def save(directory: Path) -> None:
        # written and read back beside the model's directory, without its config.json: transformers reads a
        # config.json there to pick a tokenizer class, which for an export means asking to trust its code
        with tempfile.TemporaryDirectory(prefix=".preprocessing.", dir=directory.parent) as side:
            for obj in (tokenizer, processor):
                if obj is None:
                    continue
                obj.save_pretrained(side)
                try:
                    type(obj).from_pretrained(side)
                except Exception as e:  # any failure to read it back is the export's failure
                    raise ExportError(f"the {type(obj).__name__} written does not load back: {type(e).__name__}: "
                                      f"{e}") from e
            shutil.copytree(side, directory, dirs_exist_ok=True)

    return save


def base_processor(name_or_path: str):
    """The processor (or image processor) saved with the base model `name_or_path`, for an export from an
    artifact: a vision-language model's or ViLT's directory has one (processor_config.json or
    preprocessor_config.json). None when there is none (text models, `random:` presets, original checkpoints,
    whose images archskip prepares itself)."""
    import os

    from transformers import AutoProcessor, FeatureExtractionMixin, ImageProcessingMixin, ProcessorMixin

    from ..models.load import resolve_name

    if not name_or_path or name_or_path.startswith("random:") or name_or_path.endswith(".ckpt"):
        return None
    path = resolve_name(name_or_path)
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in PROCESSOR_FILES):
        return None
    try:
        found = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:  # (a hub id whose files are not cached offline ...)
        if os.path.isdir(path):  # the directory has a processor file that does not load: say so
            raise ExportError(f"cannot load the processor saved with the base model {name_or_path!r}: "
                              f"{type(e).__name__}: {e}") from None
        return None
    # AutoProcessor falls back to the tokenizer, which the artifact's task already has
    return found if isinstance(found, (ProcessorMixin, ImageProcessingMixin, FeatureExtractionMixin)) else None


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


# ---- what can be exported ----------------------------------------------------------------------------------------
def refuse(model, task) -> None:
    import transformers

    if model.plan is None:
        raise PlanError("apply_plan(plan) before save_pretrained: the plan decides which blocks are exported")
    base = model.base
    name = type(base).__name__
    if getattr(transformers, name, None) is not type(base):
        raise ExportError(f"the base model is a {name}, not a transformers class (archskip's own model code, e.g. "
                          "METER or LaVIN): the exported code could not rebuild it with plain transformers")
    if model.spec.keep_positions:
        raise ExportError(f"{model.spec.family} blocks keep every block's place when pruned (the model's forward "
                          "indexes its blocks, e.g. DeBERTa-v2 with a convolution): a plain transformers model of "
                          "N - k blocks cannot hold that")
    if model.adapter_config.kind == "router":
        raise ExportError("adapter.kind='router' (LaVIN's mixture-of-modality adapter) is not exportable: only "
                          "bottleneck adapters are")
    if model.head is not None:
        if task is None:
            raise ExportError("this model has a task head: pass task= (the head's pooling and labels are exported "
                              "with it)")
        if getattr(task, "name", None) != "classification" or not isinstance(getattr(model.head, "out", None), nn.Linear):
            raise ExportError(f"the {getattr(task, 'name', '?')} task's head is not exportable; a classification "
                              "head is (export without a head: a model whose task has none)")


def _norm_spec(norm: nn.Module, model, host: nn.Module) -> dict:
    if type(norm) is nn.LayerNorm and norm.elementwise_affine and norm.bias is not None:
        return {"kind": "layernorm", "eps": norm.eps}
    if type(norm) is RMSNorm:
        return {"kind": "rmsnorm", "eps": norm.eps}
    if type(norm) is nn.Identity:
        return {"kind": "none"}
    path = model.spec.input_norm
    if path is not None and type(norm) is type(host.get_submodule(path)):  # skip_norm='block': a copy of a block's norm
        return {"kind": "block", "module": path}
    raise ExportError(f"an adapter norm of type {type(norm).__name__} is not exportable")


def _adapter_spec(adapter: nn.Module, model, host: nn.Module, allowed: tuple[type, ...]) -> dict:
    if type(adapter) not in allowed:
        raise ExportError(f"an adapter of type {type(adapter).__name__} is not exportable (expected "
                          f"{' or '.join(t.__name__ for t in allowed)})")
    return {"hidden": adapter.down.out_features, "scale": float(adapter.scale), "dropout": float(adapter.dropout.p),
            "norm": _norm_spec(adapter.norm, model, host)}


def _site_spec(site, model, host: nn.Module) -> dict:
    if isinstance(site, ParallelAdapterSite):
        where = {"kind": "parallel", "tap": site.spec.tap, "add": site.spec.branch}
        allowed = (Bottleneck,)
    elif isinstance(site, ResidualAdapterSite):
        where = {"kind": "residual_arg", "module": site.spec.module}
        allowed = (Bottleneck,)
    elif isinstance(site, SequentialAdapterSite):
        where = {"kind": "sequential", "norm_module": site.norm_name}
        allowed = (SequentialAdapter,)
    else:
        raise ExportError(f"an adapter site of type {type(site).__name__} is not exportable")
    if not site.active:
        raise ExportError("an adapter site is switched off (adapters_disabled): export outside that context")
    return {**where, **_adapter_spec(site.adapter, model, host, allowed)}


def _hosts(keep: tuple[int, ...], skip: tuple[int, ...]) -> dict[int, tuple[str, int]]:
    """Skipped candidate -> ("after", the kept candidate before it) or ("before", the first kept candidate), as
    `SkipModel.prune` places their replacement adapters."""
    out = {}
    for s in skip:
        before = [k for k in keep if k < s]
        out[s] = ("after", before[-1]) if before else ("before", keep[0])
    return out


def export_section(model, task=None) -> dict:
    """config.json's `archskip` section: per kept block, where each adapter taps and adds, and which replacement
    adapters run before / after it; the head; where it all came from."""
    from .. import __version__

    keep, skip = tuple(model.plan.keep), tuple(model.plan.skip)
    if not keep:
        raise PlanError("the plan skips every block: nothing to export")
    hosts = _hosts(keep, skip)
    blocks = []
    for i in keep:
        layer = model.candidates[i]
        block = layer.block
        entry = {"candidate": i, "sites": {n: _site_spec(s, model, block) for n, s in layer.sites.items()},
                 "before": [], "after": []}
        for s in skip:
            where, host = hosts[s]
            if host == i:
                rep = model.candidates[s].replacement
                if rep is None:
                    raise ExportError(f"candidate {s} is skipped but has no replacement adapter")
                entry[where].append({"candidate": s, **_adapter_spec(rep, model, block, (ReplacementAdapter,))})
        blocks.append(entry)
    head = None
    if model.head is not None:
        out = model.head.out
        head = {"kind": "classification", "pooling": task.pooling, "num_labels": out.out_features,
                "labels": [str(n) for n in task.labels.names]}
        if len(head["labels"]) != head["num_labels"]:
            raise ExportError(f"the head has {head['num_labels']} outputs but the task {len(head['labels'])} labels")
    return {
        "format": template.FORMAT,
        "family": model.spec.family,
        "base_class": type(model.base).__name__,
        "layers": model.layers_path,
        "dim": _dim(model),
        "blocks": blocks,
        "head": head,
        "plan": {"num_candidates": model.num_candidates, "skip": list(skip), "keep": list(keep)},
        "source": {"base_model": model.name_or_path, "fingerprint": model.fingerprint, "archskip_version": __version__},
    }


def _dim(model) -> int:
    for layer in model.candidates:
        for s in layer.sites.values():
            return s.adapter.down.in_features
        if layer.replacement is not None:
            return layer.replacement.down.in_features
    raise ExportError("the model has no adapters to export")


def _layers_config(model):
    cfg = getattr(model, "layers_config", None)
    return cfg if cfg is not None else model.base.config


BACKBONE_KEYS = ("stage_names", "out_features", "out_indices", "_out_features", "_out_indices")


def _export_config(model, keep: tuple[int, ...], section: dict):
    """A copy of the base config (the pruned model's, or cut to the kept blocks), as the template's config class."""
    base_cfg = model.base.config
    cfg = copy.deepcopy(base_cfg)
    layers_cfg = _layers_config(model)
    if not model.pruned:  # cut the copy to the kept blocks
        model.spec.shrink_config(_blocks_config(cfg, base_cfg, layers_cfg), keep)
    d = cfg.to_dict()
    for k in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "archskip"):
        d.pop(k, None)
    for k in BACKBONE_KEYS:  # a backbone's stage list names the blocks: rebuilt from the cut layer count
        d.pop(k, None)
    config_class = getattr(template, template.PREFIX + type(base_cfg).__name__)
    out = config_class.from_dict({**d, "archskip": section})
    n = getattr(_blocks_config(out, base_cfg, layers_cfg), "num_hidden_layers", None)
    if n != len(keep):
        raise ExportError(f"the exported config says {n} layers, the plan keeps {len(keep)}")
    return out


def _blocks_config(cfg, base_cfg, layers_cfg):
    """In `cfg` (a copy of `base_cfg`), the config that describes the blocks: `cfg` itself, or the sub-config that has
    the place `layers_cfg` has in `base_cfg` (a vision-language model's text config)."""
    if layers_cfg is base_cfg:
        return cfg
    key = next((k for k, v in vars(base_cfg).items() if v is layers_cfg), None)
    if key is None:
        raise ExportError("cannot find the config that describes the blocks in the model's config")
    return getattr(cfg, key)


# ---- the tensors -------------------------------------------------------------------------------------------------
def _named(module: nn.Module, prefix: str):
    """(name, tensor, persistent) of every parameter and buffer of `module`, tied ones under each of their names."""
    for n, t in module.named_parameters(remove_duplicate=False):
        yield prefix + n, (t, True)
    for owner_name, owner in module.named_modules(remove_duplicate=False):
        for n, t in owner._buffers.items():
            if t is not None:
                full = f"{owner_name}.{n}" if owner_name else n
                yield prefix + full, (t, n not in owner._non_persistent_buffers_set)


def _tensors(model, keep, skip) -> dict[str, tuple[torch.Tensor, bool]]:
    """Name in the exported model -> (the SkipModel's tensor, persistent)."""
    layers = model.layers_path + "."
    out = {n: t for n, t in _named(model.base, "") if not n.startswith(layers)}
    hosts = _hosts(keep, skip)
    for j, i in enumerate(keep):
        layer = model.candidates[i]
        out.update(_named(layer.block, f"{layers}{j}."))
        for name, site in layer.sites.items():
            out.update(_named(site.adapter, f"archskip.blocks.{j}.sites.{name}."))
        counts = {"before": 0, "after": 0}
        for s in skip:
            where, host = hosts[s]
            if host == i:
                out.update(_named(model.candidates[s].replacement, f"archskip.blocks.{j}.{where}.{counts[where]}."))
                counts[where] += 1
    if model.head is not None:
        out.update(_named(model.head, "archskip.head."))
    return out


def _give_tensors(exported: nn.Module, tensors: dict[str, tuple[torch.Tensor, bool]]) -> None:
    """Put the SkipModel's tensors into the meta-built exported model (shared, not copied). Every tensor the exported
    model has must come from the SkipModel, and every stored one (parameters, persistent buffers) must go somewhere;
    the SkipModel's other buffers (e.g. rotary tables for layer types no kept block has) are left behind."""
    want = dict(_named(exported, ""))
    missing = sorted(set(want) - set(tensors))
    extra = sorted(n for n, (_, persistent) in tensors.items() if persistent and n not in want)
    if missing or extra:
        raise ExportError(f"the exported model's tensors do not match the SkipModel's: missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
    modules = dict(exported.named_modules(remove_duplicate=False))
    for name, (want_t, _) in want.items():
        t = tensors[name][0]
        if tuple(want_t.shape) != tuple(t.shape):
            raise ExportError(f"{name}: shape {tuple(t.shape)} in the SkipModel, {tuple(want_t.shape)} exported")
        owner, _, attr = name.rpartition(".")
        m = modules[owner]
        if attr in m._parameters:
            m._parameters[attr] = nn.Parameter(t.detach(), requires_grad=False)
        else:
            m._buffers[attr] = t.detach()
    exported.tie_weights()


# ---- the target directory and the check --------------------------------------------------------------------------
ONNX_META = "onnx_model.json"


def is_export_dir(path: Path) -> bool:
    """Does `path` hold an archskip export (a model directory, or an ONNX export)?"""
    for name, key, value in (("config.json", "model_type", "archskip"), (ONNX_META, "kind", "archskip.onnx")):
        try:
            if json.loads((path / name).read_text(encoding="utf-8")).get(key) == value:
                return True
        except (OSError, ValueError, AttributeError):
            pass
    return False


def probe_inputs(model, batch: int = 2, length: int = 8) -> list[dict[str, torch.Tensor]]:
    """Small deterministic inputs of what the model may read: token ids and a mask, images, both (in this order)."""
    import inspect

    base = model.base
    g = torch.Generator().manual_seed(0)
    device = next(base.parameters()).device
    params = inspect.signature(base.forward).parameters
    cfgs = [_layers_config(model), base.config, getattr(base.config, "vision_config", None)]
    text, image = {}, {}
    if "input_ids" in params:
        vocab = next((c.vocab_size for c in cfgs if isinstance(getattr(c, "vocab_size", None), int)), 100)
        ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        if not model.is_decoder:
            mask[0, -2:] = 0
        text = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    size = next((c.image_size for c in cfgs if isinstance(getattr(c, "image_size", None), int)), None)
    if "pixel_values" in params and size:
        channels = next((c.num_channels for c in cfgs if isinstance(getattr(c, "num_channels", None), int)), 3)
        image = {"pixel_values": torch.randn(batch, channels, size, size, generator=g).to(device)}
    return [x for x in (text, image, {**text, **image} if text and image else {}) if x]


def model_output(model, task, x: dict) -> torch.Tensor:
    """What the exported model's first output is: logits (decoders, classifiers) or the last hidden state."""
    if model.head is not None:
        return task.logits(model, x)
    out = model(**x)
    return out.logits if model.is_decoder else out.last_hidden_state


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Eval mode for the body, then every sub-module's own mode back (a frozen base inside a module left in training
    mode stays in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def seeded(x: dict):
    """Run the body from a fixed random state, and leave the caller's as it was."""
    devices = sorted({t.device for t in x.values() if t.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        yield


def _check(model, task, model_class, directory: Path) -> float:
    """Load the written directory back and compare its output with the model's on a probe input."""
    ref_param = next(model.base.parameters())
    ref, errors = None, []
    with torch.no_grad(), evaluating(model):
        for x in probe_inputs(model):
            try:
                with seeded(x):  # (a model that samples, as ViLT's patches, samples alike in both)
                    ref = model_output(model, task, x).float()
                break
            except Exception as e:  # noqa: BLE001 (this input does not suit the model: try the next)
                errors.append(f"{type(e).__name__}: {e}")
    if ref is None:
        raise ExportError(f"cannot check the export: the model runs on no probe input ({'; '.join(errors) or 'none'}); "
                          "pass check=False to write it unchecked")
    try:
        loaded = model_class.from_pretrained(directory, dtype=ref_param.dtype).to(ref_param.device).eval()
    except Exception as e:  # any failure to load back is the export's failure
        raise ExportError(f"the written directory does not load back: {type(e).__name__}: {e}") from e
    with torch.no_grad(), seeded(x):
        out = loaded(**x)
    got = (out.logits if hasattr(out, "logits") else out[0]).float()
    diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
    tol = 1e-5 if ref_param.dtype == torch.float32 else 2e-2
    if not diff <= tol * max(1.0, ref.abs().max().item()):
        raise ExportError(f"the written directory computes something else than the model (max abs difference {diff:.3g} "
                          f"on a probe input): not written")
    return diff


def _readme(section: dict, auto_map: dict) -> str:
    auto = next(a for a in auto_map if a != "AutoConfig")
    plan = section["plan"]
    return (
        f"# {section['base_class']} with {len(plan['skip'])} of {plan['num_candidates']} blocks skipped (archskip DAS)\n\n"
        f"Base model: `{section['source']['base_model'] or '?'}`; skipped blocks {plan['skip']}, each replaced by a "
        f"residual adapter; the {len(plan['keep'])} kept blocks carry adapters. Written by archskip "
        f"{section['source']['archskip_version']}; the model code is `modeling_archskip.py` (transformers + torch).\n\n"
        "```python\n"
        f"from transformers import {auto}\n"
        f"model = {auto}.from_pretrained(\"path/to/this/directory\", trust_remote_code=True)\n"
        "```\n"
    )
