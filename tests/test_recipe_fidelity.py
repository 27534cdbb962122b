"""The recipes follow the authors' code where archskip could differ (docs/lavin.md, docs/meter.md):
LaVIN ScienceQA images (ImageNet normalisation, 224 x 224 without cropping), the METER Flickr30k loss
(ranking + ITM) and the METER VQAv2 training data (train + val)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import perturb_trainable, tiny_tokenizer
from PIL import Image
from test_meter import tiny_meter
from test_vilt import arrows  # noqa: F401  (the tiny arrow fixture)

from archskip import AdapterConfig, ModelConfig, SkipPlan
from archskip.config import DataConfig, RunConfig, TaskConfig
from archskip.errors import ConfigError
from archskip.tasks import assemble, build_task, task_class, task_from_info
from archskip.tasks.vl import encode_texts

ROOT = Path(__file__).parent.parent
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def recipe(name: str) -> RunConfig:
    raw = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    return RunConfig.from_dict({k: v for k, v in raw.items() if k != "plan"})


# ---- (a) LaVIN ScienceQA images -------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["search", "train"])
def test_scienceqa_recipe_images_are_imagenet_normalised(stage):
    task = build_task(recipe(f"lavin-sqa-{stage}").task, None, images=True)
    rgb = (200, 100, 50)
    x = task.image(Image.new("RGB", (300, 200), rgb))
    assert x.shape == (3, 224, 224)
    for c in range(3):
        expected = (rgb[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[c], torch.full((224, 224), expected), atol=1e-5, rtol=0)
    # CLIP's statistics would give clearly different values (the switch the recipe does not take)
    clip = build_task(TaskConfig(name="scienceqa", image_size=224, image_norm="clip"), None, images=True)
    assert (clip.image(Image.new("RGB", (300, 200), rgb)) - x).abs().max() > 0.05


def test_scienceqa_images_are_stretched_not_cropped():
    """LaVIN resizes to 224 x 224: a wide image keeps both ends (a centre crop would keep only the middle)."""
    task = build_task(recipe("lavin-sqa-train").task, None, images=True)
    img = Image.new("RGB", (672, 224), (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, 224, 224))
    img.paste((0, 0, 255), (448, 0, 672, 224))
    x = task.image(img)
    red = torch.tensor([(v - m) / s for v, m, s in zip((1.0, 0.0, 0.0), IMAGENET_MEAN, IMAGENET_STD)])
    blue = torch.tensor([(v - m) / s for v, m, s in zip((0.0, 0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(x[:, 112, 0], red, atol=1e-4, rtol=0)
    torch.testing.assert_close(x[:, 112, 223], blue, atol=1e-4, rtol=0)
    # the spec travels with an artifact's task info
    again = task_from_info(task.info(), None)
    assert again.image == task.image and again.image.resize == "stretch" and again.image.norm == "imagenet"


def test_scienceqa_images_through_the_batch(tmp_path):
    """The batch's pixel values are the recipe's transform of the file; no image: zeros (as LaVIN)."""
    task = build_task(recipe("lavin-sqa-train").task, None, images=True)
    path = tmp_path / "image.png"
    Image.new("RGB", (120, 80), (10, 20, 30)).save(path)
    out = task._images([{"image": str(path)}, {"image": None}])
    torch.testing.assert_close(out["pixel_values"][0], task.image(Image.open(path).convert("RGB")))
    assert out["pixel_values"][0, 0, 0, 0].item() == pytest.approx((10 / 255 - 0.485) / 0.229, abs=1e-5)
    assert out["pixel_values"][1].abs().sum() == 0 and out["has_image"].tolist() == [1, 0]


# ---- (b) METER Flickr30k: ranking + ITM loss ----------------------------------------------------------
def test_f30k_recipes_add_the_itm_loss():
    for stage in ("search", "train"):
        assert recipe(f"meter-f30k-{stage}").task.itm_weight == 1.0  # METER: itm + irtr, summed unweighted
        assert recipe(f"vilt-f30k-{stage}").task.itm_weight == 0.0  # ViLT: irtr only


def f30k_run(root, itm_weight: float) -> RunConfig:
    return RunConfig(task=TaskConfig(name="retrieval", image_size=32, image_resize="square", image_norm="clip",
                                     max_length=16, negatives=3, itm_weight=itm_weight),
                     data=DataConfig(root=str(root), train="f30k_caption_karpathy_train,f30k_caption_karpathy_val"))


ITM = {"itm_score.fc.weight": torch.randn(2, 64, generator=torch.Generator().manual_seed(3)),
       "itm_score.fc.bias": torch.tensor([0.3, -0.2])}


def meter_retrieval(cfg: RunConfig, extras: dict | None = ITM):
    task = build_task(cfg.task, tiny_tokenizer())
    model = assemble(tiny_meter(), task, AdapterConfig(hidden=8, skip_hidden=16),
                     ModelConfig(trainable=["pooler", "token_type_embeddings", "token4classifier"]), extras)
    perturb_trainable(model, 0.2)
    model.apply_plan(SkipPlan((1, 4), 6))
    return task, model


def test_itm_training_items_carry_another_image(arrows):  # noqa: F811
    train = task_class("retrieval").load_splits(f30k_run(arrows, 1.0)).train
    torch.manual_seed(0)
    items = [train[i] for i in range(len(train))]
    assert all(e["false_image_index"] != e["image_index"] for e in items)
    assert all(torch.equal(e["false_image"], train.image(e["false_image_index"])) for e in items)
    plain = task_class("retrieval").load_splits(f30k_run(arrows, 0.0)).train
    assert "false_image" not in plain[0]  # no extra image is decoded when the ITM loss is off


def test_itm_batch_pairs_half_the_captions_with_another_image(arrows):  # noqa: F811
    cfg = f30k_run(arrows, 1.0)
    task = build_task(cfg.task, tiny_tokenizer())
    train = task.load_splits(cfg).train
    items = [train[i] for i in range(5)]
    batch = task.collate(items)
    labels = batch["itm_labels"]
    assert labels.tolist().count(1) == 5 // 2 and labels.tolist().count(0) == 5 - 5 // 2
    for e, m, px in zip(items, labels.tolist(), batch["itm_pixel_values"]):
        assert torch.equal(px, e["image"] if m else e["false_image"])


def test_f30k_loss_is_listwise_plus_itm_computed_independently(arrows):  # noqa: F811
    cfg = f30k_run(arrows, 1.0)
    task, model = meter_retrieval(cfg)
    train = task.load_splits(cfg).train
    torch.manual_seed(1)
    items = [train[i] for i in range(4)]
    batch = task.collate(items)
    model.eval()
    with torch.no_grad():
        total = task.loss(model, batch)
        # listwise: each image against its caption (column 0) and its 3 negatives
        per = 4
        pooled = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], pixel_values=batch["pixel_values"],
                       pixel_mask=batch["pixel_mask"]).pooler_output
        s = model.head(pooled).view(-1, per)
        listwise = F.cross_entropy(s, torch.zeros(len(s), dtype=torch.long))
        # ITM: the true captions, encoded on their own, with the chosen images; the checkpoint's ITM head
        enc = encode_texts(task.tokenizer, [e["text"] for e in items], 16)
        pooled_itm = model(**enc, pixel_values=batch["itm_pixel_values"], pixel_mask=batch["itm_pixel_mask"]).pooler_output
        itm = F.cross_entropy(F.linear(pooled_itm, ITM["itm_score.fc.weight"], ITM["itm_score.fc.bias"]), batch["itm_labels"])
        torch.testing.assert_close(total, listwise + itm, atol=1e-5, rtol=1e-5)
        assert itm.item() > 0.01
        # either term's inputs move the loss
        flipped = {**batch, "itm_labels": 1 - batch["itm_labels"]}
        assert abs(task.loss(model, flipped).item() - total.item()) > 1e-4
        other = task.collate([{**e, "negatives": list(reversed(e["negatives"]))[:2] + [e["text"]]} for e in items])
        other.update({k: batch[k] for k in ("itm_pixel_values", "itm_pixel_mask", "itm_labels")})
        assert abs(task.loss(model, other).item() - total.item()) > 1e-4
        # itm_weight scales the ITM term only; 0 is the ranking loss alone
        task.itm_weight = 2.0
        torch.testing.assert_close(task.loss(model, batch), listwise + 2 * itm, atol=1e-5, rtol=1e-5)
        task.itm_weight = 0.0
        torch.testing.assert_close(task.loss(model, batch), listwise, atol=1e-5, rtol=1e-5)


def test_itm_head_is_frozen_and_the_itm_loss_trains_the_adapters(arrows):  # noqa: F811
    cfg = f30k_run(arrows, 1.0)
    task, model = meter_retrieval(cfg)
    assert not task.itm_head.weight.requires_grad and not task.itm_head.bias.requires_grad
    torch.testing.assert_close(task.itm_head.weight, ITM["itm_score.fc.weight"])
    trainable = model.trainable_named_parameters()
    assert all(p is not task.itm_head.weight for p in trainable.values())
    assert task.info()["itm_weight"] == 1.0 and task_from_info(task.info(), tiny_tokenizer()).itm_weight == 1.0
    train = task.load_splits(cfg).train
    batch = task.collate([train[i] for i in range(4)])
    task.itm_loss(model, batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.items() if "adapter" in n or "sites" in n)


def test_itm_loss_without_a_pretrained_itm_head_is_a_clear_error(arrows):  # noqa: F811
    cfg = f30k_run(arrows, 1.0)
    with pytest.warns(UserWarning, match="no ITM head"):
        task, model = meter_retrieval(cfg, extras={})
    train = task.load_splits(cfg).train
    batch = task.collate([train[i] for i in range(2)])
    with pytest.raises(ConfigError, match="itm_weight"):
        task.loss(model, batch)
    plain = {k: v for k, v in batch.items() if not k.startswith("itm_")}  # e.g. profiling: no ITM inputs, no error
    assert task.loss(model, plain).ndim == 0


# ---- (c) METER VQAv2 training data -----------------------------------------------------------------
def test_meter_vqa_recipes_train_on_train_and_val():
    for stage in ("search", "train"):
        cfg = recipe(f"meter-vqa-{stage}")
        assert cfg.data.train.split(",") == ["vqav2_train", "vqav2_val"]  # the reference's (METER's) split
        # rest_val is part of val, hence training data: no validation split drawn from it
        assert cfg.data.validation is None
        text = (ROOT / "recipes" / f"meter-vqa-{stage}.yaml").read_text()
        assert "vqav2_train,vqav2_trainable_val" in text  # the held-out alternative is offered
    assert "--data.validation vqav2_rest_val" in (ROOT / "recipes" / "meter-vqa-train.yaml").read_text()
    doc = (ROOT / "docs" / "meter.md").read_text()
    assert "`vqav2_train,vqav2_val`" in doc and "--data.train vqav2_train,vqav2_trainable_val --data.validation vqav2_rest_val" in doc


def test_vilt_vqa_recipe_keeps_its_held_out_split():
    cfg = recipe("vilt-vqa-train")
    assert cfg.data.train == "vqav2_train,vqav2_trainable_val" and cfg.data.validation == "vqav2_rest_val"
