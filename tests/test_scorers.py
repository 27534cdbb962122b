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
