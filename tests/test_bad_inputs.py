"""Every bad input gets a clear message naming the bad value and what was expected, never a bare traceback.

The cases here are the table in docs/errors.md (a test below keeps the two in step).
"""

import csv
import json
import re
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from conftest import classification_examples, make_bert, tiny_tokenizer
from hypothesis import given
from hypothesis import strategies as st
from test_vilt import (
    arrows,  # noqa: F401  (tiny ViLT-format arrows)
    tiny_vilt,
)

from archskip.cli import main
from archskip.data.text import DataError, read_examples

DOCS = Path(__file__).parent.parent / "docs" / "errors.md"


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory, arrows):  # noqa: F811
    """Tiny models, data files and broken files the cases point at."""
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    make_bert().save_pretrained(d / "bert")
    tiny_tokenizer().save_pretrained(d / "bert")
    tiny_vilt().save_pretrained(d / "vilt")
    tiny_tokenizer().save_pretrained(d / "vilt")
    e = {"bert": str(d / "bert"), "vilt": str(d / "vilt"), "arrows": str(arrows), "dir": d}
    e["csv"] = write_csv(d / "train.csv", classification_examples(120, seed=2))
    e["empty"] = write_csv(d / "empty.csv", [])
    e["nolabel"] = write_csv(d / "nolabel.csv", [{"text": "w1 w2"}], fields=("text",))
    e["badlabel"] = write_csv(d / "badlabel.csv", [{"text": "w1", "label": "maybe"}])
    (d / "bad.arrow").write_bytes(b"not arrow")
    table = pa.ipc.RecordBatchFileReader(pa.memory_map(str(arrows / "vqav2_train.arrow"), "r")).read_all()
    broken = table.set_column(0, "image", pa.array([b"\x00broken"] * table.num_rows, pa.binary()))
    with pa.OSFile(str(d / "vqav2_broken.arrow"), "wb") as sink, pa.ipc.new_file(sink, broken.schema) as w:
        w.write_table(broken)
    six = {"kind": "archskip.search_result", "format": 1, "plan": {"skip": [5], "num_candidates": 6}, "method": "das",
           "scores": [0.0] * 6, "seed": 0}
    (d / "six.json").write_text(json.dumps(six))
    (d / "notjson.json").write_text("{")
    (d / "partial.json").write_text('{"kind": "archskip.search_result", "method": "das"}')
    (d / "recipe.yaml").write_text("model:\n  name_or_path: x\n  colour: blue\n")
    (d / "latin1.csv").write_bytes("text,label\ncafé crème,pos\n".encode("latin-1"))
    (d / "noconfig").mkdir()
    (d / "noconfig" / "model.safetensors").write_bytes(b"")
    e["fractional"] = write_csv(d / "fractional.csv", [{"text": "w1 w2", "label": "0.5"}, {"text": "w3", "label": "1.5"}])
    e["intlabels"] = write_csv(d / "intlabels.csv", [{"text": "w1", "label": "1"}])
    e["blank"] = write_csv(d / "blank.csv", [{"text": "w1", "label": "pos"}, {"text": "   ", "label": "neg"}])
    (d / "notyaml.yaml").write_text("model: [\n")
    (d / "afile").write_text("I am a file")
    (d / "evil.ckpt").write_bytes(_evil_pickle())
    sd = {"state_dict": {"text_embeddings.word_embeddings.weight": torch.zeros(2, 2)}}
    torch.save(sd, d / "partial_vilt.ckpt")
    return e


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def _evil_pickle() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": _Evil()}, buf)
    return buf.getvalue()


def base(e, *extra):
    return ["--model.name_or_path", e["bert"], "--data.train", e["csv"], "--adapter.hidden", "8", "--adapter.skip_hidden", "16",
            "--train.batch_size", "16", "--train.epochs", "1", "--output_dir", str(e["dir"] / "out"), *extra]


def vl(e, task="vqa", train="vqav2_train", *extra):
    return ["--model.name_or_path", e["vilt"], "--task.name", task, "--data.root", e["arrows"], "--data.train", train,
            "--task.num_labels", "3", "--task.image_size", "32", "--task.max_image_side", "64", "--task.image_patch", "16",
            "--task.max_length", "16", "--adapter.hidden", "8", "--train.batch_size", "2", "--train.epochs", "1",
            "--output_dir", str(e["dir"] / "vl"), *extra]


