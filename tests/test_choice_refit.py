"""search/choice_refit.py: the options' cross-entropy after a cross-fitted temperature and option biases."""

import threading

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from archskip.search.choice_refit import FOLDS, RIDGE, gathered, refit_choice_losses


def _logits(n=40, options=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    gold = torch.randint(0, options, (n,), generator=g)
    logits = torch.randn(n, options, generator=g) + 1.5 * torch.nn.functional.one_hot(gold, options)  # informative
    return logits, gold


def _reference(logits, gold, folds=FOLDS):
    """Each fold's fit by scipy's BFGS on the same objective, written out in numpy."""
    z, y = logits.double().numpy(), gold.numpy()
    n, o = z.shape
    fold = np.arange(n) % folds
    out = np.empty(n)

    def ce(params, z, y):
        s = params[0] * z + params[1:]
        s = s - s.max(1, keepdims=True)
        return -(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1)))

    for f in range(folds):
        tr, te = fold != f, fold == f
        objective = lambda p: ce(p, z[tr], y[tr]).mean() + RIDGE * ((p[0] - 1) ** 2 + (p[1:] ** 2).sum())  # noqa: E731
        fit = minimize(objective, np.r_[1.0, np.zeros(o)], method="BFGS", options={"gtol": 1e-10})
        out[te] = ce(fit.x, z[te], y[te])
    return out


def test_the_refit_matches_an_independent_fit_fold_by_fold():
    logits, gold = _logits()
    got = refit_choice_losses(logits, gold)
    assert got.shape == (40,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _reference(logits, gold), rtol=1e-5, atol=1e-6)


def test_a_plans_lean_between_the_answers_is_refitted_away_but_not_how_well_it_separates_them():
    """A bias towards one option and an over-confident temperature change the plain cross-entropy a lot and the
    re-fitted one hardly; shuffling which example gets which logits (no separation left) raises it to chance."""
    logits, gold = _logits(n=200, options=2, seed=1)
    leaning = 3.0 * logits + torch.tensor([4.0, -2.0])
    plain = lambda z: float(torch.nn.functional.cross_entropy(z, gold))  # noqa: E731
    assert plain(leaning) > plain(logits) + 0.3
    base, lean = float(refit_choice_losses(logits, gold).mean()), float(refit_choice_losses(leaning, gold).mean())
    assert lean == pytest.approx(base, abs=0.01)
    shuffled = float(refit_choice_losses(logits[torch.randperm(200, generator=torch.Generator().manual_seed(0))], gold).mean())
    assert shuffled > base + 0.2 and shuffled == pytest.approx(np.log(2), abs=0.05)


def test_too_few_examples_to_cross_fit_are_refused():
    with pytest.raises(ValueError, match="at least 2 measured examples"):
        refit_choice_losses(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_every_process_gets_every_processs_rows_in_process_order():
    """Two processes' shares (3 and 2 rows), each in its own thread, summed across the two by a barrier."""
    shares = [torch.arange(6.0).reshape(3, 2), 10 + torch.arange(4.0).reshape(2, 2)]
    barrier, sent, got = threading.Barrier(2, timeout=30), [[], []], [None, None]

    def run(rank):
        def reduce(t):
            call = len(sent[rank])  # (the other thread may already have sent its next tensor: index by call)
            sent[rank].append(t)
            barrier.wait()
            return sent[0][call] + sent[1][call]
        got[rank] = gathered(shares[rank], reduce, rank=rank, world=2)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rows in got:
        assert torch.equal(rows, torch.cat(shares).double())
    assert gathered(shares[0], None, rank=0, world=1) is shares[0]
