"""ViLT arrow writers: tiny raw annotations + PIL-drawn images in, exact column values out (read back as ViLT does)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import load_tool
from PIL import Image, ImageDraw

vw = load_tool("prepare_arrows")
from archskip.data.text import DataError

VOCAB = ["yes", "no", "2", "dog", "cat", "don't"]


def draw_image(path: Path, color: str, fmt: str = "JPEG") -> bytes:
    """A small picture with a rectangle; returns the bytes on disk (what the arrow must hold verbatim)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (24, 16), color)
    ImageDraw.Draw(im).rectangle([4, 3, 15, 11], fill="white")
    im.save(path, fmt)
    return path.read_bytes()


def read(path: Path) -> pa.Table:
    """Exactly ViLT's BaseDataset read."""
    return pa.ipc.RecordBatchFileReader(pa.memory_map(str(path), "r")).read_all()


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- VQA
@pytest.fixture
def vqa(tmp_path):
    """Three images, five questions; q21 and q30 have no in-vocabulary answer (image 3 has no file at all)."""
    images = {i: draw_image(tmp_path / "train2014" / f"COCO_train2014_{i:012d}.jpg", c) for i, c in ((1, "red"), (2, "blue"))}
    qs = [(10, 1, "How many dogs?"), (11, 1, "Is it ok?"), (20, 2, "Is it raining?"), (21, 2, "Which animal?"),
          (30, 3, "What is this?")]
    answers = {
        10: ["Two"] * 3 + ["two"] + ["the dog"] * 2 + ["cat"] + ["zebra"] * 3,  # "2" x4, "dog" x2, "cat" x1
        11: ["dont"] * 3 + ["Yes."] * 7,  # "don't" x3, "yes" x7
        20: ["no"] * 10,
        21: ["zebra"] * 10,
        30: ["giraffe"] * 10,
    }
    questions = write_json(tmp_path / "q.json", {"questions": [{"image_id": i, "question": t, "question_id": q} for q, i, t in qs]})
    annotations = write_json(tmp_path / "a.json", {"annotations": [
        {"question_id": q, "image_id": i, "multiple_choice_answer": answers[q][0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers[q])]}
        for q, i, _ in qs]})
    return tmp_path, questions, annotations, images


def test_vqa_round_trip_scores_and_dropped_questions(vqa):
    root, questions, annotations, images = vqa
    out = root / "vqav2_train.arrow"
    report = vw.write_vqa(questions, annotations, root / "train2014", out, "train", VOCAB, image_prefix="COCO_train2014_")
    assert report.as_dict() == {"images": 2, "questions": 3, "dropped_no_answer": 2, "missing_images": 0}
    assert report["dropped_no_answer"] == 2
    table = read(out)
    assert table.schema.equals(vw.VQA_SCHEMA)
    assert table.column_names == ["image", "questions", "answers", "answer_labels", "answer_scores", "image_id", "question_id", "split"]
    assert table.to_pylist() == [
        {"image": images[1], "questions": ["How many dogs?", "Is it ok?"],
         "answers": [["2", "dog", "cat"], ["don't", "yes"]], "answer_labels": [[2, 3, 4], [5, 0]],
         "answer_scores": [[1.0, 0.6, 0.3], [0.9, 1.0]], "image_id": 1, "question_id": [10, 11], "split": "train"},
        {"image": images[2], "questions": ["Is it raining?"], "answers": [["no"]], "answer_labels": [[1]],
         "answer_scores": [[1.0]], "image_id": 2, "question_id": [20], "split": "train"},
    ]
    assert pa.types.is_binary(table.schema.field("image").type)
    assert pa.types.is_int64(table.schema.field("image_id").type)


