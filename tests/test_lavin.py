"""LaVIN with DAS: the paper's parameter counts, the decision-token routing, pruning and generation."""

import copy

import pytest
import torch
from conftest import DEC, perturb_trainable, tiny_tokenizer
from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

from archskip import AdapterConfig, ModelConfig, SkipModel, SkipPlan
from archskip.adapters import RouterAdapter
from archskip.models.lavin import LaVIN
from archskip.models.load import load_pretrained


def tiny_lavin(vision: str = "clip", image_tokens: int = 2) -> LaVIN:
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(**{**DEC, "num_hidden_layers": 6}, attn_implementation="eager")).eval()
    if vision == "clip":
        enc = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                               image_size=28, patch_size=14)).eval()
    else:
        enc = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, image_size=28,
                                       patch_size=14)).eval()
    return LaVIN(llm, enc, tiny_tokenizer(), image_tokens=image_tokens, projector_hidden=16)


def wrap(lavin: LaVIN) -> SkipModel:
    model = SkipModel(lavin, AdapterConfig.lavin(hidden=4, multimodal=True), trainable=lavin.trainable_names())
    perturb_trainable(model, scale=0.3)  # zero-initialised up-projections would hide the routing
    return model


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, 7), generator=g)
    ids[:, 0] = 2  # BOS
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(n, 3, 28, 28, generator=g),
            "has_image": torch.tensor([1, 0][:n] if n <= 2 else [1] * n)}


def test_table1_parameter_counts_on_the_meta_device():
    """LLaMA-7B + CLIP ViT-L/14: LaVIN-7B 3.78M, DAS2 4.17M, DAS4 4.57M, DAS6 4.96M (docs/lavin.md)."""
    base, _, _ = load_pretrained(ModelConfig(name_or_path="random:llama-7b", vision="random:clip-vit-l14"), device="meta")
    model = SkipModel(base, AdapterConfig.lavin(multimodal=True), trainable=base.trainable_names())
    assert model.num_candidates == 32 and len(base.feature_blocks) == 6 and base.feature_blocks[-1] == 23
    counts = {}
    for k in (0, 2, 4, 6):
        m = copy.deepcopy(model)
        m.apply_plan(SkipPlan.last(k, 32))
        counts[k] = m.parameter_counts()[0]
    # vision adapters 24 x 20,490 + LLM adapters 32 x 81,930 + projector 659,584 + modality 8,192
    assert counts[0] == 24 * 20_490 + 32 * 81_930 + 659_584 + 8_192 == 3_781_296
    assert [counts[k] - counts[0] for k in (2, 4, 6)] == [k * (278_562 - 81_930) for k in (2, 4, 6)]
    assert [round(counts[k] / 1e6, 2) for k in (0, 2, 4, 6)] == [3.78, 4.17, 4.57, 4.96]


def test_router_adapter_shapes_and_identity_at_init():
    r = RouterAdapter(4096, 8)
    assert sum(p.numel() for p in r.parameters()) == 81_930
    assert sum(p.numel() for p in RouterAdapter(4096, 32).parameters()) == 278_562
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(RouterAdapter(64, 8).eval()(x), x)  # zero up-projections: identity


def _reference_logits(model: SkipModel, b: dict) -> torch.Tensor:
    """LaVIN as the authors run it: the decision token *inside* the sequence, masked from every other token."""
    lavin = model.base
    embeds, mask, _ = lavin.embed(b["input_ids"], b["attention_mask"], b["pixel_values"], b["has_image"])
    token = lavin.modality_embedding(b["has_image"])[:, None]
    full = torch.cat([token, embeds], 1)  # (B, 1 + T, D)
    t = full.shape[1]
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))
    allowed[1:, 0] = False  # nobody attends to the decision token
    mask4d = torch.zeros(1, 1, t, t).masked_fill(~allowed, float("-inf")).expand(len(full), 1, t, t)
    out = lavin.llm(inputs_embeds=full, attention_mask=mask4d)  # routers read x[:, 0] in every layer
    return out.logits[:, 1:]


