"""The original-METER checkpoint converter: key coverage on the real key list (at 288 and 384 pixels), a numeric
round trip through a hand-written inverse mapping, position-table resizing, safe loading and clear refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from archskip.models.convert.meter import (
    DROPPED_KEYS,
    POSITION_KEY,
    CheckpointError,
    convert_meter_state_dict,
    expected_original_shapes,
    load_original_meter,
    meter_key_map,
    original_meter_config,
    resize_position_table,
)
from archskip.models.meter import METERConfig, METERModel

KEYS_FILE = Path(__file__).parent / "data" / "meter_pretrain_keys.txt"  # the original checkpoint's keys and shapes
LINE = re.compile(r"^(\S+) \[([\d, ]*)\] (\w+)$")
HEAD_PREFIXES = ("itm_score.", "mlm_score.")
TARGET_POSITIONS = "vision.embeddings.position_embedding.weight"


def reference_shapes() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) from the reference list of the real checkpoint's 671 keys."""
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
    """Meta tensors with the real checkpoint's keys, shapes and dtypes: no data, so the tests are instant."""
    return {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in reference_shapes().items()}


def meta_model_shapes(config: METERConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of METERModel(config) without token4classifier (not in the original), built on meta."""
    with torch.device("meta"):
        model = METERModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "token4classifier"}


# ---- 1. coverage of the real key list -------------------------------------------------------------------------------


def test_reference_list_is_the_expected_layout() -> None:
    """The converter's idea of the original layout is exactly the 671 keys and shapes of the reference list."""
    ref = reference_shapes()
    assert len(ref) == 671
    assert {k: s for k, (s, _) in ref.items()} == expected_original_shapes(original_meter_config(288))


@pytest.mark.parametrize(("image_size", "rows"), [(288, 325), (384, 577)])  # 18x18+1, 24x24+1
def test_convert_gives_exactly_the_model_keys_and_shapes(image_size: int, rows: int) -> None:
    config = original_meter_config(image_size)
    state, heads = convert_meter_state_dict(meta_state_dict(), config)
    assert {k: tuple(v.shape) for k, v in state.items()} == meta_model_shapes(config)
    assert len(state) == 701  # 657 mapped keys, 11 x 2 fused in_proj tensors each split in 3
    assert tuple(state[TARGET_POSITIONS].shape) == (rows, 768)
    assert all(t.device.type == "meta" for t in state.values())  # no data read, even when resized
    assert set(heads) == {k for k in reference_shapes() if k.startswith(HEAD_PREFIXES)} and len(heads) == 8
    assert tuple(heads["itm_score.fc.weight"].shape) == (2, 1536)


def test_every_original_key_is_accounted_for() -> None:
    """Each of the 671 keys is mapped, kept as a head, or dropped on purpose: exactly one of the three."""
    original = meta_state_dict()
    state, heads = convert_meter_state_dict(original)
    mapped = meter_key_map()
    assert set(mapped).isdisjoint(heads) and set(mapped).isdisjoint(DROPPED_KEYS) and set(heads).isdisjoint(DROPPED_KEYS)
    assert set(mapped) | set(heads) | DROPPED_KEYS == set(original)
    assert DROPPED_KEYS == {"text_transformer.embeddings.position_ids", "text_transformer.pooler.dense.weight",
                            "text_transformer.pooler.dense.bias", "vit_model.positional_embedding",
                            "vit_model.ln_final.weight", "vit_model.ln_final.bias"}
    targets = [d for dsts in mapped.values() for d in dsts]
    assert len(targets) == len(set(targets)) == len(state)  # no model key is fed twice
    assert set(targets) == set(state)


def test_key_map_spot_checks() -> None:
    """The names the mapping doc gives, including the text/image side order inside `fusion`."""
    mapped = meter_key_map()
    assert mapped["vit_model.visual.transformer.resblocks.10.attn.in_proj_weight"] == tuple(
        f"vision.encoder.layers.10.self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj"))
    assert mapped["vit_model.visual.conv1.weight"] == ("vision.embeddings.patch_embedding.weight",)
    assert mapped["vit_model.visual.ln_pre.bias"] == ("vision.pre_layrnorm.bias",)
    assert mapped["vit_model.visual.ln_post.weight"] == ("vision.post_layernorm.weight",)
    assert mapped["cross_modal_text_layers.5.crossattention.self.key.weight"] == (
        "fusion.5.crossattention.self.key.weight",)
    assert mapped["cross_modal_image_layers.0.output.LayerNorm.bias"] == ("fusion.6.output.LayerNorm.bias",)
    assert mapped["text_transformer.encoder.layer.11.output.dense.weight"] == ("text.encoder.layer.11.output.dense.weight",)