def test_vqa_keep_unanswerable_and_raw_answers(vqa):
    root, questions, annotations, _ = vqa
    draw_image(root / "train2014" / "COCO_train2014_000000000003.jpg", "green")
    out = root / "keep.arrow"
    report = vw.write_vqa(questions, annotations, root / "train2014", out, "val", VOCAB, image_prefix="COCO_train2014_",
                          drop_unanswerable=False, normalize_answers=False)
    assert report.as_dict() == {"images": 3, "questions": 5, "dropped_no_answer": 0, "missing_images": 0}
    rows = read(out).to_pylist()
    # unnormalised: "Two" and "the dog" are not vocabulary entries, "two" is not "2", "dont" is not "don't"
    assert rows[0]["answers"] == [["cat"], []] and rows[0]["answer_scores"] == [[0.3], []]
    assert rows[1]["answer_labels"] == [[1], []] and rows[2]["answers"] == [[]] and rows[2]["split"] == "val"


def test_vqa_test_split_without_annotations(vqa):
    root, questions, _, images = vqa
    draw_image(root / "test2015" / "t3.png", "green", "PNG")
    for i in (1, 2):
        (root / "test2015" / f"t{i}.png").write_bytes(images[i])  # any readable bytes: JPEG under a .png name is fine
    out = root / "vqav2_test.arrow"
    report = vw.write_vqa(questions, None, root / "test2015", out, "test", VOCAB, image_name_fn=lambda i: f"t{i}.png")
    assert report.as_dict() == {"images": 3, "questions": 5, "dropped_no_answer": 0, "missing_images": 0}
    rows = read(out).to_pylist()
    assert [r["question_id"] for r in rows] == [[10, 11], [20, 21], [30]]
    assert rows[0]["answers"] == [[], []] and rows[0]["answer_labels"] == [[], []] and rows[0]["answer_scores"] == [[], []]
    assert rows[2]["questions"] == ["What is this?"] and rows[2]["image"] == (root / "test2015" / "t3.png").read_bytes()
    assert {r["split"] for r in rows} == {"test"}


def test_vqa_batches_do_not_change_the_table(vqa, monkeypatch):
    root, questions, annotations, _ = vqa
    args = (questions, annotations, root / "train2014")
    vw.write_vqa(*args, root / "one.arrow", "train", VOCAB, image_prefix="COCO_train2014_")
    monkeypatch.setattr(vw, "ROWS_PER_BATCH", 1)
    vw.write_vqa(*args, root / "many.arrow", "train", VOCAB, image_prefix="COCO_train2014_")
    assert pa.ipc.open_file(str(root / "many.arrow")).num_record_batches == 2
    assert read(root / "many.arrow").equals(read(root / "one.arrow"))


