"""ViLT with DAS: images, arrow readers, the three tasks, metrics, and the pipeline end to end."""

import json

import pytest
import torch
from conftest import VOCAB_SIZE, load_tool, tiny_tokenizer
from PIL import Image, ImageDraw
from transformers import ViltConfig, ViltModel

from archskip import AdapterConfig, SkipPlan, TaskConfig
from archskip.cli import main

vw = load_tool("prepare_arrows")
from archskip.data.images import ImageSpec, RandAugment, decode_image, pad_images, vilt_size
from archskip.data.text import DataError
from archskip.data.vilt_arrow import NLVR2Dataset, RetrievalDataset, VQADataset, read_arrow
from archskip.tasks import assemble, build_task
from archskip.tasks.nlvr2 import add_image_token_type
from archskip.tasks.retrieval import recall_at_k
from archskip.tasks.vqa import vqa_score

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SPEC = ImageSpec(shorter=32, longer=64, patch=16)


def tiny_vilt() -> ViltModel:
    torch.manual_seed(0)
    return ViltModel(ViltConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=64, image_size=64, patch_size=16, max_position_embeddings=40,
                                initializer_range=0.2)).eval()


def draw(path, color: str, size=(48, 40)):
    img = Image.new("RGB", size, (245, 245, 245))
    ImageDraw.Draw(img).rectangle([6, 6, size[0] - 6, size[1] - 6], fill=COLORS[color])
    img.save(path)


@pytest.fixture(scope="module")
def arrows(tmp_path_factory):
    """vqav2/nlvr2/f30k arrows (written by archskip's writers) about coloured squares; words w1/w2/w3 name colours."""
    root = tmp_path_factory.mktemp("arrows")
    imgs = root / "raw"
    imgs.mkdir()
    colors = ["red", "green", "blue", "red", "green", "blue"]
    for i, c in enumerate(colors):
        draw(imgs / f"img{i:012d}.jpg", c)
    word = {"red": "w1", "green": "w2", "blue": "w3"}
    # VQA: "w10 w11" asks the colour; answers are the colour words
    qs = [{"image_id": i, "question": "w10 w11", "question_id": 100 + i} for i in range(6)]
    ann = [{"question_id": 100 + i, "image_id": i, "multiple_choice_answer": colors[i],
            "answers": [{"answer": colors[i]}] * 10} for i in range(6)]
    (root / "q.json").write_text(json.dumps({"questions": qs}))
    (root / "a.json").write_text(json.dumps({"annotations": ann}))
    vocab = ["red", "green", "blue"]
    vw.save_answer_vocab(root / "vqa_answer_vocab.json", vocab)
    vw.write_vqa(root / "q.json", root / "a.json", imgs, root / "vqav2_train.arrow", "train", vocab, image_prefix="img")
    vw.write_vqa(root / "q.json", None, imgs, root / "vqav2_test.arrow", "test", vocab, image_prefix="img")
    # NLVR2: "w1" is true of pairs whose left image is red
    pairs = [(0, 1), (2, 3), (3, 4), (1, 5)]
    lines = []
    for p, (a, b) in enumerate(pairs):
        d = imgs / "nlvr"
        d.mkdir(exist_ok=True)
        Image.open(imgs / f"img{a:012d}.jpg").save(d / f"dev-{p}-0-img0.png")
        Image.open(imgs / f"img{b:012d}.jpg").save(d / f"dev-{p}-0-img1.png")
        for s, w in enumerate(("w1", "w3")):
            lines.append(json.dumps({"identifier": f"dev-{p}-0-{s}", "sentence": f"{w} w20",
                                     "label": str(colors[a] == {"w1": "red", "w3": "blue"}[w])}))
    (root / "nlvr2.json").write_text("\n".join(lines))
    vw.write_nlvr2(root / "nlvr2.json", imgs / "nlvr", root / "nlvr2_dev.arrow")
    # Flickr30k: captions name the colour
    images = [{"filename": f"img{i:012d}.jpg", "split": "train" if i < 3 else "val" if i == 3 else "test",
               "sentences": [{"raw": f"{word[c]} w30"}, {"raw": f"w31 {word[c]}"}]} for i, c in enumerate(colors)]
    (root / "karpathy.json").write_text(json.dumps({"images": images}))
    vw.write_f30k(root / "karpathy.json", imgs, root)
    return root


