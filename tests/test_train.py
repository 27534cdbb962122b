"""Training with a fixed plan: what changes, accumulation, schedule, checkpoints and exact resume."""

import pytest
import torch
from conftest import classification_examples, make_bert, tiny_tokenizer

from archskip import AdapterConfig, SkipModel, SkipPlan, TaskConfig, TrainConfig
from archskip.search import DASHooks, run_search
from archskip.tasks import build_task
from archskip.train import CHECKPOINT, Trainer, TrainingError, lr_schedule


def build(dropout: float = 0.1, plan=(1,)):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    base = make_bert(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    examples = classification_examples(96)
    model = SkipModel(base, AdapterConfig(hidden=8, skip_hidden=16))
    task = build_task(TaskConfig(max_length=16), tok, examples)
    task.attach_head(model)
    if plan is not None:
        model.apply_plan(SkipPlan(plan, 4))
    return model, task, examples


def test_training_learns_and_touches_only_trainable_parameters():
    model, task, examples = build()
    frozen = {n: p.detach().clone() for n, p in model.base.named_parameters() if not p.requires_grad}
    trainer = Trainer(model, task, TrainConfig(epochs=6, batch_size=16, lr=1e-2), progress=False)
    before = trainer.evaluate(examples)
    trainer.fit(examples)
    after = trainer.evaluate(examples)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.8
    assert all(torch.equal(p, frozen[n]) for n, p in model.base.named_parameters() if n in frozen)


def test_gradient_accumulation_matches_a_larger_batch():
    states = []
    for bs, accum in ((16, 1), (8, 2)):
        model, task, examples = build(dropout=0.0)
        Trainer(model, task, TrainConfig(max_steps=3, batch_size=bs, grad_accum=accum, lr=1e-2, warmup_ratio=0.0),
                progress=False).fit(examples)
        states.append(model.trainable_state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-4, atol=1e-6)


def test_schedules_warm_up_then_decay_to_zero():
    f = lr_schedule(100, 0.1)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == 0.0
    c = lr_schedule(100, 0.1, "cosine")
    assert c(10) == pytest.approx(1.0) and c(55) == pytest.approx(0.5) and c(100) == pytest.approx(0.0, abs=1e-12)
    assert c(32) == pytest.approx(0.5 * (1 + __import__("math").cos(__import__("math").pi * 22 / 90)))


class Boom(Exception):
    pass


class Crash:
    """StepHooks that raise after `at` micro-batches: a run killed mid-way."""

    def __init__(self, at):
        self.at = at

    def before_batch(self, micro, epoch):
        pass

    def after_batch(self, micro, epoch):
        if micro == self.at:
            raise Boom()

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, checkpoint_every=2)
    model, task, examples = build()
    Trainer(model, task, cfg, seed=1, out_dir=tmp_path / "full", progress=False).fit(examples)
    reference = model.trainable_state_dict()

    model, task, examples = build()
    with pytest.raises(Boom):
        Trainer(model, task, cfg, seed=1, out_dir=tmp_path / "crash", hooks=Crash(7), progress=False).fit(examples)
    assert (tmp_path / "crash" / CHECKPOINT).is_file()
    model, task, examples = build()  # a new process: fresh adapters, then resume
    Trainer(model, task, cfg, seed=1, out_dir=tmp_path / "crash", progress=False).fit(examples, resume=True)
    resumed = model.trainable_state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_resume_refuses_another_plan_and_missing_checkpoint(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=32)
    model, task, examples = build(plan=(1,))
    Trainer(model, task, cfg, out_dir=tmp_path, progress=False).fit(examples)
    other, task, examples = build(plan=(2,))
    with pytest.raises(TrainingError, match="was made with plan"):
        Trainer(other, task, cfg, out_dir=tmp_path, progress=False).fit(examples, resume=True)
    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer(other, task, cfg, out_dir=tmp_path / "empty", progress=False).fit(examples, resume=True)


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    model, task, examples = build()
    orig = task.loss
    calls = {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        value = orig(m, batch)
        return value * float("nan") if calls["n"] > 7 else value

    monkeypatch.setattr(task, "loss", loss)
    with pytest.raises(TrainingError, match=r"loss is nan at optimiser step 7 \(micro-batch 7\); the last checkpoint is kept"):
        Trainer(model, task, TrainConfig(epochs=3, batch_size=16, checkpoint_every=3), out_dir=tmp_path,
                progress=False).fit(examples)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 6


def test_search_resumes_to_the_same_gates(tmp_path):
    from test_search import SEARCH, setup

    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, checkpoint_every=3)
    model, task, examples = setup(2, n=160)
    full = run_search(model, task, examples, SEARCH, cfg, seed=2, progress=False, out_dir=tmp_path / "a")

    model, task, examples = setup(2, n=160)
    orig = DASHooks.after_batch

    def crash(self, micro, epoch):
        orig(self, micro, epoch)
        if micro == 10:
            raise Boom()

    DASHooks.after_batch = crash
    try:
        with pytest.raises(Boom):
            run_search(model, task, examples, SEARCH, cfg, seed=2, progress=False, out_dir=tmp_path / "b")
    finally:
        DASHooks.after_batch = orig
    model, task, examples = setup(2, n=160)
    resumed = run_search(model, task, examples, SEARCH, cfg, seed=2, progress=False, out_dir=tmp_path / "b", resume=True)
    assert resumed.scores == full.scores and resumed.plan == full.plan
    assert [h["gates"] for h in resumed.history] == [h["gates"] for h in full.history]


def test_logs_start_afresh_unless_resumed_and_tensorboard_is_written(tmp_path):
    from archskip.runlog import RunLogger

    log = RunLogger(tmp_path, tensorboard=True)
    log.log("train", 1, loss=1.0)
    log.log("train", 2, loss=0.5)
    log.close()
    assert (tmp_path / "train.csv").read_text().splitlines() == ["step,loss", "1,1.0", "2,0.5"]
    assert list((tmp_path / "tensorboard").glob("events.*"))
    again = RunLogger(tmp_path, resume=True)
    again.log("train", 3, loss=0.25)
    again.close()
    assert (tmp_path / "train.csv").read_text().splitlines()[-1] == "3,0.25"
    fresh = RunLogger(tmp_path)
    fresh.log("train", 1, loss=9.0)
    fresh.close()
    assert (tmp_path / "train.csv").read_text().splitlines() == ["step,loss", "1,9.0"]


def test_learning_rate_groups():
    from archskip.train import param_groups

    model, _, _ = build()
    cfg = TrainConfig(lr=1e-3, head_lr_mult=10, lr_mult={"sites": 5, "pooler": 2})
    groups = param_groups(model, cfg)
    by_lr = {}
    names = {id(p): n for n, p in model.trainable_named_parameters().items()}
    for g in groups:
        for p in g["params"]:
            by_lr.setdefault(g["lr"], set()).add(names[id(p)].split(".")[0] + ("." + names[id(p)].split(".")[2] if names[id(p)].startswith("candidates") else ""))
    assert by_lr[1e-2] == {"head"} and by_lr[5e-3] == {"candidates.sites"} and by_lr[1e-3] == {"candidates.replacement"}
    assert all(g["weight_decay"] == 0.0 for g in groups if all(names[id(p)].endswith(".bias") for p in g["params"]))
