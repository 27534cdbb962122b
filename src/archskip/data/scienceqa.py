"""ScienceQA in LaVIN's prompt format (the multimodal task of DAS on LLaMA, seed README Table 1).

Files, as in the official ScienceQA release and LaVIN (`util/datasets.py`):
`<root>/problems.json` (qid -> problem), `<root>/pid_splits.json` (split -> [qid]), optional
`<root>/captions.json` ({"captions": {qid: caption}}) and `<root>/images/<split>/<qid>/image.png`.

Prompt and target follow LaVIN's `util/base_prompt.py` `create_training_example`, which LaVIN uses for
both training and evaluation (so ScienceQA has no train/eval prompt mismatch, unlike BoolQ/GSM8K, see
`language_qa`). For the default "QCM-ALE":

    prompt: "Question: {question}\\nContext: {hint or N/A}\\nOptions: (A) {c0} (B) {c1}\\nResponse:"
    target: "The answer is {letter}. BECAUSE: {lecture} {solution}"

The reference tokenizes `prompt + target` with nothing in between ("...Response:The answer is A. ..."),
so the model side should concatenate the two strings as they are. Details kept from the reference:
newlines inside lecture/solution become a literal backslash-n (a GPT-3-era choice that keeps the
target on one line), double spaces are collapsed once (`str.replace("  ", " ")`), and the output
format names "AL"/"AE" use the solution/lecture respectively (sic). One reference bug is fixed: when
lecture and solution are both empty the reference means to drop the dangling "BECAUSE:" but assigns
the result to an unused variable; here the target becomes "The answer is X.".
"""

from __future__ import annotations

import json
from pathlib import Path

from .text import DataError

OPTIONS = "ABCDE"

_INPUTS = {
    "CQM": "Context: {context}\nQuestion: {question}\nOptions: {choices}\n",
    "QCM": "Question: {question}\nContext: {context}\nOptions: {choices}\n",
    "QCML": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {lecture}\n",
    "QCME": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {solution}\n",
    "QCMLE": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {lecture} {solution}\n",
    "QCLM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture}\nOptions: {choices}\n",
    "QCEM": "Question: {question}\nContext: {context}\nBECAUSE: {solution}\nOptions: {choices}\n",
    "QCLEM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture} {solution}\nOptions: {choices}\n",
}
_OUTPUTS = {
    "A": "The answer is {answer}.",
    "AL": "The answer is {answer}. BECAUSE: {solution}",
    "AE": "The answer is {answer}. BECAUSE: {lecture}",
    "ALE": "The answer is {answer}. BECAUSE: {lecture} {solution}",
    "AEL": "The answer is {answer}. BECAUSE: {solution} {lecture}",
    "LA": "{lecture} The answer is {answer}.",
    "EA": "{solution} The answer is {answer}.",
    "LEA": "{lecture} {solution} The answer is {answer}.",
    "ELA": "{solution} {lecture} The answer is {answer}.",
}
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_PROBLEM_KEYS = ("question", "choices", "answer", "hint", "image", "subject", "grade", "lecture", "solution")


def load_scienceqa(root: str | Path, split: str, *, prompt_format: str = "QCM-ALE",
                   use_caption: bool = False) -> list[dict]:
    """The problems of `split` as {qid, prompt, target, answer, choices, image, subject, context, grade}.

    `image` is an absolute path or None; `subject`, `context` (a list of "TXT"/"IMG"/"NO") and `grade`
    ("G1-6"/"G7-12") are the categories of the official ScienceQA scoring (`tasks.qa_metrics`).
    """
    root = Path(root).resolve()
    input_tpl, output_tpl = _templates(prompt_format)
    problems = _read_json(root / "problems.json")
    if not isinstance(problems, dict):
        raise DataError(f"{root / 'problems.json'}: expected an object qid -> problem, got {type(problems).__name__}")
    captions = _read_captions(root) if use_caption else {}
    items = []
    for qid in _split_qids(root, split):
        if qid not in problems:
            raise DataError(f"qid {qid!r} of split {split!r} is not in {root / 'problems.json'}")
        problem = _check_problem(problems[qid], qid)
        fields = _prompt_fields(problem, captions.get(qid) or "")
        items.append({
            "qid": qid,
            "prompt": _tidy(input_tpl.format(**fields) + "Response:"),
            "target": _target(output_tpl.format(**fields)),
            "answer": fields["answer"],
            "choices": list(problem["choices"]),
            "image": _image_path(root, split, qid, problem),
            "subject": _subject(problem, qid),
            "context": context_categories(problem),
            "grade": _grade_band(problem, qid),
        })
    return items


