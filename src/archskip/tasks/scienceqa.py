"""ScienceQA as LaVIN-DAS trains it (docs/lavin.md): splits by name under data.root, images on a LaVIN
model, accuracy per subject, context and grade band besides the average (the seed's Table 1 columns).

Images are preprocessed as LaVIN does: resized straight to image_size x image_size (bicubic, aspect ratio
not kept, so a wide diagram is squeezed rather than cut), then normalised by `task.image_norm` (the
recipes: 'imagenet', LaVIN's choice even in front of CLIP; docs/lavin.md)."""

from __future__ import annotations

from ..config import RunConfig, TaskConfig
from ..data.images import SquareImageSpec
from ..data.scienceqa import load_scienceqa
from ..data.splits import Splits, named_splits
from ..errors import DataError
from .generative_qa import GenerativeQA
from .qa_metrics import SCIENCEQA_COLUMNS, scienceqa_accuracy
from .registry import register_task


@register_task
class ScienceQA(GenerativeQA):
    name = "scienceqa"

    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> ScienceQA:
        spec = SquareImageSpec(cfg.image_size, cfg.image_norm, resize="stretch") if images else None
        return cls(tokenizer, cfg.max_length, cfg.max_new_tokens, spec)

    @classmethod
    def load_splits(cls, cfg: RunConfig) -> Splits:
        if not cfg.data.root:
            raise DataError("data.root is not set: the ScienceQA directory (problems.json, pid_splits.json, images/)")
        return named_splits(cfg.data, lambda split: load_scienceqa(cfg.data.root, split))

    def breakdown(self, predictions: list[dict], examples) -> dict:
        items = [examples[i] for i in range(len(examples))]
        table = scienceqa_accuracy({p["qid"]: p["prediction"] for p in predictions}, items)
        return {k: table[k] for k in SCIENCEQA_COLUMNS}
