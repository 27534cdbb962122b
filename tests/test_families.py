"""Every supported block family on a tiny random model (docs/families.md), PEFT-style: one matrix, one row per
family and layout.

(a) no skip + zero-initialised adapters computes exactly what the base model computes;
(b) pruned == masked (the plan applied, blocks still in place): outputs, and for decoders greedy `generate` with
    a KV cache, which also equals the uncached greedy continuation before pruning (sliding-window and mixed
    sliding/full layer configs included);
(c) the adapters read the residual stream and add to it, checked with hooks on the first block;
(d) one optimiser step moves only adapters and the head; every base weight stays bit-identical.

ViLT (text and image inputs; its MLP's output module adds the residual itself) has its own (c) and (d) here, and
METER (two streams, three sites per half-layer) has its own in tests/test_meter.py; their (a) and (b) are in
tests/test_skipping.py and tests/test_meter.py.
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
    make_vilt,
    perturb_trainable,
    record_sites,
    text_inputs,
    vilt_inputs,
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
def record_block0(model: SkipModel, name: str, x: dict, active: set[str]) -> dict[str, torch.Tensor]:
    """`record_sites` on block 0 of a matrix row: its sub-layers' contributions as "A" and "M" (post-LN: the
    post-LayerNorms' inputs) and, post-LN, the MLP's input as "h"."""
    layout, a_mod, m_mod, *mlp_in = LAYOUT[name]
    taps = {"A": a_mod, "M": m_mod}
    ins, outs = (taps, {}) if layout == "post" else ({}, taps)
    if mlp_in:
        ins["h"] = mlp_in[0]
    return record_sites(model, 0, lambda: run(model, name, x), active, ins, outs)


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


# ViLT (transformers' ViltModel; conftest.make_vilt) is outside the matrix: its one stream holds text and image
# tokens, and its MLP's output module adds the residual itself. From modeling_vilt.ViltLayer, with x the block's input:
#   h = x + attention(layernorm_before(x))[0];  out = output(intermediate(layernorm_after(h)), h),
# where output(m, h) = dropout(dense(m)) + h: output.dense gives the MLP's contribution to the stream.
VILT_TAPS = dict(ins={"h": "layernorm_after"}, outs={"A": "attention", "M": "output.dense"})


def test_vilt_adapters_read_and_add_to_the_residual_stream():
    model = SkipModel(make_vilt(), ADAPTED)
    perturb_trainable(model, scale=0.5)
    assert set(model.candidates[0].sites) == {"attn", "mlp"}
    x = vilt_inputs()

    def forward():
        torch.manual_seed(0)  # ViLT's embeddings shuffle the image patches (torch.multinomial), in eval mode too
        return model(**x).last_hidden_state

    runs = {active: record_sites(model, 0, forward, set(active), **VILT_TAPS)
            for active in ((), ("attn",), ("mlp",), ("attn", "mlp"))}
    off, attn = runs[()], runs[("attn",)]
    close = dict(rtol=1e-5, atol=1e-5)
    assert off["x"].shape[0] == 2 * (7 + 1 + 4)  # block 0 reads text and image tokens: 7 words, CLS + 2 x 2 patches
    # the attention adapter reads the block's input, and its output lands on the attention's contribution
    torch.testing.assert_close(runs[("attn", "mlp")]["in_attn"], off["x"], **close)
    torch.testing.assert_close(attn["A"], off["A"] + attn["d_attn"], **close)
    for active, r in runs.items():
        torch.testing.assert_close(r["x"], off["x"], rtol=0, atol=0)  # block 0 reads the embeddings in every run
        torch.testing.assert_close(r["h"], r["x"] + r["A"], **close)  # the first residual add
        # the MLP adapter reads h, and its output lands on the stream beside the MLP's contribution
        d = 0
        if "mlp" in active:
            torch.testing.assert_close(r["in_mlp"], r["h"], **close)
            d = r["d_mlp"]
        torch.testing.assert_close(r["out"], r["h"] + r["M"] + d, **close)


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


def test_vilt_a_step_moves_only_adapters_and_head():
    model = SkipModel(make_vilt(), ADAPTED)
    model.head = nn.Linear(32, 2)
    model.apply_plan(SkipPlan((1,), model.num_candidates))
    perturb_trainable(model)
    x = vilt_inputs()
    assert_a_step_moves_only_trainables(model, lambda m: m.head(m(**x).last_hidden_state.mean(1)).logsumexp(-1).mean())


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
