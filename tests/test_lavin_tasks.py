"""LaVIN-DAS tasks end to end: ScienceQA with images (LaVIN) and BoolQ (text-only LLaMA), via the CLI."""

import json
import random

import pytest
import torch
from conftest import tiny_bpe_tokenizer
from PIL import Image, ImageDraw
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from archskip import AdapterConfig, ModelConfig, SkipPlan
from archskip.cli import main
from archskip.data.images import SquareImageSpec
from archskip.data.scienceqa import load_scienceqa
from archskip.data.text import DataError
from archskip.models.lavin import LaVIN
from archskip.tasks import CSQA, CausalLM, ScienceQA

COLORS = ["red", "green", "blue"]
SUBJECTS = ["natural science", "social science", "language science"]


def write_scienceqa(root, n=12, seed=0):
    """problems.json / pid_splits.json / images/<split>/<qid>/image.png, ScienceQA's layout."""
    rng = random.Random(seed)
    problems, splits = {}, {"train": [], "val": [], "test": []}
    for i in range(n):
        qid = str(100 + i)
        split = "train" if i < n // 2 else "val" if i < 3 * n // 4 else "test"
        color = rng.randrange(3)
        has_image = i % 2 == 0
        problems[qid] = {
            "question": "What color is the square?", "choices": COLORS, "answer": color,
            "hint": "" if has_image else f"The square is {COLORS[color]}.", "image": "image.png" if has_image else None,
            "subject": SUBJECTS[i % 3], "grade": f"grade{1 + i % 12}", "lecture": "Colors are light.",
            "solution": f"It is {COLORS[color]}.", "split": split,
        }
        splits[split].append(qid)
        if has_image:
            d = root / "images" / split / qid
            d.mkdir(parents=True)
            img = Image.new("RGB", (40, 30), "white")
            ImageDraw.Draw(img).rectangle([5, 5, 35, 25], fill=["red", "green", "blue"][color])
            img.save(d / "image.png")
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def sqa(tmp_path_factory):
    return write_scienceqa(tmp_path_factory.mktemp("sqa"))


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory, sqa):
    """A tiny LLaMA + byte-level BPE tokenizer (trained on the fixture's text), and a tiny CLIP vision tower."""
    items = load_scienceqa(sqa, "train") + load_scienceqa(sqa, "test")
    corpus = [e["prompt"] + e["target"] for e in items] * 3 + ["Image: N/A", "The answer is A. B. C. D. E."]
    tok = tiny_bpe_tokenizer(corpus)
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                       pad_token_id=tok.pad_token_id, bos_token_id=1, eos_token_id=2))
    llm.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                     image_size=28, patch_size=14)).save_pretrained(root / "clip")
    return root


LAVIN_FLAGS = ["--adapter.style", "sequential", "--adapter.kind", "router", "--adapter.hidden", "4", "--adapter.skip_hidden", "16",
               "--adapter.skip_norm", "block", "--adapter.init", "zero", "--adapter.skip_init", "zero", "--adapter.dropout", "0.1"]


def test_scienceqa_search_train_eval_on_lavin(sqa, llm_dirs, tmp_path, capsys):
    common = ["--model.name_or_path", str(llm_dirs / "llama"), "--model.vision", str(llm_dirs / "clip"),
              "--model.image_tokens", "2", "--model.projector_hidden", "8", "--task.name", "scienceqa",
              "--task.image_size", "28", "--task.image_norm", "clip", "--task.max_new_tokens", "8", "--task.max_length", "256",
              "--data.root", str(sqa), "--data.train", "train", "--train.batch_size", "2", "--train.lr", "0.01", *LAVIN_FLAGS]
    main(["search", *common, "--search.k", "2", "--search.gate_lr", "0.05", "--search.updates_per_epoch", "2",
          "--search.warmup_epochs", "0.5", "--search.reward_fraction", "0.34", "--train.epochs", "2",
          "--output_dir", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "search_result.json").read_text())
    assert len(result["plan"]["skip"]) == 2 and result["history"]
    main(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--data.test", "test",
          "--train.epochs", "1", "--output_dir", str(tmp_path / "t")])
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    test = metrics["test"]["test"]
    assert {"NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg", "accuracy", "loss"} <= set(test)
    assert test["n"] == 3 and 0 <= test["accuracy"] <= 1
    preds = json.loads((tmp_path / "t" / "predictions_test.json").read_text())
    assert [p["qid"] for p in preds] == ["109", "110", "111"] and all("generated" in p for p in preds)
    capsys.readouterr()
    meta = json.loads((tmp_path / "t" / "artifact" / "archskip.json").read_text())
    assert meta["base_model"]["vision"] == str(llm_dirs / "clip") and meta["task"]["image"]["norm"] == "clip"