def test_original_config_values() -> None:
    """CLIP ViT-B/16 cut to 11 blocks, roberta-base, and BERT-default fusion layers: three different eps."""
    cfg = original_meter_config()
    v, t = cfg.vision_config, cfg.text_config
    assert (v["image_size"], v["patch_size"], v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"],
            v["num_attention_heads"], v["hidden_act"], v["layer_norm_eps"]) == (288, 16, 768, 3072, 11, 12,
                                                                               "quick_gelu", 1e-5)
    assert (t["vocab_size"], t["hidden_size"], t["num_hidden_layers"], t["max_position_embeddings"],
            t["type_vocab_size"], t["pad_token_id"], t["layer_norm_eps"]) == (50265, 768, 12, 514, 1, 1, 1e-5)
    assert (cfg.hidden_size, cfg.num_fusion_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.layer_norm_eps, cfg.hidden_act, cfg.modality_type_vocab_size) == (768, 6, 12, 3072, 1e-12, "gelu", 2)
    assert original_meter_config(576).vision_config["image_size"] == 576
    small = original_meter_config(vision_config={"num_hidden_layers": 2}, num_fusion_layers=1)
    assert small.vision_config["num_hidden_layers"] == 2 and small.vision_config["hidden_size"] == 768
    assert small.num_fusion_layers == 1


# ---- 2. numeric round trip on a tiny model --------------------------------------------------------------------------


def tiny_config(image_size: int = 32) -> METERConfig:
    """Vision 24 wide, text and fusion 32 (token4classifier, a text-width vector, replaces the transformed first text
    token, as in DAS, so those two must agree): a vision/fusion mix-up cannot go unnoticed."""
    return original_meter_config(
        image_size,
        vision_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4},
        text_config={"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "intermediate_size": 80, "max_position_embeddings": 20},
        hidden_size=32, num_fusion_layers=2, num_attention_heads=4, intermediate_size=64,
    )


def tiny_reference(image_size: int = 32) -> METERModel:
    """A random tiny METERModel standing in for the original module."""
    torch.manual_seed(0)
    model = METERModel(tiny_config(image_size)).eval()
    with torch.no_grad():  # random LayerNorm affines and biases, so a swapped tensor cannot go unnoticed
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
            elif "position_embedding" in name or "class_embedding" in name:
                p.normal_(0.0, 1.0)
    model.init_classifier_token()
    return model


# The inverse mapping is written out here from the mapping doc, not taken from the converter's own key map.
VISION_RENAMES = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
                  "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm.": "ln_pre.",
                  "post_layernorm.": "ln_post.", "encoder.layers.": "transformer.resblocks.",
                  "self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
                  "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}


def original_name(key: str, n_fusion: int) -> str:
    """A METERModel key -> the original METER key (test-only inverse; q/k/v handled by the caller)."""
    if key.startswith("vision."):
        key = key.removeprefix("vision.")
        for new, old in VISION_RENAMES.items():
            key = key.replace(new, old)
        return "vit_model.visual." + key
    if key.startswith("text."):
        return "text_transformer." + key.removeprefix("text.")
    m = re.match(r"fusion\.(\d+)\.(.*)", key)
    if m:
        i = int(m.group(1))
        side, j = ("text", i) if i < n_fusion else ("image", i - n_fusion)
        return f"cross_modal_{side}_layers.{j}.{m.group(2)}"
    return key


