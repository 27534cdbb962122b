"""LaVIN: a LLaMA-layout causal LM that reads images through a frozen vision encoder (docs/lavin.md).

What the multimodal LaVIN adds around the language model:
- a frozen vision encoder (CLIP ViT-L/14 in the paper; any transformers vision model with a list of
  blocks works) with a router adapter before attention in every block;
- image features = the first token of every (L/n)-th block (LaVIN: the CLS token of blocks 4, 8, ...,
  24 of ViT-L/14, so n = 6), projected by `Projector` (vision width -> 128 -> LLM width, SiLU);
- the text becomes [BOS, "Image: ", n image tokens, rest] (or [BOS, "Image: N/A", rest] without an
  image);
- a 2-entry modality embedding: LaVIN prepends it as a "decision" token that no other token may
  attend to, and every router adapter of the LLM routes on it.

Because nothing attends to the decision token and RoPE is relative, running it alone through the
layers (a one-token "decision pass") records exactly the routing weights LaVIN computes, and the
main sequence then runs without it: same outputs, no custom attention mask, and generation with a
KV cache works unchanged (the routing is replayed at every step, as LaVIN's cached weights).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import RouterAdapter
from ..config import AdapterConfig
from ..nn_utils import pad_rows
from ..plan import SkipPlan
from ..skipping import SkipModel
from .base import BackboneModel


class Projector(nn.Module):
    """LaVIN's AdapterMLP: vision width -> hidden -> LLM width with SiLU; both layers xavier-initialised."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.down = nn.Linear(dim_in, hidden)
        self.up = nn.Linear(hidden, dim_out)
        for lin in (self.down, self.up):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, Dv) -> (B, n, D)
        return self.up(F.silu(self.down(x)))


def vision_adapter_config(hidden: int = 8) -> AdapterConfig:
    """LaVIN's adapters in the vision tower: a router adapter on the normalised input of attention."""
    return AdapterConfig(style="sequential", kind="router", hidden=hidden, skip_hidden=hidden, norm="layernorm",
                         skip_norm="layernorm", init="zero", skip_init="zero", dropout=0.1)