def test_lavin_artifact_reloads_with_identical_generations(sqa, llm_dirs, tmp_path):
    from archskip.artifact import load_artifact, save_artifact
    from archskip.models.load import load_pretrained
    from archskip.tasks import assemble

    cfg = ModelConfig(name_or_path=str(llm_dirs / "llama"), vision=str(llm_dirs / "clip"), image_tokens=2, projector_hidden=8)
    base, tok, extras = load_pretrained(cfg)
    task = ScienceQA(tok, 256, 6, SquareImageSpec(28, "clip"))
    model = assemble(base, task, AdapterConfig.lavin(hidden=4, multimodal=True), cfg, extras)
    model.apply_plan(SkipPlan((1, 3), 6))
    with torch.no_grad():
        for p in model.trainable_named_parameters().values():
            p.add_(torch.randn_like(p) * 0.3)
    items = load_scienceqa(sqa, "test")
    batch = task.collate_prompts(items)
    model.eval()
    ref = task.generate(model, batch)
    save_artifact(model, task, tmp_path / "art", model_config=cfg)
    loaded, task2 = load_artifact(tmp_path / "art")
    assert loaded.pruned and isinstance(loaded.base, LaVIN) and len(loaded.base.llm.model.layers) == 4
    assert task2.generate(loaded, task2.collate_prompts(items)) == ref


def test_boolq_on_a_text_only_llama(llm_dirs, tmp_path, capsys):
    rows = [{"question": f"is it {c}", "passage": f"The square is {c}.", "answer": i % 2 == 0} for i, c in enumerate(COLORS * 4)]
    path = tmp_path / "boolq.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    common = ["--model.name_or_path", str(llm_dirs / "llama"), "--task.name", "boolq", "--task.max_new_tokens", "6",
              "--task.max_length", "256", "--data.train", str(path), "--data.test", str(path),
              "--adapter.style", "sequential", "--adapter.hidden", "4", "--adapter.skip_hidden", "16", "--adapter.skip_norm",
              "block", "--adapter.init", "zero", "--adapter.skip_init", "zero", "--train.batch_size", "4", "--train.epochs", "1"]
    main(["train", *common, "--plan", "none", "--output_dir", str(tmp_path / "teacher")])
    # the no-skip model teaches the skipped one (train.teacher on a generative task, at every token of the text)
    main(["train", *common, "--plan", "2,5", "--train.teacher", str(tmp_path / "teacher" / "artifact"),
          "--train.teacher_tokens", "text", "--output_dir", str(tmp_path / "b")])
    assert "teacher_tokens: text" in (tmp_path / "b" / "config.yaml").read_text()
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    key = str(path)
    assert metrics["plan"] == [2, 5] and metrics["test"][key]["n"] == 12 and 0 <= metrics["test"][key]["accuracy"] <= 1


def test_generation_answers_are_parsed_and_scored(sqa, llm_dirs):
    """A model whose generation is forced to 'The answer is X.' scores exactly the hand-computed accuracy."""
    tok = tiny_bpe_tokenizer(["The answer is A. B. C."])
    task = ScienceQA(tok)
    items = load_scienceqa(sqa, "test")
    texts = iter(["The answer is A.", "the answer is (B).", "no idea"])
    task.generate = lambda model, batch, **kw: [next(texts) for _ in batch["input_ids"]]
    preds = task.predict_dataset(torch.nn.Linear(1, 1), items, batch_size=3)
    assert [p["prediction"] for p in preds] == ["A", "B", None]
    answers = [e["answer"] for e in items]
    expected = sum(p == a for p, a in zip(["A", "B", None], answers)) / 3
    from archskip.tasks.qa_metrics import exact_match_accuracy

    assert exact_match_accuracy([p["prediction"] for p in preds], answers) / 100 == pytest.approx(expected)


