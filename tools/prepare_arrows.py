"""Build the pyarrow IPC files the original ViLT / METER code reads ("ViLT arrows") from the raw public annotations.

Users then need neither the ViLT repository nor pandas: the files have the columns of ViLT's
`vilt/utils/write_{vqa,nlvr2,f30k_karpathy}.py` (one row per image, images as the raw file bytes) and
are read with `pa.ipc.RecordBatchFileReader(pa.memory_map(path, "r")).read_all()`.

Differences from ViLT's scripts, all deliberate:
- rows keep the order of the annotation files (ViLT shuffles the image list with an unseeded RNG);
- rows are written in batches of ROWS_PER_BATCH, so memory holds one batch of images, not the split;
- VQA test splits get one empty answers/labels/scores list per question (ViLT writes one empty list per
  image; its reader never indexes them for "test", and per-question lists also work for other readers);
- missing or unreadable images are errors (or counted with skip_missing) instead of being silently
  left out by a glob;
- the answer vocabulary is sorted by count (ViLT: first-seen order; `order="first_seen"` reproduces it).

Command line: `python tools/prepare_arrows.py {vqa,vqa-vocab,vqa-split-val,nlvr2,f30k} --help` (docs/vilt.md).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from archskip.data.jsonl import json_records
from archskip.data.vilt_arrow import read_arrow
from archskip.errors import DataError, OutputError
from archskip.io import atomic_write, atomic_write_text

PathLike = str | Path

ROWS_PER_BATCH = 256  # images per record batch: ~40 MB of COCO JPEGs, far below the 2 GB binary-offset limit

VQA_SCHEMA = pa.schema([
    ("image", pa.binary()),  # raw JPEG/PNG bytes
    ("questions", pa.list_(pa.string())),  # [Q]
    ("answers", pa.list_(pa.list_(pa.string()))),  # [Q][A_q] in-vocabulary normalised answers
    ("answer_labels", pa.list_(pa.list_(pa.int64()))),  # [Q][A_q] vocabulary indices of `answers`
    ("answer_scores", pa.list_(pa.list_(pa.float64()))),  # [Q][A_q] 0.3 / 0.6 / 0.9 / 1.0
    ("image_id", pa.int64()),
    ("question_id", pa.list_(pa.int64())),  # [Q]
    ("split", pa.string()),
])
NLVR2_SCHEMA = pa.schema([
    ("image_0", pa.binary()),
    ("image_1", pa.binary()),
    ("questions", pa.list_(pa.string())),  # [S] sentences about this pair
    ("answers", pa.list_(pa.string())),  # [S] "True" / "False"
    ("identifier", pa.string()),  # the pair prefix, e.g. "train-10171-0"
])
F30K_SCHEMA = pa.schema([
    ("image", pa.binary()),
    ("caption", pa.list_(pa.string())),  # [5] raw sentences
    ("image_id", pa.string()),  # the file name
    ("split", pa.string()),
])
F30K_SPLITS = ("train", "val", "test")


@dataclass
class WriteReport:
    """What a writer put in its file, and what it left out (so silent data loss is visible)."""

    images: int = 0  # rows written (image pairs for NLVR2)
    questions: int = 0  # texts written: questions, sentences or captions
    dropped_no_answer: int = 0  # VQA questions without an in-vocabulary answer
    missing_images: int = 0  # image files that did not exist (only with skip_missing)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __getitem__(self, key: str) -> int:
        return self.as_dict()[key]


# ---------------------------------------------------------------- VQA answer normalisation
# Tables of the official VQA evaluation (vqaEval.py), which ViLT's glossary.normalize_word copies.
# Contraction keys with capitals ("Im", "Ive", "Id've") are left out: they can never match the
# lower-cased words, so leaving them out changes nothing.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official look-behind typo; drops '.' not before a digit
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """VQA answer normalisation exactly as ViLT's `normalize_word`, so labels match ViLT's vocabulary.

    Punctuation is deleted when it touches a space (or the answer has a digit,digit comma) and
    replaced by a space otherwise; periods not before a digit are dropped; then lower-case, number
    words -> digits ("two" -> "2", "none" -> "0"), articles removed, contractions restored
    ("dont" -> "don't"), and any remaining comma removed.
    """
    has_digit_comma = _COMMA_STRIP.search(answer) is not None
    text = answer
    for p in _PUNCT:
        if p + " " in answer or " " + p in answer or has_digit_comma:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD_STRIP.sub("", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")


def vqa_score(occurrences: int) -> float:
    """ViLT's soft target: 0.3 per annotator up to 3, then 1.0 (approximates min(n/3, 1) of the VQA metric)."""
    return (0.0, 0.3, 0.6, 0.9)[occurrences] if occurrences < 4 else 1.0


