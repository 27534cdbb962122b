"""Skipping on a Hugging Face backbone: wrap its candidate blocks, apply a plan, prune.

Each candidate block i is replaced, in its own ModuleList, by a `SkippableLayer`:
- kept: the frozen block runs with adapters attached by forward hooks at the sites its family's
  `BlockSpec` names (parallel beside attention and MLP, or LaVIN's sequential adapter);
- skipped: the block does not run; `replacement(x) = x + f(norm(x))` does.

`prune()` removes skipped blocks physically. Their replacement adapters are absorbed into the
neighbouring kept layer (run after it, or before the first kept layer), so the ModuleList holds
exactly the N - k kept blocks and the model config says N - k layers: the pruned model is an
ordinary Hugging Face model (generation with a KV cache included) that computes what the wrapped
model computes under the same plan.

Trainable tensors are named canonically by *original* candidate index
(`candidates.{i}.sites.attn.adapter.up.weight`, `candidates.{i}.replacement.up.weight`,
`head.*`, `base.*`), so an artifact loads onto a pruned or an unpruned model alike.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json

import torch
from torch import nn

from .adapters import Bottleneck, ReplacementAdapter, RouterAdapter, SequentialAdapter, make_norm
from .backbones import BackboneError, BlockSpec, ParallelSite, find_layers, get_submodule, spec_for
from .backbones.registry import layers_config
from .config import AdapterConfig
from .nn_utils import parameter_counts
from .plan import PlanError, SkipPlan
from .sites import ParallelAdapterSite, ResidualAdapterSite, SequentialAdapterSite, Site, run_adapter

CACHE_KWARGS = ("cache", "past_key_values", "layer_past")
"""The names under which Hugging Face decoder blocks receive the KV cache."""


class CacheSlots:
    """Which candidate's KV-cache layer each cache slot holds, for decoders whose layers differ in cache type.

    transformers builds a cache from the model config with one cache layer per block, typed by
    `config.layer_types` (a sliding-window layer keeps only the last window of keys), and builds the attention
    masks from the cache's layer types. While blocks are skipped in place, the running blocks are renumbered
    0..n-1 (`BlockSpec.set_cache_slot`), so slot s must hold the cache layer built for the s-th running block,
    not for block s. Candidate 0 (whose forward runs even when it is skipped) reorders a cache's layers that way
    (running blocks first, the skipped ones after, unused) when the cache reaches it, before any key is written.
    The masks of that first forward were computed from the cache before the reordering, but each from the first
    layer of its type, and empty layers of one type are alike. A pruned model's config lists only the kept
    layers (`BlockSpec.shrink_config`), so its caches are right as built. docs/families.md has the details.
    """

    def __init__(self, n: int):
        self.order: tuple[int, ...] = tuple(range(n))
        """Slot -> candidate index: the running candidates in order, then the skipped ones."""

    def apply(self, cache) -> None:
        layers = getattr(cache, "layers", None)
        have = getattr(cache, "_archskip_slots", None)
        if have == self.order or not isinstance(layers, list) or len(layers) != len(self.order):
            return  # already in this order, or not a cache built with one layer per block
        by_candidate = dict(zip(have or range(len(layers)), layers))
        cache.layers = [by_candidate[i] for i in self.order]
        cache._archskip_slots = self.order


class SkippableLayer(nn.Module):
    """Candidate block `index`: runs the frozen block with adapters, or its replacement adapter."""

    def __init__(self, block: nn.Module, index: int, spec: BlockSpec, cfg: AdapterConfig, dim: int):
        super().__init__()
        self.index, self.spec, self.skipped = index, spec, False
        self.distilling = False  # skipped: also run the frozen block and keep the replacement's distance to it
        self.distill_loss: torch.Tensor | None = None
        self.block: nn.Module | None = block
        ref = next(block.parameters())
        self.sites = nn.ModuleDict(self._make_sites(block, spec, cfg, dim)).to(device=ref.device)
        self.replacement: nn.Module | None = self._make_replacement(block, spec, cfg, dim).to(device=ref.device)
        for site in self.sites.values():
            site.attach(block)
        # pruned models: replacements of removed neighbours, run before / after this block
        self.before = nn.ModuleList()
        self.after = nn.ModuleList()
        self.cache_slots: CacheSlots | None = None  # set on the first candidate of a model with mixed layer types

    @staticmethod
    def _make_sites(block, spec: BlockSpec, cfg: AdapterConfig, dim: int) -> dict[str, Site]:
        if cfg.style == "sequential":
            if spec.sequential_norm is None:
                raise BackboneError(f"{spec.family} blocks are post-LN: use adapter.style='parallel'")
            if cfg.kind == "router":
                ad = RouterAdapter(dim, cfg.hidden, temperature=cfg.router_temperature, scale=cfg.scale, dropout=cfg.dropout)
            else:
                ad = SequentialAdapter(dim, cfg.hidden, init=cfg.init, scale=cfg.scale, dropout=cfg.dropout)
            return {"attn": SequentialAdapterSite(ad, spec.sequential_norm)}
        sites: dict[str, Site] = {}
        for s in spec.parallel:
            ad = Bottleneck(dim, cfg.hidden, norm=cfg.norm, init=cfg.init, scale=cfg.scale, dropout=cfg.dropout)
            sites[s.name] = ParallelAdapterSite(ad, s) if isinstance(s, ParallelSite) else ResidualAdapterSite(ad, s)
        return sites

    @classmethod
    def _make_replacement(cls, block, spec: BlockSpec, cfg: AdapterConfig, dim: int) -> nn.Module:
        norm = cls._skip_norm(block, spec, cfg)
        if cfg.kind == "router":
            norm = make_norm(norm, dim) if isinstance(norm, str) else norm
            return RouterAdapter(dim, cfg.skip_hidden, norm=norm, temperature=cfg.router_temperature, scale=cfg.scale,
                                 dropout=cfg.dropout)
        return ReplacementAdapter(dim, cfg.skip_hidden, norm=norm, init=cfg.skip_init, scale=cfg.scale, dropout=cfg.dropout)

    @staticmethod
    def _skip_norm(block, spec: BlockSpec, cfg: AdapterConfig) -> str | nn.Module:
        if cfg.skip_norm != "block":
            return cfg.skip_norm
        if spec.input_norm is None:
            raise BackboneError(f"{spec.family} blocks have no input norm to copy: use adapter.skip_norm='layernorm'")
        norm = copy.deepcopy(get_submodule(block, spec.input_norm)).float()
        norm._forward_hooks.clear()
        norm._forward_pre_hooks.clear()
        return norm.requires_grad_(False)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        if self.cache_slots is not None:
            cache = next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)
            if cache is not None:
                self.cache_slots.apply(cache)
        for layer in self.before:
            hidden = run_adapter(layer.replacement, hidden)
        extra = ()  # a tuple-returning block's other outputs (e.g. attention weights)
        if self.skipped:
            out = run_adapter(self.replacement, hidden)
            if self.spec.returns_tuple:
                extra = (None,)  # no attention weights (callers unpack (hidden, weights))
            if self.distilling:
                d = self._distill_loss(hidden, args, kwargs)  # a task may call the model twice (NLVR2): add them
                self.distill_loss = d if self.distill_loss is None else self.distill_loss + d
        else:
            out = self.block(hidden, *args, **kwargs)
            if self.spec.returns_tuple:
                out, extra = out[0], tuple(out[1:])
        for layer in self.after:
            out = run_adapter(layer.replacement, out)
        return (out, *extra) if self.spec.returns_tuple else out

    def _distill_loss(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """MSE between the replacement's output and what the skipped block computes on the same input (the
        block runs without gradient and without a KV cache; only the replacement learns from this loss)."""
        if self.block is None:
            raise PlanError(f"candidate {self.index} is pruned: its block cannot teach its replacement")
        # the skipped block's attention still has its old cache slot: it must not write into the running layers' cache
        kwargs = {k: None if k in CACHE_KWARGS else v for k, v in kwargs.items()}
        args = tuple(None if hasattr(a, "get_seq_length") else a for a in args)  # a cache passed by position (GPT-2)
        with torch.no_grad():
            target = self.block(hidden, *args, **kwargs)
        target = target[0] if isinstance(target, tuple) else target
        with torch.enable_grad():
            pred = run_adapter(self.replacement, hidden.detach())
            return torch.nn.functional.mse_loss(pred.float(), target.float())

    # ---- structure -------------------------------------------------------------------------
    def drop_unused(self) -> None:
        """Delete the adapters this layer's current mode does not use (skipped: sites; kept: replacement)."""
        if self.skipped:
            for site in self.sites.values():
                site.detach()
            self.sites = nn.ModuleDict()
        else:
            self.replacement = None

    def extra_repr(self) -> str:
        return f"index={self.index}, skipped={self.skipped}"


