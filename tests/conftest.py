"""Tiny random models of every supported family, a tiny tokenizer, and helpers.

Tests never touch the hub: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models gain nothing from intra-op threads, and on a shared machine threads fighting another
# process's make each small op wait (10x slower seen); child processes the tests start inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaModel,
    ViltConfig,
    ViltModel,
    ViTConfig,
    ViTModel,
)

# Property tests: reproducible (derandomized) and not at the mercy of a busy shared machine's clock.
settings.register_profile("archskip", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("archskip")

WORDS = [f"w{i}" for i in range(60)]
VOCAB_SIZE = 64 + len(WORDS)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over WORDS (ids 0..4 are special tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + [f"extra{i}" for i in range(64 - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def random_sentence(rng: random.Random, n: int | None = None) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 10)))


ENC = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
DEC = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=4, bos_token_id=2)


def make_bert(layers: int = 4, **kw):
    return BertModel(BertConfig(vocab_size=VOCAB_SIZE, **{**ENC, "num_hidden_layers": layers}, **kw)).eval()


def make_roberta():
    return RobertaModel(RobertaConfig(vocab_size=VOCAB_SIZE, pad_token_id=0, **ENC)).eval()


def make_vit():
    return ViTModel(ViTConfig(image_size=16, patch_size=8, num_channels=3, **ENC)).eval()


def make_dinov2():
    return Dinov2Model(Dinov2Config(image_size=16, patch_size=8, num_channels=3, mlp_ratio=2, hidden_size=32,
                                    num_hidden_layers=4, num_attention_heads=4)).eval()


def make_vilt():
    return ViltModel(ViltConfig(vocab_size=VOCAB_SIZE, image_size=32, patch_size=16, max_image_length=-1, **ENC)).eval()


def make_llama():
    return LlamaForCausalLM(LlamaConfig(**DEC)).eval()


def make_qwen2():
    return Qwen2ForCausalLM(Qwen2Config(**DEC)).eval()


def make_mistral():
    return MistralForCausalLM(MistralConfig(**DEC, sliding_window=64)).eval()


def text_inputs(batch: int = 2, length: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB_SIZE, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def image_inputs(batch: int = 2, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}


def vilt_inputs(batch: int = 2, seed: int = 0):
    return {**text_inputs(batch, 7, seed), **image_inputs(batch, 32, seed), "pixel_mask": torch.ones(batch, 32, 32, dtype=torch.long)}


# name -> (factory, inputs, output accessor)
FAMILIES = {
    "bert": (make_bert, text_inputs, lambda o: o.last_hidden_state),
    "roberta": (make_roberta, text_inputs, lambda o: o.last_hidden_state),
    "vit": (make_vit, image_inputs, lambda o: o.last_hidden_state),
    "dinov2": (make_dinov2, image_inputs, lambda o: o.last_hidden_state),
    "vilt": (make_vilt, vilt_inputs, lambda o: o.last_hidden_state),
    "llama": (make_llama, text_inputs, lambda o: o.logits),
    "qwen2": (make_qwen2, text_inputs, lambda o: o.logits),
    "mistral": (make_mistral, text_inputs, lambda o: o.logits),
}
DECODERS = ("llama", "qwen2", "mistral")


def pytest_collection_modifyitems(items):
    # xdist hands tests to its workers in collection order: the few that take a minute or more (marked `longest`)
    # go first, so that each runs beside the other worker's short ones instead of alone at the end
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)  # (stable: the rest keep their order)


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


def perturb_trainable(model, scale: float = 0.05, seed: int = 1) -> None:
    """Give every trainable tensor non-trivial values (as if trained) so comparisons are meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_named_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def classification_examples(n: int, seed: int = 0, labels=("neg", "pos")) -> list[dict]:
    """Examples whose label is decided by a word count, so a tiny model can learn them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = random_sentence(rng)
        out.append({"text": s, "label": labels[int(s.count("w1") + s.count("w2") > 0)]})
    return out


@pytest.fixture
def tiny_encoder_dir(tmp_path, tokenizer):
    """A saved tiny BERT + tokenizer directory, loadable with from_pretrained offline."""
    d = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    make_bert().save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def tiny_bpe_tokenizer(corpus: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus` (any text encodes and decodes exactly), LLaMA-like specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def load_tool(name: str):
    """A script of the repository's tools/ folder (not part of the installed package), as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ---- tiny random configs of every supported family (tests/test_families.py) -------------------------------
