"""The search policy against hand computation and an independent reference (plain Python math)."""

import itertools
import math

import pytest
import torch

from archskip.plan import PlanError
from archskip.search.policy import SkipPolicy, log_prob


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_faithful_update_equals_hand_computation():
    g0 = [0.5, -0.2, 0.1, 0.0]
    pol = SkipPolicy(4, 2, lr=1.0, mode="faithful")
    pol.gates = torch.tensor(g0, dtype=torch.float64)
    configs = [(0, 1), (1, 2), (2, 3)]
    losses = [0.5, 1.0, 2.0]
    upd = pol.update(configs, losses)

    r = [math.exp(-x) for x in losses]
    b = sum(r) / 3
    expected = list(g0)
    for cfg, rm in zip(configs, r):
        for i in cfg:
            p = sigmoid(g0[i])
            expected[i] += 1.0 * (rm - b) * p * (1 - p)
    assert pol.gates.tolist() == pytest.approx(expected, abs=1e-12)
    assert upd.baseline == pytest.approx(b)
    assert upd.rewards == pytest.approx(r)
    # block 0 was only in the best configuration: its gate must rise (more skippable)
    assert pol.gates[0] > g0[0] and pol.gates[3] < g0[3]


def test_faithful_lr_scales_the_step():
    a, b = SkipPolicy(5, 2, lr=1.0), SkipPolicy(5, 2, lr=0.05)
    for pol in (a, b):
        pol.update([(0, 1), (2, 3), (1, 4)], [0.3, 0.9, 0.6])
    torch.testing.assert_close(b.gates, 0.05 * a.gates)


def _reference_log_prob(gates: list[float], order: tuple[int, ...]) -> float:
    w = [sigmoid(g) for g in gates]
    total, lp = sum(w), 0.0
    for i in order:
        lp += math.log(w[i]) - math.log(total)
        total -= w[i]
    return lp


def test_log_prob_is_a_distribution_over_ordered_draws():
    g = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.7], dtype=torch.float64)
    total = sum(math.exp(log_prob(g, o)) for o in itertools.permutations(range(5), 3))
    assert total == pytest.approx(1.0, abs=1e-12)
    for o in [(0, 1, 2), (4, 2, 0)]:
        assert float(log_prob(g, o)) == pytest.approx(_reference_log_prob(g.tolist(), o), abs=1e-12)


def test_multinomial_sampler_matches_log_prob():
    """The sampler the policy uses draws sets with the probabilities the exact update assumes."""
    gates = torch.tensor([1.5, -0.5, 0.0, 0.8], dtype=torch.float64)
    pol = SkipPolicy(4, 2, seed=3)
    pol.gates = gates.clone()
    counts: dict[tuple, int] = {}
    n = 40000
    for _ in range(n):
        s = tuple(sorted(pol.sample()))
        counts[s] = counts.get(s, 0) + 1
    for s in itertools.combinations(range(4), 2):
        p = sum(math.exp(_reference_log_prob(gates.tolist(), o)) for o in itertools.permutations(s))
        assert counts.get(s, 0) / n == pytest.approx(p, abs=0.01)


def test_exact_update_is_the_reinforce_gradient():
    g0 = [0.2, -0.3, 0.5, 0.0, 1.0]
    pol = SkipPolicy(5, 2, lr=0.5, mode="exact", reward="neg_loss")
    pol.gates = torch.tensor(g0, dtype=torch.float64)
    draws = [(2, 0), (1, 4), (0, 3), (4, 2)]
    losses = [0.4, 1.2, 0.9, 0.5]
    pol.update(draws, losses)

    r = [-x for x in losses]
    loo = [x - (sum(r) - x) / (len(r) - 1) for x in r]  # leave-one-out baseline
    rms = math.sqrt(sum(a * a for a in loo) / len(loo))  # the first update's scale: its own advantages
    adv = [a / rms for a in loo]

    def objective(g):
        return sum(a * _reference_log_prob(g, d) for a, d in zip(adv, draws)) / len(draws)

    eps = 1e-6
    grad = []
    for i in range(5):
        up, dn = list(g0), list(g0)
        up[i] += eps
        dn[i] -= eps
        grad.append((objective(up) - objective(dn)) / (2 * eps))
    assert pol.gates.tolist() == pytest.approx([g + 0.5 * d for g, d in zip(g0, grad)], abs=1e-7)


