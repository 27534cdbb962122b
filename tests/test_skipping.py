"""The invariants of skipping, over a matrix of tiny Hugging Face models."""

import copy

import pytest
import torch
from conftest import DECODERS, FAMILIES, VOCAB_SIZE, perturb_trainable, text_inputs
from torch import nn

from archskip import AdapterConfig, SkipModel, SkipPlan
from archskip.backbones import BackboneError
from archskip.plan import PlanError
from archskip.skipping import SkippableLayer

ZERO = AdapterConfig(hidden=8, skip_hidden=16, init="zero", skip_init="zero")
BERT_INIT = AdapterConfig(hidden=8, skip_hidden=16)


def fwd(model, x, out):
    """Forward with a fixed RNG state (ViLT samples its image patches at random on every call)."""
    torch.manual_seed(123)
    return out(model(**x))


def adapter_cfg(family: str, **kw) -> AdapterConfig:
    if family in DECODERS:
        return AdapterConfig.lavin(hidden=kw.pop("hidden", 4))
    return AdapterConfig(**{"hidden": 8, "skip_hidden": 16, **kw})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_skip_zero_init_equals_base(family):
    make, inputs, out = FAMILIES[family]
    base = make()
    x = inputs()
    with torch.no_grad():
        ref = fwd(base, x, out)
        cfg = AdapterConfig.lavin() if family in DECODERS else ZERO
        model = SkipModel(base, cfg)
        got = fwd(model, x, out)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in DECODERS])
