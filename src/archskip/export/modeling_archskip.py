"""A pruned transformer with DAS adapters, as plain transformers + torch code (no archskip needed).

archskip copies this file, unchanged, into every model directory it exports, and config.json names its classes
in `auto_map`, so that

    AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)       # a decoder
    AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=True)  # a classifier

rebuild the model. The classes are made on demand from their names: `Archskip<X>` is the transformers class
`<X>` (e.g. `ArchskipLlamaForCausalLM` is a `LlamaForCausalLM`) with the exported adapters attached by forward
hooks, `Archskip<X>ForSequenceClassification` is `<X>` (an encoder) with the adapters and a classification head,
and `Archskip<X>Config` is the config class `<X>` under the model type "archskip" (so that transformers never
takes the directory for a plain model and drops the adapters without a word).

config.json's `archskip` section says where everything goes, per kept block (in order): each adapter's kind,
which sub-module it taps (reads) and which it adds to, and the replacement adapters of skipped blocks that run
before or after the block. The weights load strictly: a missing, unexpected or mis-shaped tensor, or a
config whose layer count disagrees with that section, is an error, never a model with random weights.
Format: archskip's docs/export.md.
"""

from __future__ import annotations

import copy

import torch
import transformers
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

FORMAT = 1
"""The version of config.json's `archskip` section this file reads."""
PREFIX = "Archskip"
HEAD = "ForSequenceClassification"


class ArchskipLoadError(ValueError):
    """An exported directory that does not hold what its config.json describes."""


# ---- adapters ---------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square norm (computed in float32, cast back): archskip's adapter norm, repeated here because this
    file must not import archskip (its state dict, `weight`, is the same)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(spec: dict, dim: int, block: nn.Module) -> nn.Module:
    kind = spec["kind"]
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=spec["eps"])
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=spec["eps"])
    if kind == "none":
        return nn.Identity()
    if kind == "block":  # a frozen float32 copy of the block's own norm (its weights are stored with the adapter)
        return copy.deepcopy(block.get_submodule(spec["module"])).float().requires_grad_(False)
    raise ArchskipLoadError(f"unknown adapter norm {kind!r} in config.json's archskip section")


