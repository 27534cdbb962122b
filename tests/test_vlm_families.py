"""Vision-language models whose language model is a supported decoder (docs/families.md, "Vision-language
models"): LLaVA-1.5, LLaVA-NeXT, PaliGemma (Gemma) and PaliGemma 2 (Gemma2, mixed sliding/full layers),
Gemma3 with its vision tower, Idefics3, SmolVLM, Qwen2-VL (also with sliding-window layers), each on a tiny random config (a 2-layer vision tower, a 4-layer language model).

For each:
(a) the candidates are the language model's decoder blocks (text_config.num_hidden_layers of them); the vision
    tower and the projector get no adapters and no hooks;
(b) no skip + zero-initialised adapters computes the base model's logits on an image + text input;
(c) with plans skipping middle blocks, pruned == masked: logits, and greedy `generate` with pixel_values and a KV
    cache, which also equals the uncached greedy continuation before pruning;
(d) one optimiser step moves only adapters and the head; the vision tower stays bit-identical;
    For the configs whose layers mix sliding-window and full attention (PaliGemma 2, Gemma3, Qwen2-VL with
    `use_sliding_window`), cached generation runs past the window with every kept layer's cache slot renumbered;
(e) the pruned model's text config (num_hidden_layers, layer_types) describes its blocks.
Mllama (Llama 3.2 Vision), whose language model interleaves cross-attention layers, is refused with a BackboneError.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from conftest import (
    VOCAB_SIZE,
    assert_a_step_moves_only_trainables,
    assert_same_generations,
    generate_masked_then_pruned,
    perturb_trainable,
)
from torch import nn

from archskip import AdapterConfig, SkipModel, SkipPlan
from archskip.adapters import Bottleneck, ReplacementAdapter
from archskip.backbones import BackboneError
from archskip.models.load import _model_class, is_vlm_config
from archskip.skipping import SkippableLayer

ZERO = AdapterConfig(hidden=8, skip_hidden=16, init="zero", skip_init="zero")
ADAPTED = AdapterConfig(hidden=8, skip_hidden=16)

IMAGE = VOCAB_SIZE - 1  # the image placeholder token; the other special ids below are never generated either
SPECIAL = [IMAGE, IMAGE - 1, IMAGE - 2, IMAGE - 3]
TEXT = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=4, bos_token_id=2)
VISION = dict(image_size=16, patch_size=8, num_channels=3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4)
SW = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def llava():
    config = transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(**VISION),
                                      text_config=transformers.LlamaConfig(**TEXT), image_token_id=IMAGE,
                                      vision_feature_layer=-1)
    return transformers.LlavaForConditionalGeneration(config)


def llava_next():
    config = transformers.LlavaNextConfig(vision_config=transformers.CLIPVisionConfig(**VISION),
                                          text_config=transformers.LlamaConfig(**TEXT), image_token_index=IMAGE,
                                          vision_feature_layer=-1, image_grid_pinpoints=[[16, 32], [32, 16]])
    return transformers.LlavaNextForConditionalGeneration(config)


def paligemma():
    config = transformers.PaliGemmaConfig(vision_config=transformers.SiglipVisionConfig(**VISION),
                                          text_config=transformers.GemmaConfig(**TEXT, head_dim=8), image_token_id=IMAGE,
                                          projection_dim=32)
    return transformers.PaliGemmaForConditionalGeneration(config)


def paligemma2():  # PaliGemma 2: a Gemma2 language model (sandwich norms), layers alternating sliding (4) / full
    text = transformers.Gemma2Config(**TEXT, head_dim=8, sliding_window=4, layer_types=SW)
    config = transformers.PaliGemmaConfig(vision_config=transformers.SiglipVisionConfig(**VISION), text_config=text,
                                          image_token_id=IMAGE, projection_dim=32)
    return transformers.PaliGemmaForConditionalGeneration(config)


def gemma3():  # Gemma3 with its vision tower: sandwich norms, layers alternating sliding (window 4) / full
    text = transformers.Gemma3TextConfig(**TEXT, head_dim=8, sliding_window=4, layer_types=SW)
    config = transformers.Gemma3Config(vision_config=transformers.SiglipVisionConfig(**VISION), text_config=text,
                                       mm_tokens_per_image=4, image_token_index=IMAGE, boi_token_index=IMAGE - 1,
                                       eoi_token_index=IMAGE - 2)
    model = transformers.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # initialised to zeros: the image would not reach the language model
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
    return model


def mllama():  # Llama 3.2 Vision: cross-attention layers (1, 3) interleaved with the self-attention ones
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                  image_size=16, patch_size=8, vision_output_dim=64, intermediate_layers_indices=[0])
    config = transformers.MllamaConfig(vision_config=vision, text_config=dict(TEXT, cross_attention_layers=[1, 3]),
                                       image_token_index=IMAGE)
    return transformers.MllamaForConditionalGeneration(config)


def idefics3():
    config = transformers.Idefics3Config(vision_config=transformers.Idefics3VisionConfig(**{**VISION, "image_size": 32}),
                                         text_config=transformers.LlamaConfig(**TEXT), image_token_id=IMAGE, scale_factor=2)
    return transformers.Idefics3ForConditionalGeneration(config)


def smolvlm():
    config = transformers.SmolVLMConfig(vision_config=transformers.SmolVLMVisionConfig(**{**VISION, "image_size": 32}),
                                        text_config=transformers.LlamaConfig(**TEXT), image_token_id=IMAGE, scale_factor=2)
    return transformers.SmolVLMForConditionalGeneration(config)


def qwen2_vl(**text_kw):
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3, mlp_ratio=2)
    text = dict(TEXT, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}, **text_kw)
    config = transformers.Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE,
                                        vision_start_token_id=IMAGE - 1, vision_end_token_id=IMAGE - 2,
                                        video_token_id=IMAGE - 3)
    return transformers.Qwen2VLForConditionalGeneration(config)


def qwen2_vl_sliding():  # layers 0, 1 full attention, layers 2, 3 sliding (window 4)
    return qwen2_vl(use_sliding_window=True, sliding_window=4, max_window_layers=2)


def _prompt(image_tokens: list[int], batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(5, VOCAB_SIZE - len(SPECIAL), (batch, 5), generator=g)
    return torch.cat([torch.tensor([[2] + image_tokens] * batch), text], 1)


def _pixels(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 100))


def inputs_for(name: str, batch: int = 2, seed: int = 0) -> dict:
    """An image + text prompt (no padding: greedy continuations are compared token for token)."""
    if name == "llava":  # 16x16 image, patches of 8, CLS dropped: 4 image tokens
        x = {"input_ids": _prompt([IMAGE] * 4, batch, seed), "pixel_values": _pixels(batch, 3, 16, 16, seed=seed)}
    elif name == "llava_next":  # a 16x32 image: the base view (4) + two tiles unpadded (2 rows of 4) + a newline per row
        x = {"input_ids": _prompt([IMAGE] * 14, batch, seed), "pixel_values": _pixels(batch, 3, 3, 16, 16, seed=seed),
             "image_sizes": torch.tensor([[16, 32]] * batch)}
    elif name.startswith("paligemma"):  # image tokens first, then the prompt; the prefix attends bidirectionally
        ids = _prompt([], batch, seed)
        ids = torch.cat([torch.full((batch, 4), IMAGE), ids], 1)
        x = {"input_ids": ids, "pixel_values": _pixels(batch, 3, 16, 16, seed=seed), "token_type_ids": torch.zeros_like(ids)}
    elif name == "gemma3":  # <start_of_image>, 4 image tokens (attending to each other), <end_of_image>
        ids = _prompt([IMAGE - 1, *[IMAGE] * 4, IMAGE - 2], batch, seed)
        x = {"input_ids": ids, "pixel_values": _pixels(batch, 3, 16, 16, seed=seed), "token_type_ids": (ids == IMAGE).long()}
    elif name in ("idefics3", "smolvlm"):  # 32x32 image, 16 patches, pixel shuffle by 2: 4 image tokens
        x = {"input_ids": _prompt([IMAGE] * 4, batch, seed), "pixel_values": _pixels(batch, 1, 3, 32, 32, seed=seed)}
    elif name.startswith("qwen2_vl"):  # 32x32 image: a 4x4 grid of patches of 8 (x 2 frames), merged by 2: 4 image tokens
        x = {"input_ids": _prompt([IMAGE - 1, *[IMAGE] * 4, IMAGE - 2], batch, seed),
             "pixel_values": _pixels(batch * 16, 3 * 2 * 8 * 8, seed=seed),
             "image_grid_thw": torch.tensor([[1, 4, 4]] * batch)}
        x["mm_token_type_ids"] = (x["input_ids"] == IMAGE).int()  # what the processor returns: 1 for image tokens
    else:
        raise KeyError(name)
    x["attention_mask"] = torch.ones_like(x["input_ids"])
    return x


# name -> (factory, path of the language model, path of the vision tower and projector modules)
VLMS = {
    "llava": (llava, "model.language_model", ("model.vision_tower", "model.multi_modal_projector")),
    "llava_next": (llava_next, "model.language_model", ("model.vision_tower", "model.multi_modal_projector")),
    "paligemma": (paligemma, "model.language_model", ("model.vision_tower", "model.multi_modal_projector")),
    "paligemma2": (paligemma2, "model.language_model", ("model.vision_tower", "model.multi_modal_projector")),
    "gemma3": (gemma3, "model.language_model", ("model.vision_tower", "model.multi_modal_projector")),
    "idefics3": (idefics3, "model.text_model", ("model.vision_model", "model.connector")),
    "smolvlm": (smolvlm, "model.text_model", ("model.vision_model", "model.connector")),
    "qwen2_vl": (qwen2_vl, "model.language_model", ("model.visual",)),
    "qwen2_vl_sliding": (qwen2_vl_sliding, "model.language_model", ("model.visual",)),
}
NAMES = list(VLMS)
GEN = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None, suppress_tokens=SPECIAL)


def make(name: str):
    torch.manual_seed(0)
    return VLMS[name][0]().eval()


def logits(model, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


def vision_modules(model: SkipModel, name: str) -> list[nn.Module]:
    return [model.base.get_submodule(p) for p in VLMS[name][2]]


# ---- (a) ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_the_candidates_are_the_language_models_blocks(name):
    base = make(name)
    lm_path = VLMS[name][1]
    blocks = list(base.get_submodule(lm_path).layers)
    model = SkipModel(base, ADAPTED)
    assert model.layers_path == f"{lm_path}.layers"
    assert model.num_candidates == base.config.text_config.num_hidden_layers == 4
    assert [c.block for c in model.candidates] == blocks
    assert model.spec.is_decoder
    assert model.layers_config is base.config.text_config
    for mod in vision_modules(model, name):
        assert not any(isinstance(m, (SkippableLayer, Bottleneck, ReplacementAdapter)) for m in mod.modules())
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in mod.modules()), "a hook in the vision tower"
        assert not any(p.requires_grad for p in mod.parameters())
    trainable = model.trainable_named_parameters()
    assert trainable and all(n.startswith("candidates.") for n in trainable)


# ---- (b) ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_zero_init_adapters_equal_the_base_model(name):
    base = make(name)
    twin = copy.deepcopy(base)
    x = inputs_for(name)
    ref = logits(base, x)
    other = logits(base, {**x, "pixel_values": x["pixel_values"] + 1})
    assert not torch.allclose(other, ref, atol=1e-4), "the image does not reach the language model"
    torch.testing.assert_close(logits(SkipModel(base, ZERO), x), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(SkipModel(twin, AdapterConfig.lavin(hidden=4)), x), ref, rtol=0, atol=1e-6)


# ---- (c), (e) -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip", [(1,), (1, 2)], ids=["skip1", "skip12"])
@pytest.mark.parametrize("name", NAMES)
def test_pruned_equals_masked_with_images(name, skip):
    model = SkipModel(make(name), ADAPTED)
    perturb_trainable(model, scale=0.1)
    text_config = model.config.text_config
    types = getattr(text_config, "layer_types", None)
    x = inputs_for(name)
    model.apply_plan(SkipPlan(skip, 4))
    masked = logits(model, x)
    uncached, cached, pruned = generate_masked_then_pruned(model, x, GEN)  # masked with and without cache, pruned
    assert_same_generations(uncached, cached, pruned)
    torch.testing.assert_close(logits(model, x), masked, rtol=1e-5, atol=1e-5)
    # (e) the text config describes the kept blocks; the composite config gets no layer count of its own
    keep = [i for i in range(4) if i not in skip]
    assert [layer.index for layer in model.base.get_submodule(model.layers_path)] == keep
    assert text_config.num_hidden_layers == len(keep)
    if types is not None:
        assert text_config.layer_types == [types[i] for i in keep]
    assert "num_hidden_layers" not in model.config.to_diff_dict()
    assert model.config.to_dict()["text_config"]["num_hidden_layers"] == len(keep)


@pytest.mark.parametrize("name", ["paligemma2", "gemma3", "qwen2_vl_sliding"])
def test_mixed_layer_types_generate_past_the_window(name):
    """PaliGemma 2's and Gemma3's layers alternate sliding (window 4) / full, Qwen2-VL's are full, full, sliding, sliding:
    skipping block 0 moves kept layers' cache slots to layers of the other type (the cache's layers are
    reordered, docs/families.md); the prompt (12-14 tokens) and the continuation are longer than the window."""
    model = SkipModel(make(name), ADAPTED)
    assert len(set(model.config.text_config.layer_types)) == 2, "the config must mix sliding and full layers"
    assert model.candidates[0].cache_slots is not None
    perturb_trainable(model, scale=0.1)
    x = inputs_for(name)
    model.apply_plan(SkipPlan((0,), 4))
    gen = dict(GEN, max_new_tokens=10, output_scores=True, return_dict_in_generate=True)
    assert_same_generations(*generate_masked_then_pruned(model, x, gen))  # tokens and per-step scores


# ---- (d) ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_a_step_moves_only_adapters_and_head(name):
    model = SkipModel(make(name), ADAPTED)
    model.head = nn.Linear(VOCAB_SIZE, 2)
    model.apply_plan(SkipPlan((1,), 4))
    perturb_trainable(model)
    vision_before = [{n: t.clone() for n, t in m.state_dict().items()} for m in vision_modules(model, name)]
    x = inputs_for(name)
    assert_a_step_moves_only_trainables(model, lambda m: m.head(m(**x).logits.float().mean(1)).logsumexp(-1).mean())
    for mod, was in zip(vision_modules(model, name), vision_before):  # (also part of the base, checked above)
        now = mod.state_dict()
        assert now.keys() == was.keys() and all(torch.equal(now[n], t) for n, t in was.items()), "the vision tower moved"


# ---- loading --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_vlm_configs_load_with_their_lm_head(name):
    """models.load picks the image-text-to-text class (the VLM with its LM head), by model type or architecture."""
    model = make(name)
    config = copy.deepcopy(model.config)
    assert is_vlm_config(config)
    for kind in ("auto", "decoder"):
        cls = _model_class(config, kind)
        assert cls is transformers.AutoModelForImageTextToText
        with torch.device("meta"):
            assert type(cls.from_config(config)) is type(model)


# ---- refusal --------------------------------------------------------------------------------------------------
def test_a_language_model_with_interleaved_cross_attention_layers_is_refused():
    """Mllama's language model has cross-attention layers among its decoder layers: one spec cannot place
    adapters in both, so SkipModel says so (instead of attaching block 0's sites to a different block)."""
    base = mllama().eval()
    assert is_vlm_config(base.config)
    with pytest.raises(BackboneError, match=r"(?s)'model.language_model.layers' mixes block kinds: block 1 is a "
                       r"MllamaCrossAttentionDecoderLayer.*would be needed.*children: cross_attn"):
        SkipModel(base, ADAPTED)