def context_categories(problem: dict) -> list[str]:
    """The official scoring's context categories: TXT (non-empty hint), IMG (an image), NO (neither);
    a problem with both counts in TXT and in IMG."""
    cats = [c for c, present in (("TXT", problem["hint"]), ("IMG", problem["image"])) if present]
    return cats or ["NO"]


def _templates(prompt_format: str) -> tuple[str, str]:
    input_fmt, _, output_fmt = prompt_format.partition("-")
    if input_fmt not in _INPUTS or output_fmt not in _OUTPUTS:
        raise DataError(f"prompt_format {prompt_format!r}: expected <input>-<output> with input in "
                        f"{sorted(_INPUTS)} and output in {sorted(_OUTPUTS)}")
    return _INPUTS[input_fmt], _OUTPUTS[output_fmt]


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"ScienceQA file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _read_captions(root: Path) -> dict:
    """captions.json is only needed with use_caption=True (LaVIN's ScienceQA runs use no captions)."""
    data = _read_json(root / "captions.json")
    if not isinstance(data, dict) or not isinstance(data.get("captions"), dict):
        raise DataError(f"{root / 'captions.json'}: expected {{\"captions\": {{qid: caption}}}}")
    return data["captions"]


def _split_qids(root: Path, split: str) -> list[str]:
    splits = _read_json(root / "pid_splits.json")
    qids = splits.get(split) if isinstance(splits, dict) else None
    if not qids:
        available = sorted(k for k, v in splits.items() if v) if isinstance(splits, dict) else []
        raise DataError(f"split {split!r} is missing or empty in {root / 'pid_splits.json'}; "
                        f"non-empty splits: {available}")
    return [str(q) for q in qids]


def _check_problem(problem, qid: str) -> dict:
    if not isinstance(problem, dict):
        raise DataError(f"problems.json: problem {qid!r} is a {type(problem).__name__}, not an object")
    missing = [k for k in _PROBLEM_KEYS if k not in problem]
    if missing:
        raise DataError(f"problems.json: problem {qid!r} lacks key(s) {missing}")
    n, answer = len(problem["choices"]), problem["answer"]
    if not 2 <= n <= len(OPTIONS) or not isinstance(answer, int) or not 0 <= answer < n:
        raise DataError(f"problems.json: problem {qid!r} has {n} choices and answer index {answer!r}; "
                        f"expected 2..{len(OPTIONS)} choices and an index among them")
    return problem


def _prompt_fields(problem: dict, caption: str) -> dict:
    """The pieces LaVIN's templates are filled with (`get_*_text` in util/base_prompt.py)."""
    context = " ".join([problem["hint"] or "", caption]).strip() or "N/A"
    return {
        "question": problem["question"],
        "context": context,
        "choices": " ".join(f"({OPTIONS[i]}) {c}" for i, c in enumerate(problem["choices"])),
        "answer": OPTIONS[problem["answer"]],
        "lecture": (problem["lecture"] or "").replace("\n", "\\n"),
        "solution": (problem["solution"] or "").replace("\n", "\\n"),
    }


def _tidy(text: str) -> str:
    """The reference's one-pass double-space collapse and strip (3 spaces become 2, as there)."""
    return text.replace("  ", " ").strip()


def _target(text: str) -> str:
    return _tidy(text).removesuffix("BECAUSE:").strip()


def _image_path(root: Path, split: str, qid: str, problem: dict) -> str | None:
    """Images live under the problem's own split folder (train/val/test), so derived splits such as
    "minival" or "trainval" still find them; without a "split" field the requested split is used."""
    if not problem["image"]:
        return None
    path = root / "images" / str(problem.get("split") or split) / qid / problem["image"]
    if not path.is_file():
        raise DataError(f"problem {qid!r} has image {problem['image']!r} in problems.json but {str(path)!r} is missing")
    return str(path)


def _subject(problem: dict, qid: str) -> str:
    if problem["subject"] not in SUBJECTS:
        raise DataError(f"problems.json: problem {qid!r} has subject {problem['subject']!r}; expected one of {list(SUBJECTS)}")
    return SUBJECTS[problem["subject"]]


def _grade_band(problem: dict, qid: str) -> str:
    grade = str(problem["grade"])
    number = grade.removeprefix("grade")
    if not number.isdigit() or not 1 <= int(number) <= 12:
        raise DataError(f"problems.json: problem {qid!r} has grade {grade!r}; expected 'grade1'..'grade12'")
    return "G1-6" if int(number) <= 6 else "G7-12"