class Adapter(nn.Module):
    """f(x) = scale * up(dropout(relu(down(norm(x))))); a residual adapter returns x + f(x)."""

    def __init__(self, dim: int, spec: dict, block: nn.Module):
        super().__init__()
        self.norm = make_norm(spec["norm"], dim, block)
        self.down = nn.Linear(dim, spec["hidden"])
        self.up = nn.Linear(spec["hidden"], dim)
        self.dropout = nn.Dropout(spec.get("dropout", 0.0))
        self.scale = spec["scale"]
        self.residual = spec["residual"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return self.add_to(x, x)
        return self.scale * self.up(self.dropout(torch.relu(self.down(self.norm(x)))))

    def add_to(self, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """target + f(x), the up-projection accumulated into target by one addmm (fewer (..., D)-wide passes)."""
        h = self.dropout(torch.relu(self.down(self.norm(x))))  # (..., r)
        out = torch.addmm(target.reshape(-1, target.shape[-1]), h.reshape(-1, h.shape[-1]), self.up.weight.t(),
                          alpha=self.scale)  # (B*T, D)
        return out.add_(self.up.bias, alpha=self.scale).view(target.shape)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """In the adapter's dtype (float32 beside a bf16/fp16 model), returned in x's."""
        w = self.up.weight
        return self(x.to(w.dtype)).to(x.dtype) if x.dtype != w.dtype else self(x)

    def run_add(self, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """target + f(x) in the adapter's dtype, returned in target's."""
        w = self.up.weight
        if x.dtype == w.dtype and target.dtype == w.dtype:
            return self.add_to(target, x)
        return self.add_to(target.to(w.dtype), x.to(w.dtype)).to(target.dtype)


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs["hidden_states"] if "hidden_states" in kwargs else next(iter(kwargs.values()))


class ParallelAdapter(Adapter):
    """adapter(x) with x the input of sub-module `tap`, added to the output of sub-module `add`."""

    def attach(self, block: nn.Module, spec: dict) -> None:
        self._pending = None
        block.get_submodule(spec["tap"]).register_forward_pre_hook(self._on_tap, with_kwargs=True)
        block.get_submodule(spec["add"]).register_forward_hook(self._on_add)

    def _on_tap(self, module, args, kwargs):
        self._pending = _first_input(args, kwargs)  # the adapter runs at `add`, adding into its output

    def _on_add(self, module, args, output):
        x, self._pending = self._pending, None
        if x is None:
            raise RuntimeError("an archskip adapter's output sub-module ran before the sub-module it taps")
        if isinstance(output, tuple):
            return (self.run_add(output[0], x), *output[1:])
        return self.run_add(output, x)


class ResidualArgAdapter(Adapter):
    """`module(h, input_tensor)` adds input_tensor itself (post-LN): it gets input_tensor + adapter(input_tensor)."""

    def attach(self, block: nn.Module, spec: dict) -> None:
        block.get_submodule(spec["module"]).register_forward_pre_hook(self._on_call, with_kwargs=True)

    def _on_call(self, module, args, kwargs):
        if len(args) >= 2:
            return (args[0], self.run_add(args[1], args[1]), *args[2:]), kwargs
        x = kwargs["input_tensor"]
        return args, {**kwargs, "input_tensor": self.run_add(x, x)}


class SequentialAdapter(Adapter):
    """The output z of sub-module `norm` becomes z + f(z) (LaVIN's adapter on the input of attention)."""

    def attach(self, block: nn.Module, spec: dict) -> None:
        block.get_submodule(spec["norm_module"]).register_forward_hook(self._on_norm)

    def _on_norm(self, module, args, output):
        return self.run(output)


SITES = {"parallel": ParallelAdapter, "residual_arg": ResidualArgAdapter, "sequential": SequentialAdapter}


class KeptBlock(nn.Module):
    """The adapters of one kept block, and the replacement adapters of skipped blocks that run before / after it."""

    def __init__(self, block: nn.Module, spec: dict, dim: int):
        super().__init__()
        self.sites = nn.ModuleDict()
        for name, s in spec["sites"].items():
            if s["kind"] not in SITES:
                raise ArchskipLoadError(f"unknown adapter site kind {s['kind']!r} in config.json's archskip section")
            self.sites[name] = SITES[s["kind"]](dim, {**s, "residual": s["kind"] == "sequential"}, block)
        self.before = nn.ModuleList(Adapter(dim, {**r, "residual": True}, block) for r in spec["before"])
        self.after = nn.ModuleList(Adapter(dim, {**r, "residual": True}, block) for r in spec["after"])
        for name, s in spec["sites"].items():  # (after the norm copies above: a copy must not carry these hooks)
            self.sites[name].attach(block, s)
        if len(self.before):
            block.register_forward_pre_hook(self._on_block_input, with_kwargs=True)
        if len(self.after):
            block.register_forward_hook(self._on_block_output)

    def _on_block_input(self, block, args, kwargs):
        if args:
            h = args[0]
            for r in self.before:
                h = r.run(h)
            return (h, *args[1:]), kwargs
        h = kwargs["hidden_states"]
        for r in self.before:
            h = r.run(h)
        return args, {**kwargs, "hidden_states": h}

    def _on_block_output(self, block, args, output):
        h = output[0] if isinstance(output, tuple) else output
        for r in self.after:
            h = r.run(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_labels: int):
        super().__init__()
        self.dropout = nn.Dropout(0.0)
        self.out = nn.Linear(dim, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))


class ArchskipAdapters(nn.Module):
    """Everything the export adds to the transformers model: per kept block its adapters, and the task head."""

    def __init__(self, model: nn.Module, spec: dict | None, with_head: bool):
        super().__init__()
        if not isinstance(spec, dict) or "blocks" not in spec:
            raise ArchskipLoadError("config.json has no archskip section: not a directory archskip exported")
        if spec.get("format", 0) > FORMAT:
            raise ArchskipLoadError(f"config.json's archskip section has format {spec.get('format')}; this "
                                    f"modeling_archskip.py reads formats up to {FORMAT}")
        layers = model.get_submodule(spec["layers"])
        if len(layers) != len(spec["blocks"]):
            raise ArchskipLoadError(
                f"config.json describes {len(layers)} blocks (num_hidden_layers) but its archskip section places "
                f"adapters on {len(spec['blocks'])} kept blocks: the config does not belong to these weights")
        dim = spec["dim"]
        self.blocks = nn.ModuleList(KeptBlock(b, s, dim) for b, s in zip(layers, spec["blocks"]))
        head = spec.get("head")
        if with_head != (head is not None):
            raise ArchskipLoadError("this export has " + ("no task head: load it with AutoModel or AutoModelForCausalLM"
                                                          if head is None else
                                                          f"a {head['kind']} head: load it with AutoModel{HEAD}"))
        self.head = ClassificationHead(dim, head["num_labels"]) if head is not None else None


# ---- the classes, made from their names -------------------------------------------------------------------------
def _strict(cls, info: dict, path) -> None:
    problems = []
    for key, what in (("missing_keys", "missing from"), ("unexpected_keys", "unexpected in"),
                      ("mismatched_keys", "of the wrong shape in")):
        names = sorted((str(k) for k in (info.get(key) or ())), key=lambda k: (k.startswith("archskip."), k))
        if names:
            problems.append(f"{len(names)} tensor(s) {what} the weights ({', '.join(names[:4])}"
                            f"{', ...' if len(names) > 4 else ''})")
    if info.get("error_msgs"):
        problems.append("; ".join(str(m) for m in info["error_msgs"]))
    if problems:
        raise ArchskipLoadError(f"{path}: the weights do not match config.json ({cls.__name__}): {'; '.join(problems)}. "
                                "An archskip export loads only complete and exactly matching weights.")


def _config_class(base: type) -> type:
    return type(PREFIX + base.__name__, (base,), {"model_type": "archskip", "__module__": __name__})


def _model_class(base: type, with_head: bool) -> type:
    config_class = __getattr__(PREFIX + base.config_class.__name__)

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        self.archskip = ArchskipAdapters(self, getattr(config, "archskip", None), with_head)

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # reported below, with the tensors' names, and refused
        model, info = super(made, cls).from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                       **kwargs)
        _strict(cls, info, pretrained_model_name_or_path)
        return (model, info) if want_info else model

    def classify(self, *args, labels: torch.Tensor | None = None, **kwargs):
        """The encoder's last hidden state, pooled (the first token, or the mean over the attention mask), through
        the classification head; `labels` give a cross-entropy loss."""
        out = base.forward(self, *args, **kwargs)
        hidden = out[0]  # (B, T, D)
        if self.config.archskip["head"]["pooling"] == "mean":
            mask = kwargs.get("attention_mask")
            mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, 0]
        logits = self.archskip.head(pooled.float())
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=getattr(out, "hidden_states", None),
                                        attentions=getattr(out, "attentions", None))

    body = {
        "__module__": __name__,
        "config_class": config_class,
        "__init__": __init__,
        "from_pretrained": classmethod(from_pretrained),
        # the adapters and the head stay float32 when the model is loaded in bf16 / fp16 (as archskip keeps them)
        "_keep_in_fp32_modules_strict": sorted({*(base._keep_in_fp32_modules_strict or ()), "archskip"}),
    }
    if with_head:
        body["forward"] = classify
    made = type(PREFIX + base.__name__ + (HEAD if with_head else ""), (base,), body)
    return made


_MADE: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """`Archskip<X>Config`, `Archskip<X>` and `Archskip<X>ForSequenceClassification`, for a transformers class <X>."""
    if not name.startswith(PREFIX) or name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _MADE:
        rest = name[len(PREFIX):]
        base = getattr(transformers, rest, None)
        with_head = False
        if base is None and rest.endswith(HEAD):
            base, with_head = getattr(transformers, rest[: -len(HEAD)], None), True
        if isinstance(base, type) and issubclass(base, transformers.PreTrainedConfig) and not with_head:
            _MADE[name] = _config_class(base)
        elif isinstance(base, type) and issubclass(base, transformers.PreTrainedModel):
            _MADE[name] = _model_class(base, with_head)
        else:
            raise AttributeError(f"{name}: this transformers ({transformers.__version__}) has no class "
                                 f"{rest.removesuffix(HEAD) if with_head else rest!r} to rebuild it from")
    return _MADE[name]
