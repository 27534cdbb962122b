"""(text, label) examples from CSV / JSONL files, label vocabularies and fixed-seed splits."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from ..errors import DataError
from .jsonl import json_records


def read_examples(
    path: str | Path,
    text_column: str = "text",
    label_column: str | None = "label",
    text_pair_column: str | None = None,
) -> list[dict]:
    """Rows of a .csv or .jsonl/.json-lines file as {'text', 'label'[, 'text_pair']} dicts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    rows = _read_csv(path) if path.suffix.lower() in (".csv", ".tsv") else json_records(path)
    columns = [c for c in (text_column, label_column, text_pair_column) if c]
    out = []
    for where, row in rows:
        missing = [c for c in columns if c not in row or row[c] is None]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; the row has {sorted(row)}")
        ex = {"text": str(row[text_column])}
        if text_pair_column:
            ex["text_pair"] = str(row[text_pair_column])
        if label_column:
            ex["label"] = row[label_column]
        out.append(ex)
    if not out:
        raise DataError(f"data file {str(path)!r} has no rows")
    return out


def _read_csv(path: Path):
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delim)
        for n, row in enumerate(reader, start=2):  # line 1 is the header
            yield f"{path}, row {n}", row


class LabelVocab:
    """Label values (as written in the data) <-> class ids. Integer labels 0..C-1 keep their ids."""

    def __init__(self, names: list[str]):
        if len(names) < 2:
            raise DataError(f"classification needs at least 2 labels, found {names}")
        self.names = names
        self._ids = {n: i for i, n in enumerate(names)}

    @classmethod
    def from_examples(cls, examples: list[dict]) -> LabelVocab:
        values = sorted({str(e["label"]) for e in examples})
        if all(v.lstrip("-").isdigit() for v in values):
            ints = sorted(int(v) for v in values)
            if ints[0] >= 0:
                return cls([str(i) for i in range(ints[-1] + 1)])
        return cls(values)

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, value, where: str = "") -> int:
        key = str(value)
        if key not in self._ids:
            raise DataError(f"{where}label {value!r} is not one of the {len(self.names)} known labels {self.names[:10]}")
        return self._ids[key]


def write_csv(path: str | Path, examples: list[dict], columns: tuple[str, ...] = ("text", "label")) -> Path:
    """Write examples as CSV (atomically), e.g. to hand a split to `archskip search/train`."""
    import io

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
