"""The verified search's final round (search/finals.py): finalists trained briefly, judged on held-out data."""

import json
from dataclasses import replace

import pytest
import torch
from test_search import PLANTED, TRAIN, VERIFIED, setup

from archskip import SearchConfig
from archskip.config import ConfigError
from archskip.search import run_search
from archskip.search.finals import finalists, judged_by, play_finals

FINALS = replace(VERIFIED, finalists=2)  # the default search with a final round (off by default)


def test_the_finalists_are_the_best_measured_plans_and_the_heuristics_plans():
    verification = {"measured": [{"plan": [1, 4]}, {"plan": [2, 4]}, {"plan": [0, 1]}, {"plan": [4, 5]}],
                    "proposals": {"last-k": [4, 5], "block influence": [1, 4]}}
    assert finalists(verification, 2) == [(1, 4), (2, 4), (4, 5)]  # (block influence's plan was among the best)
    assert finalists(verification, 1) == [(1, 4), (4, 5)]
    assert finalists(verification, 4) == [(1, 4), (2, 4), (0, 1), (4, 5)]


def test_the_winner_has_the_best_held_out_loss_and_the_weights_are_given_back():
    model, task, examples = setup(0, n=128)
    initial = model.trainable_state_dict()
    with torch.no_grad():  # weights that are not the fresh start (a supernet's): they must come back as they were
        for p in model.trainable_named_parameters().values():
            p.add_(0.01)
    before = model.trainable_state_dict()
    plans = [(0, 1), PLANTED, (4, 5)]
    best, table = play_finals(model, task, examples, plans, replace(FINALS, final_epochs=2.0), TRAIN,
                              initial=initial, seed=0)
    assert best == PLANTED and table[0]["plan"] == list(PLANTED)  # the near-identity blocks train best
    losses = [m["metrics"]["loss"] for m in table]
    assert losses == sorted(losses) and len(set(losses)) == 3 and {tuple(m["plan"]) for m in table} == set(plans)
    assert all(m["metrics"]["n"] == 32 for m in table)  # judged on final_fraction (0.25) of 128, held out
    after = model.trainable_state_dict()
    assert all(torch.equal(before[n], after[n]) for n in after) and not any(l.skipped for l in model.candidates)


def test_trained_finalists_are_judged_by_the_task_unless_the_options_cross_entropy_ranked_the_measurement():
    from conftest import tiny_tokenizer

    from archskip.tasks import CausalLM

    task = CausalLM(tiny_tokenizer())
    assert judged_by(task, replace(FINALS, verify_metric="text_loss")) == "loss"  # (the frozen text, not the answer)
    assert judged_by(task, FINALS) == "loss"
    assert judged_by(task, replace(FINALS, verify_metric="choice_loss")) == "choice_loss"


def test_every_finalist_starts_from_the_same_fresh_adapters():
    """A finalist's judgement does not depend on which finalists trained before it."""
    model, task, examples = setup(1, n=96)
    initial = model.trainable_state_dict()
    cfg = replace(FINALS, final_epochs=1.0)
    _, forward = play_finals(model, task, examples, [(0, 1), (2, 3)], cfg, TRAIN, initial=initial, seed=1)
    _, backward = play_finals(model, task, examples, [(2, 3), (0, 1)], cfg, TRAIN, initial=initial, seed=1)
    assert {tuple(m["plan"]): m["metrics"] for m in forward} == {tuple(m["plan"]): m["metrics"] for m in backward}


