"""The DAS search policy: one gate per candidate, k-subsets sampled without replacement.

p = sigmoid(g). A configuration is k indices drawn without replacement with weights p
(`torch.multinomial(p, k)`); a high gate means "more skippable". Two update rules:

- faithful (the paper; docs/method.md): M *distinct* configurations, r_m = exp(-L_m),
  b = mean(r), and for every i in configuration m: g_i += lr * (r_m - b) * p_i * (1 - p_i).
  `p(1 - p)` is the derivative of the sigmoid, not of the sampler's log-probability (B7 in docs/method.md): a
  heuristic bandit, kept because it is what the paper ran.
- exact: REINFORCE on the sampler that is actually used. Sequential sampling without replacement
  (Plackett-Luce) gives an ordered draw s with
      log P(s) = sum_j [ log w_{s_j} - log(sum_l w_l - sum_{t<j} w_{s_t}) ],  w = sigmoid(g).
  The M configurations are drawn i.i.d. (a configuration may repeat: that is what makes the average
  an estimate of the expectation), and each draw's baseline is the mean reward of the *other* M - 1
  draws (leave-one-out), which does not depend on that draw:
      g += lr * mean_m( (r_m - mean_{j != m} r_j) / scale * d log P(s_m) / dg ).
  This is an unbiased estimate of lr / scale * d E[r] / dg. `scale` is the spread of the advantages
  seen in *earlier* updates (a running RMS), so it does not depend on this update's draws either;
  only the first update, which has no history, scales by its own advantages.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ..plan import SkipPlan, check_k

Config = tuple[int, ...]  # one configuration: the candidate indices it skips (ordered as drawn in exact mode)


@dataclass
class PolicyUpdate:
    """What one update saw and did (kept in the search history)."""

    configs: list[Config]
    losses: list[float]
    rewards: list[float]
    baseline: float
    delta: list[float]  # the change of every gate
    scale: float | None = None  # exact: the reward scale the advantages were divided by


class SkipPolicy:
    def __init__(
        self,
        num_candidates: int,
        k: int,
        *,
        lr: float = 1.0,
        mode: str = "faithful",
        reward: str = "exp_neg_loss",
        seed: int = 0,
    ):
        check_k(k, num_candidates)
        if mode not in ("faithful", "exact"):
            raise ValueError(f"policy mode={mode!r}; expected 'faithful' or 'exact'")
        if reward not in ("exp_neg_loss", "neg_loss"):
            raise ValueError(f"reward={reward!r}; expected 'exp_neg_loss' or 'neg_loss'")
        self.num_candidates, self.k, self.lr, self.mode, self.reward = num_candidates, k, lr, mode, reward
        self.gates = torch.zeros(num_candidates, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.reward_scale: float | None = None  # exact: running RMS of the leave-one-out advantages
        self.scale_momentum = 0.9

    # ---- sampling -------------------------------------------------------------------------
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.gates)

    def sample(self) -> Config:
        """One configuration to train on: k indices without replacement, weights p."""
        if self.k == 0:
            return ()
        idx = torch.multinomial(self.probs(), self.k, replacement=False, generator=self.generator)
        return tuple(idx.tolist())

    def sample_uniform(self) -> Config:
        """k indices drawn uniformly without replacement (every k-subset equally likely), from the policy's generator
        so that the draw is part of its state (resume)."""
        if self.k == 0:
            return ()
        idx = torch.multinomial(torch.ones(self.num_candidates), self.k, replacement=False, generator=self.generator)
        return tuple(idx.tolist())

    def sample_candidates(self, m: int) -> list[Config]:
        """Configurations for one policy update: M distinct sorted subsets (faithful) or M i.i.d. draws (exact)."""
        if self.mode == "exact":
            return [self.sample() for _ in range(m)]
        m = min(m, math.comb(self.num_candidates, self.k))
        seen: list[Config] = []
        for _ in range(1000 * m):  # the reference re-drew forever; saturated gates could make that hang
            c = tuple(sorted(self.sample()))
            if c not in seen:
                seen.append(c)
                if len(seen) == m:
                    break
        return seen

    # ---- update ---------------------------------------------------------------------------
    def rewards_from_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.exp(-losses) if self.reward == "exp_neg_loss" else -losses

    def update(self, configs: list[Config], losses: list[float], costs: list[float] | None = None) -> PolicyUpdate:
        """Move the gates from the losses of `configs`; non-finite losses are dropped with a warning.

        `costs` (optional, one per config) are subtracted from the rewards (FLOPs-aware search).
        """
        keep = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
        if len(keep) < len(losses):
            bad = [configs[i] for i in range(len(losses)) if i not in keep]
            warnings.warn(f"non-finite reward loss for configuration(s) {bad}; they are left out of this update", stacklevel=2)
        before = self.gates.clone()
        cfgs = [configs[i] for i in keep]
        L = torch.tensor([losses[i] for i in keep], dtype=torch.float64)
        r = self.rewards_from_losses(L)
        if costs is not None:
            r = r - torch.tensor([costs[i] for i in keep], dtype=torch.float64)
        b = float(r.mean()) if len(keep) else float("nan")
        scale = None
        if len(keep) >= 2:
            if self.mode == "faithful":
                self._faithful_step(cfgs, r)
            else:
                scale = self._exact_step(cfgs, r)
        if not torch.isfinite(self.gates).all():  # never leave the policy broken
            self.gates = before
            warnings.warn("policy update produced non-finite gates; the update was undone", stacklevel=2)
        return PolicyUpdate(
            configs=[list(c) for c in cfgs], losses=L.tolist(), rewards=r.tolist(), baseline=b,
            delta=(self.gates - before).tolist(), scale=scale,
        )

    def _faithful_step(self, cfgs: list[Config], r: torch.Tensor) -> None:
        p = self.probs()  # frozen for the whole update, as the reference
        b = r.mean()
        for cfg, rm in zip(cfgs, r):
            for i in cfg:
                self.gates[i] += self.lr * (rm - b) * p[i] * (1 - p[i])

    def _exact_step(self, cfgs: list[Config], r: torch.Tensor) -> float | None:
        m = len(r)
        adv = r - (r.sum() - r) / (m - 1)  # leave-one-out baseline: independent of the draw it is used for
        rms = float(adv.pow(2).mean().sqrt())
        if rms <= 1e-12:
            return None  # every reward equal (e.g. M identical draws): no information, and the scale keeps its value
        scale = self.reward_scale if self.reward_scale is not None else rms
        self.reward_scale = rms if self.reward_scale is None else (
            self.scale_momentum * self.reward_scale + (1 - self.scale_momentum) * rms)
        with torch.enable_grad():  # callers score candidates under no_grad
            g = self.gates.clone().requires_grad_(True)
            objective = sum(a * log_prob(g, c) for a, c in zip(adv / scale, cfgs)) / m
            (grad,) = torch.autograd.grad(objective, g)
        self.gates += self.lr * grad
        return scale

    # ---- result and state -----------------------------------------------------------------
    def top_k(self) -> SkipPlan:
        """The plan: the k candidates with the largest gates (ties broken by lower index)."""
        order = sorted(range(self.num_candidates), key=lambda i: (-float(self.gates[i]), i))
        return SkipPlan(tuple(order[: self.k]), self.num_candidates)

    def state_dict(self) -> dict:
        return {"gates": self.gates.clone(), "generator": self.generator.get_state(), "reward_scale": self.reward_scale}

    def load_state_dict(self, state: dict) -> None:
        gates = state["gates"]
        if gates.shape != self.gates.shape:
            raise ValueError(f"policy state has {gates.numel()} gates; this policy has {self.num_candidates}")
        self.gates = gates.clone().to(torch.float64)
        self.generator.set_state(state["generator"])
        self.reward_scale = state.get("reward_scale")


def log_prob(gates: torch.Tensor, order: Config) -> torch.Tensor:
    """Log-probability that sequential sampling without replacement (weights sigmoid(gates)) draws `order`."""
    w = torch.sigmoid(gates)
    total = w.sum()
    lp = gates.new_zeros(())
    taken = gates.new_zeros(())
    for i in order:
        lp = lp + torch.log(w[i]) - torch.log(total - taken)
        taken = taken + w[i]
    return lp