def test_missing_scienceqa_image_is_a_clear_error(sqa, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(sqa, root)
    img = next((root / "images" / "train").glob("*/image.png"))
    img.unlink()
    with pytest.raises(DataError, match=f"{img.parent.name}"):
        load_scienceqa(root, "train")


def test_option_choice_matches_unbatched_scoring(llm_dirs):
    """choose_options (batched, padded) picks the same letters as scoring each "prompt + answer" alone."""
    from transformers import AutoTokenizer

    from archskip.skipping import SkipModel

    tok = AutoTokenizer.from_pretrained(llm_dirs / "llama")
    torch.manual_seed(0)
    model = SkipModel(LlamaForCausalLM.from_pretrained(llm_dirs / "llama"), AdapterConfig.lavin(hidden=4)).eval()
    with torch.no_grad():
        for p in model.trainable_named_parameters().values():
            p.add_(torch.randn_like(p) * 0.5)
    task = CSQA(tok, max_length=256)
    examples = [{"prompt": f"Question: what color is {'the big ' * i}square?\nOptions: A. red\nB. green\n", "answer": "A"}
                for i in range(5)]  # different lengths: the batch is padded

    def reference(e):
        scores = []
        for letter in "ABCDE":
            prompt = tok(e["prompt"])["input_ids"]
            ids = prompt + tok("Answer: The answer is " + letter, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids))))
        return "ABCDE"[scores.index(max(scores))]

    expected = [reference(e) for e in examples]
    assert task.choose_options(model, examples, "ABCDE", batch_size=2) == expected
    # options that differ in more than their last token take one row each; the scores still agree
    words = ["red", "green blue", "blue red green"]

    def reference_words(e):
        scores = []
        for w in words:
            prompt = tok(e["prompt"])["input_ids"]
            ids = prompt + tok("Answer: The answer is " + w, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids))))
        return words[scores.index(max(scores))]

    assert task.choose_options(model, examples, words, batch_size=3) == [reference_words(e) for e in examples]
    metrics = task.evaluate_dataset(model, [{**e, "target": "Answer: The answer is A. red."} for e in examples], batch_size=3)
    assert metrics["choice_accuracy"] == pytest.approx(sum(x == "A" for x in expected) / len(examples))


def _scienceqa_lavin(llm_dirs):
    """A LaVIN model (tiny LLaMA + CLIP, adapters perturbed) and ScienceQA scored by its options. 4 image tokens:
    with this tokenizer, 2 would insert as many tokens as "Image: N/A", hiding which rows carry an image."""
    from archskip.models.load import load_pretrained
    from archskip.tasks import assemble

    cfg = ModelConfig(name_or_path=str(llm_dirs / "llama"), vision=str(llm_dirs / "clip"), image_tokens=4, projector_hidden=8)
    base, tok, extras = load_pretrained(cfg)
    task = ScienceQA(tok, 256, 6, SquareImageSpec(28, "clip"), option_letters="ABC", answer_prefix="The answer is ")
    torch.manual_seed(0)
    model = assemble(base, task, AdapterConfig.lavin(hidden=4, multimodal=True), cfg, extras).eval()
    with torch.no_grad():
        for p in model.trainable_named_parameters().values():
            p.add_(torch.randn_like(p) * 0.5)
    assert len(set(model.base.inserted_tokens(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1])).tolist())) == 2
    return tok, task, model