@pytest.mark.parametrize("skip", [(), (1, 4)])
def test_decision_pass_equals_the_in_sequence_decision_token(skip):
    model = wrap(tiny_lavin())
    model.apply_plan(SkipPlan(skip, 6))
    model.eval()
    b = batch()
    routers = [m for m in model.base.modules() if isinstance(m, RouterAdapter)]
    with torch.no_grad():
        ours = model(**b).logits
        assert routers and all(r.routing is None and r.mode == "compute" for r in routers)  # nothing left behind
        ref = _reference_logits(model, b)
        _, mask, _ = model.base.embed(b["input_ids"], b["attention_mask"], b["pixel_values"], b["has_image"])
    real = mask.bool()  # padded positions are masked in ours only; their logits are meaningless
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-4, atol=1e-4)


def test_image_and_text_only_examples_route_differently():
    model = wrap(tiny_lavin())
    b = batch()
    with torch.no_grad():
        model(**b)
        lavin = model.base
        with lavin.routed(b["has_image"]):
            w = [m.routing for m in lavin.llm.modules() if isinstance(m, RouterAdapter)]
    assert not torch.allclose(w[0][0], w[0][1])


@pytest.mark.parametrize("vision", ["clip", "dinov2"])
def test_pruned_lavin_generates_like_the_wrapped_model(vision):
    model = wrap(tiny_lavin(vision))
    model.apply_plan(SkipPlan((0, 3), 6))
    model.eval()
    b = batch()
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        no_cache = model.generate(**b, use_cache=False, **gen)
        model.prune()
        pruned = model.generate(**b, use_cache=True, **gen)
    assert pruned.tolist() == no_cache.tolist() and pruned.shape == (2, 6)


def test_only_adapters_projector_and_modality_train():
    model = wrap(tiny_lavin())
    model.apply_plan(SkipPlan((2,), 6))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.trainable_named_parameters().values()}
    b = batch()
    labels = b["input_ids"].clone()
    loss = model(**b, labels=labels).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    named = dict(model.named_parameters())
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert all(id(named[n]) in trainable for n in changed)
    for part in ("projector", "modality_embedding", "vision.base", "llm.model.layers"):
        assert any(part in n for n in changed), part


def test_trainable_names_cover_vision_adapters_projector_modality():
    lavin = tiny_lavin()
    names = lavin.trainable_names()
    assert any(".sites.attn.adapter." in n for n in names) and "modality_embedding.weight" in names
    assert any(n.startswith("projector.") for n in names) and not any(n.startswith("llm.") for n in names)
    assert not any(".replacement." in n for n in names)  # the vision tower skips nothing


def test_image_tokens_are_inserted_after_bos_and_labels_ignore_them():
    lavin = tiny_lavin(image_tokens=2)
    b = batch()
    labels = b["input_ids"].clone()
    embeds, mask, out_labels = lavin.embed(b["input_ids"], b["attention_mask"], b["pixel_values"], b["has_image"], labels)
    n_img_prefix = len(lavin.prefix_image) + 2
    n_txt_prefix = len(lavin.prefix_no_image)
    assert embeds.shape[1] == 7 + max(n_img_prefix, n_txt_prefix)
    assert (out_labels[0, 1 : 1 + n_img_prefix] == -100).all() and out_labels[0, 0] == labels[0, 0]
    assert out_labels[0, 1 + n_img_prefix :].tolist() == labels[0, 1:].tolist()
    assert mask[1].sum() == 7 + n_txt_prefix


def test_profile_params_prints_table1_from_the_recipe(capsys):
    from pathlib import Path

    from archskip.cli import main

    recipe = Path(__file__).parent.parent / "recipes" / "lavin-sqa-train.yaml"
    main(["profile", "--params", "true", "--config", str(recipe), "--model.name_or_path", "random:llama-7b",
          "--model.vision", "random:clip-vit-l14", "--ks", "[0,2,4,6]"])
    out = capsys.readouterr().out
    for k, m in ((0, "3.78"), (2, "4.17"), (4, "4.57"), (6, "4.96")):
        assert f"| {k} |" in out and f"| {m} |" in out
