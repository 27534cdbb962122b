"""Convert the original METER Lightning checkpoint (zdou0830/METER, `meter_clip16_288_roberta_pretrain.ckpt`) to
archskip's `METERModel`.

DAS starts from this checkpoint, so archskip reads it directly. The original module is OpenAI's CLIP ViT-B/16 vision
tower cut to 11 blocks (`vit_model.visual.*`), an HF RobertaModel (`text_transformer.*`), two stacks of six
BertCrossLayers and METER's own heads. `METERModel` holds the same tensors under other names: CLIP's fused
`in_proj` is split into q/k/v for transformers' `CLIPVisionModel`, and the two cross-modal stacks become one
`fusion` list (text side 0..n-1, image side n..2n-1).

The checkpoint's position table is sized for 288 pixels (18 x 18 patches + CLS). For another image size it is resized
as METER's `adapt_position_encoding` does: the CLS row is kept, the patch grid is resized bicubically
(align_corners=False).

Safety: the file is read with `torch.load(..., weights_only=True)` only. A checkpoint that needs arbitrary Python
objects to unpickle is refused, since unpickling them can run any code the file's author chose.

The original checkpoint has 671 keys; docs/meter.md says how they map.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..meter import METERConfig, METERModel
from .checkpoint import CheckpointError, check_keys, load_strict, read_checkpoint, state_dict_of
from .meter_layout import (
    DROPPED_KEYS,
    ORIGINAL_FUSION_CONFIG,
    ORIGINAL_IMAGE_SIZE,
    ORIGINAL_TEXT_CONFIG,
    ORIGINAL_VISION_CONFIG,
    POSITION_KEY,
    UNCHECKED_SHAPE_KEYS,
    backbone_shapes,
    expected_original_shapes,
    grid_size,
    head_shapes,
    meter_key_map,
    original_meter_config,
)

__all__ = [
    "DROPPED_KEYS",
    "ORIGINAL_FUSION_CONFIG",
    "ORIGINAL_IMAGE_SIZE",
    "ORIGINAL_TEXT_CONFIG",
    "ORIGINAL_VISION_CONFIG",
    "POSITION_KEY",
    "UNCHECKED_SHAPE_KEYS",
    "CheckpointError",
    "convert_meter_state_dict",
    "expected_original_shapes",
    "load_original_meter",
    "meter_key_map",
    "original_meter_config",
    "resize_position_table",
]


# ---- checks -----------------------------------------------------------------------------------------------------------


def _check_keys(keys: set[str], config: METERConfig, require_heads: bool) -> None:
    layers = (f"{config.vision_config['num_hidden_layers']} vision layers, {config.text_config['num_hidden_layers']} text "
              f"layers, {config.num_fusion_layers} fusion layers per stream, hidden {config.hidden_size}")
    check_keys(keys, set(backbone_shapes(config)), set(head_shapes(config)), DROPPED_KEYS, require_heads=require_heads,
               what=f"an original METER pretraining checkpoint for this config ({layers})")


def _grid_of(rows: int) -> int | None:
    """g when rows == 1 + g*g (CLS + a square patch grid, g >= 1), else None."""
    g = math.isqrt(max(rows - 1, 0))
    return g if g >= 1 and g * g == rows - 1 else None


def _shape_problem(key: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> str | None:
    """A message if `shape` does not fit `key`; the position table may have any square grid of the right width."""
    if key == POSITION_KEY:
        if len(shape) == 2 and shape[1] == expected[1] and _grid_of(shape[0]) is not None:
            return None
        return f"{key}: expected [1 + g*g, {expected[1]}] (e.g. {list(expected)}), got {list(shape)}"
    if shape == expected:
        return None
    return f"{key}: expected {list(expected)}, got {list(shape)}"


def _check_shapes(original: Mapping[str, Tensor], config: METERConfig) -> None:
    """Raise CheckpointError naming every key whose shape differs from the one `config` implies."""
    expected = expected_original_shapes(config)
    bad = [p for k, t in original.items() if k not in UNCHECKED_SHAPE_KEYS
           and (p := _shape_problem(k, tuple(t.shape), expected[k])) is not None]
    if bad:
        raise CheckpointError(f"{len(bad)} shape mismatch(es) against the METER config: " + "; ".join(bad))


# ---- conversion -------------------------------------------------------------------------------------------------------


def resize_position_table(table: Tensor, grid: int) -> Tensor:
    """[1 + g*g, D] -> [1 + grid*grid, D], as METER's adapt_position_encoding: CLS row kept, the g x g patch grid
    resized bicubically (align_corners=False). Returned as is when g == grid. Works on meta tensors (shape only).

    Computed in float32 (bicubic on a half-precision grid loses precision), then cast back to the table's dtype.
    """
    rows, d = table.shape
    g = _grid_of(rows)
    if g is None:
        raise CheckpointError(f"position table {list(table.shape)} is not CLS + a square patch grid")
    if g == grid:
        return table
    patches = table[1:].float().reshape(g, g, d).permute(2, 0, 1)[None]  # [1, D, g, g]
    resized = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)  # [1, D, grid, grid]
    resized = resized[0].permute(1, 2, 0).reshape(grid * grid, d).to(table.dtype)  # [grid*grid, D], row-major
    return torch.cat([table[:1], resized], dim=0)  # [1 + grid*grid, D]


def convert_meter_state_dict(
    original: Mapping[str, Tensor], config: METERConfig | None = None, *, require_heads: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(state, heads): the original state dict in METERModel names, and the pretraining heads.

    state has exactly the keys of `METERModel(config).state_dict()` except `token4classifier` (not in the original;
    `METERModel.init_classifier_token()` derives it from RoBERTa after loading). heads keeps `itm_score.*` and
    `mlm_score.*` under their original names. Keys and shapes are checked first; nothing reads tensor data except
    the position-table resize (only when the grids differ, and that works on meta tensors too). Split q/k/v are
    copies (clone), so no two tensors share storage; other tensors are the input objects themselves.
    With require_heads=False the heads may be absent (whatever is present is still checked and returned).
    """
    config = config or original_meter_config()
    _check_keys(set(original), config, require_heads)
    _check_shapes(original, config)
    d_vision = config.vision_config["hidden_size"]
    state: dict[str, Tensor] = {}
    for src, dsts in meter_key_map(config).items():
        if src == POSITION_KEY:
            state[dsts[0]] = resize_position_table(original[src], grid_size(config))
        elif len(dsts) == 1:
            state[dsts[0]] = original[src]
        else:  # fused in_proj: [3Dv, Dv] or [3Dv] -> three [Dv, Dv] or [Dv] row blocks
            parts = original[src].split(d_vision, dim=0)
            state.update({d: part.clone() for d, part in zip(dsts, parts)})
    heads = {k: original[k] for k in head_shapes(config) if k in original}
    return state, heads