# The config keys that define an architecture; other keys (ids, dtypes, versions, generation defaults)
# differ between equivalent copies of a model and must not make an artifact unloadable.
ARCHITECTURE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "type_vocab_size", "max_position_embeddings", "hidden_act", "layer_norm_eps",
    "rms_norm_eps", "tie_word_embeddings", "image_size", "patch_size", "num_channels", "mlp_ratio", "use_swiglu_ffn",
    "d_model", "n_layer", "n_head", "n_embd",
)


def config_fingerprint(config) -> str:
    """A short hash of the architecture-defining keys of a HF config (what an artifact must match)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def pick(c: dict) -> dict:
        return {k: c[k] for k in ARCHITECTURE_KEYS if k in c}

    keys = pick(d)
    for sub in ("text_config", "vision_config"):
        if isinstance(d.get(sub), dict):
            keys[sub] = pick(d[sub])
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RefusePlainSave:
    """Put on a wrapped base model as its `save_pretrained` (and so its `push_to_hub`, which calls it): what the
    base's own method would write is loaded by transformers without an error yet wrongly. Its blocks are
    SkippableLayers, so their weights are stored under names like `model.layers.0.block.mlp...`; a transformers
    class reloading that directory reports them as unexpected, initialises the blocks it expected at random
    (and, after `prune()`, builds N - k blocks without the replacement adapters). A module-level class, not a
    closure, so the base model still deep-copies and pickles."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        from .export import ExportError

        raise ExportError(
            f"this {self.name} is wrapped by archskip's SkipModel (its blocks hold adapters, or were pruned): its own "
            "save_pretrained would write weights that transformers loads with random blocks and no adapters, "
            "without an error. Write it with SkipModel.save_pretrained(dir, task=...) or `archskip export "
            "--artifact <artifact> --out <dir>`, which load with plain transformers (docs/export.md); save the "
            "adapters with archskip.artifact.save_artifact")