def test_a_killed_final_round_resumes_without_training_a_finalist_twice(tmp_path, monkeypatch):
    from archskip.train import Trainer

    cfg = replace(FINALS, verify_examples=96, final_epochs=1.0)
    model, task, examples = setup(4, n=128)
    whole = run_search(model, task, examples, cfg, TRAIN, seed=4, progress=False)
    assert len(whole.config["finals"]["plans"]) >= 2

    fits = []
    real = Trainer.fit

    def dies_after_1(self, *a, **k):
        if fits:
            raise KeyboardInterrupt
        fits.append(self.desc)
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "fit", dies_after_1)
    model, task, examples = setup(4, n=128)
    with pytest.raises(KeyboardInterrupt):
        run_search(model, task, examples, cfg, TRAIN, seed=4, progress=False, out_dir=tmp_path)
    assert len(json.loads((tmp_path / "finalists.json").read_text())["measured"]) == 1

    fits.clear()
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: fits.append(self.desc) or real(self, *a, **k))
    model, task, examples = setup(4, n=128)
    resumed = run_search(model, task, examples, cfg, TRAIN, seed=4, progress=False, out_dir=tmp_path, resume=True)
    assert len(fits) == len(whole.config["finals"]["plans"]) - 1  # only the finalists the killed run had not judged
    assert resumed.plan == whole.plan
    strip = lambda f: [(m["plan"], m["metrics"]) for m in f["plans"]]  # noqa: E731 (not the seconds)
    assert strip(resumed.config["finals"]) == strip(whole.config["finals"])

    model, task, examples = setup(4, n=128)
    with pytest.raises(ConfigError, match=r"other settings \(.*final_epochs: 1.0 then, 2.0 now\)"):
        run_search(model, task, examples, replace(cfg, final_epochs=2.0), TRAIN, seed=4, progress=False,
                   out_dir=tmp_path, resume=True)


def test_without_finalists_the_search_ships_its_best_measured_plan(monkeypatch):
    from archskip.train import Trainer

    assert SearchConfig().finalists == 0  # (the default)
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("finalists=0 trained something"))
    model, task, examples = setup(2, n=128)
    result = run_search(model, task, examples, VERIFIED, TRAIN, seed=2, progress=False)
    assert "finals" not in result.config
    assert list(result.plan.skip) == result.config["verification"]["measured"][0]["plan"]


@pytest.mark.parametrize("field,value,message", [
    ("finalists", -1, r"search.finalists=-1 must be a non-negative integer"),
    ("final_epochs", 0, r"search.final_epochs=0 must be > 0"),
    ("final_fraction", 1.0, r"search.final_fraction=1.0 must be in \(0, 1\)"),
])
def test_bad_final_round_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**{field: value})


def test_a_split_that_leaves_no_finalist_training_data_is_refused_before_any_work(monkeypatch):
    from archskip.search.verify import PlanMeter

    monkeypatch.setattr(PlanMeter, "__call__", lambda *a: pytest.fail("measured a plan before refusing"))
    model, task, examples = setup(0, n=3)
    with pytest.raises(ConfigError, match=r"search.final_fraction=0.1 of 3 training examples leaves 0 to judge"):
        run_search(model, task, examples, replace(FINALS, final_fraction=0.1), TRAIN, seed=0, progress=False)


def test_the_final_round_is_refused_under_fsdp_before_any_work(monkeypatch):
    from archskip.search.verify import PlanMeter

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(PlanMeter, "__call__", lambda *a: pytest.fail("measured a plan before refusing"))
    model, task, examples = setup(0, n=64)
    with pytest.raises(ConfigError, match=r"search.finalists=2 under an FSDP config.*--search.finalists 0"):
        run_search(model, task, examples, FINALS, TRAIN, seed=0, progress=False)


def test_the_search_with_a_final_round_finds_the_planted_blocks_and_says_how(monkeypatch):
    from archskip.demo import how_chosen
    from archskip.train import Trainer

    fits = []
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: fits.append(self.desc) or real_fit(self, *a, **k))
    for seed in range(2):
        fits.clear()
        model, task, examples = setup(seed)
        before = model.trainable_state_dict()
        result = run_search(model, task, examples, FINALS, TRAIN, seed=seed, progress=False)
        finals = result.config["finals"]["plans"]
        assert sorted(fits) == sorted(f"finalist {m['plan']}" for m in finals)  # each once, and nothing else trained
        assert result.plan.skip == PLANTED and finals[0]["plan"] == list(PLANTED) and [4, 5] in [m["plan"] for m in finals]
        assert all(torch.equal(before[n], p) for n, p in model.trainable_state_dict().items())
        paragraph = how_chosen(result)
        assert "trained no supernet" in paragraph and f"the {len(finals)} finalists" in paragraph
        assert f"the best is the result: skip {list(PLANTED)}" in paragraph
