"""Every supported block family on a tiny random model (docs/families.md), PEFT-style: one matrix, one row per
family and layout.

(a) no skip + zero-initialised adapters computes exactly what the base model computes;
(b) pruned == masked (the plan applied, blocks still in place): outputs, and for decoders greedy `generate` with
    a KV cache, which also equals the uncached greedy continuation before pruning (sliding-window and mixed
    sliding/full layer configs included);
(c) the adapters read the residual stream and add to it, checked with hooks on the first block;
(d) one optimiser step moves only adapters and the head; every base weight stays bit-identical.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    TINY_DECODERS,
    TINY_TEXT_ENCODERS,
    TINY_VISION_ENCODERS,
    VOCAB_SIZE,
    assert_a_step_moves_only_trainables,
    assert_same_generations,
    generate_masked_then_pruned,
    image_inputs,
    make_tiny,
    perturb_trainable,
    text_inputs,
)
from torch import nn

from archskip import AdapterConfig, SkipModel, SkipPlan
from archskip.backbones import BackboneError, spec_for

ZERO = AdapterConfig(hidden=8, skip_hidden=16, init="zero", skip_init="zero")
ADAPTED = AdapterConfig(hidden=8, skip_hidden=16)

# Where each family's sub-layers meet the residual stream, as the model code has it (independent of the family
# files): "seq" pre-LN h = x + A, out = h + M; "par" pre-LN out = x + A + M; "post" post-LN h = LN1(x + a),
# out = LN2(h + m). For pre-LN, A and M name the modules whose outputs are the attention's and the MLP's
# contributions to the stream; for post-LN they name the post-LayerNorms, and `mlp_in` the module that reads h.
SEQ_LLAMA = ("seq", "self_attn", "mlp")
BERT = ("post", "attention.output.LayerNorm", "output.LayerNorm", "intermediate")
LAYOUT = {
    "llama": SEQ_LLAMA, "mistral": SEQ_LLAMA, "qwen2": SEQ_LLAMA, "qwen2_sliding": SEQ_LLAMA, "qwen3": SEQ_LLAMA,
    "gemma": SEQ_LLAMA, "phi3": SEQ_LLAMA, "stablelm": SEQ_LLAMA, "mixtral": SEQ_LLAMA, "qwen2_moe": SEQ_LLAMA,
    "gemma2": ("seq", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3": ("seq", "post_attention_layernorm", "post_feedforward_layernorm"),
    "phi": ("par", "self_attn", "mlp"),
    "stablelm_parallel": ("par", "self_attn", "mlp"),
    "gpt2": ("seq", "attn", "mlp"),
    "gpt_neox": ("par", "post_attention_dropout", "post_mlp_dropout"),
    "gpt_neox_sequential": ("seq", "post_attention_dropout", "post_mlp_dropout"),
    "opt": ("seq", "self_attn", "fc2"),
    "opt_post_ln": ("post", "self_attn_layer_norm", "final_layer_norm", "fc1"),
    "falcon": ("par", "self_attention", "mlp"),
    "falcon_new": ("par", "self_attention", "mlp"),
    "falcon_sequential": ("seq", "self_attention", "mlp"),
    "gptj": ("par", "attn", "mlp"),
    "bert": BERT, "roberta": BERT, "xlm_roberta": BERT, "electra": BERT, "deberta_v2": BERT, "deberta_v2_conv": BERT,
    "distilbert": ("post", "sa_layer_norm", "output_layer_norm", "ffn"),
    "clip_text": ("seq", "self_attn", "mlp"),
    "vit": ("seq", "attention", "mlp"),
    "dinov2": ("seq", "layer_scale1", "layer_scale2"),
    "clip_vision": ("seq", "self_attn", "mlp"),
}
ALL = [*TINY_DECODERS, *TINY_TEXT_ENCODERS, *TINY_VISION_ENCODERS]
SLIDING = ["mistral", "qwen2_sliding", "gemma2", "gemma3"]


def test_the_matrix_covers_every_family_once():
    assert set(LAYOUT) == set(ALL)


def inputs_for(name: str) -> dict:
    if name in TINY_VISION_ENCODERS:
        return image_inputs()
    x = text_inputs(batch=2, length=9)
    if name in TINY_DECODERS:
        x["attention_mask"][:] = 1  # no padding: greedy continuations are compared token for token
    return x


def output(name: str, out) -> torch.Tensor:
    return out.logits if name in TINY_DECODERS else out.last_hidden_state


def run(model, name: str, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return output(name, model(**x))


# ---- (a) ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_zero_init_adapters_equal_the_base_model(name):
    base = make_tiny(name)
    twin = copy.deepcopy(base)
    x = inputs_for(name)
    ref = run(base, name, x)
    model = SkipModel(base, ZERO)
    torch.testing.assert_close(run(model, name, x), ref, rtol=0, atol=1e-6)
    if model.spec.sequential_norm is not None:  # LaVIN's sequential adapter too
        torch.testing.assert_close(run(SkipModel(twin, AdapterConfig.lavin(hidden=4)), name, x), ref, rtol=0, atol=1e-6)


# ---- (b) ------------------------------------------------------------------------------------------------------
# (0,): every kept layer's cache slot moves down by one, so with alternating sliding/full layers every slot
# changes type; (1, 2): the two middle blocks
PLANS = [(0,), (1, 2)]


@pytest.mark.parametrize("name", ALL)
def test_pruned_equals_masked(name):
    for skip in PLANS:
        torch.manual_seed(0)
        model = SkipModel(make_tiny(name), ADAPTED)
        perturb_trainable(model, scale=0.1)
        x = inputs_for(name)
        model.apply_plan(SkipPlan(skip, model.num_candidates))
        masked = run(model, name, x)
        if name in TINY_DECODERS:  # masked generate, uncached and with a KV cache, then pruned (prunes the model)
            gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
            assert_same_generations(*generate_masked_then_pruned(model, x, gen))
        else:
            model.prune()
        torch.testing.assert_close(run(model, name, x), masked, rtol=1e-5, atol=1e-5, msg=lambda m: f"skip {skip}: {m}")
        mlist = model.base.get_submodule(model.layers_path)
        if not model.spec.keep_positions:
            assert [layer.index for layer in mlist] == [i for i in range(4) if i not in skip]
            assert model.config.num_hidden_layers == 4 - len(skip)


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_window_configs_generate_past_the_window(name):
    """The prompt (9 tokens) and the continuation are longer than the window (4), and the kept layers' cache
    slots are renumbered: the cache must keep each running layer's sliding/full type."""
    model = SkipModel(make_tiny(name), ADAPTED)
    types = getattr(model.config, "layer_types", None)
    if name != "mistral":
        assert len(set(types)) == 2, "the config must mix sliding and full layers"
    perturb_trainable(model, scale=0.1)
    x = inputs_for(name)
    model.apply_plan(SkipPlan((0,), 4))
    gen = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True,
               return_dict_in_generate=True)
    assert_same_generations(*generate_masked_then_pruned(model, x, gen))  # tokens and per-step scores to 1e-4
    if types is not None:
        assert model.config.layer_types == types[1:]