def to_original_layout(model: METERModel) -> dict[str, Tensor]:
    """Inverse of the converter (test only): original names, q/k/v fused into in_proj, the leftovers added."""
    sd, n = model.state_dict(), model.config.num_fusion_layers
    split_qkv = re.compile(r"self_attn\.[qkv]_proj\.")
    out = {original_name(k, n): v.clone() for k, v in sd.items() if k != "token4classifier" and not split_qkv.search(k)}
    for i in range(model.config.vision_config["num_hidden_layers"]):
        for kind in ("weight", "bias"):  # three [Dv, Dv] / [Dv] -> [3Dv, Dv] / [3Dv]
            parts = [sd[f"vision.encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"vit_model.visual.transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
    t = model.config.text_config
    out["text_transformer.embeddings.position_ids"] = torch.arange(t["max_position_embeddings"])[None]  # int64
    out["text_transformer.pooler.dense.weight"] = torch.randn(t["hidden_size"], t["hidden_size"])
    out["text_transformer.pooler.dense.bias"] = torch.randn(t["hidden_size"])
    out["vit_model.positional_embedding"] = torch.randn(77, 512)  # CLIP text-tower leftovers
    out["vit_model.ln_final.weight"], out["vit_model.ln_final.bias"] = torch.randn(512), torch.randn(512)
    return out


def fake_heads(config: METERConfig) -> dict[str, Tensor]:
    """Random ITM and MLM heads with the original names and shapes."""
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(s, generator=g) for k, s in expected_original_shapes(config).items()
            if k.startswith(HEAD_PREFIXES)}


def tiny_batch(config: METERConfig) -> dict[str, Tensor]:
    """2 texts of 7 tokens (<s> first, the second padded with RoBERTa's pad id 1) and 2 random images."""
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, config.text_config["vocab_size"], (2, 7), generator=g)
    input_ids[:, 0] = 0
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:], input_ids[1, 5:] = 0, 1
    size = config.vision_config["image_size"]
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values": torch.randn(2, 3, size, size, generator=g)}


def run(model: METERModel, batch: dict[str, Tensor]):
    with torch.no_grad():
        return model(**batch)


def save_ckpt(path: Path, state: dict[str, Tensor], **extra: object) -> Path:
    torch.save({"state_dict": state, "epoch": 9, "global_step": 100000, **extra}, path)
    return path


def test_inverse_helper_produces_the_original_layout() -> None:
    """Guard for the test helper itself: it must produce exactly the original keys and shapes."""
    ref = tiny_reference()
    layout = {k: tuple(v.shape) for k, v in {**to_original_layout(ref), **fake_heads(ref.config)}.items()}
    assert layout == expected_original_shapes(ref.config)


def test_round_trip_outputs_match(tmp_path: Path) -> None:
    ref = tiny_reference()
    heads_in = fake_heads(ref.config)
    path = save_ckpt(tmp_path / "tiny.ckpt", {**to_original_layout(ref), **heads_in})
    model, heads = load_original_meter(path, image_size=32, config=tiny_config())
    assert not model.training
    batch = tiny_batch(ref.config)
    out_ref, out = run(ref, batch), run(model, batch)
    assert out.pooler_output.shape == (2, 64)  # [text pooled ; image pooled]
    assert out.image_feats.shape == (2, 5, 32)  # CLS + 2 x 2 patches
    torch.testing.assert_close(out.pooler_output, out_ref.pooler_output, rtol=0, atol=0)
    torch.testing.assert_close(out.text_feats, out_ref.text_feats, rtol=0, atol=0)
    torch.testing.assert_close(out.image_feats, out_ref.image_feats, rtol=0, atol=0)
    assert set(heads) == set(heads_in) and all(torch.equal(heads[k], heads_in[k]) for k in heads_in)


