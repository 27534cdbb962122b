"""Readers for the ViLT/METER pyarrow files (docs/vilt.md): VQAv2, NLVR2, Flickr30k.

One arrow row holds one image (or NLVR2 image pair) and a list of texts; a dataset item is one
(image, text) pair. Images stay in the memory-mapped table and are decoded per item; the small
columns are read into Python lists once.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow as pa
import torch

from .images import ImageTransform, decode_image
from .loader import AugmentedDataset
from .text import DataError

SCHEMAS = {
    "vqa": ("image", "questions", "answers", "answer_labels", "answer_scores", "image_id", "question_id"),
    "nlvr2": ("image_0", "image_1", "questions", "answers", "identifier"),
    "retrieval": ("image", "caption", "image_id"),
}


def read_arrow(path: str | Path, columns: tuple[str, ...] = ()) -> pa.Table:
    """An arrow IPC file as ViLT's BaseDataset reads it; clear errors for a missing/corrupt file or columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"arrow file {str(path)!r} does not exist")
    try:
        table = pa.ipc.RecordBatchFileReader(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} is not a readable Arrow IPC file: {e}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; it has {table.column_names}")
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows")
    return table


def split_names(names: str | list[str]) -> list[str]:
    items = names.split(",") if isinstance(names, str) else names
    return [n.strip().removesuffix(".arrow") for n in items if n.strip()]


class ArrowDataset(AugmentedDataset):
    """Items over one or more arrow files of the same kind; subclasses define `_index` and `__getitem__`."""

    kind = ""

    def __init__(self, root: str | Path, names: str | list[str], transform: ImageTransform):
        self.root, self.transform = Path(root), transform
        self.names = split_names(names)
        if not self.names:
            raise DataError(f"no {self.kind} arrow files named (got {names!r})")
        self.tables = [read_arrow(self.root / f"{n}.arrow", SCHEMAS[self.kind]) for n in self.names]

    def _col(self, t: int, name: str) -> list:
        return self.tables[t].column(name).to_pylist()

    def _image(self, t: int, column: str, row: int):
        where = f"{self.names[t]}.arrow row {row}"
        data = self.tables[t].column(column)[row].as_py()
        if not data:
            raise DataError(f"{where}: empty image")
        return self.transform(decode_image(data, where))

    def __len__(self) -> int:
        return len(self.index)

    def eval_view(self) -> ArrowDataset:
        """The same items without training augmentation (for reward and evaluation batches)."""
        view = copy.copy(self)
        view.transform = self.transform.without_augmentation()
        return view


class VQADataset(ArrowDataset):
    """(image, question) items with soft answer targets. Training drops questions with no
    in-vocabulary answer (as ViLT); `dropped` counts them."""

    kind = "vqa"

    def __init__(self, root, names, transform: ImageTransform, *, num_answers: int = 3129, require_answers: bool = True):
        super().__init__(root, names, transform)
        self.num_answers = num_answers
        self.index: list[tuple[int, int, int]] = []  # (table, row, question)
        self.questions, self.labels, self.scores, self.question_ids = [], [], [], []
        self.dropped = 0
        for t in range(len(self.tables)):
            qs, ls, ss, ids = (self._col(t, c) for c in ("questions", "answer_labels", "answer_scores", "question_id"))
            self.questions.append(qs)
            self.labels.append(ls)
            self.scores.append(ss)
            self.question_ids.append(ids)
            for row, row_qs in enumerate(qs):
                for q in range(len(row_qs)):
                    labels = ls[row][q] if ls[row] else []
                    bad = [x for x in labels if not 0 <= x < num_answers]
                    if bad:
                        raise DataError(
                            f"{self.names[t]}.arrow row {row} question {q}: answer label(s) {bad} outside the "
                            f"{num_answers}-answer vocabulary (task.num_labels); was the file written with another vocabulary?"
                        )
                    if require_answers and not labels:
                        self.dropped += 1
                        continue
                    self.index.append((t, row, q))
        if not self.index:
            raise DataError(f"no usable questions in {self.names} ({self.dropped} had no in-vocabulary answer)")

    def __getitem__(self, i: int) -> dict:
        t, row, q = self.index[i]
        labels = self.labels[t][row][q] if self.labels[t][row] else []
        scores = self.scores[t][row][q] if self.scores[t][row] else []
        return {
            "image": self._image(t, "image", row), "text": self.questions[t][row][q],
            "labels": labels, "scores": scores, "question_id": self.question_ids[t][row][q],
        }

    def answer_vocabulary(self) -> list[str]:
        """Label id -> answer string, from `vqa_answer_vocab.json` next to the arrows, else from the rows."""
        vocab_file = self.root / "vqa_answer_vocab.json"
        if vocab_file.is_file():
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            if len(vocab) != self.num_answers:
                raise DataError(f"{vocab_file} has {len(vocab)} answers but task.num_labels is {self.num_answers}")
            return vocab
        vocab = [""] * self.num_answers
        for t in range(len(self.tables)):
            for row_answers, row_labels in zip(self._col(t, "answers"), self._col(t, "answer_labels")):
                for answers, labels in zip(row_answers or [], row_labels or []):
                    # rows store (answer, label) pairs for in-vocabulary answers, in the same order
                    for a, lab in zip([a for a in answers], labels):
                        vocab[lab] = vocab[lab] or a
        return vocab