def test_option_choice_with_images_matches_the_models_own_loss(sqa, llm_dirs):
    """On LaVIN (image tokens in front, rows with and without images mixed), choose_options agrees with
    scoring each "prompt + answer" through the model's own label alignment (loss x tokens)."""
    from archskip.tasks.causal_lm import IGNORE

    tok, task, model = _scienceqa_lavin(llm_dirs)
    items = load_scienceqa(sqa, "train") + load_scienceqa(sqa, "test")
    assert {bool(e.get("image")) for e in items[:3]} == {True, False}  # the first chunk mixes both

    def reference(e):
        scores = []
        for letter in "ABC":
            prompt = tok(e["prompt"])["input_ids"]
            cont = tok("The answer is " + letter, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + cont])
            labels = torch.tensor([[IGNORE] * len(prompt) + cont])
            with torch.no_grad():
                loss = model(input_ids=ids, labels=labels, **task._images([e])).loss
            scores.append(-float(loss) * len(cont))
        return "ABC"[scores.index(max(scores))]

    assert task.choose_options(model, items, "ABC", batch_size=3) == [reference(e) for e in items]
    assert task.info()["option_letters"] == "ABC" and task.info()["answer_prefix"] == "The answer is "


def test_a_batch_mixing_image_and_text_only_rows_scores_each_row_as_alone(sqa, llm_dirs):
    """LaVIN inserts more tokens before a row with an image than before one without: in a batch mixing both, the
    loss is the model's own labels-path loss, and each row's text loss and options' cross-entropy are what the
    row scores alone (the text loss also equals the model's own loss with the row's tokens as labels)."""
    _, task, model = _scienceqa_lavin(llm_dirs)
    items = (load_scienceqa(sqa, "train") + load_scienceqa(sqa, "test"))[:4]
    assert {bool(e.get("image")) for e in items} == {True, False}
    batch = task.collate(items)
    assert "choice_pos" in batch
    with torch.no_grad():
        got = task.score(model, batch)
        own = float(model(**task._model_inputs(batch), labels=batch["labels"]).loss)
        alone = [task.score(model, task.collate([e])) for e in items]
        own_text = [float(model(**task._model_inputs(one), labels=one["input_ids"]).loss)
                    for one in (task.collate([e]) for e in items)]
    assert got["loss_sum"] / len(items) == pytest.approx(own, rel=1e-5)
    assert got["text_loss_sum"] == pytest.approx(sum(a["text_loss_sum"] for a in alone), rel=1e-5)
    assert got["text_loss_sum"] == pytest.approx(sum(own_text), rel=1e-5)
    assert got["choice_loss_sum"] == pytest.approx(sum(a["choice_loss_sum"] for a in alone), rel=1e-5)