def answer_targets(answers: Iterable[str], vocab_index: dict[str, int], normalize: bool = True) -> tuple[list[int], list[float]]:
    """(labels, scores) of one question's annotator answers; answers outside the vocabulary are dropped.

    Labels follow the first occurrence of each answer among the annotators, as ViLT's dict order does.
    """
    counts = Counter(normalize_answer(a) if normalize else a for a in answers)
    kept = [(vocab_index[a], vqa_score(n)) for a, n in counts.items() if a in vocab_index]
    return [label for label, _ in kept], [score for _, score in kept]


# ---------------------------------------------------------------- answer vocabulary
def build_answer_vocab(annotation_jsons: PathLike | Sequence[PathLike], min_count: int = 9, *, order: str = "count") -> list[str]:
    """The VQA answer classes: normalised `multiple_choice_answer`s seen at least `min_count` times.

    This is ViLT's rule: only each question's consensus answer (`multiple_choice_answer`) is counted,
    not the 10 annotator answers, over all the given annotation files (ViLT: train2014 + val2014, which
    gives 3,129 answers). `order="count"` sorts by descending count then alphabetically, so the file
    does not depend on the order of the inputs; `order="first_seen"` keeps ViLT's order (first
    appearance over the files in the order given), needed to reuse a ViLT-trained VQA head whose
    label ids follow that order.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if order not in ("count", "first_seen"):
        raise ValueError(f"order must be 'count' or 'first_seen', got {order!r}")
    paths = [annotation_jsons] if isinstance(annotation_jsons, (str, Path)) else list(annotation_jsons)
    counts: Counter[str] = Counter()
    for path in paths:
        for i, ann in enumerate(_load_json_list(path, "annotations")):
            counts[normalize_answer(_field(ann, "multiple_choice_answer", str, path, f"annotations[{i}]"))] += 1
    vocab = [a for a, n in counts.items() if n >= min_count]
    if not vocab:
        raise DataError(f"no answer occurs at least {min_count} times in {[str(p) for p in paths]}")
    return sorted(vocab, key=lambda a: (-counts[a], a)) if order == "count" else vocab


def save_answer_vocab(path: PathLike, vocab: Sequence[str]) -> Path:
    """Write the vocabulary as a JSON list (index = label id), atomically."""
    _check_vocab(list(vocab), path)
    return atomic_write_text(path, json.dumps(list(vocab), ensure_ascii=False, indent=0) + "\n")


def load_answer_vocab(path: PathLike) -> list[str]:
    """Read a vocabulary written by save_answer_vocab (a JSON list of distinct strings)."""
    vocab = _load_json(path)
    if not isinstance(vocab, list):
        raise DataError(f"answer vocabulary {str(path)!r}: expected a JSON list of strings, got {type(vocab).__name__}")
    _check_vocab(vocab, path)
    return vocab


def _check_vocab(vocab: list, source: PathLike | str) -> None:
    bad = [i for i, a in enumerate(vocab) if not isinstance(a, str)]
    if bad:
        raise DataError(f"answer vocabulary {str(source)!r}: item {bad[0]} is {vocab[bad[0]]!r}, not a string")
    dupes = [a for a, n in Counter(vocab).items() if n > 1]
    if dupes:
        raise DataError(f"answer vocabulary {str(source)!r}: duplicate answers {dupes[:5]}")
    if not vocab:
        raise DataError(f"answer vocabulary {str(source)!r} is empty")


# ---------------------------------------------------------------- VQAv2
@dataclass
class _Question:
    qid: int
    text: str
    labels: list[int]
    scores: list[float]


def write_vqa(
    questions_json: PathLike,
    annotations_json: PathLike | None,
    image_dir: PathLike,
    out_path: PathLike,
    split_name: str,
    answer_vocab: Sequence[str],
    *,
    image_prefix: str = "",
    image_name_fn: Callable[[int], str] | None = None,
    skip_missing: bool = False,
    drop_unanswerable: bool = True,
    normalize_answers: bool = True,
) -> WriteReport:
    """Write `vqav2_<split>.arrow`: one row per image with all its questions (schema VQA_SCHEMA).

    annotations_json=None (test, test-dev): answers/labels/scores are one empty list per question.
    Otherwise each question's 10 annotator answers are normalised (`normalize_answers=False` counts
    them verbatim, as ViLT's original script did) and scored; questions with no in-vocabulary answer
    are dropped and counted, as ViLT does for train/val (`drop_unanswerable=False` keeps them with
    empty targets). Images are `image_dir / image_name_fn(image_id)`, by default
    `f"{image_prefix}{image_id:012d}.jpg"` (e.g. image_prefix="COCO_val2014_").
    """
    _check_vocab(list(answer_vocab), "answer_vocab")
    vocab_index = {a: i for i, a in enumerate(answer_vocab)}
    name_fn = image_name_fn or (lambda image_id: f"{image_prefix}{image_id:012d}.jpg")
    questions = _read_vqa_questions(questions_json)
    answers = _read_vqa_answers(annotations_json, questions, questions_json) if annotations_json is not None else None
    report = WriteReport()
    by_image: dict[int, list[_Question]] = {}
    for qid, (image_id, text) in questions.items():
        labels, scores = answer_targets(answers[qid], vocab_index, normalize_answers) if answers is not None else ([], [])
        if answers is not None and not labels and drop_unanswerable:
            report.dropped_no_answer += 1
            continue
        by_image.setdefault(image_id, []).append(_Question(qid, text, labels, scores))
    if not by_image:
        raise DataError(f"{questions_json}: no question has an answer in the {len(vocab_index)}-answer vocabulary")

    def rows() -> Iterator[dict]:
        for image_id, qs in by_image.items():
            path = Path(image_dir) / name_fn(image_id)
            image = _image_or_none(path, f"image_id {image_id} (question_id {qs[0].qid})", skip_missing, report)
            if image is None:
                continue
            report.images += 1
            report.questions += len(qs)
            yield {
                "image": image,
                "questions": [q.text for q in qs],
                "answers": [[answer_vocab[label] for label in q.labels] for q in qs],
                "answer_labels": [q.labels for q in qs],
                "answer_scores": [q.scores for q in qs],
                "image_id": image_id,
                "question_id": [q.qid for q in qs],
                "split": split_name,
            }

    _write_table(out_path, VQA_SCHEMA, rows(), what=f"{questions_json} (all images missing)")
    return report


def _read_vqa_questions(path: PathLike) -> dict[int, tuple[int, str]]:
    """question_id -> (image_id, question), in file order; duplicate ids are an error."""
    out: dict[int, tuple[int, str]] = {}
    for i, q in enumerate(_load_json_list(path, "questions")):
        where = f"questions[{i}]"
        qid = _field(q, "question_id", int, path, where)
        if qid in out:
            raise DataError(f"{path}, {where}: question_id {qid} appears twice")
        out[qid] = (_field(q, "image_id", int, path, where), _field(q, "question", str, path, where))
    if not out:
        raise DataError(f"{path}: the 'questions' list is empty")
    return out


def _read_vqa_answers(path: PathLike, questions: dict[int, tuple[int, str]], questions_path: PathLike) -> dict[int, list[str]]:
    """question_id -> the annotators' raw answers; every question must have an annotation."""
    out: dict[int, list[str]] = {}
    for i, ann in enumerate(_load_json_list(path, "annotations")):
        where = f"annotations[{i}]"
        qid = _field(ann, "question_id", int, path, where)
        if qid not in questions:
            continue  # annotations of other questions (e.g. a questions file subset) are not needed
        image_id = _field(ann, "image_id", int, path, where)
        if image_id != questions[qid][0]:
            raise DataError(f"{path}, {where}: question_id {qid} has image_id {image_id} here but {questions[qid][0]} in {questions_path}")
        answers = _field(ann, "answers", list, path, where)
        out[qid] = [_field(a, "answer", str, path, f"{where}.answers[{j}]") for j, a in enumerate(answers)]
    missing = [qid for qid in questions if qid not in out]
    if missing:
        raise DataError(f"{path}: no annotation for {len(missing)} question(s) of {questions_path}, e.g. question_id {missing[0]}")
    return out