# name -> (model class, config class, config kwargs); classes are looked up in transformers when built.
_TINY_DEC = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                 max_position_embeddings=128, pad_token_id=0, eos_token_id=4, bos_token_id=2)
_TINY_IDS = dict(pad_token_id=0, eos_token_id=4, bos_token_id=2)
_TINY_ENC = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                 pad_token_id=0)
_SW = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
TINY_DECODERS = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(_TINY_DEC, num_key_value_heads=2)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(_TINY_DEC, num_key_value_heads=2, sliding_window=4)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(_TINY_DEC, num_key_value_heads=2)),
    # layers 0, 1 full attention, layers 2, 3 sliding (window 4)
    "qwen2_sliding": ("Qwen2ForCausalLM", "Qwen2Config", dict(_TINY_DEC, num_key_value_heads=2, use_sliding_window=True,
                                                              sliding_window=4, max_window_layers=2)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(_TINY_DEC, num_key_value_heads=2, head_dim=8)),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(_TINY_DEC, num_key_value_heads=2, head_dim=8)),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(_TINY_DEC, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                         layer_types=_SW)),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(_TINY_DEC, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                             layer_types=_SW)),
    "phi": ("PhiForCausalLM", "PhiConfig", dict(_TINY_DEC)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(_TINY_DEC, num_key_value_heads=2)),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", dict(_TINY_DEC, num_key_value_heads=2)),
    "stablelm_parallel": ("StableLmForCausalLM", "StableLmConfig", dict(_TINY_DEC, num_key_value_heads=2,
                                                                        use_parallel_residual=True)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(_TINY_IDS, vocab_size=VOCAB_SIZE, n_embd=32, n_layer=4, n_head=4,
                                                   n_positions=128)),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(_TINY_DEC, use_parallel_residual=True)),
    "gpt_neox_sequential": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(_TINY_DEC, use_parallel_residual=False)),
    "opt": ("OPTForCausalLM", "OPTConfig", dict(_TINY_IDS, vocab_size=VOCAB_SIZE, hidden_size=32, ffn_dim=64,
                                                num_hidden_layers=4, num_attention_heads=4, word_embed_proj_dim=32,
                                                max_position_embeddings=128)),
    "opt_post_ln": ("OPTForCausalLM", "OPTConfig", dict(_TINY_IDS, vocab_size=VOCAB_SIZE, hidden_size=32, ffn_dim=64,
                                                        num_hidden_layers=4, num_attention_heads=4, word_embed_proj_dim=16,
                                                        do_layer_norm_before=False, max_position_embeddings=128)),
    "falcon": ("FalconForCausalLM", "FalconConfig", dict(_TINY_IDS, vocab_size=VOCAB_SIZE, hidden_size=32,
                                                         num_hidden_layers=4, num_attention_heads=4)),
    "falcon_new": ("FalconForCausalLM", "FalconConfig", dict(_TINY_IDS, vocab_size=VOCAB_SIZE, hidden_size=32,
                                                             num_hidden_layers=4, num_attention_heads=4,
                                                             new_decoder_architecture=True, num_kv_heads=2)),
    "falcon_sequential": ("FalconForCausalLM", "FalconConfig", dict(_TINY_IDS, vocab_size=VOCAB_SIZE, hidden_size=32,
                                                                    num_hidden_layers=4, num_attention_heads=4,
                                                                    parallel_attn=False)),
    "gptj": ("GPTJForCausalLM", "GPTJConfig", dict(_TINY_IDS, vocab_size=VOCAB_SIZE, n_embd=32, n_layer=4, n_head=4,
                                                   rotary_dim=4, n_positions=128)),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(_TINY_DEC, num_key_value_heads=2, num_local_experts=4,
                                                            num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(_TINY_DEC, num_key_value_heads=2, num_experts=4,
                                                                num_experts_per_tok=2, moe_intermediate_size=32,
                                                                shared_expert_intermediate_size=32)),
}
TINY_TEXT_ENCODERS = {
    "bert": ("BertModel", "BertConfig", dict(_TINY_ENC)),
    "roberta": ("RobertaModel", "RobertaConfig", dict(_TINY_ENC)),
    "xlm_roberta": ("XLMRobertaModel", "XLMRobertaConfig", dict(_TINY_ENC)),
    "electra": ("ElectraModel", "ElectraConfig", dict(_TINY_ENC, embedding_size=16)),
    "distilbert": ("DistilBertModel", "DistilBertConfig", dict(vocab_size=VOCAB_SIZE, dim=32, n_layers=4, n_heads=4,
                                                               hidden_dim=64, pad_token_id=0)),
    "deberta_v2": ("DebertaV2Model", "DebertaV2Config", dict(_TINY_ENC, relative_attention=True, position_biased_input=False,
                                                             pos_att_type=["p2c", "c2p"], max_relative_positions=16)),
    # deberta-v2-xlarge's layout: a convolution after block 0
    "deberta_v2_conv": ("DebertaV2Model", "DebertaV2Config", dict(_TINY_ENC, relative_attention=True,
                                                                  pos_att_type=["p2c", "c2p"], conv_kernel_size=3)),
    "clip_text": ("CLIPTextModel", "CLIPTextConfig", dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=4,
                                                          num_attention_heads=4, intermediate_size=64,
                                                          max_position_embeddings=32, **_TINY_IDS)),
}
_TINY_IMG = dict(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=4, num_attention_heads=4)
TINY_VISION_ENCODERS = {
    "vit": ("ViTModel", "ViTConfig", dict(_TINY_IMG, intermediate_size=64)),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(_TINY_IMG, mlp_ratio=2)),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", dict(_TINY_IMG, intermediate_size=64)),
}