def test_a_no_skip_teacher_teaches_a_generative_task_on_its_answer_tokens(llm_dirs):
    """train.teacher on a generative task: the rows are the target's next-token distributions, their
    cross-entropy is the task's own loss, an identical teacher adds nothing, and a taught student moves
    towards the teacher while the teacher stays frozen."""
    import copy

    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from archskip import TrainConfig
    from archskip.nn_utils import eval_mode
    from archskip.skipping import SkipModel
    from archskip.teacher import TeacherLoss
    from archskip.train import Trainer

    tok = AutoTokenizer.from_pretrained(llm_dirs / "llama")
    task = CSQA(tok, max_length=256)
    rng = random.Random(0)
    examples = [{"prompt": f"Question: what color is {'the big ' * rng.randrange(4)}square?\nOptions: A. red\nB. green\n",
                 "target": f"Answer: The answer is {c}.", "answer": c} for c in rng.choices("AB", k=32)]
    torch.manual_seed(0)
    teacher = SkipModel(LlamaForCausalLM.from_pretrained(llm_dirs / "llama"), AdapterConfig.lavin(hidden=4))
    Trainer(teacher, task, TrainConfig(max_steps=10, batch_size=8, lr=1e-2), progress=False).fit(examples)
    batch = task.collate(examples[:8])
    with eval_mode(teacher):
        rows = task.logits(teacher, batch)
        assert rows.shape == (int((batch["labels"] != -100).sum()), len(tok))  # one row per target token (+ EOS)
        torch.testing.assert_close(task.logit_loss(rows, batch), task.loss(teacher, batch), atol=1e-5, rtol=0)
        same = TeacherLoss(task, copy.deepcopy(teacher), weight=3.0)
        torch.testing.assert_close(same.loss(teacher, batch), task.loss(teacher, batch), atol=1e-5, rtol=0)

    def kl(student) -> float:
        with torch.no_grad(), eval_mode(student), eval_mode(teacher):
            s, t = task.logits(student, batch), task.logits(teacher, batch)
        return float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"))

    student = copy.deepcopy(teacher)
    student.apply_plan(SkipPlan((2, 3), 6))
    plain, frozen = copy.deepcopy(student), {n: p.detach().clone() for n, p in teacher.named_parameters()}
    cfg = TrainConfig(max_steps=15, batch_size=8, lr=5e-3, warmup_ratio=0.0)
    Trainer(student, TeacherLoss(task, teacher, weight=5.0), cfg, progress=False).fit(examples)
    Trainer(plain, task, cfg, progress=False).fit(examples)
    assert all(torch.equal(p, frozen[n]) and p.grad is None for n, p in teacher.named_parameters())
    assert kl(student) < kl(plain)  # the same steps on the labels alone end further from the teacher
    # under a teacher the task still is the task: predictions, generation, its record
    taught = TeacherLoss(task, teacher)
    assert (taught.writes_predictions, taught.generates, taught.info()) == (True, True, task.info())
    assert taught.predict_dataset(student, examples[:5], batch_size=2) == task.predict_dataset(student, examples[:5], batch_size=2)
    prompts = task.collate_prompts(examples[:4])
    assert taught.generate(student, prompts, max_new_tokens=2) == task.generate(student, prompts, max_new_tokens=2)


def test_a_teacher_on_every_text_token_matches_each_real_position_and_keeps_the_answer_loss(llm_dirs):
    """train.teacher_tokens 'text': the KL term is the mean over every non-padding position of the prompt and the
    target (computed here position by position from the full logits), the task term is still the answer's
    cross-entropy, and `answer_rows` picks exactly `logits`' rows out of `text_logits`'."""
    import copy

    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from archskip.nn_utils import eval_mode
    from archskip.skipping import SkipModel
    from archskip.teacher import TeacherLoss

    tok = AutoTokenizer.from_pretrained(llm_dirs / "llama")
    task = CSQA(tok, max_length=256)
    examples = [{"prompt": f"Question: is {'a big ' * n}cube round?\nOptions: A. yes\nB. no\n", "target": "Answer: B",
                 "answer": "B"} for n in (0, 3, 1, 5)]  # different lengths: right padding on all but one row
    torch.manual_seed(0)
    teacher = SkipModel(LlamaForCausalLM.from_pretrained(llm_dirs / "llama"), AdapterConfig.lavin(hidden=4))
    for p in teacher.parameters():  # a teacher that differs from the student everywhere
        p.data.add_(0.5 * torch.randn_like(p)) if p.requires_grad else None
    student = SkipModel(LlamaForCausalLM.from_pretrained(llm_dirs / "llama"), AdapterConfig.lavin(hidden=4))
    student.apply_plan(SkipPlan((2, 3), 6))
    batch = task.collate(examples)
    mask = batch["attention_mask"]
    assert (mask == 0).any()
    t, weight = 2.0, 5.0
    with torch.no_grad(), eval_mode(student), eval_mode(teacher):
        s_full, t_full = student(input_ids=batch["input_ids"], attention_mask=mask).logits, \
            teacher(input_ids=batch["input_ids"], attention_mask=mask).logits  # (B, T, V)
        kls = [F.kl_div(F.log_softmax(s_full[b, i] / t, -1), F.log_softmax(t_full[b, i] / t, -1), log_target=True,
                        reduction="sum") for b in range(len(examples)) for i in range(mask.shape[1] - 1) if mask[b, i + 1]]
        expected = task.loss(student, batch) + weight * t * t * torch.stack(kls).mean()
        rows = task.text_logits(student, batch)
        assert rows.shape == (int(mask[:, 1:].sum()), len(tok))
        torch.testing.assert_close(rows[task.answer_rows(batch)], task.logits(student, batch))
        taught = TeacherLoss(task, teacher, weight=weight, temperature=t, tokens="text")
        torch.testing.assert_close(taught.loss(student, batch), expected, atol=1e-5, rtol=1e-5)
        # the answer-only teacher is a different (smaller) set of rows
        answer_only = TeacherLoss(task, copy.deepcopy(teacher), weight=weight, temperature=t)
        assert abs(float(answer_only.loss(student, batch)) - float(expected)) > 1e-3  # (100x the tolerance above)