def split_vqa_val(val_arrow: PathLike, out_dir: PathLike, n_rest: int = 1000) -> tuple[Path, Path]:
    """ViLT's `vqav2_trainable_val.arrow` (all but the last n_rest images) and `vqav2_rest_val.arrow` (those)."""
    table = read_arrow(val_arrow)
    if not 0 < n_rest < table.num_rows:
        raise DataError(f"{val_arrow}: cannot hold out {n_rest} of its {table.num_rows} images")
    cut = table.num_rows - n_rest
    out_dir = Path(out_dir)
    trainable = _write_table(out_dir / "vqav2_trainable_val.arrow", table.schema, _pylist(table.slice(0, cut)), what=str(val_arrow))
    rest = _write_table(out_dir / "vqav2_rest_val.arrow", table.schema, _pylist(table.slice(cut)), what=str(val_arrow))
    return trainable, rest


def _pylist(table: pa.Table) -> Iterator[dict]:
    for batch in table.to_batches(max_chunksize=ROWS_PER_BATCH):
        yield from batch.to_pylist()


# ---------------------------------------------------------------- NLVR2
def write_nlvr2(json_lines_path: PathLike, image_dir: PathLike, out_path: PathLike, *, skip_missing: bool = False) -> WriteReport:
    """Write `nlvr2_<split>.arrow`: one row per image pair with all its sentences (schema NLVR2_SCHEMA).

    The pair of "train-10171-0-3" is "train-10171-0": `<image_dir>/<directory>/<pair>-img{0,1}.png`
    when the line has a "directory" (train), else `<image_dir>/<pair>-img{0,1}.png` (dev, test1).
    missing_images counts missing files; a pair with one missing is left out whole.
    """
    pairs: dict[str, dict[str, Any]] = {}
    for where, row in _read_json_lines(json_lines_path):
        identifier = _field(row, "identifier", str, json_lines_path, where)
        if "-" not in identifier:
            raise DataError(f"{json_lines_path}, {where}: identifier {identifier!r} has no '-N' sentence suffix")
        prefix = identifier.rsplit("-", 1)[0]
        directory = row.get("directory")
        pair = pairs.setdefault(prefix, {"directory": directory, "questions": [], "answers": []})
        if pair["directory"] != directory:
            raise DataError(f"{json_lines_path}, {where}: directory {directory!r} differs from {pair['directory']!r} of the same pair {prefix!r}")
        pair["questions"].append(_field(row, "sentence", str, json_lines_path, where))
        pair["answers"].append(_nlvr2_label(_field(row, "label", (str, bool), json_lines_path, where), json_lines_path, where))
    report = WriteReport()

    def rows() -> Iterator[dict]:
        for prefix, pair in pairs.items():
            folder = Path(image_dir) if pair["directory"] is None else Path(image_dir) / str(pair["directory"])
            images = [_image_or_none(folder / f"{prefix}-img{k}.png", f"identifier {prefix!r}", skip_missing, report) for k in (0, 1)]
            if None in images:
                continue
            report.images += 1
            report.questions += len(pair["questions"])
            yield {"image_0": images[0], "image_1": images[1], "questions": pair["questions"], "answers": pair["answers"],
                   "identifier": prefix}

    _write_table(out_path, NLVR2_SCHEMA, rows(), what=f"{json_lines_path} (all images missing)")
    return report