def test_parallel_adapters_change_output_and_disabling_restores_base(family):
    make, inputs, out = FAMILIES[family]
    base = make()
    x = inputs()
    with torch.no_grad():
        ref = fwd(base, x, out)
        model = SkipModel(base, BERT_INIT)
        perturb_trainable(model)
        adapted = fwd(model, x, out)
        with model.adapters_disabled():
            off = fwd(model, x, out)
            with model.adapters_disabled():  # nested (a frozen measurement calling block influence)
                pass
            still_off = fwd(model, x, out)
        again = fwd(model, x, out)
    assert (adapted - ref).abs().max() > 1e-4  # the adapters are really in the computation
    torch.testing.assert_close(off, ref, rtol=0, atol=0)
    torch.testing.assert_close(still_off, ref, rtol=0, atol=0)  # the inner exit did not turn the adapters back on
    torch.testing.assert_close(again, adapted, rtol=0, atol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("skip", [(0,), (1, 3), (3,)])
def test_pruned_equals_wrapped(family, skip):
    make, inputs, out = FAMILIES[family]
    x = inputs()
    model = SkipModel(make(), adapter_cfg(family))
    perturb_trainable(model)
    plan = SkipPlan(skip, model.num_candidates)
    with torch.no_grad():
        model.set_skip(plan.skip)
        wrapped = fwd(model, x, out)
        model.apply_plan(plan)
        fixed = fwd(model, x, out)
        trainable_before = model.parameter_counts()[0]
        n_params_before = model.parameter_counts()[1]
        model.prune()
        pruned = fwd(model, x, out)
    torch.testing.assert_close(fixed, wrapped, rtol=0, atol=0)
    torch.testing.assert_close(pruned, wrapped, rtol=1e-5, atol=1e-5)
    mlist = model.base.get_submodule(model.layers_path)
    assert len(mlist) == model.num_candidates - len(skip)
    assert [layer.index for layer in mlist] == list(plan.keep)
    assert model.config.num_hidden_layers == len(plan.keep)
    assert model.parameter_counts()[0] == trainable_before  # same adapters, now attached elsewhere
    assert model.parameter_counts()[1] < n_params_before  # frozen weights of skipped blocks are gone


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("skip", [(0, 2), (4,), (1, 2, 3)])
def test_pruned_decoder_generates_like_wrapped(family, skip):
    make, _, _ = FAMILIES[family]
    model = SkipModel(make(), AdapterConfig.lavin(hidden=4))
    perturb_trainable(model, scale=0.2)
    x = text_inputs(batch=2, length=6)
    x["attention_mask"][:] = 1
    plan = SkipPlan(skip, model.num_candidates)
    model.apply_plan(plan)
    gen = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        no_cache = model.generate(**x, use_cache=False, **gen)
        wrapped_cache = model.generate(**x, use_cache=True, **gen)
        model.prune()
        pruned = model.generate(**x, use_cache=True, **gen)
    assert pruned.tolist() == no_cache.tolist()
    assert wrapped_cache.tolist() == no_cache.tolist()
    # the KV cache has one slot per kept layer, numbered 0..n-1
    slots = [m.layer_idx for m in model.base.model.layers for m in m.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(slots)) == list(range(len(plan.keep)))


def test_pruned_qwen2_config_lists_only_kept_layer_types():
    from conftest import make_qwen2

    model = SkipModel(make_qwen2(), AdapterConfig.lavin())
    model.apply_plan(SkipPlan((1, 3), 5))
    model.prune()
    assert len(model.config.layer_types) == 3


@pytest.mark.parametrize("family", ["bert", "llama", "dinov2"])
def test_only_adapter_and_head_parameters_change_after_a_step(family):
    make, inputs, out = FAMILIES[family]
    model = SkipModel(make(), adapter_cfg(family, init="bert") if family not in DECODERS else AdapterConfig.lavin())
    model.head = nn.Linear(VOCAB_SIZE if family in DECODERS else 32, 2)
    model.apply_plan(SkipPlan((1,), model.num_candidates))
    perturb_trainable(model)  # zero-init up-projections would block the gradient to `down`
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.trainable_named_parameters().values()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    feats = fwd(model, inputs(), out)
    loss = model.head(feats.float().mean(1)).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    named = dict(model.named_parameters())
    assert changed, "nothing was trained"
    assert all(id(named[n]) in trainable for n in changed), f"frozen parameters changed: {sorted(changed)[:5]}"
    assert {n for n in changed if n.startswith("head.")}, "the head did not train"
    assert all(not p.requires_grad for n, p in model.base.named_parameters() if "sites" not in n and "replacement" not in n)


def test_apply_plan_keeps_only_used_adapters():
    from conftest import make_bert

    model = SkipModel(make_bert(layers=4), BERT_INIT)
    model.apply_plan(SkipPlan((1, 2), 4))
    names = model.trainable_named_parameters()
    assert not any(n.startswith(("candidates.1.sites", "candidates.2.sites")) for n in names)
    assert not any(n.startswith(("candidates.0.replacement", "candidates.3.replacement")) for n in names)
    assert any(n.startswith("candidates.1.replacement") for n in names)
    assert any(n.startswith("candidates.0.sites.attn") for n in names) and any(n.startswith("candidates.0.sites.mlp") for n in names)


def test_trainable_state_roundtrip_between_pruned_and_unpruned():
    from conftest import make_bert

    a = SkipModel(make_bert(), BERT_INIT)
    perturb_trainable(a)
    a.apply_plan(SkipPlan((2,), 4))
    state = a.trainable_state_dict()
    a.prune()
    assert set(a.trainable_state_dict()) == set(state)  # canonical names survive pruning
    b = SkipModel(copy.deepcopy(make_bert()), BERT_INIT)
    b.apply_plan(SkipPlan((2,), 4))
    b.load_trainable_state_dict(state)
    with pytest.raises(KeyError, match="missing"):
        b.load_trainable_state_dict({k: v for k, v in list(state.items())[1:]})


def test_deepcopy_moves_hooks_with_the_copy():
    from conftest import make_bert

    model = SkipModel(make_bert(), BERT_INIT)
    perturb_trainable(model)
    twin = copy.deepcopy(model)
    x = text_inputs()
    with torch.no_grad():
        ref = model(**x).last_hidden_state
        torch.testing.assert_close(twin(**x).last_hidden_state, ref)
        for p in twin.trainable_named_parameters().values():
            p.zero_()
        assert torch.equal(model(**x).last_hidden_state, ref)  # the original is untouched by the copy's adapters


def test_bf16_backbone_with_float32_adapters():
    from conftest import make_llama

    base = make_llama().to(torch.bfloat16)
    model = SkipModel(base, AdapterConfig.lavin())
    model.set_skip([2])
    with torch.no_grad():
        logits = model(**text_inputs()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert all(p.dtype == torch.float32 for p in model.trainable_named_parameters().values())


def test_layers_override_and_errors():
    from conftest import make_bert

    model = SkipModel(make_bert(), BERT_INIT, layers="encoder.layer")
    assert model.num_candidates == 4 and all(isinstance(l, SkippableLayer) for l in model.base.encoder.layer)
    with pytest.raises(BackboneError, match="no sub-module 'encoder.nope'"):
        SkipModel(make_bert(), BERT_INIT, layers="encoder.nope")
    with pytest.raises(BackboneError, match="not a ModuleList"):
        SkipModel(make_bert(), BERT_INIT, layers="encoder")
    with pytest.raises(BackboneError, match="post-LN"):
        SkipModel(make_bert(), AdapterConfig(style="sequential"))
    with pytest.raises(BackboneError, match="matches no backbone parameter"):
        SkipModel(make_bert(), BERT_INIT, trainable=["nonexistent"])


def test_unknown_block_layout_is_a_clear_error():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])

    with pytest.raises(BackboneError, match="don't know where adapters go in a Block"):
        SkipModel(Net(), BERT_INIT)