def test_a_generative_task_on_lavin_refuses_a_teacher(llm_dirs):
    """LaVIN puts its prefix and image tokens before the text: the target's rows cannot be found, so a
    teacher is refused before any training, with what would work instead."""
    from archskip.config import ConfigError
    from archskip.models.load import load_pretrained
    from archskip.tasks import assemble
    from archskip.teacher import TeacherLoss

    cfg = ModelConfig(name_or_path=str(llm_dirs / "llama"), vision=str(llm_dirs / "clip"), image_tokens=2, projector_hidden=8)
    base, tok, extras = load_pretrained(cfg)
    task = ScienceQA(tok, 256, 6, SquareImageSpec(28, "clip"), option_letters="ABC", answer_prefix="The answer is ")
    model = assemble(base, task, AdapterConfig.lavin(hidden=4, multimodal=True), cfg, extras)
    with pytest.raises(ConfigError, match="cannot learn from a teacher; plain decoders can"):
        TeacherLoss(task, model)


# ---- search.verify_metric: choice_loss ---------------------------------------------------------------------------
def _choice_setup(llm_dirs, n=12):
    from transformers import AutoTokenizer

    from archskip.skipping import SkipModel

    tok = AutoTokenizer.from_pretrained(llm_dirs / "llama")
    torch.manual_seed(0)
    model = SkipModel(LlamaForCausalLM.from_pretrained(llm_dirs / "llama"), AdapterConfig.lavin(hidden=4)).eval()
    examples = [{"prompt": f"Question: what color is {'the big ' * (i % 4)}square?\nOptions: A. red\nB. green\n",
                 "answer": "ABCDE"[i % 5], "target": f"Answer: The answer is {'ABCDE'[i % 5]}. red."} for i in range(n)]
    return tok, model, CSQA(tok, max_length=256), examples


def test_choice_loss_is_the_cross_entropy_of_the_options_sequence_likelihoods(llm_dirs):
    """The measurement reads the options' tokens off one position of the training batch; it equals the
    cross-entropy of the right option under the softmax of each option's whole "prompt + answer" likelihood,
    scored one sequence at a time (the shared answer prefix cancels)."""
    tok, model, task, examples = _choice_setup(llm_dirs)
    batch = task.collate(examples)
    s, ids = task.choice
    for i in range(len(examples)):  # the token after the recorded position is the right option's
        assert int(batch["input_ids"][i, batch["choice_pos"][i] + 1]) == ids[int(batch["choice_gold"][i])]

    def reference(e):
        prompt = tok(e["prompt"])["input_ids"]
        scores = []
        for letter in "ABCDE":
            seq = prompt + tok("Answer: The answer is " + letter, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([seq])).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[t - 1, seq[t]]) for t in range(len(prompt), len(seq))))
        return -float(torch.tensor(scores).log_softmax(-1)["ABCDE".index(e["answer"])])

    with torch.no_grad():
        got = task.finalize(task.score(model, batch))
    assert got["choice_loss"] == pytest.approx(sum(map(reference, examples)) / len(examples), rel=1e-4)
    # rows cut at the front (max_length) keep their position on the option token
    short = CSQA(tok, max_length=24)
    cut = short.collate(examples)
    for i in range(len(examples)):
        assert int(cut["input_ids"][i, cut["choice_pos"][i] + 1]) == ids[int(cut["choice_gold"][i])]
    # a target that does not start with the answer prefix and the answer: no choice measurement for the batch
    assert "choice_pos" not in task.collate([{**examples[0], "target": "red"}])


