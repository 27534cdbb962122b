"""Real-world files read or refused before any work: encodings, label types across splits, file modes, and a
property-based fuzz of the command line (every bad input: exit 2, one line, no traceback, nothing written)."""

import json
import os
import stat
import warnings

import pytest
import torch
from conftest import classification_examples, make_bert, tiny_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archskip.cli import main
from archskip.config import ConfigError, DataConfig
from archskip.data.text import DataError, LabelVocab, check_labels, read_examples
from archskip.errors import BackboneError
from archskip.io import atomic_write_text


def test_a_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    body = "text,label\ncafé au lait,pos\nbad day,neg\n"
    (tmp_path / "plain.csv").write_text(body, encoding="utf-8")
    (tmp_path / "excel.csv").write_bytes("\ufeff".encode() + body.encode())  # Excel's "CSV UTF-8"
    plain, excel = read_examples(tmp_path / "plain.csv"), read_examples(tmp_path / "excel.csv")
    assert [(e["text"], e["label"]) for e in excel] == [(e["text"], e["label"]) for e in plain]
    (tmp_path / "excel.jsonl").write_bytes("\ufeff".encode() + b'{"text": "a", "label": 1}\n')
    assert read_examples(tmp_path / "excel.jsonl")[0]["text"] == "a"


def test_other_encodings_are_refused_with_the_offset_or_read_when_named(tmp_path):
    (tmp_path / "l1.csv").write_bytes("text,label\nok,pos\ncrème brûlée,neg\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l1\.csv: byte 0xe8 at offset 20 \(line 3\) is not valid utf-8 text.*"
                                        r"--data\.encoding"):
        read_examples(tmp_path / "l1.csv")
    rows = read_examples(tmp_path / "l1.csv", encoding="latin-1")
    assert rows[1]["text"] == "crème brûlée"
    assert DataConfig(encoding="cp1252").encoding == "cp1252"
    with pytest.raises(ConfigError, match=r"data\.encoding='klingon' is not a text encoding"):
        DataConfig(encoding="klingon")


def test_integral_labels_are_one_class_whatever_the_file_type_writes(tmp_path):
    train = [{"text": "a", "label": 0.0, "_row": "t.jsonl, line 1"}, {"text": "b", "label": 1.0, "_row": "t.jsonl, line 2"}]
    test = [{"text": "c", "label": 1, "_row": "x.jsonl, line 1"}, {"text": "d", "label": "0", "_row": "x.csv, row 2"}]
    check_labels(train, {"test": test})
    vocab = LabelVocab.from_examples(train)
    assert vocab.names == ["0", "1"] and [vocab.encode(e["label"]) for e in test] == [1, 0]
    flags = [{"text": "a", "label": True}, {"text": "b", "label": "false"}]
    vocab = LabelVocab.from_examples(flags)
    assert vocab.names == ["false", "true"] and vocab.encode("True") == 1 and vocab.encode(False) == 0
    with pytest.raises(DataError, match=r"y\.jsonl, line 4: label 2\.25 is a fractional number"):
        check_labels(train, {"test": [{"text": "e", "label": 2.25, "_row": "y.jsonl, line 4"}]})
    with pytest.raises(DataError, match=r"z\.csv, row 9: label 'yes' is a string label, but t\.jsonl, line 1 has 0\.0, "
                                        r"an integer label"):
        check_labels(train, {"validation": [{"text": "e", "label": "yes", "_row": "z.csv, row 9"}]})
    with pytest.raises(DataError, match=r"label 7 does not occur in the training data"):
        check_labels(train, {"test": [{"text": "e", "label": 7, "_row": "x.jsonl, line 3"}]})


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "result.json", "{}")
        atomic_write_text(path, "{} ")  # an overwrite too
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left


def test_a_model_directory_without_config_json_is_refused(tmp_path):
    from archskip.config import ModelConfig
    from archskip.models import load_pretrained

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    with pytest.raises(BackboneError, match=r"model directory '.*m' has no config\.json"):
        load_pretrained(ModelConfig(name_or_path=str(tmp_path / "m")))


# ---- the command-line fuzz --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzbert")
    torch.manual_seed(0)
    make_bert().save_pretrained(d / "bert")
    tiny_tokenizer().save_pretrained(d / "bert")
    return str(d / "bert")


GOOD = classification_examples(40, seed=3)
WORDS = st.text(alphabet="abcdefgh xyz,\"'é", min_size=1, max_size=12).filter(lambda t: t.strip())