def _nlvr2_label(label: str | bool, path: PathLike, where: str) -> str:
    """ "True" / "False" as in the raw files (a JSON boolean is accepted and written as that string)."""
    text = str(label)
    if text not in ("True", "False"):
        raise DataError(f"{path}, {where}: label {label!r} is not 'True' or 'False'")
    return text


# ---------------------------------------------------------------- Flickr30k (Karpathy split)
def write_f30k(karpathy_json: PathLike, image_dir: PathLike, out_dir: PathLike, *, skip_missing: bool = False) -> dict[str, WriteReport]:
    """Write `f30k_caption_karpathy_{train,val,test}.arrow` (schema F30K_SCHEMA) from `dataset_flickr30k.json`.

    "restval" images go to train, with split "train" in the row, so each file's split column is its
    own split. The images are `<image_dir>/<filename>`. Returns one report per split.
    """
    entries: dict[str, list[tuple[str, list[str]]]] = {s: [] for s in F30K_SPLITS}
    for i, item in enumerate(_load_json_list(karpathy_json, "images")):
        where = f"images[{i}]"
        split = _field(item, "split", str, karpathy_json, where)
        if split not in (*F30K_SPLITS, "restval"):
            raise DataError(f"{karpathy_json}, {where}: split {split!r} is not train, val, test or restval")
        sentences = _field(item, "sentences", list, karpathy_json, where)
        captions = [_field(s, "raw", str, karpathy_json, f"{where}.sentences[{j}]") for j, s in enumerate(sentences)]
        if not captions:
            raise DataError(f"{karpathy_json}, {where}: no sentences")
        entries["train" if split == "restval" else split].append((_field(item, "filename", str, karpathy_json, where), captions))
    empty = [s for s, items in entries.items() if not items]
    if empty:
        raise DataError(f"{karpathy_json}: no images for split(s) {empty}")
    out_dir = Path(out_dir)
    return {split: _write_f30k_split(items, split, image_dir, out_dir / f"f30k_caption_karpathy_{split}.arrow", skip_missing)
            for split, items in entries.items()}