def test_a_search_ranks_plans_by_choice_loss_when_asked(llm_dirs):
    from archskip import SearchConfig, TrainConfig
    from archskip.search import METHODS, SearchRun

    _, model, task, examples = _choice_setup(llm_dirs, n=16)
    train = TrainConfig(epochs=1, batch_size=8, log_every=1000)
    runs = {metric: METHODS["removal-loss"](SearchRun(model, task, examples, SearchConfig(k=2, verify_metric=metric),
                                                      train, seed=0, progress=False))
            for metric in ("task", "choice_loss")}
    tables = {m: r.config["verification"]["measured"] for m, r in runs.items()}
    assert {row["selection"] for row in tables["choice_loss"]} == {"choice_loss"}
    assert {row["selection"] for row in tables["task"]} == {"loss"}
    by_choice = {tuple(r["plan"]): r["metrics"]["choice_loss"] for r in tables["choice_loss"]}
    assert runs["choice_loss"].plan.skip == min(by_choice, key=by_choice.get)
    # the same plans measured alike both ways; only what ranks them differs
    assert {tuple(r["plan"]): r["metrics"]["loss"] for r in tables["task"]} == pytest.approx(
        {tuple(r["plan"]): r["metrics"]["loss"] for r in tables["choice_loss"]})


def test_a_search_ranks_plans_by_the_refitted_choice_loss_when_asked(llm_dirs):
    """`choice_refit_loss`: per plan, the options' logits at the answer's first token of every measured example
    (read here one example at a time from the plan's model), through the cross-fitted temperature and biases."""
    from archskip import SearchConfig, TrainConfig
    from archskip.data.loader import measurement_examples
    from archskip.search import METHODS, SearchRun
    from archskip.search.choice_refit import refit_choice_losses
    from archskip.search.finals import judged_by

    _, model, task, examples = _choice_setup(llm_dirs, n=16)
    cfg = SearchConfig(k=2, verify_metric="choice_refit_loss", verify_examples=16)
    run = METHODS["removal-loss"](SearchRun(model, task, examples, cfg, TrainConfig(epochs=1, batch_size=8, log_every=1000),
                                            seed=0, progress=False))
    table = run.config["verification"]["measured"]
    assert {row["selection"] for row in table} == {"choice_refit_loss"}
    by_refit = {tuple(r["plan"]): r["metrics"]["choice_refit_loss"] for r in table}
    assert run.plan.skip == min(by_refit, key=by_refit.get)
    assert len(set(by_refit.values())) > 1
    _, ids = task.choice
    measured = list(measurement_examples(examples, 16, seed=0))  # the measurement's seeded order
    for plan in list(by_refit)[:3]:
        model.set_skip(plan)
        rows, gold = [], []
        with torch.no_grad():
            for e in measured:
                b = task.collate([e])
                rows.append(model(input_ids=b["input_ids"]).logits[0, b["choice_pos"][0], ids])
                gold.append(int(b["choice_gold"][0]))
        model.set_skip([])
        assert by_refit[plan] == pytest.approx(float(refit_choice_losses(torch.stack(rows), torch.tensor(gold)).mean()),
                                               rel=1e-4)
    assert judged_by(task, cfg) == "choice_loss"  # a trained finalist is judged by its plain options' cross-entropy


def test_a_refitted_choice_search_resumes_only_with_the_same_metric(llm_dirs, tmp_path):
    """Its measurements hold 'choice_refit_loss', which other metrics' do not: a resume that changes the metric either
    way is refused before any work; one that keeps it ends with the same table."""
    from archskip import SearchConfig, TrainConfig
    from archskip.errors import ConfigError
    from archskip.search import METHODS, SearchRun

    _, model, task, examples = _choice_setup(llm_dirs, n=16)
    train = TrainConfig(epochs=1, batch_size=8, log_every=1000)

    def search(metric, resume):
        cfg = SearchConfig(k=2, verify_metric=metric, verify_examples=16)
        return METHODS["removal-loss"](SearchRun(model, task, examples, cfg, train, seed=0, progress=False,
                                                 out_dir=tmp_path, resume=resume))

    first = search("choice_refit_loss", False)
    with pytest.raises(ConfigError, match=r"other settings \(metric: 'choice_refit_loss' then, None now\)"):
        search("task", True)
    again = search("choice_refit_loss", True)
    assert again.plan == first.plan
    assert again.config["verification"]["measured"] == first.config["verification"]["measured"]