# ---- images ------------------------------------------------------------------------------
@pytest.mark.parametrize("w, h, expected", [(640, 480, (512, 384)), (480, 640, (384, 512)), (2000, 500, (640, 160)),
                                            (384, 384, (384, 384)), (1000, 701, (544, 384))])
def test_vilt_resize_rule(w, h, expected):
    assert vilt_size(w, h) == expected


def test_pad_images_marks_real_pixels():
    values, mask = pad_images([torch.ones(3, 32, 64), torch.ones(3, 64, 32)])
    assert values.shape == (2, 3, 64, 64) and mask.shape == (2, 64, 64)
    assert mask[0, :32, :].all() and not mask[0, 32:, :].any() and mask[1, :, :32].all() and not mask[1, :, 32:].any()
    assert (values[0, :, 32:] == 0).all()


def test_transform_and_randaugment(tmp_path):
    draw(tmp_path / "a.png", "red", (100, 60))
    img = decode_image((tmp_path / "a.png").read_bytes(), "a.png")
    x = SPEC.transform()(img)
    assert x.shape == (3, 32, 48) and x.min() >= -1 and x.max() <= 1
    torch.manual_seed(3)
    a = RandAugment()(img)
    torch.manual_seed(3)
    b = RandAugment()(img)
    assert a.size == img.size and a.tobytes() == b.tobytes()  # reproducible from torch's seed
    with pytest.raises(DataError, match="photo.jpg: cannot decode the image"):
        decode_image(b"not an image", "photo.jpg")
    grey = Image.new("L", (40, 40), 128)
    grey.save(tmp_path / "g.png")
    assert decode_image((tmp_path / "g.png").read_bytes()).mode == "RGB"


# ---- readers -----------------------------------------------------------------------------
def test_readers_round_trip_the_writers(arrows):
    vqa = VQADataset(arrows, "vqav2_train", SPEC.transform(), num_answers=3)
    item = vqa[0]
    assert item["text"] == "w10 w11" and item["labels"] == [0] and item["scores"] == [1.0] and item["question_id"] == 100
    assert item["image"].shape == (3, 32, 32)  # 48 x 40 -> shorter side 32, longer 38 -> patch-aligned 32
    assert vqa.answer_vocabulary() == ["red", "green", "blue"]
    test = VQADataset(arrows, "vqav2_test", SPEC.transform(), num_answers=3, require_answers=False)
    assert len(test) == 6 and test[0]["labels"] == []
    nlvr = NLVR2Dataset(arrows, "nlvr2_dev", SPEC.transform())
    assert len(nlvr) == 8 and {nlvr[i]["label"] for i in range(8)} == {0, 1}
    f30k = RetrievalDataset(arrows, "f30k_caption_karpathy_train", SPEC.transform(), negatives=3)
    assert len(f30k) == 6 and len(f30k.images) == 3
    it = f30k[0]
    assert len(it["negatives"]) == 3 and all(f30k.caption_image[f30k.captions.index(n)] != 0 for n in it["negatives"])


def test_eval_view_drops_augmentation_only(arrows):
    from torch.utils.data import Subset

    from archskip.data.loader import eval_view

    ds = VQADataset(arrows, "vqav2_train", SPEC.transform(randaugment=True), num_answers=3)
    view = eval_view(Subset(ds, [1, 2]))
    assert view.dataset.transform.randaugment is None and ds.transform.randaugment is not None
    assert view[0]["question_id"] == ds[1]["question_id"] and view.dataset.tables is ds.tables
    assert eval_view([{"text": "a"}]) == [{"text": "a"}]