def test_vqa_missing_image_fails_or_is_counted(vqa):
    root, questions, annotations, _ = vqa
    (root / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    out = root / "vqav2_train.arrow"
    with pytest.raises(DataError, match=r"COCO_train2014_000000000002\.jpg' for image_id 2 \(question_id 20\) does not exist"):
        vw.write_vqa(questions, annotations, root / "train2014", out, "train", VOCAB, image_prefix="COCO_train2014_")
    assert not out.exists() and list(root.glob(".vqav2_train.arrow*")) == []  # no half file, no temp left behind
    report = vw.write_vqa(questions, annotations, root / "train2014", out, "train", VOCAB, image_prefix="COCO_train2014_",
                          skip_missing=True)
    assert report.as_dict() == {"images": 1, "questions": 2, "dropped_no_answer": 2, "missing_images": 1}
    assert read(out)["image_id"].to_pylist() == [1]


def test_vqa_unreadable_image_and_bad_json(vqa):
    root, questions, annotations, _ = vqa
    bad = root / "train2014" / "COCO_train2014_000000000002.jpg"
    bad.write_bytes(b"\xff\xd8 truncated, not a jpeg")
    with pytest.raises(DataError, match=r"COCO_train2014_000000000002\.jpg' for image_id 2 .*cannot be read as an image"):
        vw.write_vqa(questions, annotations, root / "train2014", root / "o.arrow", "train", VOCAB, image_prefix="COCO_train2014_")
    broken = root / "broken.json"
    broken.write_text('{"questions": [{"image_id": 1,')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        vw.write_vqa(broken, None, root, root / "o.arrow", "test", VOCAB)
    nokey = write_json(root / "nokey.json", {"questions": [{"image_id": 1, "question": "q", "question_id": 1}, {"image_id": 1, "question_id": 2}]})
    with pytest.raises(DataError, match=r"nokey\.json, questions\[1\]: missing key 'question'"):
        vw.write_vqa(nokey, None, root, root / "o.arrow", "test", VOCAB)
    wrong = write_json(root / "wrong.json", {"annotations": []})
    with pytest.raises(DataError, match=r"wrong\.json: expected a JSON object with a 'questions' list"):
        vw.write_vqa(wrong, None, root, root / "o.arrow", "test", VOCAB)
    with pytest.raises(DataError, match=r"wrong\.json: no annotation for 5 question\(s\) of .*q\.json, e\.g\. question_id 10"):
        vw.write_vqa(questions, wrong, root, root / "o.arrow", "train", VOCAB)
    assert not (root / "o.arrow").exists()


@pytest.mark.parametrize("raw, norm", [
    ("Two", "2"), ("the dog", "dog"), ("dont", "don't"), ("Yes.", "yes"), ("1,000", "1000"), ("t-shirt", "t shirt"),
    ("a man's hat", "man's hat"), ("none", "0"), ("3.5", "3.5"), ("hot dog!", "hot dog"), ("left / right", "left right"),
])
def test_normalize_answer(raw, norm):
    assert vw.normalize_answer(raw) == norm


def test_vqa_score_steps():
    assert [vw.vqa_score(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]


def test_answer_vocab_build_save_load(tmp_path):
    def ann(path, mcs):
        return write_json(path, {"annotations": [{"question_id": i, "image_id": 0, "multiple_choice_answer": a, "answers": []}
                                                 for i, a in enumerate(mcs)]})

    a = ann(tmp_path / "a.json", ["Yes", "yes", "two", "2", "no", "zebra"])
    b = ann(tmp_path / "b.json", ["no", "No", "cat", "the cat"])
    assert vw.build_answer_vocab([a, b], min_count=2) == ["no", "2", "cat", "yes"]  # count desc, then alphabetical
    assert vw.build_answer_vocab([a, b], min_count=2, order="first_seen") == ["yes", "2", "no", "cat"]  # ViLT's order
    assert vw.build_answer_vocab(b, min_count=2) == ["cat", "no"]
    with pytest.raises(DataError, match="no answer occurs at least 4 times"):
        vw.build_answer_vocab([a, b], min_count=4)
    path = vw.save_answer_vocab(tmp_path / "vocab.json", VOCAB)
    assert vw.load_answer_vocab(path) == VOCAB and json.loads(path.read_text()) == VOCAB
    write_json(tmp_path / "dup.json", ["yes", "no", "yes"])
    with pytest.raises(DataError, match=r"dup\.json.*duplicate answers \['yes'\]"):
        vw.load_answer_vocab(tmp_path / "dup.json")


def test_split_vqa_val(vqa):
    root, questions, annotations, _ = vqa
    val = root / "vqav2_val.arrow"
    vw.write_vqa(questions, annotations, root / "train2014", val, "val", VOCAB, image_prefix="COCO_train2014_")
    trainable, rest = vw.split_vqa_val(val, root / "out", n_rest=1)
    assert trainable.name == "vqav2_trainable_val.arrow" and rest.name == "vqav2_rest_val.arrow"
    assert read(trainable)["image_id"].to_pylist() == [1] and read(rest)["image_id"].to_pylist() == [2]
    assert pa.concat_tables([read(trainable), read(rest)]).equals(read(val))
    with pytest.raises(DataError, match="cannot hold out 2 of its 2 images"):
        vw.split_vqa_val(val, root / "out", n_rest=2)


# ---------------------------------------------------------------- NLVR2
def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_nlvr2_groups_sentences_by_pair(tmp_path):
    imgs = {(p, k): draw_image(tmp_path / "train" / d / f"{p}-img{k}.png", c, "PNG")
            for p, d, c in (("train-1-0", "7", "red"), ("train-2-1", "3", "blue")) for k in (0, 1)}
    lines = write_lines(tmp_path / "train.json", [
        {"identifier": "train-1-0-0", "sentence": "Two dogs.", "label": "True", "directory": 7},
        {"identifier": "train-2-1-0", "sentence": "No cats.", "label": "False", "directory": 3},
        {"identifier": "train-1-0-1", "sentence": "One dog.", "label": "False", "directory": 7},
    ])
    out = tmp_path / "nlvr2_train.arrow"
    report = vw.write_nlvr2(lines, tmp_path / "train", out)
    assert report.as_dict() == {"images": 2, "questions": 3, "dropped_no_answer": 0, "missing_images": 0}
    table = read(out)
    assert table.schema.equals(vw.NLVR2_SCHEMA)
    assert table.column_names == ["image_0", "image_1", "questions", "answers", "identifier"]
    assert table.to_pylist() == [
        {"image_0": imgs["train-1-0", 0], "image_1": imgs["train-1-0", 1], "questions": ["Two dogs.", "One dog."],
         "answers": ["True", "False"], "identifier": "train-1-0"},
        {"image_0": imgs["train-2-1", 0], "image_1": imgs["train-2-1", 1], "questions": ["No cats."],
         "answers": ["False"], "identifier": "train-2-1"},
    ]


def test_nlvr2_dev_layout_and_errors(tmp_path):
    img0 = draw_image(tmp_path / "dev" / "dev-5-2-img0.png", "red", "PNG")
    img1 = draw_image(tmp_path / "dev" / "dev-5-2-img1.png", "blue", "PNG")
    lines = write_lines(tmp_path / "dev.json", [{"identifier": "dev-5-2-0", "sentence": "s", "label": "True"}])
    vw.write_nlvr2(lines, tmp_path / "dev", tmp_path / "nlvr2_dev.arrow")
    assert read(tmp_path / "nlvr2_dev.arrow").to_pylist() == [
        {"image_0": img0, "image_1": img1, "questions": ["s"], "answers": ["True"], "identifier": "dev-5-2"}]

    lines2 = write_lines(tmp_path / "dev2.json", [{"identifier": "dev-5-2-0", "sentence": "s", "label": "True"},
                                                  {"identifier": "dev-9-0-0", "sentence": "t", "label": "False"}])
    with pytest.raises(DataError, match=r"dev-9-0-img0\.png' for identifier 'dev-9-0' does not exist"):
        vw.write_nlvr2(lines2, tmp_path / "dev", tmp_path / "x.arrow")
    report = vw.write_nlvr2(lines2, tmp_path / "dev", tmp_path / "x.arrow", skip_missing=True)
    assert report.as_dict() == {"images": 1, "questions": 1, "dropped_no_answer": 0, "missing_images": 2}

    (tmp_path / "bad.json").write_text(json.dumps({"identifier": "dev-5-2-0", "sentence": "s", "label": "True"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad\.json, line 2: not valid JSON"):
        vw.write_nlvr2(tmp_path / "bad.json", tmp_path / "dev", tmp_path / "x2.arrow")
    write_lines(tmp_path / "lab.json", [{"identifier": "dev-5-2-0", "sentence": "s", "label": "maybe"}])
    with pytest.raises(DataError, match=r"lab\.json, line 1: label 'maybe' is not 'True' or 'False'"):
        vw.write_nlvr2(tmp_path / "lab.json", tmp_path / "dev", tmp_path / "x2.arrow")
    (tmp_path / "dev" / "dev-5-2-img1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"dev-5-2-img1\.png' for identifier 'dev-5-2' cannot be read as an image"):
        vw.write_nlvr2(lines, tmp_path / "dev", tmp_path / "x2.arrow")
    assert not (tmp_path / "x2.arrow").exists()


# ---------------------------------------------------------------- Flickr30k
def test_f30k_splits_and_restval(tmp_path):
    imgs = {n: draw_image(tmp_path / "flickr30k-images" / n, c) for n, c in
            (("a.jpg", "red"), ("b.jpg", "blue"), ("c.jpg", "green"), ("d.jpg", "black"))}
    caps = {n: [f"{n} caption {k}" for k in range(5)] for n in imgs}
    karpathy = write_json(tmp_path / "dataset_flickr30k.json", {"images": [
        {"filename": n, "split": s, "imgid": i, "sentences": [{"raw": c, "tokens": c.split()} for c in caps[n]]}
        for i, (n, s) in enumerate((("a.jpg", "train"), ("b.jpg", "restval"), ("c.jpg", "val"), ("d.jpg", "test")))]})
    reports = vw.write_f30k(karpathy, tmp_path / "flickr30k-images", tmp_path / "arrows")
    assert {s: r.as_dict()["images"] for s, r in reports.items()} == {"train": 2, "val": 1, "test": 1}
    assert reports["train"].questions == 10
    expected = {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["d.jpg"]}
    for split, names in expected.items():
        table = read(tmp_path / "arrows" / f"f30k_caption_karpathy_{split}.arrow")
        assert table.schema.equals(vw.F30K_SCHEMA)
        assert table.column_names == ["image", "caption", "image_id", "split"]
        assert table.to_pylist() == [{"image": imgs[n], "caption": caps[n], "image_id": n, "split": split} for n in names]


def test_f30k_errors(tmp_path):
    draw_image(tmp_path / "img" / "a.jpg", "red")
    bad_split = write_json(tmp_path / "k.json", {"images": [{"filename": "a.jpg", "split": "dev", "sentences": [{"raw": "x"}]}]})
    with pytest.raises(DataError, match=r"k\.json, images\[0\]: split 'dev' is not train, val, test or restval"):
        vw.write_f30k(bad_split, tmp_path / "img", tmp_path / "out")
    no_raw = write_json(tmp_path / "k2.json", {"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": []}]}]})
    with pytest.raises(DataError, match=r"k2\.json, images\[0\]\.sentences\[0\]: missing key 'raw'"):
        vw.write_f30k(no_raw, tmp_path / "img", tmp_path / "out")
    missing = write_json(tmp_path / "k3.json", {"images": [{"filename": n, "split": s, "sentences": [{"raw": "x"}]}
                                                           for n, s in (("a.jpg", "train"), ("zz.jpg", "val"), ("a.jpg", "test"))]})
    with pytest.raises(DataError, match=r"zz\.jpg' for image_id 'zz\.jpg' does not exist"):
        vw.write_f30k(missing, tmp_path / "img", tmp_path / "out")


# ---------------------------------------------------------------- command line
def test_cli_vocab_then_vqa_matches_the_function(vqa, capsys):
    root, questions, annotations, _ = vqa
    vw.main(["vqa-vocab", "--annotations", str(annotations), "--out", str(root / "v.json"), "--min-count", "1"])
    vocab = vw.load_answer_vocab(root / "v.json")
    assert vocab == ["2", "don't", "giraffe", "no", "zebra"]  # each normalised mc answer once: alphabetical
    vw.main(["vqa", "--questions", str(questions), "--annotations", str(annotations), "--images", str(root / "train2014"),
             "--prefix", "COCO_train2014_", "--vocab", str(root / "v.json"), "--split", "train", "--out", str(root / "cli.arrow"),
             "--skip-missing"])
    assert '"missing_images": 1' in capsys.readouterr().out  # image 3 has a question answered "giraffe" but no file
    vw.write_vqa(questions, annotations, root / "train2014", root / "fn.arrow", "train", vocab, image_prefix="COCO_train2014_",
                 skip_missing=True)
    assert read(root / "cli.arrow").equals(read(root / "fn.arrow"))
    with pytest.raises(SystemExit) as exit_info:
        vw.main(["nlvr2", "--json", str(root / "nope.json"), "--images", str(root), "--out", str(root / "n.arrow")])
    assert exit_info.value.code == 2
    assert "prepare_arrows: error: data file" in capsys.readouterr().err