# ---- loading ----------------------------------------------------------------------------------------------------------


def _resolve_config(image_size: int | None, config: METERConfig | None) -> METERConfig:
    """The config to load with: the original one at image_size (default 288), or `config` if it agrees."""
    if config is None:
        return original_meter_config(ORIGINAL_IMAGE_SIZE if image_size is None else image_size)
    if image_size is not None and image_size != config.vision_config["image_size"]:
        raise ValueError(f"image_size={image_size} disagrees with the config's vision image_size "
                         f"{config.vision_config['image_size']}; pass one or make them agree")
    return config


def load_original_meter(
    path: str | os.PathLike[str], image_size: int | None = None, config: METERConfig | None = None
) -> tuple[METERModel, dict[str, Tensor]]:
    """(METERModel in eval mode, heads) from an original METER `.ckpt` (Lightning dict or bare state dict).

    image_size: the resolution to run at; the position table is resized to it. Default: 288 (the checkpoint's own)
    without a config, the config's vision image_size with one (an image_size that disagrees with it is an error).
    token4classifier is set from RoBERTa's embedding of token id 0 after loading, as DAS does, but in eval mode
    (DAS computes it in train mode, so with one random embedding-dropout mask).
    """
    config = _resolve_config(image_size, config)
    original = state_dict_of(read_checkpoint(path, "meter_state_dict.pt"), path)
    state, heads = convert_meter_state_dict(original, config)
    model = METERModel(config)
    load_strict(model, state, set_later=frozenset({"token4classifier"}))  # derived from RoBERTa below
    model.eval()  # first: init_classifier_token runs RoBERTa's embeddings, whose dropout is live in train mode
    model.init_classifier_token()
    return model, heads