# (case name as in docs/errors.md, argv builder, expected message pattern)
CASES = [
    ("unknown task", lambda e: ["train", *base(e, "--plan", "none", "--task.name", "ranking")], r"ranking"),
    ("unknown search method", lambda e: ["search", *base(e, "--search.method", "greedy")], r"greedy"),
    ("model path that does not exist", lambda e: ["train", *base(e, "--plan", "none", "--model.name_or_path", "./nope/model")],
     r"model path './nope/model' does not exist"),
    ("candidate list that is not a ModuleList", lambda e: ["train", *base(e, "--plan", "none", "--model.layers", "embeddings")],
     r"'embeddings' in BertModel is a BertEmbeddings, not a ModuleList"),
    ("plan index out of range", lambda e: ["train", *base(e, "--plan", "9")], r"skip index 9 is out of range; expected 0\.\.3"),
    ("plan index duplicated", lambda e: ["train", *base(e, "--plan", "1,1")], r"skip indices \[1\] appear more than once"),
    ("plan not a list of indices", lambda e: ["train", *base(e, "--plan", "one,two")], r"'one,two' is not a comma-separated list"),
    ("plan made for another number of blocks", lambda e: ["train", *base(e, "--plan", str(e["dir"] / "six.json"))],
     r"made for 6 candidates; this model has 4"),
    ("search result file that is not JSON", lambda e: ["train", *base(e, "--plan", str(e["dir"] / "notjson.json"))],
     r"is not valid JSON"),
    ("search result file that is incomplete", lambda e: ["train", *base(e, "--plan", str(e["dir"] / "partial.json"))],
     r"partial\.json: search result is incomplete or corrupt: missing \['plan', 'scores', 'seed'\]"),
    ("k >= number of blocks", lambda e: ["search", *base(e, "--search.k", "4")],
     r"k=4 must be < the number of candidates \(4\)"),
    ("k < 0", lambda e: ["search", *base(e, "--search.k", "-1")], r"search\.k=-1 must be a non-negative integer"),
    ("adapter dimension <= 0", lambda e: ["train", *base(e, "--plan", "none", "--adapter.hidden", "0")],
     r"adapter\.hidden=0 must be a positive integer"),
    ("text longer than the model allows", lambda e: ["train", *base(e, "--plan", "none", "--task.max_length", "600")],
     r"task\.max_length=600 exceeds the 512 text positions"),
    ("missing data file", lambda e: ["train", *base(e, "--plan", "none", "--data.train", "nope.csv")],
     r"data file 'nope.csv' does not exist"),
    ("empty data file", lambda e: ["train", *base(e, "--plan", "none", "--data.train", e["empty"])], r"has no rows"),
    ("data file without the label column", lambda e: ["train", *base(e, "--plan", "none", "--data.train", e["nolabel"])],
     r"row 2: missing column\(s\) \['label'\]"),
    ("test label outside the training labels", lambda e: ["train", *base(e, "--plan", "none", "--data.test", e["badlabel"])],
     r"badlabel.csv, row 2: label 'maybe' does not occur in the training data"),
    ("data file not in UTF-8", lambda e: ["train", *base(e, "--plan", "none", "--data.train", str(e["dir"] / "latin1.csv"))],
     r"latin1\.csv: byte 0xe9 at offset 14 \(line 2\) is not valid utf-8 text; .* --data\.encoding"),
    ("unknown text encoding", lambda e: ["train", *base(e, "--plan", "none", "--data.encoding", "utf-9")],
     r"data\.encoding='utf-9' is not a text encoding"),
    ("fractional label in a classification file", lambda e: ["train", *base(e, "--plan", "none", "--data.train",
                                                                           e["fractional"])],
     r"fractional\.csv, row 2: label '0\.5' is a fractional number"),
    ("labels of different kinds across files", lambda e: ["train", *base(e, "--plan", "none", "--data.test", e["intlabels"])],
     r"intlabels\.csv, row 2: label '1' is an integer label, but .*train\.csv, row \d+ has '(pos|neg)', a string label"),
    ("empty text", lambda e: ["train", *base(e, "--plan", "none", "--data.train", e["blank"])],
     r"blank\.csv, row 3: the 'text' column is empty"),
    ("empty plan", lambda e: ["train", *base(e, "--plan", "")], r"no skip plan given \(the plan is empty\)"),
    ("model directory without config.json", lambda e: ["train", *base(e, "--plan", "none", "--model.name_or_path",
                                                                      str(e["dir"] / "noconfig"))],
     r"model directory '.*noconfig' has no config\.json"),
    ("unknown option on the command line", lambda e: ["train", *base(e, "--plan", "none", "--data.colr", "x")],
     r"unknown key 'data\.colr' on the command line; did you mean 'data\.root'\?"),
    ("option value of the wrong type", lambda e: ["search", *base(e, "--search.k", "two")], r'"search\.k".*Got value: two'),
    ("missing arrow file", lambda e: ["train", *vl(e, "vqa", "vqav2_nope", "--plan", "none")], r"arrow file .*vqav2_nope\.arrow' does not exist"),
    ("corrupt arrow file", lambda e: ["train", *vl(e, "vqa", "bad", "--plan", "none", "--data.root", str(e["dir"]))],
     r"bad\.arrow is not a readable Arrow IPC file"),
    ("image PIL cannot open", lambda e: ["train", *vl(e, "vqa", "vqav2_broken", "--plan", "none", "--data.root", str(e["dir"]))],
     r"vqav2_broken\.arrow row \d+: cannot decode the image"),
    ("answer vocabulary mismatch", lambda e: ["train", *vl(e, "vqa", "vqav2_train", "--plan", "none", "--task.num_labels", "2")],
     r"answer label\(s\) \[2\] outside the 2-answer vocabulary"),
    ("original checkpoint with missing keys", lambda e: ["train", *base(e, "--plan", "none", "--model.name_or_path",
                                                                      str(e["dir"] / "partial_vilt.ckpt"))], r"missing key"),
    ("checkpoint that needs unpickling arbitrary objects", lambda e: ["train", *base(e, "--plan", "none", "--model.name_or_path",
                                                                                    str(e["dir"] / "evil.ckpt"))],
     r"refuses to unpickle arbitrary objects"),
    ("NaN or inf loss in training", lambda e: ["train", *base(e, "--plan", "none", "--train.lr", "1e30", "--train.warmup_ratio", "0.0")],
     r"loss is (nan|inf) at optimiser step \d+"),
    ("output directory not writable", lambda e: ["train", *base(e, "--plan", "none", "--output_dir", str(e["dir"] / "afile" / "run"))],
     r"cannot create output directory"),
    ("unknown key in a YAML recipe", lambda e: ["train", "--config", str(e["dir"] / "recipe.yaml"), "--plan", "none"],
     r"unknown key 'model\.colour' in .*recipe\.yaml; did you mean '[a-z_.]+'\?"),
    ("recipe that is not valid YAML", lambda e: ["train", "--config", str(e["dir"] / "notyaml.yaml"), "--plan", "none"], r"notyaml"),
    ("resume without a checkpoint", lambda e: ["train", *base(e, "--plan", "none", "--resume", "true", "--output_dir",
                                                              str(e["dir"] / "fresh"))], r"--resume: no checkpoint"),
    ("artifact directory that is not an artifact", lambda e: ["eval", "--artifact", str(e["dir"]), "--data", e["csv"]],
     r"is not an archskip artifact"),
    ("teacher on every token of a one-label task", lambda e: ["train", *base(e, "--plan", "1", "--train.teacher", str(e["dir"]),
                                                                           "--train.teacher_tokens", "text")],
     r"train\.teacher_tokens='text': the classification task makes one prediction per example"),
    ("teacher tokens without a teacher", lambda e: ["train", *base(e, "--plan", "1", "--train.teacher_tokens", "text")],
     r"train\.teacher_tokens='text' says where a teacher is matched, but train\.teacher is unset"),
]


