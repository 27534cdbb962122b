"""Answer parsing and accuracies for the LaVIN tasks of DAS (ScienceQA, BoolQ, CSQA, GSM8K, SIQA).

The reference parses generations with regular expressions (`LaVIN-DAS/eval_scienceqa.py`,
`eval_mmlu.py`); the parsers here keep their meaning and fix their loose ends:

- "The answer is ([A-Z])." misses "The answer is (B)." and lower case; here both are read, while
  "the answer is a dog" is not read as "A" (a lower-case letter must be followed by punctuation).
- ScienceQA's fallback "([A-E])." takes the first capital A-E anywhere in the text, and an unparsed
  answer then becomes a *random* choice; here an unparsed answer is None and counts as wrong, so
  scores are deterministic.
- eval_mmlu's fallback "Answer: ([A-Z])" would read "Answer: The answer ..." as "T"; here it needs a
  lone letter.
- GSM8K: "answer is [^\\d]*([\\d,.]+)" drops a minus sign; here "-5" stays "-5". As in the reference,
  the first number after "answer is" counts, commas are removed and a trailing period is dropped.
  Comparison stays an exact string match ("72.0" != "72"), as the reference.
"""

from __future__ import annotations

import math
import re

SCIENCEQA_COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")

_LETTER_AFTER = r"\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z])|([a-z])(?=[.,:;)]|\s*$))"
_ANSWER_IS = re.compile(r"(?i:answer is:?)" + _LETTER_AFTER)
_ANSWER_COLON = re.compile(r"Answer:" + _LETTER_AFTER)
_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?)"
_GSM8K_ANSWER_IS = re.compile(r"(?i:answer is)\D*?" + _NUMBER)
_GSM8K_HASHES = re.compile(r"####\s*" + _NUMBER)


def parse_answer_letter(text: str, options: str = "ABCDE") -> str | None:
    """The option letter after the first "The answer is" (else after "Answer:"), upper-cased; None when
    absent or not one of `options`."""
    match = _ANSWER_IS.search(text) or _ANSWER_COLON.search(text)
    if match is None:
        return None
    letter = next(g for g in match.groups() if g).upper()
    return letter if letter in options else None


def parse_gsm8k_number(text: str) -> str | None:
    """The first number after "answer is" (else after "#### "), commas removed; None when absent."""
    match = _GSM8K_ANSWER_IS.search(text) or _GSM8K_HASHES.search(text)
    return match[1].replace(",", "") if match else None


def scienceqa_accuracy(predictions: dict[str, str | None], items: list[dict]) -> dict[str, float]:
    """Percent correct per Table 1 column (SCIENCEQA_COLUMNS order), as the official ScienceQA scoring.

    `items` are `data.scienceqa.load_scienceqa` items; a problem counts in every context category it has
    (hint and image: TXT and IMG). A qid missing from `predictions`, or predicted None, is wrong. A
    column with no problems in `items` is NaN (a subset may lack, say, language science)."""
    if not items:
        raise ValueError("scienceqa_accuracy needs at least one item")
    totals = dict.fromkeys(SCIENCEQA_COLUMNS, 0)
    correct = dict.fromkeys(SCIENCEQA_COLUMNS, 0)
    for item in items:
        hit = predictions.get(item["qid"]) == item["answer"]
        for column in (item["subject"], *item["context"], item["grade"], "Avg"):
            totals[column] += 1
            correct[column] += hit
    return {c: 100.0 * correct[c] / totals[c] if totals[c] else math.nan for c in SCIENCEQA_COLUMNS}


def exact_match_accuracy(predictions: list[str | None], golds: list[str]) -> float:
    """Percent of predictions equal to their gold string (None = unparsed = wrong)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    if not golds:
        raise ValueError("exact_match_accuracy needs at least one gold answer")
    return 100.0 * sum(p == g for p, g in zip(predictions, golds)) / len(golds)


def format_table1(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table like the seed README's Table 1 (without its params/time columns), 2 decimals;
    NaN prints as "-"."""
    header = ("Method", *SCIENCEQA_COLUMNS)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, scores in rows.items():
        missing = [c for c in SCIENCEQA_COLUMNS if c not in scores]
        if missing:
            raise ValueError(f"row {method!r} lacks column(s) {missing}")
        cells = ["-" if math.isnan(scores[c]) else f"{scores[c]:.2f}" for c in SCIENCEQA_COLUMNS]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines) + "\n"
