"""A trained no-skip model teaching a skipped one: the loss, what it trains, and the CLI switch."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_examples, make_llama, tiny_tokenizer
from test_distill import PLAN, encoder_setup

from archskip import AdapterConfig, SkipModel
from archskip.cli import main
from archskip.config import ConfigError, TrainConfig
from archskip.data import text as text_data
from archskip.nn_utils import eval_mode
from archskip.tasks import CausalLM
from archskip.teacher import TeacherLoss
from archskip.train import Trainer


def _taught_pair(seed=0):
    _, model, task, examples = encoder_setup(seed)
    Trainer(model, task, TrainConfig(max_steps=15, batch_size=16, lr=1e-2), progress=False).fit(examples)
    teacher = copy.deepcopy(model)  # a trained no-skip model
    student = copy.deepcopy(model)
    student.apply_plan(PLAN)
    return teacher, student, task, examples


def _kl(student, teacher, task, examples) -> float:
    batch = task.collate(examples[:64])
    with torch.no_grad(), eval_mode(student), eval_mode(teacher):
        s, t = task.logits(student, batch), task.logits(teacher, batch)
    return float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"))


def test_a_teacher_identical_to_the_student_adds_nothing():
    teacher, _, task, examples = _taught_pair()
    taught = TeacherLoss(task, copy.deepcopy(teacher), weight=3.0, temperature=2.0)
    batch = task.collate(examples[:16])
    with eval_mode(teacher):
        torch.testing.assert_close(taught.loss(teacher, batch), task.loss(teacher, batch), atol=1e-6, rtol=0)


def test_the_teacher_term_trains_the_student_only_and_pulls_it_towards_the_teacher():
    teacher, student, task, examples = _taught_pair()
    frozen = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    plain = copy.deepcopy(student)
    kl_before = _kl(student, teacher, task, examples)
    cfg = TrainConfig(max_steps=20, batch_size=16, lr=5e-3, warmup_ratio=0.0)
    Trainer(student, TeacherLoss(task, teacher, weight=5.0, temperature=2.0), cfg, progress=False).fit(examples)
    Trainer(plain, task, cfg, progress=False).fit(examples)
    assert all(torch.equal(p, frozen[n]) and p.grad is None for n, p in teacher.named_parameters())  # untouched
    assert _kl(student, teacher, task, examples) < min(kl_before, _kl(plain, teacher, task, examples))


def test_a_task_without_logits_cannot_have_a_teacher():
    torch.manual_seed(0)
    model = SkipModel(make_llama(), AdapterConfig.lavin())
    with pytest.raises(ConfigError, match="the causal_lm task cannot learn from a teacher"):
        TeacherLoss(CausalLM(tiny_tokenizer(), max_length=8), model)


def test_a_classification_task_refuses_a_teacher_on_every_token():
    teacher, _, task, _ = _taught_pair()
    with pytest.raises(ConfigError, match="teacher_tokens='text'.*one prediction per example.*'answer'"):
        TeacherLoss(task, teacher, tokens="text")
    with pytest.raises(ConfigError, match="teacher_tokens='every'.*expected 'answer' or 'text'"):
        TeacherLoss(task, teacher, tokens="every")


def test_train_with_a_teacher_through_the_cli(tiny_encoder_dir, tmp_path, capsys):
    data = str(text_data.write_csv(tmp_path / "train.csv", classification_examples(80, seed=5)))
    other = str(text_data.write_csv(tmp_path / "other.csv", classification_examples(80, seed=5, labels=("a", "b"))))
    common = ["--model.name_or_path", str(tiny_encoder_dir), "--adapter.hidden", "8", "--adapter.skip_hidden", "16",
              "--train.batch_size", "16", "--train.max_steps", "3"]
    main(["train", *common, "--data.train", data, "--plan", "none", "--output_dir", str(tmp_path / "teacher")])
    main(["train", *common, "--data.train", data, "--plan", "1,2", "--train.teacher", str(tmp_path / "teacher/artifact"),
          "--output_dir", str(tmp_path / "student")])
    assert (tmp_path / "student/artifact/archskip.json").is_file()
    with pytest.raises(SystemExit):
        main(["train", *common, "--data.train", other, "--plan", "1,2", "--train.teacher",
              str(tmp_path / "teacher/artifact"), "--output_dir", str(tmp_path / "refused")])
    assert "solves another task" in capsys.readouterr().err and not (tmp_path / "refused").exists()