def _defect():
    """One thing wrong with an otherwise valid training run: (kind, detail)."""
    return st.one_of(
        st.tuples(st.just("empty text"), st.sampled_from(["", "   ", "\t"])),
        st.tuples(st.just("fractional label"), st.floats(0.01, 9.99).filter(lambda x: not float(x).is_integer())),
        st.tuples(st.just("unseen test label"), WORDS),
        st.tuples(st.just("mixed label kinds"), st.integers(0, 5)),
        st.tuples(st.just("bad bytes"), st.sampled_from(["latin-1", "cp1252", "utf-16"])),
        st.tuples(st.just("missing column"), st.sampled_from(["label", "text"])),
        st.tuples(st.just("bad plan"), st.one_of(st.just(""), st.just(" "), WORDS.filter(lambda t: t.strip() != "none"),
                                                 st.lists(st.integers(4, 99), min_size=1, max_size=3)
                                                 .map(lambda xs: ",".join(map(str, xs))))),
        st.tuples(st.just("unknown recipe key"), st.sampled_from(["data", "train", "search", "adapter", "task"]).flatmap(
            lambda s: st.tuples(st.just(s), st.text(alphabet="qwjkvz_", min_size=1, max_size=8)))),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(WORDS, st.sampled_from(["neg", "pos"])), min_size=4, max_size=12), defect=_defect())
def test_any_bad_input_ends_in_one_line_and_leaves_nothing_behind(tmp_path_factory, capsys, bert_dir, rows, defect):
    d = tmp_path_factory.mktemp("fuzz")
    kind, detail = defect
    train = [{"text": t, "label": y} for t, y in rows] + GOOD
    test = [dict(e) for e in GOOD[:6]]
    plan, recipe, encoding = "none", None, "utf-8"
    if kind == "empty text":
        train[len(rows) // 2]["text"] = detail
    elif kind == "fractional label":
        train[0]["label"] = detail
    elif kind == "unseen test label":
        test[0]["label"] = "never-" + detail
    elif kind == "mixed label kinds":
        test[0]["label"] = detail
    elif kind == "bad bytes":
        train[0]["text"], encoding = "naïve café", detail
    elif kind == "bad plan":
        plan = detail
    else:
        recipe = {detail[0]: {detail[1]: 1}} if kind == "unknown recipe key" else None
    fields = [c for c in ("text", "label") if not (kind == "missing column" and c == detail)]
    write_jsonl_or_csv(d / "train.csv", train, fields, encoding)
    write_jsonl_or_csv(d / "test.csv", test, ["text", "label"], "utf-8")
    out = d / "out"
    argv = ["train", "--model.name_or_path", bert_dir, "--data.train", str(d / "train.csv"), "--data.test",
            str(d / "test.csv"), "--adapter.hidden", "8", "--train.batch_size", "8", "--train.epochs", "1",
            "--plan", plan, "--output_dir", str(out)]
    if recipe:
        (d / "recipe.yaml").write_text(json.dumps(recipe))
        argv += ["--config", str(d / "recipe.yaml")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, (kind, detail, err)
    assert err.count("archskip: error: ") == 1 and "Traceback" not in err and "usage:" not in err, (kind, detail, err)
    assert not out.exists(), (kind, detail, sorted(p.name for p in out.rglob("*")))  # nothing written, not even a dir


def write_jsonl_or_csv(path, rows, fields, encoding):
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))


def test_debug_shows_the_traceback_instead_of_one_line(tmp_path):
    from archskip.errors import PlanError

    argv = ["train", "--model.name_or_path", "x", "--data.train", str(tmp_path / "t.csv"), "--plan", ""]
    with pytest.raises(SystemExit):
        main(argv)
    with pytest.raises(PlanError, match="the plan is empty"):
        main([*argv, "--debug"])


@pytest.mark.parametrize("content, pattern", [
    ('{"kind": "archskip.search_result"}', r"r\.json: search result is incomplete or corrupt: missing \['plan'"),
    ("[1, 2]", r"r\.json: not an archskip search result"),
    ('{"kind": "archskip.search_result", "plan": {"skip": [1], "num_candidates": 4}, "method": "das", "scores": [], '
     '"seed": 0, "colour": 1}', r"unknown keys \['colour'\]"),
])
def test_a_broken_search_result_file_is_refused_naming_it(tmp_path, content, pattern):
    from archskip.errors import PlanError
    from archskip.plan import resolve_plan

    (tmp_path / "r.json").write_text(content)
    with pytest.raises(PlanError, match=pattern):
        resolve_plan(str(tmp_path / "r.json"), 4)