def make_tiny(name: str):
    """A tiny random model of family `name` (a key of TINY_DECODERS / TINY_TEXT_ENCODERS / TINY_VISION_ENCODERS)."""
    import transformers

    model_cls, config_cls, kwargs = {**TINY_DECODERS, **TINY_TEXT_ENCODERS, **TINY_VISION_ENCODERS}[name]
    config = getattr(transformers, config_cls)(**kwargs)
    return getattr(transformers, model_cls)(config).eval()


# ---- checks shared by the family matrices (tests/test_vlm_families.py) -------------------------------------
def generate_masked_then_pruned(model, inputs: dict, gen: dict):
    """Greedy `generate` on a SkipModel with its plan applied, uncached and with a KV cache, then `prune()` and
    generate again with a cache: (uncached, cached, pruned), which must agree (`assert_same_generations`)."""
    with torch.no_grad():
        uncached = model.generate(**inputs, use_cache=False, **gen)
        cached = model.generate(**inputs, use_cache=True, **gen)
        model.prune()
        pruned = model.generate(**inputs, use_cache=True, **gen)
    return uncached, cached, pruned


def assert_same_generations(uncached, *others, atol: float = 1e-4) -> None:
    """The same tokens (and, when `generate` returned them, per-step scores within `atol`) as `uncached`."""
    seqs = getattr(uncached, "sequences", uncached)
    for other in others:
        assert getattr(other, "sequences", other).tolist() == seqs.tolist(), "greedy continuations differ"
        if getattr(uncached, "scores", None) is not None:
            torch.testing.assert_close(torch.stack(other.scores), torch.stack(uncached.scores), rtol=atol, atol=atol)


def assert_a_step_moves_only_trainables(model, loss_fn) -> None:
    """One AdamW step on `loss_fn(model)` moves the head, parallel adapters and replacement adapters, and nothing
    that is not trainable: every other base tensor stays bit-identical."""
    base_before = {n: t.detach().clone() for n, t in model.base.state_dict().items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.trainable_named_parameters().values()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss_fn(model).backward()
    opt.step()
    named = dict(model.named_parameters())
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert {n for n in changed if n.startswith("head.")}, "the head did not train"
    assert {n for n in changed if ".sites." in n} and {n for n in changed if ".replacement." in n}, sorted(changed)
    assert all(id(named[n]) in trainable for n in changed), f"frozen parameters changed: {sorted(changed)[:5]}"
    frozen = {n: t for n, t in model.base.state_dict().items() if ".sites." not in n and ".replacement." not in n}
    assert frozen.keys() <= base_before.keys()
    assert all(torch.equal(t, base_before[n]) for n, t in frozen.items()), "a base weight moved"


# ---- hooks that record what a block's modules read and return (tests/test_families.py, tests/test_meter.py) ----
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


def record_sites(model, index: int, forward, active: set[str], ins: dict[str, str] | None = None,
                 outs: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Run `forward()` with only the sites in `active` of candidate `index` switched on; record its block's input
    ("x") and output ("out"), the inputs of the block's modules named in `ins` and the outputs of those in `outs`
    (key -> path in the block), and each running adapter's input ("in_<site>") and what it adds ("d_<site>"),
    all flattened to rows of the hidden size."""
    layer = model.candidates[index]
    block = layer.block
    rec = Recorder()
    rec.inputs("x", block)
    rec.outputs("out", block)
    for key, path in (ins or {}).items():
        rec.inputs(key, block.get_submodule(path))
    for key, path in (outs or {}).items():
        rec.outputs(key, block.get_submodule(path))
    for site_name, site in layer.sites.items():
        site.active = site_name in active
        rec.inputs(f"in_{site_name}", site.adapter.norm)  # the adapter's input (its first step is its norm)
    try:
        forward()
    finally:
        rec.remove()
        for site in layer.sites.values():
            site.active = True
    with torch.no_grad():  # what the adapter adds: f(its input) (a site runs it fused with the add)
        for site_name in active:
            rec.got[f"d_{site_name}"] = layer.sites[site_name].adapter(rec.got[f"in_{site_name}"])
    return {k: v.reshape(-1, v.shape[-1]) for k, v in rec.got.items()}