def test_text_loss_is_each_rows_language_model_loss_on_every_token(llm_dirs):
    """'text_loss' (search.verify_metric: text_loss) is, per example, the model's own causal-LM loss of the whole
    text (prompt and answer), computed one unpadded sequence at a time by transformers; averaged over examples."""
    tok, model, task, examples = _choice_setup(llm_dirs, n=6)  # rows of different lengths: right padding
    batch = task.collate(examples)
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        got = task.finalize(task.score(model, batch))
        ref = []
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            ids = row[mask.bool()][None]  # (1, T_i): the row alone, no padding
            ref.append(float(model.base(input_ids=ids, labels=ids).loss))
    assert got["text_loss"] == pytest.approx(sum(ref) / len(ref), rel=1e-4)
    causal = CausalLM(tok, 256)  # the plain prompt -> answer task reports it alike
    lm_batch = causal.collate([{"text": e["prompt"], "label": e["target"]} for e in examples])
    with torch.no_grad():
        lm = causal.finalize(causal.score(model, lm_batch))
        ref = [float(model.base(input_ids=r[m.bool()][None], labels=r[m.bool()][None]).loss)
               for r, m in zip(lm_batch["input_ids"], lm_batch["attention_mask"])]
    assert lm["text_loss"] == pytest.approx(sum(ref) / len(ref), rel=1e-4)


def test_a_search_ranks_plans_by_text_loss_when_asked_and_refuses_it_for_a_classifier(llm_dirs):
    from archskip import SearchConfig, TrainConfig
    from archskip.data.text import LabelVocab
    from archskip.errors import ConfigError
    from archskip.search import METHODS, SearchRun
    from archskip.tasks import SequenceClassification

    _, model, task, examples = _choice_setup(llm_dirs, n=16)
    train = TrainConfig(epochs=1, batch_size=8, log_every=1000)
    run = METHODS["removal-loss"](SearchRun(model, task, examples, SearchConfig(k=2, verify_metric="text_loss"),
                                            train, seed=0, progress=False))
    table = run.config["verification"]["measured"]
    assert {row["selection"] for row in table} == {"text_loss"}
    by_text = {tuple(r["plan"]): r["metrics"]["text_loss"] for r in table}
    assert run.plan.skip == min(by_text, key=by_text.get)
    classifier = SequenceClassification(task.tokenizer, LabelVocab(["no", "yes"]))
    for method in ("das", "removal-loss"):
        with pytest.raises(ConfigError, match="verify_metric='text_loss'.*does not model text"):
            METHODS[method](SearchRun(model, classifier, examples, SearchConfig(k=2, verify_metric="text_loss"),
                                      train, seed=0, progress=False))


def test_choice_loss_is_refused_for_a_task_without_options(llm_dirs):
    from archskip import SearchConfig, TrainConfig
    from archskip.errors import ConfigError
    from archskip.search import METHODS, SearchRun

    tok, model, _, examples = _choice_setup(llm_dirs, n=8)
    task = CSQA(tok, max_length=256)
    task.option_letters, task.choice = None, None  # a generative task with free answers
    train = TrainConfig(epochs=1, batch_size=8)
    for metric in ("choice_loss", "choice_refit_loss"):
        cfg = SearchConfig(k=2, verify_metric=metric)
        for method in ("das", "removal-loss"):
            with pytest.raises(ConfigError, match=f"search.verify_metric='{metric}'.*no fixed option set"):
                METHODS[method](SearchRun(model, task, examples, cfg, train, seed=0, progress=False))
    shared = CSQA(tok, max_length=256, option_letters=["red", "red green"])  # the same token after the prefix
    assert shared.choice is None
