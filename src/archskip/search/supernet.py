"""Supernet training: adapters trained under a uniformly random k-subset per micro-batch, no policy.

`Trainer` hooks (see `train.StepHooks`); exhaustive search trains this way before it scores every plan.
"""

from __future__ import annotations

from ..skipping import SkipModel
from .policy import SkipPolicy


class RandomConfigs:
    """StepHooks: a uniformly random k-subset of the candidates before every micro-batch."""

    def __init__(self, model: SkipModel, k: int, seed: int):
        self.model, self.policy = model, SkipPolicy(model.num_candidates, k, seed=seed)

    def before_batch(self, micro: int, epoch: float) -> None:
        self.model.set_skip(self.policy.sample())

    def after_batch(self, micro: int, epoch: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