def test_exact_scale_comes_from_earlier_updates_only():
    pol = SkipPolicy(4, 2, lr=0.1, mode="exact", reward="neg_loss")
    first = pol.update([(0, 1), (2, 3), (0, 2)], [0.1, 0.5, 0.3])
    scale_after_first = pol.reward_scale
    assert first.scale == pytest.approx(scale_after_first)  # no history yet: its own spread
    second = pol.update([(0, 1), (2, 3), (1, 3)], [0.1, 5.0, 9.0])  # a much larger spread...
    assert second.scale == pytest.approx(scale_after_first)  # ...does not scale its own step
    assert pol.reward_scale > scale_after_first  # but enters the scale of the next one
    state = pol.state_dict()
    again = SkipPolicy(4, 2, lr=0.1, mode="exact", reward="neg_loss")
    again.load_state_dict(state)
    assert again.reward_scale == pol.reward_scale  # resumes with the same scale


def test_exact_estimator_is_unbiased():
    """Averaged over many updates from the same gates, the step is lr / scale times the true gradient of the
    expected reward, computed by enumerating every ordered draw (an independent reference in plain Python)."""
    n, k, lr, m = 4, 2, 1.0, 3
    g0 = [0.3, -0.4, 0.8, 0.0]
    reward = {c: -(0.2 * c[0] + 0.5 * c[1] + 0.1 * c[0] * c[1]) for c in itertools.combinations(range(n), k)}

    def expected_reward(g):
        return sum(math.exp(_reference_log_prob(g, d)) * reward[tuple(sorted(d))] for d in itertools.permutations(range(n), k))

    eps = 1e-6
    true_grad = [(expected_reward([x + eps * (i == j) for j, x in enumerate(g0)])
                  - expected_reward([x - eps * (i == j) for j, x in enumerate(g0)])) / (2 * eps) for i in range(n)]
    pol = SkipPolicy(n, k, lr=lr, mode="exact", reward="neg_loss", seed=1)
    total = [0.0] * n
    trials = 6000
    for _ in range(trials):
        pol.gates = torch.tensor(g0, dtype=torch.float64)
        pol.reward_scale = 1.0  # a scale from "earlier updates", fixed: the step is then lr x the estimate
        draws = pol.sample_candidates(m)
        pol.update(draws, [-reward[tuple(sorted(d))] for d in draws])
        total = [t + (g - g_0) for t, g, g_0 in zip(total, pol.gates.tolist(), g0)]
    mean_step = [t / trials for t in total]
    assert mean_step == pytest.approx([lr * g for g in true_grad], abs=0.01)
    assert max(abs(g) for g in true_grad) > 0.05  # the check is not vacuous


def test_exact_candidates_are_iid_draws_that_may_repeat():
    """Exact mode keeps repeated draws (unbiasedness needs i.i.d. draws); the faithful mode draws distinct ones."""
    pol = SkipPolicy(5, 2, mode="exact", seed=0)
    pol.gates = torch.tensor([6.0, 6.0, -6.0, -6.0, -6.0], dtype=torch.float64)  # nearly always (0, 1)
    draws = pol.sample_candidates(3)
    assert len(draws) == 3 and len({tuple(sorted(d)) for d in draws}) == 1
    upd = pol.update(draws, [0.5, 0.5, 0.5])
    assert len(upd.configs) == 3 and upd.delta == [0.0] * 5  # all equal rewards: no information, no step
    faithful = SkipPolicy(5, 2, mode="faithful", seed=0)
    faithful.gates = pol.gates.clone()
    assert len(set(faithful.sample_candidates(3))) == 3