# ---- (c) ------------------------------------------------------------------------------------------------------
class Recorder:
    """Forward hooks that keep (a clone of) what modules read and return."""

    def __init__(self):
        self.got: dict[str, torch.Tensor] = {}
        self.handles = []

    @staticmethod
    def _first(t):
        return (t[0] if isinstance(t, tuple) else t).detach().clone()

    def inputs(self, key: str, module: nn.Module) -> None:
        def hook(m, args, kwargs):
            self.got[key] = self._first(args[0] if args else kwargs["hidden_states"])
        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def outputs(self, key: str, module: nn.Module) -> None:
        self.handles.append(module.register_forward_hook(lambda m, a, out: self.got.__setitem__(key, self._first(out))))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def record_block0(model: SkipModel, name: str, x: dict, active: set[str]) -> dict[str, torch.Tensor]:
    """Run the model with only the sites in `active` switched on; record block 0's input and output, its
    sub-layers' contributions and its adapters' inputs and outputs (flattened to rows of the hidden size)."""
    layout, a_mod, m_mod, *mlp_in = LAYOUT[name]
    layer = model.candidates[0]
    block = layer.block
    rec = Recorder()
    rec.inputs("x", block)
    rec.outputs("out", block)
    for key, path in (("A", a_mod), ("M", m_mod)):
        (rec.inputs if layout == "post" else rec.outputs)(key, block.get_submodule(path))
    if mlp_in:
        rec.inputs("h", block.get_submodule(mlp_in[0]))
    for site_name, site in layer.sites.items():
        site.active = site_name in active
        rec.inputs(f"in_{site_name}", site.adapter.norm)  # the adapter's input (its first step is its norm)
    try:
        run(model, name, x)
    finally:
        rec.remove()
        for site in layer.sites.values():
            site.active = True
    with torch.no_grad():  # what the adapter adds: f(its input) (a site runs it fused with the add)
        for site_name in active:
            rec.got[f"d_{site_name}"] = layer.sites[site_name].adapter(rec.got[f"in_{site_name}"])
    return {k: v.reshape(-1, v.shape[-1]) for k, v in rec.got.items()}


