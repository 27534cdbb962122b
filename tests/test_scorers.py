"""Cheap redundancy estimators on the planted model, and their interface."""

import pytest
import torch
from test_search import PLANTED, SEARCH, TRAIN, setup

from archskip import AdapterConfig, SkipModel
from archskip.search import block_influence, exhaustive, last_k, random_plan, run_search


def test_block_influence_finds_near_identity_blocks():
    model, task, examples = setup(0, n=64)
    res = block_influence(model, task, examples, 2, batch_size=16)
    assert res.plan.skip == PLANTED and res.method == "block-influence"
    influence = res.history[0]["block_influence"]
    assert max(influence[i] for i in PLANTED) < 1e-3 < min(influence[i] for i in range(6) if i not in PLANTED)


def test_block_influence_ignores_the_adapters():
    model, task, examples = setup(0, n=32)
    with torch.no_grad():
        for p in model.trainable_named_parameters().values():
            p.add_(1.0)  # wild adapters would change every block's output
    assert block_influence(model, task, examples, 2).plan.skip == PLANTED


def test_exhaustive_on_a_trained_supernet_finds_the_planted_plan():
    model, task, examples = setup(0, n=256)
    run_search(model, task, examples, SEARCH, TRAIN, progress=False)
    res = exhaustive(model, task, examples[:64], 2)
    assert res.plan.skip == PLANTED
    assert len(res.history) == 15 and res.history[0]["plan"] == list(PLANTED)


def test_exhaustive_refuses_too_many_plans():
    from conftest import make_llama

    model = SkipModel(make_llama(), AdapterConfig.lavin())
    model.candidates *= 6  # pretend 30 candidates
    with pytest.raises(ValueError, match="too many"):
        exhaustive(model, None, [], 10)


def test_last_k_and_random():
    assert last_k(6, 2).plan.skip == (4, 5)
    a, b, c = random_plan(12, 3, seed=1), random_plan(12, 3, seed=1), random_plan(12, 3, seed=2)
    assert a.plan == b.plan and len(a.plan.skip) == 3
    assert a.plan != c.plan or a.scores != c.scores


def test_removal_loss_measures_plans_on_the_frozen_model_and_finds_the_planted_plan():
    from archskip.search.removal import removal_loss

    model, task, examples = setup(0, n=64)
    before = {n: p.detach().clone() for n, p in model.trainable_named_parameters().items()}
    res = removal_loss(model, task, examples, 2, shortlist=16, batch_size=16)
    assert res.plan.skip == PLANTED and res.method == "removal-loss"
    table = res.config["verification"]["measured"]
    assert len(table) == 15 and table[0]["plan"] == list(PLANTED)  # every plan measured, best first
    assert table[0]["metrics"]["loss"] < 1e-4 < table[1]["metrics"]["loss"]  # planted blocks are identities
    after = model.trainable_named_parameters()
    assert all(torch.equal(before[n], after[n]) for n in before)  # the adapters are restored (bert init: not zero)
    assert not any(layer.skipped for layer in model.candidates)


def test_removal_loss_greedy_shortlist_through_the_registry():
    from archskip import SearchConfig, TrainConfig
    from archskip.search import METHODS, SearchRun

    model, task, examples = setup(1, n=64)
    cfg = SearchConfig(k=2, method="removal-loss", shortlist=4, verify_examples=48)
    res = METHODS["removal-loss"](SearchRun(model, task, examples, cfg, TrainConfig(batch_size=16), seed=3, progress=False))
    table = res.config["verification"]
    assert res.plan.skip == PLANTED and table["examples"] == 48 and len(table["measured"]) == 4
    assert "block influence" in next(r for r in table["measured"] if r["plan"] == list(PLANTED))["sources"]


def test_removal_loss_refits_a_classifier_head_per_plan_and_restores_it():
    from conftest import classification_examples, make_bert, tiny_tokenizer

    from archskip import TaskConfig
    from archskip.search.removal import removal_loss
    from archskip.tasks import build_task

    torch.manual_seed(0)
    examples = classification_examples(64)
    model = SkipModel(make_bert(), AdapterConfig(hidden=8, skip_hidden=16))
    task = build_task(TaskConfig(max_length=16), tiny_tokenizer(), examples)
    task.attach_head(model)
    before = {n: p.detach().clone() for n, p in model.trainable_named_parameters().items()}
    res = removal_loss(model, task, examples, 1, batch_size=16, refit_steps=5)
    assert res.config["verification"]["head_refit_steps"] == 5
    assert len(res.config["verification"]["measured"]) == 4  # C(4, 1) plans
    after = model.trainable_named_parameters()
    assert all(torch.equal(before[n], after[n]) and after[n].requires_grad for n in before)