def test_exact_mode_learns_a_planted_bandit():
    """Blocks 1 and 3 are free to skip; the others cost loss. Both rules find them."""
    for mode in ("faithful", "exact"):
        pol = SkipPolicy(6, 2, lr=1.0 if mode == "faithful" else 0.2, mode=mode, seed=0)
        for _ in range(300):
            cfgs = pol.sample_candidates(3)
            pol.update(cfgs, [0.1 + 0.5 * sum(i not in (1, 3) for i in c) for c in cfgs])
        assert pol.top_k().skip == (1, 3), mode


def test_faithful_candidates_are_distinct_and_sorted():
    pol = SkipPolicy(6, 2, seed=1)
    cands = pol.sample_candidates(3)
    assert len(cands) == 3 and len(set(cands)) == 3 and all(list(c) == sorted(c) for c in cands)
    small = SkipPolicy(3, 2, seed=1)
    assert sorted(small.sample_candidates(5)) == [(0, 1), (0, 2), (1, 2)]  # capped at C(3, 2)


def test_saturated_gates_do_not_hang():
    pol = SkipPolicy(6, 2, seed=0)
    pol.gates = torch.tensor([60.0, 60.0, -60.0, -60.0, -60.0, -60.0], dtype=torch.float64)
    cands = pol.sample_candidates(3)
    assert 1 <= len(cands) <= 3 and len(set(cands)) == len(cands)


def test_non_finite_reward_loss_is_left_out_with_a_warning():
    pol = SkipPolicy(4, 1)
    with pytest.warns(UserWarning, match=r"non-finite reward loss for configuration\(s\) \[\(1,\)\]"):
        upd = pol.update([(0,), (1,), (2,)], [0.5, float("nan"), 1.0])
    assert torch.isfinite(pol.gates).all()
    assert upd.configs == [[0], [2]]
    assert pol.gates[1] == 0.0 and pol.gates[0] > 0 > pol.gates[2]
    with pytest.warns(UserWarning):
        pol.update([(0,), (1,)], [float("inf"), float("nan")])
    assert torch.isfinite(pol.gates).all()


def test_sampling_is_deterministic_per_seed_and_resumable():
    a, b = SkipPolicy(8, 3, seed=5), SkipPolicy(8, 3, seed=5)
    assert [a.sample() for _ in range(20)] == [b.sample() for _ in range(20)]
    state = a.state_dict()
    nxt = [a.sample() for _ in range(5)]
    c = SkipPolicy(8, 3, seed=99)
    c.load_state_dict(state)
    assert [c.sample() for _ in range(5)] == nxt


def test_top_k_and_bad_arguments():
    pol = SkipPolicy(5, 2)
    pol.gates = torch.tensor([0.1, 0.3, 0.3, -1.0, 0.2], dtype=torch.float64)
    assert pol.top_k().skip == (1, 2)
    pol.gates = torch.zeros(5, dtype=torch.float64)
    assert pol.top_k().skip == (0, 1)  # ties: lower index first
    with pytest.raises(PlanError, match="k=5 must be < the number of candidates"):
        SkipPolicy(5, 5)
    with pytest.raises(PlanError, match="k=-1"):
        SkipPolicy(5, -1)
    with pytest.raises(ValueError, match="mode='greedy'"):
        SkipPolicy(5, 1, mode="greedy")
    with pytest.raises(ValueError, match="has 3 gates"):
        pol.load_state_dict(SkipPolicy(3, 1).state_dict())


def test_uniform_sampling_ignores_the_gates_and_resumes():
    """search.supernet_sampling='uniform': every k-subset equally often, however skewed the gates are."""
    policy = SkipPolicy(5, 2, mode="exact", seed=1)
    policy.gates = torch.tensor([6.0, -6.0, -6.0, -6.0, 6.0], dtype=torch.float64)  # the policy all but fixes (0, 4)
    counts = {c: 0 for c in itertools.combinations(range(5), 2)}
    draws = 5000
    for _ in range(draws):
        counts[tuple(sorted(policy.sample_uniform()))] += 1
    expected = draws / len(counts)  # 500 each; binomial sd ~21
    assert all(abs(n - expected) < 100 for n in counts.values()), counts
    state = policy.state_dict()
    ahead = [policy.sample_uniform() for _ in range(5)]
    policy.load_state_dict(state)
    assert [policy.sample_uniform() for _ in range(5)] == ahead