@pytest.mark.parametrize("name", ALL)
def test_adapters_read_and_add_to_the_residual_stream(name):
    layout = LAYOUT[name][0]
    model = SkipModel(make_tiny(name), ADAPTED)
    perturb_trainable(model, scale=0.5)
    assert set(model.candidates[0].sites) == {"attn", "mlp"}
    x = inputs_for(name)
    off = record_block0(model, name, x, set())
    attn = record_block0(model, name, x, {"attn"})
    mlp = record_block0(model, name, x, {"mlp"})
    both = record_block0(model, name, x, {"attn", "mlp"})
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both["x"], off["x"], rtol=0, atol=0)  # block 0 reads the embeddings in every run
    # the attention adapter reads the block's input
    torch.testing.assert_close(both["in_attn"], both["x"], **close)
    # each adapter's output lands on the stream unchanged: after the sub-layer's post-norm (sandwich norms) or,
    # post-LN, in the post-LayerNorm's input
    torch.testing.assert_close(attn["A"], off["A"] + attn["d_attn"], **close)
    torch.testing.assert_close(mlp["M"], off["M"] + mlp["d_mlp"], **close)
    for r in (off, attn, mlp, both):
        if layout == "seq":  # the MLP adapter reads the stream after the attention's residual add
            h = r["x"] + r["A"]
            torch.testing.assert_close(r["out"], h + r["M"], **close)
        elif layout == "par":  # ... or the block's input, for parallel attention + MLP
            h = r["x"]
            torch.testing.assert_close(r["out"], h + r["A"] + r["M"], **close)
        else:  # post-LN: the MLP adapter reads the sub-layer input h = LN1(x + a)
            h = r["h"]
        if "in_mlp" in r:
            torch.testing.assert_close(r["in_mlp"], h, **close)


# ---- (d) ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_a_step_moves_only_adapters_and_head(name):
    model = SkipModel(make_tiny(name), ADAPTED)
    dim = VOCAB_SIZE if name in TINY_DECODERS else 32
    model.head = nn.Linear(dim, 2)
    model.apply_plan(SkipPlan((1,), model.num_candidates))
    perturb_trainable(model)
    x = inputs_for(name)
    assert_a_step_moves_only_trainables(model, lambda m: m.head(output(name, m(**x)).float().mean(1)).logsumexp(-1).mean())


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "falcon", "gemma3"])
def test_a_distilled_skipped_block_runs_without_the_cache(name):
    """Distillation runs the skipped block beside its replacement; its attention still has its old cache slot
    (now a running block's), so it must get no cache, however the model passes it (keyword or position)."""
    model = SkipModel(make_tiny(name), ADAPTED)
    perturb_trainable(model, scale=0.1)
    model.set_skip([1])  # block 1's attention keeps slot 1, which block 2 now uses
    x = inputs_for(name)
    with torch.no_grad():
        want = output(name, model(**x, use_cache=True))
        model.candidates[1].distilling = True
        got = output(name, model(**x, use_cache=True))
    assert model.candidates[1].distill_loss is not None
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(TINY_DECODERS))
def test_decoder_configs_load_as_causal_lms(name):
    from archskip.models import is_decoder_config

    model = make_tiny(name)
    config = copy.deepcopy(model.config)
    config.architectures = None
    assert is_decoder_config(config), f"{config.model_type} is missing from models.load.DECODER_TYPES"
    config.architectures = [type(model).__name__]  # what save_pretrained writes (GPT2LMHeadModel for GPT-2)
    assert is_decoder_config(config)


# ---- refusals -------------------------------------------------------------------------------------------------
class NormBlock(nn.Module):
    """LLaMA's four children plus one more norm: not LLaMA's layout (where would the extra norm go?)."""

    def __init__(self):
        super().__init__()
        for n in ("input_layernorm", "post_attention_layernorm", "extra_layernorm", "self_attn", "mlp"):
            setattr(self, n, nn.Identity())


def test_a_block_with_unknown_norms_is_refused_not_taken_for_llama():
    with pytest.raises(BackboneError, match="don't know where adapters go in a NormBlock block"):
        spec_for(NormBlock())


def test_post_ln_blocks_refuse_the_sequential_adapter():
    with pytest.raises(BackboneError, match="post-LN: use adapter.style='parallel'"):
        SkipModel(make_tiny("opt_post_ln"), AdapterConfig.lavin())