def test_reader_errors(arrows, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        VQADataset(tmp_path, "vqav2_nope", SPEC.transform())
    with pytest.raises(DataError, match="has 3 answers but task.num_labels is 3129"):
        VQADataset(arrows, "vqav2_train", SPEC.transform()).answer_vocabulary()
    (tmp_path / "bad.arrow").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable Arrow IPC file"):
        read_arrow(tmp_path / "bad.arrow")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['questions'"):
        read_arrow(arrows / "f30k_caption_karpathy_train.arrow", ("image", "questions"))
    with pytest.raises(DataError, match=r"answer label\(s\) \[2\] outside the 2-answer vocabulary"):
        VQADataset(arrows, "vqav2_train", SPEC.transform(), num_answers=2)


def test_corrupt_image_names_file_and_row(arrows, tmp_path):
    import pyarrow as pa

    table = read_arrow(arrows / "vqav2_train.arrow")
    table = table.set_column(0, "image", pa.array([b"\x00broken"] * table.num_rows, pa.binary()))
    with pa.OSFile(str(tmp_path / "vqav2_bad.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    ds = VQADataset(tmp_path, "vqav2_bad", SPEC.transform())
    with pytest.raises(DataError, match=r"vqav2_bad.arrow row 0: cannot decode the image"):
        ds[0]


# ---- metrics -----------------------------------------------------------------------------
def test_vqa_score_by_hand():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([[0.0, 0.6, 1.0], [0.3, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert vqa_score(logits, targets).tolist() == pytest.approx([0.6, 0.3, 0.0])


def test_recall_at_k_by_hand_with_ties():
    # 3 images, 4 captions: captions 0,1 -> image 0; caption 2 -> image 1; caption 3 -> image 2
    scores = torch.tensor([
        [0.9, 0.1, 0.5, 0.9],  # image 0: best true caption 0.9 ties with caption 3 (false) -> rank 2
        [0.2, 0.3, 0.8, 0.1],  # image 1: its caption 2 is the top -> rank 1
        [0.7, 0.6, 0.4, 0.5],  # image 2: its caption 3 (0.5) is below captions 0 and 1 -> rank 3
    ])
    r = recall_at_k(scores, [0, 0, 1, 2], ks=(1, 2, 3))
    assert r["tr_r1"] == pytest.approx(1 / 3) and r["tr_r2"] == pytest.approx(2 / 3) and r["tr_r3"] == 1.0
    # image retrieval, per caption: c0 true 0.9 vs 0.2, 0.7 -> 1; c1 true 0.1 vs 0.3, 0.6 -> 3;
    # c2 true 0.8 vs 0.5, 0.4 -> 1; c3 true 0.5 vs 0.9, 0.1 -> 2
    assert r["ir_r1"] == pytest.approx(2 / 4) and r["ir_r2"] == pytest.approx(3 / 4) and r["ir_r3"] == 1.0
    flat = recall_at_k(torch.zeros(3, 4), [0, 0, 1, 2], ks=(1,))
    assert flat == {"tr_r1": 0.0, "ir_r1": 0.0}  # all ties: no credit


# ---- tasks -------------------------------------------------------------------------------
def overfit(task_name, dataset, steps=40, lr=3e-3, **task_kw):
    tok = tiny_tokenizer()
    task = build_task(TaskConfig(name=task_name, num_labels=3 if task_name == "vqa" else None, max_length=16,
                                 image_size=32, max_image_side=64, image_patch=16, **task_kw), tok, dataset)
    model = assemble(tiny_vilt(), task, AdapterConfig(hidden=8, skip_hidden=16),
                     __import__("archskip").ModelConfig(trainable=["pooler", "token_type_embeddings"]))
    model.apply_plan(SkipPlan((1,), 4))
    batch = task.collate([dataset[i] for i in range(len(dataset))])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)
        loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model, task


def test_vqa_loss_is_scaled_bce_and_overfits(arrows):
    ds = VQADataset(arrows, "vqav2_train", SPEC.transform(), num_answers=3)
    losses, model, task = overfit("vqa", ds)
    assert losses[-1] < 0.3 * losses[0]
    batch = task.collate([ds[i] for i in range(6)])
    with torch.no_grad():
        torch.manual_seed(0)
        logits = task.logits(model, batch)
        torch.manual_seed(0)
        loss = task.loss(model, batch)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="sum") / 6
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)  # mean BCE x 3 answers = sum over answers
    preds = task.predict(model.eval(), batch)
    assert [p["question_id"] for p in preds] == list(range(100, 106)) and {p["answer"] for p in preds} <= {"red", "green", "blue"}


def test_nlvr2_overfits_and_uses_a_third_token_type(arrows):
    ds = NLVR2Dataset(arrows, "nlvr2_dev", SPEC.transform())
    losses, model, _ = overfit("nlvr2", ds)
    assert losses[-1] < 0.5 * losses[0]
    emb = model.base.embeddings.token_type_embeddings
    assert emb.num_embeddings == 3 and emb.weight.requires_grad and model.config.modality_type_vocab_size == 3


def test_third_token_type_starts_as_the_image_row():
    base = tiny_vilt()
    before = base.embeddings.token_type_embeddings.weight.detach().clone()
    add_image_token_type(base)
    w = base.embeddings.token_type_embeddings.weight
    assert torch.equal(w[:2], before) and torch.equal(w[2], before[1])
    add_image_token_type(base)  # idempotent
    assert base.embeddings.token_type_embeddings.num_embeddings == 3


def test_retrieval_overfits_and_the_head_starts_from_itm():
    from archskip.tasks.retrieval import Retrieval

    tok = tiny_tokenizer()
    itm_w, itm_b = torch.randn(2, 32), torch.randn(2)
    task = Retrieval(tok, image=SPEC)
    model = assemble(tiny_vilt(), task, AdapterConfig(hidden=8, skip_hidden=16), __import__("archskip").ModelConfig(),
                     {"itm_score.fc.weight": itm_w, "itm_score.fc.bias": itm_b})
    assert torch.equal(model.head.weight.data, itm_w[1:2]) and torch.equal(model.head.bias.data, itm_b[1:2])
    with pytest.warns(UserWarning, match="no ITM head"):
        assemble(tiny_vilt(), Retrieval(tok, image=SPEC), AdapterConfig(hidden=8), __import__("archskip").ModelConfig())


def test_retrieval_training_and_evaluation(arrows):
    train = RetrievalDataset(arrows, "f30k_caption_karpathy_train", SPEC.transform(), negatives=3)
    losses, model, task = overfit("retrieval", train, negatives=3)
    assert losses[-1] < 0.5 * losses[0]
    test = RetrievalDataset(arrows, "f30k_caption_karpathy_test", SPEC.transform())
    m = task.evaluate_dataset(model, test)
    assert m["images"] == 2 and m["captions"] == 4 and all(0 <= m[k] <= 1 for k in ("tr_r1", "ir_r1", "tr_r10"))
    assert m["tr_r10"] == 1.0  # only 4 captions: every true caption is within the top 10


# ---- the command line, end to end ----------------------------------------------------------
@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-vilt")
    tiny_vilt().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


IMAGE_FLAGS = ["--task.image_size", "32", "--task.max_image_side", "64", "--task.image_patch", "16", "--task.max_length", "16"]


@pytest.mark.parametrize("task, train, test, extra", [
    ("vqa", "vqav2_train", "vqav2_test", ["--task.num_labels", "3"]),
    ("nlvr2", "nlvr2_dev", "nlvr2_dev", []),
    ("retrieval", "f30k_caption_karpathy_train,f30k_caption_karpathy_val", "f30k_caption_karpathy_test", ["--task.negatives", "3"]),
])
def test_cli_search_train_eval(vilt_dir, arrows, tmp_path, capsys, task, train, test, extra):
    common = ["--model.name_or_path", str(vilt_dir), "--task.name", task, "--data.root", str(arrows), "--data.train", train,
              "--adapter.hidden", "8", "--adapter.skip_hidden", "16", "--model.trainable", "[pooler]", "--train.batch_size", "2",
              *IMAGE_FLAGS, *extra]
    main(["search", *common, "--search.k", "1", "--search.update_every", "1", "--search.supernet", "on", "--search.reward_fraction", "0.25",
          "--train.epochs", "2", "--output_dir", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "search_result.json").read_text())
    assert len(result["plan"]["skip"]) == 1 and result["history"]
    main(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--data.test", test,
          "--train.epochs", "1", "--output_dir", str(tmp_path / "t")])
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert test in metrics["test"]
    if task == "vqa":
        preds = json.loads((tmp_path / "t" / f"predictions_{test}.json").read_text())
        assert len(preds) == 6 and {"question_id", "answer"} <= set(preds[0])
    capsys.readouterr()
    main(["eval", "--artifact", str(tmp_path / "t" / "artifact"), "--data", str(arrows / f"{test}.arrow"),
          "--batch_size", "2", *(["--predictions", str(tmp_path / "p.json")] if task == "vqa" else [])])
    out = json.loads(capsys.readouterr().out)
    assert test in out
    if task == "vqa":
        assert len(json.loads((tmp_path / "p.json").read_text())) == 6
