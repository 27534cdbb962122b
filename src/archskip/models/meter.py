"""METER (Dou et al. 2022), the paper's dual-stream model, built from transformers parts.

    image (B, 3, S, S) -> CLIP ViT-B/16 (11 blocks, ln_post on every token) -> Linear -> + type 1 (B, 1+P, D)
    text  (B, T)       -> RoBERTa-base                                      -> Linear -> + type 0 (B, T, D)
    6 co-attention stages: text_i(x, y) and image_i(y, x), both from the previous stage's (x, y)
    pooled = [text pooler(x[:, 0]) ; image pooler(y[:, 0])]                                   (B, 2D)

A fusion half-layer is a post-LN BERT layer: self-attention, cross-attention to the other stream, FFN.
The 12 DAS candidates live in one ModuleList `fusion`: 0..5 the text side, 6..11 the image side
(the reference's indexing). A skipped half-layer becomes `x + adapter(LN(x))` on its own stream; the
other stream still cross-attends to that state at the next stage. Kept half-layers get three parallel
adapters (docs/meter.md): beside self-attention and cross-attention, added before their
post-LayerNorm (`LN(dense(a) + h + adapter(h))`), and beside the FFN, added after its LayerNorm.
Pruning keeps the stage structure: a skipped half-layer's frozen weights go, its adapter stays in place.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import BertConfig, CLIPVisionConfig, CLIPVisionModel, PretrainedConfig, RobertaConfig, RobertaModel
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

from ..nn_utils import eval_mode
from .base import BackboneModel


class METERConfig(PretrainedConfig):
    model_type = "meter"

    def __init__(self, vision_config: dict | None = None, text_config: dict | None = None, hidden_size: int = 768,
                 num_fusion_layers: int = 6, num_attention_heads: int = 12, intermediate_size: int = 3072,
                 hidden_act: str = "gelu", hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.1,
                 layer_norm_eps: float = 1e-12, modality_type_vocab_size: int = 2, classifier_token: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.vision_config = vision_config if isinstance(vision_config, dict) else (vision_config or CLIPVisionConfig()).to_dict()
        self.text_config = text_config if isinstance(text_config, dict) else (text_config or RobertaConfig()).to_dict()
        self.hidden_size, self.num_fusion_layers = hidden_size, num_fusion_layers
        self.num_attention_heads, self.intermediate_size, self.hidden_act = num_attention_heads, intermediate_size, hidden_act
        self.hidden_dropout_prob, self.attention_probs_dropout_prob = hidden_dropout_prob, attention_probs_dropout_prob
        self.layer_norm_eps, self.modality_type_vocab_size = layer_norm_eps, modality_type_vocab_size
        self.classifier_token = classifier_token

    @property
    def pooled_size(self) -> int:  # [text pooled ; image pooled]
        return 2 * self.hidden_size

    def fusion_config(self) -> BertConfig:
        cfg = BertConfig(hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
                         intermediate_size=self.intermediate_size, hidden_act=self.hidden_act,
                         hidden_dropout_prob=self.hidden_dropout_prob,
                         attention_probs_dropout_prob=self.attention_probs_dropout_prob, layer_norm_eps=self.layer_norm_eps)
        cfg._attn_implementation = "sdpa"
        return cfg


class FusionLayer(nn.Module):
    """METER's BertCrossLayer: the parameter names of a transformers BertLayer with cross-attention, but
    bidirectional self-attention (a BertLayer with cross-attention would be a causal decoder layer)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config, is_causal=False)
        self.crossattention = BertAttention(config, is_causal=False, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, other: torch.Tensor, mask: torch.Tensor, other_mask: torch.Tensor) -> torch.Tensor:
        a, _ = self.attention(hidden, mask)  # (B, T, D)
        c, _ = self.crossattention(a, None, encoder_hidden_states=other, encoder_attention_mask=other_mask)
        return self.output(self.intermediate(c), c)