class NLVR2Dataset(ArrowDataset):
    """(image pair, sentence) items, label 1 for "True"."""

    kind = "nlvr2"

    def __init__(self, root, names, transform: ImageTransform):
        super().__init__(root, names, transform)
        self.index: list[tuple[int, int, int]] = []
        self.questions, self.answers, self.ids = [], [], []
        for t in range(len(self.tables)):
            qs, ans, ids = self._col(t, "questions"), self._col(t, "answers"), self._col(t, "identifier")
            for row in range(len(qs)):
                if len(qs[row]) != len(ans[row]):
                    raise DataError(f"{self.names[t]}.arrow row {row}: {len(qs[row])} sentences but {len(ans[row])} answers")
                for q, a in enumerate(ans[row]):
                    if a not in ("True", "False"):
                        raise DataError(f"{self.names[t]}.arrow row {row} sentence {q}: answer {a!r}; expected 'True' or 'False'")
                    self.index.append((t, row, q))
            self.questions.append(qs)
            self.answers.append(ans)
            self.ids.append(ids)

    def __getitem__(self, i: int) -> dict:
        t, row, q = self.index[i]
        return {
            "image_0": self._image(t, "image_0", row), "image_1": self._image(t, "image_1", row),
            "text": self.questions[t][row][q], "label": int(self.answers[t][row][q] == "True"),
            "identifier": f"{self.ids[t][row]}-{q}",
        }


class RetrievalDataset(ArrowDataset):
    """Flickr30k/COCO (image, caption) items; training items carry `negatives` random captions of other images."""

    kind = "retrieval"

    def __init__(self, root, names, transform: ImageTransform, *, negatives: int = 0):
        super().__init__(root, names, transform)
        self.negatives = negatives
        self.images: list[tuple[int, int]] = []  # (table, row) per image
        self.captions: list[str] = []
        self.caption_image: list[int] = []  # caption -> image number
        for t in range(len(self.tables)):
            for row, caps in enumerate(self._col(t, "caption")):
                if not caps:
                    raise DataError(f"{self.names[t]}.arrow row {row}: the image has no caption")
                self.images.append((t, row))
                for c in caps:
                    self.captions.append(c)
                    self.caption_image.append(len(self.images) - 1)
        if negatives and len(self.images) < 2:
            raise DataError("retrieval training needs at least 2 images to draw negative captions from")
        self.index = list(range(len(self.captions)))

    def image(self, k: int) -> torch.Tensor:
        t, row = self.images[k]
        return self._image(t, "image", row)

    def __getitem__(self, i: int) -> dict:
        k = self.caption_image[i]
        item = {"image": self.image(k), "text": self.captions[i], "image_index": k}
        if self.negatives:
            negs: list[str] = []
            while len(negs) < self.negatives:  # torch's RNG: seeded per run, restored on resume
                j = int(torch.randint(len(self.captions), ()))
                if self.caption_image[j] != k:
                    negs.append(self.captions[j])
            item["negatives"] = negs
        return item