def test_classifier_token_is_roberta_embedding_of_id_0(tmp_path: Path) -> None:
    ref = tiny_reference()
    path = save_ckpt(tmp_path / "tiny.ckpt", {**to_original_layout(ref), **fake_heads(ref.config)})
    model, _ = load_original_meter(path, config=tiny_config())
    with torch.no_grad():
        want = model.text.embeddings(input_ids=torch.zeros(1, 1, dtype=torch.long))  # (1, 1, Dt)
    assert model.token4classifier.abs().sum() > 0
    torch.testing.assert_close(model.token4classifier, want, rtol=0, atol=0)


def test_bare_state_dict_without_leftovers_is_accepted(tmp_path: Path) -> None:
    """A bare state dict, without the dropped keys, and leftover CLIP text-tower shapes are not checked."""
    ref = tiny_reference()
    state = {k: v for k, v in to_original_layout(ref).items() if k not in DROPPED_KEYS}
    path = tmp_path / "bare.pt"
    torch.save({**state, **fake_heads(ref.config), "vit_model.ln_final.weight": torch.zeros(8)}, path)
    model, _ = load_original_meter(path, config=tiny_config())
    torch.testing.assert_close(model.fusion[3].output.dense.weight, ref.fusion[3].output.dense.weight, rtol=0, atol=0)


def test_in_proj_rows_split_in_order() -> None:
    """Rows [0:D] -> q_proj, [D:2D] -> k_proj, [2D:3D] -> v_proj."""
    cfg = tiny_config()
    original = {k: torch.zeros(s) for k, s in expected_original_shapes(cfg).items()}
    original["vit_model.visual.transformer.resblocks.1.attn.in_proj_weight"] = torch.arange(72.0)[:, None].expand(72, 24)
    original["vit_model.visual.transformer.resblocks.1.attn.in_proj_bias"] = torch.arange(72.0)
    state, _ = convert_meter_state_dict(original, cfg)
    for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(state[f"vision.encoder.layers.1.self_attn.{n}.weight"][:, 0], torch.arange(24.0) + 24 * j)
        assert torch.equal(state[f"vision.encoder.layers.1.self_attn.{n}.bias"], torch.arange(24.0) + 24 * j)


# ---- 3. position-table interpolation ---------------------------------------------------------------------------------


def test_position_table_is_resized_like_meter(tmp_path: Path) -> None:
    """A checkpoint made at 32 px (2 x 2 grid) converted for 64 px: CLS row kept, grid resized bicubically."""
    original = {**to_original_layout(tiny_reference(32)), **fake_heads(tiny_config())}
    table = original[POSITION_KEY]  # [1 + 2*2, 24]
    state, _ = convert_meter_state_dict(original, tiny_config(64))
    new = state[TARGET_POSITIONS]
    assert new.shape == (1 + 4 * 4, 24)
    assert torch.equal(new[0], table[0])
    grid = table[1:].reshape(2, 2, 24).permute(2, 0, 1)[None]  # [1, D, 2, 2]
    want = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(16, 24)
    torch.testing.assert_close(new[1:], want, rtol=0, atol=0)
    assert not torch.equal(new[1:5], table[1:].repeat(2, 1))  # really resized, not copied


def test_resized_checkpoint_loads_and_runs(tmp_path: Path) -> None:
    ref = tiny_reference(32)
    path = save_ckpt(tmp_path / "tiny.ckpt", {**to_original_layout(ref), **fake_heads(ref.config)})
    model, _ = load_original_meter(path, config=tiny_config(64))
    out = run(model, tiny_batch(model.config))
    assert out.image_feats.shape == (2, 1 + 16, 32)