@pytest.mark.parametrize("name, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(env, capsys, name, argv, pattern):
    with pytest.raises(SystemExit) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(argv(env))
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert re.search(pattern, err), f"{name}: {err[-800:]}"
    assert "Traceback" not in err
    # one readable line, the last (progress bars of work already begun may come before it), no usage text
    assert err.count("archskip: error: ") == 1 and "archskip: error: " in err.strip().splitlines()[-1], err
    assert "usage:" not in err and "Error:" not in err, err


def test_there_are_at_least_25_cases_and_the_docs_list_them_all():
    assert len(CASES) >= 25
    doc = DOCS.read_text()
    missing = [name for name, _, _ in CASES if f"| {name} |" not in doc]
    assert not missing, f"docs/errors.md lacks {missing}"


def test_images_in_other_modes_are_converted_not_refused(tmp_path):
    from PIL import Image

    from archskip.data.images import decode_image

    for mode in ("L", "P", "RGBA", "CMYK", "I;16"):
        img = Image.new(mode, (20, 10))
        path = tmp_path / f"x.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
        img.save(path)
        assert decode_image(path.read_bytes(), str(path)).mode == "RGB"


def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno
    import os

    from archskip.io import OutputError, atomic_write_text

    target = tmp_path / "result.json"
    atomic_write_text(target, "previous")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OutputError, match=r"no space left on the device while writing .*result\.json.*previous file is kept"):
        atomic_write_text(target, "new")
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]


@given(st.lists(st.one_of(st.text(max_size=30), st.dictionaries(st.sampled_from(["text", "label", "x"]),
                                                                 st.one_of(st.text(max_size=5), st.integers(), st.none()),
                                                                 max_size=3).map(json.dumps)), max_size=6))
def test_jsonl_rows_parse_or_fail_with_a_data_error(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        rows = read_examples(path)
    except DataError:
        return
    assert rows and all(set(r) == {"text", "label", "_row"} and isinstance(r["text"], str) and r["text"].strip()
                        for r in rows)