class SkipModel(nn.Module):
    """A frozen Hugging Face model whose candidate blocks can be skipped, plus adapters and a task head.

    >>> model = SkipModel(AutoModel.from_pretrained(path), AdapterConfig())
    >>> model.set_skip([1, 4])          # search: a new configuration every step
    >>> model.apply_plan(plan)          # train: a fixed plan, unused adapters deleted
    >>> model.prune()                   # inference: skipped blocks physically removed
    """

    def __init__(
        self,
        base: nn.Module,
        adapter: AdapterConfig | None = None,
        *,
        layers: str | None = None,
        trainable: list[str] | tuple[str, ...] = (),
        name_or_path: str = "",
    ):
        super().__init__()
        self.adapter_config = adapter or AdapterConfig()
        self.name_or_path = name_or_path or getattr(getattr(base, "config", None), "_name_or_path", "")
        self.base = base.requires_grad_(False)
        self.fingerprint = config_fingerprint(base.config) if hasattr(base, "config") else ""
        self.layers_path, mlist = find_layers(base, layers)
        if len(mlist) < 2:
            raise BackboneError(f"{self.layers_path!r} holds {len(mlist)} block(s); skipping needs at least 2")
        spec = spec_for(mlist[0])
        _check_same_layout(mlist, spec, self.layers_path)
        # the config of the candidates' own model: a vision-language model's text config (docs/families.md)
        self.layers_config = layers_config(base, self.layers_path)
        dim = _hidden_size(self.layers_config, base, mlist[0])
        for i in range(len(mlist)):
            mlist[i] = SkippableLayer(mlist[i], i, spec, self.adapter_config, dim)
        self.spec = spec
        self.candidates: list[SkippableLayer] = list(mlist)  # all N, original order (a plain list)
        # every model that holds the blocks (LlamaForCausalLM and its LlamaModel; a VLM's language model; LaVIN's
        # LLaMA) would save them wrongly with its own save_pretrained
        parts = self.layers_path.split(".")
        for owner in {base.get_submodule(".".join(parts[:i])) for i in range(len(parts))}:
            if callable(getattr(owner, "save_pretrained", None)):
                owner.save_pretrained = RefusePlainSave(type(owner).__name__)
        if spec.is_decoder and not spec.keep_positions and _mixed_layer_types(self.layers_config, len(mlist)):
            self.candidates[0].cache_slots = CacheSlots(len(mlist))
        self.head: nn.Module | None = None
        self.plan: SkipPlan | None = None
        self.pruned = False
        self.extra_trainable = self._unfreeze(trainable)
        self.unfrozen_blocks: list[int] = []  # kept blocks whose own weights train (see unfreeze_kept)

    def _unfreeze(self, patterns) -> dict[str, nn.Parameter]:
        found: dict[str, nn.Parameter] = {}
        for pat in patterns:
            hits = {n: p for n, p in self.base.named_parameters()
                    if pat in n and not n.startswith(self.layers_path + ".")}
            if not hits:
                raise BackboneError(f"trainable pattern {pat!r} matches no backbone parameter outside {self.layers_path!r}")
            found.update(hits)
        for p in found.values():
            p.requires_grad_(True)
        return found

    @property
    def num_candidates(self) -> int:
        return len(self.candidates)

    @property
    def is_decoder(self) -> bool:
        return self.spec.is_decoder

    @property
    def config(self):
        return self.base.config

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base.generate(*args, **kwargs)

    # ---- skipping ----------------------------------------------------------------------------
    def set_skip(self, indices) -> None:
        """Skip exactly `indices` (the search does this every step); every other candidate runs."""
        if self.pruned:
            raise PlanError("this model is pruned; its plan is fixed")
        s = set(indices)
        bad = [i for i in s if not 0 <= i < self.num_candidates]
        if bad:
            raise PlanError(f"skip indices {sorted(bad)} out of range 0..{self.num_candidates - 1}")
        slot = 0
        for layer in self.candidates:
            layer.skipped = layer.index in s
            if not layer.skipped:
                self.spec.set_cache_slot(layer.block, slot)
                slot += 1
        slots = self.candidates[0].cache_slots
        if slots is not None:
            slots.order = (*(l.index for l in self.candidates if not l.skipped), *(l.index for l in self.candidates if l.skipped))

    def unfreeze_kept(self, n: int) -> list[int]:
        """Also fine-tune the frozen weights of the last `n` kept blocks (the 'Reassessing Layer Pruning' baseline
        fine-tunes the last blocks before the cut); returns their candidate indices. Needs a plan."""
        if self.plan is None:
            raise PlanError("apply_plan(plan) before unfreeze_kept(n): which blocks are kept depends on the plan")
        kept = [layer for layer in self.candidates if not layer.skipped][-n:] if n > 0 else []
        for layer in kept:
            layer.block.requires_grad_(True)
        self.unfrozen_blocks = sorted({*self.unfrozen_blocks, *(layer.index for layer in kept)})
        return self.unfrozen_blocks

    def apply_plan(self, plan: SkipPlan, drop_unused: bool = True) -> None:
        """Fix the plan for training/inference; by default delete the adapters it does not use."""
        if plan.num_candidates != self.num_candidates:
            raise PlanError(f"plan {plan} is for {plan.num_candidates} candidates; this model has {self.num_candidates}")
        if self.plan is not None and self.plan != plan and any(l.replacement is None for l in self.candidates):
            raise PlanError(f"this model's adapters were already fixed to plan {self.plan}")
        self.set_skip(plan.skip)
        self.plan = plan
        if drop_unused:
            for layer in self.candidates:
                layer.drop_unused()

    def prune(self) -> SkipModel:
        """Remove the skipped blocks (in place) and return self; outputs are unchanged."""
        if self.plan is None:
            raise PlanError("apply_plan(plan) before prune()")
        if self.pruned:
            return self
        keep = self.plan.keep
        if self.spec.keep_positions:  # the forward indexes the list: delete frozen weights, keep the places
            for layer in self.candidates:
                if layer.skipped:
                    layer.block = None
            self.pruned = True
            return self
        mlist = self.base.get_submodule(self.layers_path)
        kept = [self.candidates[i] for i in keep]
        for layer in self.candidates:
            if layer.skipped:
                layer.block = None  # frees the frozen weights
                host = max((k for k in kept if k.index < layer.index), key=lambda k: k.index, default=None)
                (host.after if host is not None else kept[0].before).append(layer)
        mlist_new = nn.ModuleList(kept)
        parent_path, _, attr = self.layers_path.rpartition(".")
        setattr(self.base.get_submodule(parent_path) if parent_path else self.base, attr, mlist_new)
        del mlist
        if self.layers_config is not None:
            self.spec.shrink_config(self.layers_config, keep)
        self.candidates[0].cache_slots = None  # the shrunk config builds caches for the kept layers
        self.pruned = True
        return self

    @contextlib.contextmanager
    def adapters_disabled(self):
        """Run the frozen base model: no block skipped, every adapter bypassed."""
        if self.pruned:
            raise PlanError("a pruned model has no base model to fall back to")
        skipped = [l.index for l in self.candidates if l.skipped]
        sites = [(s, s.active) for l in self.candidates for s in l.sites.values()]  # (nests: restores, not re-enables)
        self.set_skip([])
        for s, _ in sites:
            s.active = False
        try:
            yield self
        finally:
            for s, active in sites:
                s.active = active
            self.set_skip(skipped)

    # ---- parameters --------------------------------------------------------------------------
    def trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        """Canonical name -> parameter for everything that trains (adapters, head, unfrozen base)."""
        out: dict[str, nn.Parameter] = {}
        for layer in self.candidates:
            for part in ("sites", "replacement", "block"):
                mod = getattr(layer, part)
                if mod is None:
                    continue
                for n, p in mod.named_parameters():
                    if p.requires_grad:
                        out[f"candidates.{layer.index}.{part}.{n}"] = p
        if self.head is not None:
            out.update({f"head.{n}": p for n, p in self.head.named_parameters() if p.requires_grad})
        out.update({f"base.{n}": p for n, p in self.extra_trainable.items()})
        return out

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.trainable_named_parameters().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        own = self.trainable_named_parameters()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(
                f"adapter weights do not match this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        with torch.no_grad():
            for n, t in state.items():
                if n in own:
                    if own[n].shape != t.shape:
                        raise ValueError(f"{n}: saved shape {tuple(t.shape)} != model shape {tuple(own[n].shape)}")
                    own[n].copy_(t)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters that exist now (a pruned model has fewer)."""
        return parameter_counts(self)

    def save_pretrained(self, save_directory, *, task=None, tokenizer=None, processor=None, check: bool = True) -> dict:
        """Write this model, as its plan prunes it, as a Hugging Face model directory that loads with plain transformers
        (`AutoModel*.from_pretrained(dir, trust_remote_code=True)`, no archskip needed): N - k blocks, adapters, head
        (give the `task` when the model has one), tokenizer, processor or image processor (vision models), and the
        model code. `check` loads it back and compares outputs first. docs/export.md."""
        from .export import save_pretrained

        return save_pretrained(self, save_directory, task=task, tokenizer=tokenizer, processor=processor, check=check)


def _check_same_layout(mlist: nn.ModuleList, spec: BlockSpec, path: str) -> None:
    """Every candidate must have block 0's layout: adapters go where block 0's spec says. A list that interleaves
    blocks of another kind (Mllama's language model: cross-attention layers among the self-attention ones) is
    refused instead of getting adapters in the wrong place."""
    first = type(mlist[0])
    for i, block in enumerate(mlist):
        if type(block) is first:
            continue
        try:
            other = spec_for(block)
        except BackboneError as e:
            other, why = None, str(e)
        if other != spec:
            why = f"a {other.family} block" if other is not None else why
            raise BackboneError(
                f"{path!r} mixes block kinds: block {i} is a {type(block).__name__}, block 0 a {first.__name__} "
                f"({spec.family}); skipping needs candidates of one layout, so a family that places adapters in "
                f"both kinds of block would be needed. Here: {why} (docs/families.md)"
            )


def _mixed_layer_types(cfg, n: int) -> bool:
    """Does the decoder config give its `n` layers different cache types (sliding-window and full attention)?"""
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None)
    return isinstance(types, (list, tuple)) and len(types) == n and len(set(types)) > 1


def _hidden_size(cfg, base: nn.Module, block: nn.Module) -> int:
    """The width of the residual stream, from the blocks' config (`cfg`), else from a norm in the block."""
    for key in ("hidden_size", "d_model", "n_embd"):
        v = getattr(cfg, key, None) or getattr(getattr(cfg, "text_config", None), key, None)
        if isinstance(v, int):
            return v
    for m in block.modules():
        if isinstance(m, (nn.LayerNorm,)) or type(m).__name__.endswith("RMSNorm"):
            return m.weight.shape[0]
    raise BackboneError(f"cannot tell the hidden size of {type(base).__name__}")