class LaVIN(BackboneModel):
    generate_returns_prompt = False  # it generates from input embeddings: new tokens only

    def __init__(self, llm: nn.Module, vision: nn.Module | None, tokenizer, *, image_tokens: int = 6,
                 projector_hidden: int = 128, vision_adapter: AdapterConfig | None = None):
        super().__init__()
        self.llm = llm
        self.config = llm.config
        dim = llm.config.hidden_size
        self.modality_embedding = nn.Embedding(2, dim)  # 0: text only, 1: with an image
        self.vision: SkipModel | None = None
        if vision is not None:
            self.vision = SkipModel(vision, vision_adapter or vision_adapter_config())
            self.vision.apply_plan(SkipPlan.none(self.vision.num_candidates))  # adapters only, nothing skipped
            n = self.vision.num_candidates
            if not 1 <= image_tokens <= n:
                raise ValueError(f"image_tokens={image_tokens} must be between 1 and the vision encoder's {n} blocks")
            self.feature_blocks = [(i + 1) * n // image_tokens - 1 for i in range(image_tokens)]
            vdim = self.vision.config.hidden_size
            self.projector = Projector(vdim, projector_hidden, dim)
        # (without a tokenizer, e.g. to count parameters on the meta device, the prefixes stay empty)
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] if tokenizer is not None else []
        self.register_buffer("prefix_image", torch.tensor(ids("Image: "), dtype=torch.long), persistent=False)
        self.register_buffer("prefix_no_image", torch.tensor(ids("Image: N/A"), dtype=torch.long), persistent=False)

    def trainable_names(self) -> list[str]:
        """What LaVIN trains besides the LLM's adapters: vision adapters, projector, modality embedding."""
        return [n for n, p in self.named_parameters() if p.requires_grad and not n.startswith("llm.")]

    def checkpointing_module(self) -> nn.Module:
        return self.llm

    def inserted_tokens(self, input_ids: torch.Tensor, has_image: torch.Tensor | None) -> torch.Tensor:
        """(B,) tokens `embed` puts after BOS: the image prefix and image tokens for a row with an image (a model
        with a vision tower), else the text-only prefix. Rows of one batch may differ."""
        text_only = torch.full((len(input_ids),), len(self.prefix_no_image), dtype=torch.long, device=input_ids.device)
        if self.vision is None or has_image is None:
            return text_only
        with_image = len(self.prefix_image) + len(self.feature_blocks)
        return torch.where(has_image.to(input_ids.device).bool(), with_image, text_only)

    # ---- routing ------------------------------------------------------------------------------------
    def _llm_routers(self) -> list[RouterAdapter]:
        return [m for m in self.llm.modules() if isinstance(m, RouterAdapter)]

    @contextlib.contextmanager
    def routed(self, has_image: torch.Tensor):
        """Record every LLM router's weights from the modality token (the decision pass), replay them inside."""
        routers = self._llm_routers()
        try:
            if routers:
                for r in routers:
                    r.mode = "record"
                token = self.modality_embedding(has_image.long())[:, None].to(self.llm.dtype)  # (B, 1, D)
                self.llm.model(inputs_embeds=token, use_cache=False)
                for r in routers:
                    r.mode = "replay"
            yield
        finally:
            for r in routers:
                r.mode, r.routing = "compute", None

    # ---- inputs -------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, n, D): the first token of every (L/n)-th vision block, projected."""
        taps: dict[int, torch.Tensor] = {}
        layers = self.vision.candidates
        hooks = [layers[i].register_forward_hook(
            lambda m, a, out, i=i: taps.__setitem__(i, (out[0] if isinstance(out, tuple) else out)[:, 0]))
            for i in self.feature_blocks]
        try:
            self.vision(pixel_values=pixel_values.to(self.vision.base.dtype))
        finally:
            for h in hooks:
                h.remove()
        feats = torch.stack([taps[i] for i in self.feature_blocks], dim=1)  # (B, n, Dv)
        return self.projector(feats.float()).to(self.llm.dtype)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
              has_image: torch.Tensor, labels: torch.Tensor | None = None, left_pad: bool = False):
        """Token ids -> LaVIN's input embeddings: [BOS, prefix, (image tokens), rest], re-padded."""
        emb = self.llm.get_input_embeddings()
        feats = self.image_features(pixel_values) if (self.vision is not None and has_image.any()) else None
        rows, row_labels = [], []
        for b in range(len(input_ids)):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            e = emb(ids)  # (T_b, D)
            prefix = self.prefix_image if (feats is not None and has_image[b]) else self.prefix_no_image
            parts = [e[:1], emb(prefix)]
            if feats is not None and has_image[b]:
                parts.append(feats[b])
            parts.append(e[1:])
            rows.append(torch.cat(parts))
            if labels is not None:
                n_new = rows[-1].shape[0] - e.shape[0]
                lab = labels[b][keep]
                row_labels.append(torch.cat([lab[:1], lab.new_full((n_new,), -100), lab[1:]]))
        embeds, mask = pad_rows(rows, 0.0, left=left_pad, like=rows[0])  # (B, T, D), (B, T)
        out_labels = pad_rows(row_labels, -100, left=left_pad, like=labels)[0] if labels is not None else None
        return embeds, mask.to(attention_mask.dtype), out_labels

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, has_image=None, **kwargs):
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        has_image = torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device) if has_image is None else has_image
        embeds, mask, labels = self.embed(input_ids, attention_mask, pixel_values, has_image, labels)
        with self.routed(has_image):
            return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, has_image=None, **gen_kwargs):
        """New tokens only (B, T_new), greedy unless gen_kwargs say otherwise."""
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        has_image = torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device) if has_image is None else has_image
        embeds, mask, _ = self.embed(input_ids, attention_mask, pixel_values, has_image, left_pad=True)
        with self.routed(has_image):
            return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **gen_kwargs)