def _write_f30k_split(items: list[tuple[str, list[str]]], split: str, image_dir: PathLike, out_path: Path, skip_missing: bool) -> WriteReport:
    report = WriteReport()

    def rows() -> Iterator[dict]:
        for filename, captions in items:
            image = _image_or_none(Path(image_dir) / filename, f"image_id {filename!r}", skip_missing, report)
            if image is None:
                continue
            report.images += 1
            report.questions += len(captions)
            yield {"image": image, "caption": captions, "image_id": filename, "split": split}

    _write_table(out_path, F30K_SCHEMA, rows(), what=f"split {split!r} (all images missing)")
    return report


# ---------------------------------------------------------------- shared helpers
def _write_table(out_path: PathLike, schema: pa.Schema, rows: Iterable[dict], what: str) -> Path:
    """Stream rows into an IPC file ROWS_PER_BATCH at a time, atomically; no rows is an error (nothing written)."""

    def write(tmp: str) -> None:
        n = 0
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            batch: list[dict] = []
            for row in rows:
                batch.append(row)
                if len(batch) == ROWS_PER_BATCH:
                    writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                    n, batch = n + len(batch), []
            if batch:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                n += len(batch)
        if n == 0:
            raise DataError(f"no rows to write to {str(out_path)!r}: {what}")

    return atomic_write(out_path, write)


