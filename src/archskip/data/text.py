"""(text, label) examples from CSV / JSONL files, label vocabularies and fixed-seed splits."""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

from ..errors import DataError
from .files import read_text
from .jsonl import json_records


def read_examples(
    path: str | Path,
    text_column: str = "text",
    label_column: str | None = "label",
    text_pair_column: str | None = None,
    encoding: str = "utf-8",
    encoding_setting: str = "--data.encoding",
) -> list[dict]:
    """Rows of a .csv/.tsv or .jsonl/.json-lines file as {'text', 'label'[, 'text_pair'], '_row'} dicts.

    `_row` ("<path>, row N") is where the example came from, for error messages about it later (labels checked
    across splits). UTF-8 files may start with a byte-order mark (as Excel writes them). An empty or blank text
    is refused: it would train on padding."""
    path = Path(path)
    text = read_text(path, encoding, encoding_setting)
    rows = _read_csv(path, text) if path.suffix.lower() in (".csv", ".tsv") else json_records(path, text)
    columns = [c for c in (text_column, label_column, text_pair_column) if c]
    out = []
    for where, row in rows:
        missing = [c for c in columns if c not in row or row[c] is None]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; the row has {sorted(row)}")
        for c in (text_column, text_pair_column):
            if c and not str(row[c]).strip():
                raise DataError(f"{where}: the {c!r} column is empty ({row[c]!r}); every example needs a text")
        ex = {"text": str(row[text_column])}
        if text_pair_column:
            ex["text_pair"] = str(row[text_pair_column])
        if label_column:
            ex["label"] = row[label_column]
        ex["_row"] = where
        out.append(ex)
    if not out:
        raise DataError(f"data file {str(path)!r} has no rows")
    return out


def _read_csv(path: Path, text: str):
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
    for n, row in enumerate(reader, start=2):  # line 1 is the header
        yield f"{path}, row {n}", row


def label_key(value, where: str = "") -> str:
    """The class name of a classification label as written in a file: integers (also 1.0 in JSON or '1' in a CSV)
    and booleans are the same class whichever file type spells them; fractional numbers are refused."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        number = float(value)
        if not number.is_integer():
            raise DataError(f"{where}label {value!r} is a fractional number; classification labels are integers, "
                            "strings or booleans (a number to predict is not a class)")
        return str(int(number))
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}the label is empty")
        return value.strip().lower() if value.strip().lower() in ("true", "false") else value
    raise DataError(f"{where}label {value!r} is a {type(value).__name__}; expected an integer, a string or a boolean")


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def label_kind(key: str) -> str:
    return "boolean" if key in ("true", "false") else "integer" if key.lstrip("-").isdigit() else "string"


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_labels(train: list[dict], others: dict[str, list[dict]]) -> None:
    """Before any training: every label is a valid class name, all labels are one kind (integers, strings or
    booleans) in every split, and every validation/test label occurs in the training data."""
    first = None
    known: set[str] = set()
    for name, split in {"train": train, **others}.items():
        for e in split:
            where = f"{e.get('_row', name)}: "
            key = label_key(e["label"], where)
            if first is None:
                first = (key, e["label"], e.get("_row", name))
            elif label_kind(key) != label_kind(first[0]):
                raise DataError(f"{where}label {e['label']!r} is {_a(label_kind(key))} label, but {first[2]} has "
                                f"{first[1]!r}, {_a(label_kind(first[0]))} label; use one kind of label in every file")
            if name == "train":
                known.add(key)
            elif key not in known:
                raise DataError(f"{where}label {e['label']!r} does not occur in the training data (its labels: "
                                f"{sorted(known)[:10]}); the model could never learn to predict it")


class LabelVocab:
    """Label values (as written in the data) <-> class ids. Integer labels 0..C-1 keep their ids."""

    def __init__(self, names: list[str]):
        if len(names) < 2:
            raise DataError(f"classification needs at least 2 labels, found {names}")
        self.names = names
        self._ids = {n: i for i, n in enumerate(names)}

    @classmethod
    def from_examples(cls, examples: list[dict]) -> LabelVocab:
        values = sorted({label_key(e["label"], f"{e.get('_row', 'training data')}: ") for e in examples})
        if all(v.lstrip("-").isdigit() for v in values):
            ints = sorted(int(v) for v in values)
            if ints[0] >= 0:
                return cls([str(i) for i in range(ints[-1] + 1)])
        return cls(values)

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, value, where: str = "") -> int:
        key = label_key(value, where)
        if key not in self._ids:
            raise DataError(f"{where}label {value!r} is not one of the {len(self.names)} known labels {self.names[:10]}")
        return self._ids[key]


def write_csv(path: str | Path, examples: list[dict], columns: tuple[str, ...] = ("text", "label")) -> Path:
    """Write examples as CSV (atomically), e.g. to hand a split to `archskip search/train`."""
    from ..io import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(examples)
    return atomic_write_text(path, buf.getvalue())


def split_examples(examples, fractions: tuple[float, ...], seed: int) -> list:
    """Shuffle with a fixed seed and cut into len(fractions)+1 parts (the last part takes the rest).

    A list gives lists; a Dataset gives Subsets (no item is loaded: images stay undecoded)."""
    from torch.utils.data import Subset

    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    cuts, start = [], 0
    for frac in fractions:
        n = int(round(frac * len(examples)))
        cuts.append(idx[start : start + n])
        start += n
    cuts.append(idx[start:])
    if isinstance(examples, list):
        return [[examples[i] for i in c] for c in cuts]
    return [Subset(examples, c) for c in cuts]