class Pooler(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D)
        return torch.tanh(self.dense(x[:, 0]))


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 -> (B, 1, 1, T) additive: 0 where attended, the dtype's minimum elsewhere."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class METERModel(BackboneModel):
    base_model_prefix = ""  # what PEFT and transformers' helpers look for on a model (METER is not a PreTrainedModel)

    def __init__(self, config: METERConfig):
        super().__init__()
        self.config = config
        vcfg, tcfg = CLIPVisionConfig(**config.vision_config), RobertaConfig(**config.text_config)
        self.vision = CLIPVisionModel(vcfg)
        self.text = RobertaModel(tcfg, add_pooling_layer=False)
        d = config.hidden_size
        self.cross_modal_text_transform = nn.Linear(tcfg.hidden_size, d)
        self.cross_modal_image_transform = nn.Linear(vcfg.hidden_size, d)
        self.token_type_embeddings = nn.Embedding(config.modality_type_vocab_size, d)
        fusion_cfg = config.fusion_config()
        self.fusion = nn.ModuleList(FusionLayer(fusion_cfg) for _ in range(2 * config.num_fusion_layers))
        self.cross_modal_text_pooler = Pooler(d)
        self.cross_modal_image_pooler = Pooler(d)
        # the reference's learned first text token: RoBERTa's embedding of <s> (id 0), replacing the
        # transformed first text feature before fusion
        if config.classifier_token and tcfg.hidden_size != d:
            raise ValueError(f"the classifier token replaces a fused text feature: text width {tcfg.hidden_size} must "
                             f"equal the fusion width {d} (or set classifier_token=False)")
        self.token4classifier = nn.Parameter(torch.zeros(1, 1, tcfg.hidden_size)) if config.classifier_token else None

    @property
    def dtype(self) -> torch.dtype:
        return self.cross_modal_text_transform.weight.dtype

    def init_classifier_token(self) -> None:
        """token4classifier := RoBERTa's embedding output for token id 0 (as the reference, after loading weights)."""
        if self.token4classifier is not None:
            # eval mode: no dropout mask in the token (the reference computed it in train mode: a random one)
            with eval_mode(self.text.embeddings) as emb, torch.no_grad():
                ids = torch.zeros(1, 1, dtype=torch.long, device=self.token4classifier.device)
                self.token4classifier.copy_(emb(input_ids=ids))

    def encode(self, input_ids, attention_mask, pixel_values) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoders: (B, T, Dt) text, (B, 1+P, Dv) image with ln_post on every token."""
        with torch.no_grad():
            text = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            out = self.vision(pixel_values=pixel_values.to(self.dtype), interpolate_pos_encoding=True).last_hidden_state
            image = self.vision.post_layernorm(out)
        return text, image

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_token_type_idx: int = 1, **_ignored):
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        text, image = self.encode(input_ids, attention_mask, pixel_values)
        x = self.cross_modal_text_transform(text)  # (B, T, D)
        if self.token4classifier is not None:
            x = torch.cat([self.token4classifier.expand(len(x), -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        y = self.cross_modal_image_transform(image)  # (B, 1+P, D)
        image_mask = torch.ones(y.shape[:2], dtype=torch.long, device=y.device)
        x = x + self.token_type_embeddings(torch.zeros_like(attention_mask))
        y = y + self.token_type_embeddings(torch.full_like(image_mask, image_token_type_idx))
        tm, im = additive_mask(attention_mask, x.dtype), additive_mask(image_mask, y.dtype)
        n = self.config.num_fusion_layers
        for i in range(n):  # both streams read the previous stage
            x, y = self.fusion[i](x, y, tm, im), self.fusion[n + i](y, x, im, tm)
        pooled = torch.cat([self.cross_modal_text_pooler(x), self.cross_modal_image_pooler(y)], dim=-1)  # (B, 2D)
        return SimpleNamespace(pooler_output=pooled, text_feats=x, image_feats=y)


# ---- a local directory format (config.json + model.safetensors), so converted models load by path ----
WEIGHTS = "model.safetensors"


def save_meter(model: METERModel, directory) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    from ..io import atomic_write, atomic_write_text

    d = Path(directory)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(d / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_text(d / "config.json", model.config.to_json_string())


def load_meter(directory, dtype: torch.dtype = torch.float32) -> METERModel:
    from pathlib import Path

    from safetensors.torch import load_file

    d = Path(directory)
    model = METERModel(METERConfig.from_json_file(str(d / "config.json")))
    model.load_state_dict(load_file(str(d / WEIGHTS)), strict=True)
    return model.to(dtype).eval()


def _register() -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.register("meter", METERConfig)
    except ValueError:  # already registered
        pass


_register()