def _image_or_none(path: Path, what: str, skip_missing: bool, report: WriteReport) -> bytes | None:
    """The file's raw bytes, checked by PIL; None (counted) for a missing file when skip_missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not skip_missing:
            raise DataError(f"image file {str(path)!r} for {what} does not exist (skip_missing / --skip-missing leaves such images out)") from None
        report.missing_images += 1
        return None
    except OSError as e:
        raise DataError(f"cannot read image file {str(path)!r} for {what}: {e.strerror or e}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error, ... for broken files
        raise DataError(f"image file {str(path)!r} for {what} cannot be read as an image: {e}") from None
    return data


def _load_json(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _load_json_list(path: PathLike, key: str) -> list:
    """data[key] of a JSON file shaped {key: [...]} (the VQA and Karpathy layouts)."""
    data = _load_json(path)
    if not isinstance(data, dict) or key not in data:
        got = f"keys {sorted(data)[:10]}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise DataError(f"{path}: expected a JSON object with a {key!r} list, got {got}")
    if not isinstance(data[key], list):
        raise DataError(f"{path}: {key!r} should be a list, got {type(data[key]).__name__}")
    return data[key]


def _read_json_lines(path: PathLike) -> Iterator[tuple[str, dict]]:
    """("line N", object) for each record; at least one is required."""
    n_rows = 0
    for where, row in json_records(path):
        n_rows += 1
        yield where.rpartition(", ")[2], row
    if n_rows == 0:
        raise DataError(f"{path}: no JSON lines")


def _field(item: Any, key: str, kind: type | tuple[type, ...], path: PathLike, where: str) -> Any:
    """item[key], checked for presence and type; errors name the file, the item and the key."""
    if not isinstance(item, dict):
        raise DataError(f"{path}, {where}: expected a JSON object, got {type(item).__name__}")
    if key not in item:
        raise DataError(f"{path}, {where}: missing key {key!r}; the item has {sorted(item)}")
    value = item[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{path}, {where}: {key!r} should be {names}, got {value!r:.60}")
    return value


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/prepare_arrows.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("vqa", help="VQAv2 questions (+ annotations) -> vqav2_<split>.arrow")
    v.add_argument("--questions", required=True, help="v2_OpenEnded_mscoco_<split>_questions.json")
    v.add_argument("--annotations", help="v2_mscoco_<split>_annotations.json (omit for test / test-dev)")
    v.add_argument("--images", required=True, help="folder of the COCO images, e.g. train2014/")
    v.add_argument("--prefix", default="", help="image file name before the 12-digit id, e.g. COCO_train2014_")
    v.add_argument("--vocab", required=True, help="answer vocabulary JSON from the vqa-vocab command")
    v.add_argument("--split", required=True, help="value of the split column: train, val, test, test-dev")
    v.add_argument("--out", required=True, help="output .arrow file")
    v.add_argument("--skip-missing", action="store_true", help="leave out (and count) missing images instead of failing")
    v.add_argument("--keep-unanswerable", action="store_true", help="keep questions without an in-vocabulary answer")
    v.add_argument("--raw-answers", action="store_true", help="count annotator answers unnormalised (ViLT's original script)")

    voc = sub.add_parser("vqa-vocab", help="answer vocabulary from annotation files -> JSON list")
    voc.add_argument("--annotations", nargs="+", required=True, help="annotation files (ViLT: train2014 and val2014)")
    voc.add_argument("--out", required=True)
    voc.add_argument("--min-count", type=int, default=9)
    voc.add_argument("--order", choices=("count", "first_seen"), default="count", help="first_seen = ViLT's label ids")

    sv = sub.add_parser("vqa-split-val", help="vqav2_val.arrow -> vqav2_trainable_val.arrow + vqav2_rest_val.arrow")
    sv.add_argument("--val", required=True)
    sv.add_argument("--out-dir", required=True)
    sv.add_argument("--rest", type=int, default=1000, help="images held out in rest_val")

    n = sub.add_parser("nlvr2", help="NLVR2 json-lines -> nlvr2_<split>.arrow")
    n.add_argument("--json", required=True, help="train.json / dev.json / test1.json (one object per line)")
    n.add_argument("--images", required=True, help="images/train (train) or dev / test1 folder")
    n.add_argument("--out", required=True)
    n.add_argument("--skip-missing", action="store_true")

    f = sub.add_parser("f30k", help="Karpathy dataset_flickr30k.json -> f30k_caption_karpathy_{train,val,test}.arrow")
    f.add_argument("--karpathy", required=True)
    f.add_argument("--images", required=True, help="flickr30k-images/")
    f.add_argument("--out-dir", required=True)
    f.add_argument("--skip-missing", action="store_true")
    return p


def _run(args: argparse.Namespace) -> str:
    """Do one command; returns the summary line to print."""
    if args.command == "vqa":
        report = write_vqa(args.questions, args.annotations, args.images, args.out, args.split, load_answer_vocab(args.vocab),
                           image_prefix=args.prefix, skip_missing=args.skip_missing,
                           drop_unanswerable=not args.keep_unanswerable, normalize_answers=not args.raw_answers)
        return f"wrote {args.out}: {json.dumps(report.as_dict())}"
    if args.command == "vqa-vocab":
        vocab = build_answer_vocab(args.annotations, args.min_count, order=args.order)
        save_answer_vocab(args.out, vocab)
        return f"wrote {args.out}: {len(vocab)} answers"
    if args.command == "vqa-split-val":
        trainable, rest = split_vqa_val(args.val, args.out_dir, args.rest)
        return f"wrote {trainable} and {rest}"
    if args.command == "nlvr2":
        report = write_nlvr2(args.json, args.images, args.out, skip_missing=args.skip_missing)
        return f"wrote {args.out}: {json.dumps(report.as_dict())}"
    reports = write_f30k(args.karpathy, args.images, args.out_dir, skip_missing=args.skip_missing)
    return "\n".join(f"wrote {args.out_dir}/f30k_caption_karpathy_{s}.arrow: {json.dumps(r.as_dict())}" for s, r in reports.items())


def main(argv: list[str] | None = None) -> None:
    """Entry point; data and output problems exit with status 2 and one clear line, not a traceback."""
    args = _parser().parse_args(argv)
    try:
        print(_run(args))
    except (DataError, OutputError) as e:
        print(f"prepare_arrows: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
