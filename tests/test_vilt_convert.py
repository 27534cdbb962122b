"""The original-ViLT checkpoint converter: key coverage on the real key list, a numeric round trip, safe loading."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformers import ViltConfig, ViltModel

from archskip.models.convert.vilt import (
    DROPPED_KEYS,
    ORIGINAL_TEXT_LAYER_NORM_EPS,
    ORIGINAL_VIT_LAYER_NORM_EPS,
    CheckpointError,
    convert_vilt_state_dict,
    expected_original_shapes,
    load_original_vilt,
    original_vilt_config,
    rank_output_from_itm,
    vilt_key_map,
)

KEYS_FILE = Path(__file__).parent / "data" / "vilt_pretrain_keys.txt"  # the original checkpoint's keys and shapes
LINE = re.compile(r"^(\S+) \[([\d, ]*)\] (\w+)$")


def reference_shapes() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) from the reference list of the real checkpoint's 167 keys."""
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} is not available")
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"unparsed line: {line!r}"
        shape = tuple(int(x) for x in m.group(2).split(",") if x.strip())
        out[m.group(1)] = (shape, getattr(torch, m.group(3)))
    return out


def meta_state_dict() -> dict[str, Tensor]:
    """Meta tensors with the real checkpoint's keys, shapes and dtypes: no data, so the test is instant."""
    return {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in reference_shapes().items()}


# ---- 1. coverage of the real key list -------------------------------------------------------------------------------


def test_reference_list_is_the_expected_layout() -> None:
    """The converter's idea of the original layout is exactly the 167 keys and shapes of the reference list."""
    ref = reference_shapes()
    assert len(ref) == 167
    assert {k: s for k, (s, _) in ref.items()} == expected_original_shapes()


def test_convert_gives_exactly_the_hf_model_keys_and_shapes() -> None:
    original = meta_state_dict()
    backbone, heads = convert_vilt_state_dict(original)
    with torch.device("meta"):
        model = ViltModel(original_vilt_config())
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in backbone.items()} == want
    assert len(backbone) == 206
    assert all(t.device.type == "meta" for t in backbone.values())
    assert set(heads) == {
        "itm_score.fc.weight", "itm_score.fc.bias", "mlm_score.bias", "mlm_score.transform.dense.weight",
        "mlm_score.transform.dense.bias", "mlm_score.transform.LayerNorm.weight", "mlm_score.transform.LayerNorm.bias",
        "mlm_score.decoder.weight",
    }
    assert tuple(heads["itm_score.fc.weight"].shape) == (2, 768)
    assert tuple(heads["itm_score.fc.bias"].shape) == (2,)


def test_every_original_key_is_accounted_for() -> None:
    """Each of the 167 keys is mapped, kept as a head, or dropped on purpose: exactly one of the three."""
    original = meta_state_dict()
    backbone, heads = convert_vilt_state_dict(original)
    mapped = vilt_key_map()
    assert set(mapped).isdisjoint(heads) and set(mapped).isdisjoint(DROPPED_KEYS) and set(heads).isdisjoint(DROPPED_KEYS)
    assert set(mapped) | set(heads) | DROPPED_KEYS == set(original)
    assert DROPPED_KEYS == {"text_embeddings.position_ids"}
    targets = [d for dsts in mapped.values() for d in dsts]
    assert len(targets) == len(set(targets)) == len(backbone)  # no HF key is fed twice
    assert set(targets) == set(backbone)
    assert mapped["transformer.blocks.3.attn.qkv.weight"] == tuple(
        f"encoder.layer.3.attention.attention.{n}.weight" for n in ("query", "key", "value")
    )


def test_original_config_values() -> None:
    cfg = original_vilt_config()
    got = (cfg.image_size, cfg.patch_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
           cfg.intermediate_size, cfg.max_position_embeddings, cfg.vocab_size, cfg.modality_type_vocab_size)
    assert got == (384, 32, 768, 12, 12, 3072, 40, 30522, 2)
    assert cfg.layer_norm_eps == ORIGINAL_VIT_LAYER_NORM_EPS == 1e-6
    assert original_vilt_config(modality_type_vocab_size=3).modality_type_vocab_size == 3


# ---- 2. numeric round trip on a tiny model --------------------------------------------------------------------------


def tiny_config() -> ViltConfig:
    return ViltConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=64, patch_size=32,
        vocab_size=100, max_position_embeddings=16, layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_reference() -> ViltModel:
    """A random tiny ViltModel standing in for the original module (its text LayerNorm has the original eps 1e-12)."""
    torch.manual_seed(0)
    model = ViltModel(tiny_config()).eval()
    with torch.no_grad():  # random LayerNorm affines and biases, so a swapped tensor cannot go unnoticed
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name or name.endswith("bias"):
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    model.embeddings.text_embeddings.LayerNorm.eps = ORIGINAL_TEXT_LAYER_NORM_EPS
    return model