def test_same_grid_keeps_the_tensor_and_dtype_is_kept() -> None:
    table = torch.randn(5, 24)
    assert resize_position_table(table, 2) is table
    half = resize_position_table(table.half(), 3)
    assert half.dtype == torch.float16 and half.shape == (10, 24)
    with pytest.raises(CheckpointError, match="not CLS \\+ a square patch grid"):
        resize_position_table(torch.randn(7, 24), 2)


# ---- 4. refusals and clear errors -----------------------------------------------------------------------------------


def _touch(path: str) -> None:
    """What a malicious pickle would run; the test checks it never ran."""
    Path(path).touch()


class Payload:
    """Pickles as a call to `_touch(marker)`: loading it with full unpickling would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    ref = tiny_reference()
    marker = tmp_path / "pwned"
    path = save_ckpt(tmp_path / "evil.ckpt", to_original_layout(ref), hparams=Payload(str(marker)))
    with pytest.raises(CheckpointError, match="refuses to unpickle arbitrary objects") as info:
        load_original_meter(path, config=tiny_config())
    assert "evil.ckpt" in str(info.value) and "GLOBAL" in str(info.value)  # torch's line naming the refused global
    assert not marker.exists()


def test_unknown_key_is_named() -> None:
    """A DAS checkpoint's adapter key is not part of the original layout."""
    original = meta_state_dict()
    original["adapter_list_v.0.0.down_proj.weight"] = torch.empty(288, 768, device="meta")
    with pytest.raises(CheckpointError, match=r"1 unknown key\(s\): adapter_list_v\.0\.0\.down_proj\.weight"):
        convert_meter_state_dict(original)


def test_missing_keys_are_named() -> None:
    original = meta_state_dict()
    del original["vit_model.visual.transformer.resblocks.10.attn.in_proj_bias"], original["itm_score.fc.bias"]
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\)") as info:
        convert_meter_state_dict(original)
    assert "resblocks.10.attn.in_proj_bias" in str(info.value) and "itm_score.fc.bias" in str(info.value)


def test_heads_are_optional_only_when_asked() -> None:
    original = {k: v for k, v in meta_state_dict().items() if not k.startswith(HEAD_PREFIXES)}
    state, heads = convert_meter_state_dict(original, require_heads=False)
    assert heads == {} and len(state) == 701
    with pytest.raises(CheckpointError, match=r"8 missing key\(s\)"):
        convert_meter_state_dict(original)


def test_shape_mismatch_names_key_and_both_shapes() -> None:
    original = meta_state_dict()
    original["cross_modal_text_transform.weight"] = torch.empty(768, 512, device="meta")
    with pytest.raises(CheckpointError, match=r"cross_modal_text_transform\.weight: expected \[768, 768\], "
                                              r"got \[768, 512\]"):
        convert_meter_state_dict(original)


def test_non_square_position_table_is_refused() -> None:
    original = meta_state_dict()
    original[POSITION_KEY] = torch.empty(300, 768, device="meta")
    with pytest.raises(CheckpointError, match=r"positional_embedding: expected \[1 \+ g\*g, 768\].*got \[300, 768\]"):
        convert_meter_state_dict(original)


def test_wrong_config_for_checkpoint_is_reported(tmp_path: Path) -> None:
    """A tiny checkpoint loaded with the full-size default config: the missing blocks are named."""
    ref = tiny_reference()
    path = save_ckpt(tmp_path / "tiny.ckpt", {**to_original_layout(ref), **fake_heads(ref.config)})
    with pytest.raises(CheckpointError, match=r"missing key\(s\):.*resblocks\.10\.attn\.in_proj_weight"):
        load_original_meter(path)


def test_image_size_must_agree_with_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size=64 disagrees"):
        load_original_meter(tmp_path / "never_read.ckpt", image_size=64, config=tiny_config(32))


def test_non_state_dict_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1), "b": 3}}, path)
    with pytest.raises(CheckpointError, match="not tensors: b"):
        load_original_meter(path, config=tiny_config())
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*junk.ckpt.* as a torch checkpoint"):
        load_original_meter(tmp_path / "junk.ckpt", config=tiny_config())