def test_set_skip_and_plan_errors():
    from conftest import make_bert

    model = SkipModel(make_bert(), BERT_INIT)
    with pytest.raises(PlanError, match="out of range"):
        model.set_skip([4])
    with pytest.raises(PlanError, match="for 6 candidates"):
        model.apply_plan(SkipPlan((1,), 6))
    with pytest.raises(PlanError, match="apply_plan"):
        model.prune()
    model.apply_plan(SkipPlan((1,), 4))
    with pytest.raises(PlanError, match="already fixed"):
        model.apply_plan(SkipPlan((2,), 4))
    model.prune()
    with pytest.raises(PlanError, match="pruned"):
        model.set_skip([0])


def test_extra_trainable_parameters_are_saved_under_base_names():
    from conftest import make_bert

    model = SkipModel(make_bert(), BERT_INIT, trainable=["pooler"])
    names = model.trainable_named_parameters()
    assert "base.pooler.dense.weight" in names and names["base.pooler.dense.weight"].requires_grad


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_fused_adapter_add_equals_the_plain_formula(scale):
    """Sites add an adapter into its target with one addmm (`add_to`): same values and gradients as
    target + scale * up(relu(down(norm(x)))), also for a non-contiguous target and a bf16 backbone."""
    from archskip.adapters import Bottleneck
    from archskip.sites import add_adapter

    torch.manual_seed(0)
    ad = Bottleneck(12, 5, scale=scale)
    x = torch.randn(3, 4, 12)
    target = torch.randn(3, 12, 4).transpose(1, 2)  # (3, 4, 12), not contiguous
    fused = ad.add_to(target, x)
    plain = target + ad(x)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    assert fused.shape == target.shape
    g_fused = torch.autograd.grad(fused.square().sum(), list(ad.parameters()))
    g_plain = torch.autograd.grad((target + ad(x)).square().sum(), list(ad.parameters()))
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a bf16 stream: the adapter (float32) adds in float32 and the sum comes back in bf16
    got = add_adapter(ad, target.bfloat16(), x.bfloat16())
    assert got.dtype == torch.bfloat16
    want = (target.bfloat16().float() + ad(x.bfloat16().float())).bfloat16()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