def to_original_layout(model: ViltModel) -> dict[str, Tensor]:
    """Inverse of the converter (test only): HF names -> original names, q/k/v fused back into one qkv tensor."""
    sd = model.state_dict()
    inverse = {dsts[0]: src for src, dsts in vilt_key_map(model.config).items() if len(dsts) == 1}
    out = {src: sd[dst].clone() for dst, src in inverse.items()}
    for i in range(model.config.num_hidden_layers):
        for kind in ("weight", "bias"):  # three [H, H] / [H] -> [3H, H] / [3H]
            parts = [sd[f"encoder.layer.{i}.attention.attention.{n}.{kind}"] for n in ("query", "key", "value")]
            out[f"transformer.blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    out["text_embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings)[None]  # [1, P] int64
    return out


def fake_heads(config: ViltConfig) -> dict[str, Tensor]:
    """Random ITM and MLM heads with the original names and shapes."""
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(s, generator=g) for k, s in expected_original_shapes(config).items()
            if k.startswith(("itm_score.", "mlm_score."))}


def tiny_batch(config: ViltConfig) -> dict[str, Tensor]:
    """2 texts of 7 tokens (one padded) and 2 images, the second only half valid."""
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    pixel_values = torch.randn(2, 3, config.image_size, config.image_size, generator=g)
    pixel_mask = torch.ones(2, config.image_size, config.image_size, dtype=torch.long)
    pixel_mask[1, :, config.image_size // 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
            "pixel_mask": pixel_mask}


