import json

import pytest

from archskip.data import BatchOrder, DataError, LabelVocab, read_examples, split_examples


def test_csv_and_jsonl(tmp_path):
    (tmp_path / "d.csv").write_text("text,label,extra\nhello there,pos,1\nbad day,neg,2\n")
    (tmp_path / "d.jsonl").write_text(json.dumps({"sentence": "a b", "y": 1}) + "\n\n" + json.dumps({"sentence": "c", "y": 0}) + "\n")
    csv_rows, json_rows = read_examples(tmp_path / "d.csv"), read_examples(tmp_path / "d.jsonl", "sentence", "y")
    assert [{k: v for k, v in e.items() if k != "_row"} for e in csv_rows] == [{"text": "hello there", "label": "pos"},
                                                                               {"text": "bad day", "label": "neg"}]
    assert [{k: v for k, v in e.items() if k != "_row"} for e in json_rows] == [{"text": "a b", "label": 1},
                                                                                {"text": "c", "label": 0}]
    # every example says where it came from, for errors found later (labels checked across splits)
    assert [e["_row"] for e in csv_rows] == [f"{tmp_path / 'd.csv'}, row {n}" for n in (2, 3)]
    assert [e["_row"] for e in json_rows] == [f"{tmp_path / 'd.jsonl'}, line {n}" for n in (1, 3)]


def test_errors_name_the_file_and_row(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_examples(tmp_path / "missing.csv")
    (tmp_path / "m.csv").write_text("text,label\nok,1\nmissing\n")
    with pytest.raises(DataError, match=r"m.csv, row 3: missing column\(s\) \['label'\]"):
        read_examples(tmp_path / "m.csv")
    (tmp_path / "j.jsonl").write_text('{"text": "a", "label": 1}\n{broken\n')
    with pytest.raises(DataError, match=r"j.jsonl, line 2: not valid JSON"):
        read_examples(tmp_path / "j.jsonl")
    (tmp_path / "a.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="item 0: expected a JSON object, got int"):  # a JSON array of non-objects
        read_examples(tmp_path / "a.jsonl")
    (tmp_path / "e.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="has no rows"):
        read_examples(tmp_path / "e.csv")


def test_label_vocab():
    v = LabelVocab.from_examples([{"label": "pos"}, {"label": "neg"}, {"label": "pos"}])
    assert v.names == ["neg", "pos"] and v.encode("pos") == 1
    ints = LabelVocab.from_examples([{"label": 2}, {"label": 0}, {"label": "1"}])
    assert ints.names == ["0", "1", "2"] and ints.encode(2) == 2
    with pytest.raises(DataError, match="label 'meh' is not one of the 2 known labels"):
        v.encode("meh")
    with pytest.raises(DataError, match="at least 2 labels"):
        LabelVocab.from_examples([{"label": "a"}, {"label": "a"}])


def test_split_is_deterministic_and_disjoint():
    xs = list(range(100))
    a = split_examples(xs, (0.1, 0.2), seed=4)
    b = split_examples(xs, (0.1, 0.2), seed=4)
    assert a == b and [len(p) for p in a] == [10, 20, 70]
    assert sorted(sum(a, [])) == xs
    assert split_examples(xs, (0.1,), seed=5)[0] != a[0]


def test_batch_order_resumes_mid_epoch():
    full = list(BatchOrder(23, 5, shuffle=True, seed=1, epoch=2))
    assert len(full) == 5 and sorted(sum(full, [])) == list(range(23))
    assert list(BatchOrder(23, 5, shuffle=True, seed=1, epoch=2, start=3)) == full[3:]
    assert list(BatchOrder(23, 5, shuffle=True, seed=1, epoch=3)) != full