def run(model: ViltModel, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(last_hidden_state, pooler_output); seeded because ViLT samples image patches at random."""
    torch.manual_seed(123)
    with torch.no_grad():
        out = model(**batch)
    return out.last_hidden_state, out.pooler_output


def save_ckpt(path: Path, state: dict[str, Tensor], **extra: object) -> Path:
    torch.save({"state_dict": state, "epoch": 9, "global_step": 200000, **extra}, path)
    return path


def test_round_trip_outputs_match(tmp_path: Path) -> None:
    ref = tiny_reference()
    heads_in = fake_heads(ref.config)
    path = save_ckpt(tmp_path / "tiny.ckpt", {**to_original_layout(ref), **heads_in})
    model, heads = load_original_vilt(path, tiny_config())
    assert not model.training
    batch = tiny_batch(ref.config)
    (h_ref, p_ref), (h, p) = run(ref, batch), run(model, batch)
    assert h.shape == h_ref.shape == (2, 7 + 5, 32)  # 7 text + CLS + 4 patches (2 x 2 grid)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    torch.testing.assert_close(p, p_ref, rtol=0, atol=0)
    assert set(heads) == set(heads_in) and all(torch.equal(heads[k], heads_in[k]) for k in heads_in)


def test_round_trip_sets_original_layer_norm_eps(tmp_path: Path) -> None:
    ref = tiny_reference()
    path = save_ckpt(tmp_path / "tiny.ckpt", {**to_original_layout(ref), **fake_heads(ref.config)})
    model, _ = load_original_vilt(path, tiny_config())
    assert model.embeddings.text_embeddings.LayerNorm.eps == 1e-12
    assert model.encoder.layer[0].layernorm_before.eps == model.layernorm.eps == 1e-6
    kept, _ = load_original_vilt(path, tiny_config(), text_layer_norm_eps=None)
    assert kept.embeddings.text_embeddings.LayerNorm.eps == 1e-6


def test_bare_state_dict_is_accepted(tmp_path: Path) -> None:
    ref = tiny_reference()
    path = tmp_path / "bare.pt"
    torch.save({**to_original_layout(ref), **fake_heads(ref.config)}, path)
    model, _ = load_original_vilt(path, tiny_config())
    torch.testing.assert_close(model.pooler.dense.weight, ref.pooler.dense.weight, rtol=0, atol=0)


def test_qkv_rows_split_in_order() -> None:
    """Rows [0:H] -> query, [H:2H] -> key, [2H:3H] -> value."""
    cfg = tiny_config()
    original = {k: torch.zeros(s) for k, s in expected_original_shapes(cfg).items()}
    original["transformer.blocks.1.attn.qkv.weight"] = torch.arange(96.0)[:, None].expand(96, 32)  # row r = r
    original["transformer.blocks.1.attn.qkv.bias"] = torch.arange(96.0)
    backbone, _ = convert_vilt_state_dict(original, cfg)
    for j, n in enumerate(("query", "key", "value")):
        assert torch.equal(backbone[f"encoder.layer.1.attention.attention.{n}.weight"][:, 0], torch.arange(32.0) + 32 * j)
        assert torch.equal(backbone[f"encoder.layer.1.attention.attention.{n}.bias"], torch.arange(32.0) + 32 * j)


def test_rank_output_is_the_match_row() -> None:
    heads = fake_heads(tiny_config())
    w, b = rank_output_from_itm(heads)
    assert w.shape == (1, 32) and b.shape == (1,)
    assert torch.equal(w[0], heads["itm_score.fc.weight"][1]) and torch.equal(b, heads["itm_score.fc.bias"][1:])
    assert not torch.equal(w[0], heads["itm_score.fc.weight"][0])
    w.add_(1.0)  # a copy: initialising and training rank_output leaves the ITM head alone
    assert not torch.equal(w[0], heads["itm_score.fc.weight"][1])
    with pytest.raises(CheckpointError, match="itm_score.fc.bias"):
        rank_output_from_itm({"itm_score.fc.weight": heads["itm_score.fc.weight"]})


# ---- 3. refusals and clear errors -----------------------------------------------------------------------------------


def _touch(path: str) -> None:
    """What a malicious pickle would run; the test checks it never ran."""
    Path(path).touch()


class Payload:
    """Pickles as a call to `_touch(marker)`: loading it with full unpickling would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.mark.parametrize("kind", ["object", "function"])
def test_arbitrary_pickled_objects_are_refused(tmp_path: Path, kind: str) -> None:
    ref = tiny_reference()
    marker = tmp_path / "pwned"
    extra = {"hparams": Payload(str(marker))} if kind == "object" else {"hook": os.getcwd}
    path = save_ckpt(tmp_path / "evil.ckpt", to_original_layout(ref), **extra)
    with pytest.raises(CheckpointError, match="refuses to unpickle arbitrary objects") as info:
        load_original_vilt(path, tiny_config())
    assert "evil.ckpt" in str(info.value) and "GLOBAL" in str(info.value)  # torch's line naming the refused global
    assert not marker.exists()


def test_unknown_key_is_named() -> None:
    original = meta_state_dict()
    original["transformer.blocks.0.adapter0.down_proj.weight"] = torch.empty(96, 768, device="meta")
    with pytest.raises(CheckpointError, match=r"1 unknown key\(s\): transformer\.blocks\.0\.adapter0\.down_proj\.weight"):
        convert_vilt_state_dict(original)


def test_missing_keys_are_named() -> None:
    original = meta_state_dict()
    del original["transformer.blocks.7.attn.qkv.bias"], original["itm_score.fc.bias"]
    with pytest.raises(CheckpointError, match="2 missing key") as info:
        convert_vilt_state_dict(original)
    assert "transformer.blocks.7.attn.qkv.bias" in str(info.value) and "itm_score.fc.bias" in str(info.value)


def test_heads_are_optional_only_when_asked() -> None:
    original = {k: v for k, v in meta_state_dict().items() if not k.startswith(("itm_score.", "mlm_score."))}
    backbone, heads = convert_vilt_state_dict(original, require_heads=False)
    assert heads == {} and len(backbone) == 206
    with pytest.raises(CheckpointError, match="8 missing key"):
        convert_vilt_state_dict(original)


def test_position_ids_may_be_absent() -> None:
    original = meta_state_dict()
    del original["text_embeddings.position_ids"]
    backbone, _ = convert_vilt_state_dict(original)
    assert len(backbone) == 206


def test_shape_mismatch_names_key_and_both_shapes() -> None:
    original = meta_state_dict()
    original["pooler.dense.weight"] = torch.empty(768, 512, device="meta")
    with pytest.raises(CheckpointError, match=r"pooler\.dense\.weight: expected \[768, 768\], got \[768, 512\]"):
        convert_vilt_state_dict(original)


def test_wrong_config_for_checkpoint_is_reported(tmp_path: Path) -> None:
    """A 2-layer checkpoint loaded with the 12-layer default config: the missing blocks are named."""
    ref = tiny_reference()
    path = save_ckpt(tmp_path / "tiny.ckpt", {**to_original_layout(ref), **fake_heads(ref.config)})
    with pytest.raises(CheckpointError, match=r"missing key\(s\):.*transformer\.blocks\.11\.attn\.qkv\.weight"):
        load_original_vilt(path)


def test_non_state_dict_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1), "b": 3}}, path)
    with pytest.raises(CheckpointError, match="not tensors: b"):
        load_original_vilt(path, tiny_config())
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*junk.ckpt.* as a torch checkpoint"):
        load_original_vilt(tmp_path / "junk.ckpt", tiny_config())
