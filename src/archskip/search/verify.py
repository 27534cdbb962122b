"""The verified search's last step: measure whole plans and keep the best one.

The bandit's gates summarise many small, noisy reward batches; at the end of the search plans are
measured directly, in eval mode, by the task's selection metric (by default the loss) on the held-out
slice topped up with training examples. Two measurements (`search.verify_on`, docs/method.md):

- 'frozen' (default): the frozen base model with the plan's blocks removed as identities and every
  adapter off (`removed_as_identity`), the task head re-fitted per plan. It predicts a plan's accuracy
  after its own training better than the supernet does on decoders (docs/benchmarks.md);
- 'supernet': the trained supernet, whose shared adapters serve every plan.

A budget of `search.shortlist` plans is measured:

1. every plan, when there are no more than the budget (C(N, k) <= shortlist);
2. otherwise the bandit's top-k plan, last-k and the block-influence plan first, then, while budget
   remains, the unmeasured one-swap neighbours of the best plan measured so far, most promising first
   (by the gates, or by block influence when measuring the frozen model): a greedy local search that the
   measurements decide.

The best measured plan is the result; every measurement is kept.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Sequence

import torch

from ..data.loader import batches_per_rank, make_loader
from ..errors import ConfigError
from ..nn_utils import eval_mode
from ..skipping import SkipModel
from ..tasks.base import Task, to_device
from .choice_refit import gathered, refit_choice_losses
from .prefix import NotAPrefix, PrefixStates, same_outputs

Plan = tuple[int, ...]


def neighbours(plan: Plan, n: int, gates: Sequence[float]) -> list[Plan]:
    """Plans that swap one skipped candidate for one kept candidate, highest gate sum first."""
    kept = [i for i in range(n) if i not in plan]
    out = {tuple(sorted((set(plan) - {i}) | {j})) for i in plan for j in kept}
    return sorted(out, key=lambda p: (-sum(gates[i] for i in p), p))


def top_k(gates: Sequence[float], k: int) -> Plan:
    order = sorted(range(len(gates)), key=lambda i: (-gates[i], i))
    return tuple(sorted(order[:k]))


def _moved(x, device):
    """A model output (tensor, ModelOutput/dict, tuple) with its tensors on `device`; the original is left as is."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        out = copy.copy(x)  # a ModelOutput stays a ModelOutput (attribute access included)
        for k in list(out.keys()):
            out[k] = _moved(out[k], device)
        return out
    if isinstance(x, (tuple, list)):
        return type(x)(_moved(v, device) for v in x)
    return x


@contextlib.contextmanager
def removed_as_identity(model: SkipModel):
    """Inside: the frozen base model in which a skipped block is the identity (replacement adapters output
    zero, every other adapter bypassed); the adapters' weights are restored on exit."""
    saved = []
    with model.adapters_disabled():
        try:
            with torch.no_grad():
                for layer in model.candidates:
                    if layer.replacement is not None:
                        for p in layer.replacement.up.parameters():
                            saved.append((p, p.detach().clone()))
                            p.zero_()
            yield model  # (not under no_grad: the head re-fit trains)
        finally:
            with torch.no_grad():
                for p, value in saved:
                    p.copy_(value)


def check_verify_metric(task, metric: str) -> None:
    """Refuse, before any work, a `search.verify_metric` the task cannot measure."""
    if metric == "text_loss" and not task.models_text:
        raise ConfigError(f"search.verify_metric='text_loss' is the next-token loss of a causal language model's "
                          f"text; the {task.name} task does not model text. Use search.verify_metric='task'")
    if metric in ("choice_loss", "choice_refit_loss") and getattr(task, "choice", None) is None:
        options = getattr(task, "option_letters", None)
        why = (f"its options {list(options)!r} do not differ in one token after the answer prefix" if options
               else "it has no fixed option set (option_letters)")
        raise ConfigError(f"search.verify_metric={metric!r} needs a generative task whose answers are options; "
                          f"the {task.name} task cannot: {why}. Use search.verify_metric='task'")


class PlanMeter:
    """The task's metrics of a plan on fixed measurement batches, in eval mode, summed across processes (so
    every process decides alike); each plan is measured once.

    The supernet shares one task head across every plan, and a plan that changes the final
    representation more (e.g. skipping the last blocks) is judged by a head fitted to the others.
    With `refit_steps`, the head is re-fitted to each plan, as the final training would, by two-fold
    cross-fitting: the backbone runs once over the measurement batches (its outputs are recorded), a
    head fitted for `refit_steps` micro-batches on one half's recorded outputs (everything else frozen)
    is scored on the other half and vice versa, then the head is restored. The backbone never runs for
    the re-fit, so a plan costs one forward pass over the measurement examples, or less: with `prefix_mb`, a plan
    starts at its first skipped block from hidden states kept from an earlier plan (search/prefix.py)."""

    def __init__(self, model: SkipModel, task: Task, examples, batch_size: int, *, device, autocast=None,
                 rank: int = 0, world: int = 1, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 refit_steps: int = 0, refit_lr: float = 1e-3, known: dict[Plan, dict] | None = None,
                 on_measured: Callable[[Plan, dict], None] | None = None, prefix_mb: float = 0.0,
                 batches: list | None = None, metric: str = "task"):
        self.model, self.task, self.device = model, task, device
        # what ranks plans: the task's selection metric, or a metric of the task's scores (search.verify_metric)
        self.metric = task.selection_metric if metric == "task" else metric
        # batches and recorded outputs stay on the CPU and move to the device when used (images x 1024 examples);
        # `batches`: this process's share already collated (by a caller that hashed them)
        self.batches = batches if batches is not None else list(
            make_loader(examples, task.collate, batch_size, rank=rank, world=world))
        if not self.batches:
            raise ValueError(f"no measurement batches on process {rank} of {world}: {len(examples)} examples for "
                             f"batches of {batch_size}; raise search.verify_examples")
        # the examples measured on all processes together (several processes leave out the batches that do not
        # divide among them)
        self.examples = min(len(examples), batches_per_rank(len(examples), batch_size, world) * world * batch_size)
        self.autocast, self.reduce, self.rank, self.world = autocast, reduce, rank, world
        self.metrics: dict[Plan, dict[str, float]] = dict(known or {})  # (a resumed run's earlier measurements)
        self.on_measured = on_measured  # called after each new measurement (a resumable run records it)
        self.refit_steps = refit_steps if model.head is not None and len(self.batches) >= 2 else 0
        self.refit_lr = refit_lr
        self.prefix = PrefixStates(model, prefix_mb, batches=len(self.batches))

    def __call__(self, plan: Plan) -> dict[str, float]:
        if plan not in self.metrics:
            self.model.set_skip(plan)
            try:
                start = self._start(plan)
                with self.prefix.running(plan, start=start):
                    sums = self._measure()
            except NotAPrefix as e:  # e.g. the task's score generates: every plan runs the whole model
                self.prefix.disable(str(e))
                self.model.set_skip(plan)
                start, sums = 0, self._measure()
            self.prefix.measured(plan, start, len(self.batches))
            if self.reduce is not None:  # every process measured its share: add them up, in a fixed key order
                keys = sorted(sums)
                total = self.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device))
                sums = dict(zip(keys, total.tolist()))
            self.metrics[plan] = self.task.finalize(sums)
            if self.on_measured is not None:
                self.on_measured(plan, self.metrics[plan])
        return self.metrics[plan]

    def _measure(self) -> dict[str, float]:
        if self.metric == "choice_refit_loss":
            return self._choices_refitted()
        return self._cross_fitted() if self.refit_steps else self._scores([(b, None) for b in self.batches])

    def _choices_refitted(self) -> dict[str, float]:
        """The task's sums and 'choice_refit_loss_sum' (search/choice_refit.py; the options' re-fit is the head's)."""
        with self.task.recording_choices() as rows:
            sums = self._scores([(b, None) for b in self.batches])
        width = len(self.task.choice[1]) + 1  # (options' logits, right option)
        mine = torch.cat([torch.cat([o.double(), g.double()[:, None]], 1) for o, g in rows]) if rows else \
            torch.zeros(0, width, dtype=torch.float64)
        every = gathered(mine.to(self.device), self.reduce, self.rank, self.world).cpu()  # (N, O + 1)
        losses = refit_choice_losses(every[:, :-1], every[:, -1].long())
        # (the sums are added up across processes: the whole measurement's sum is counted once, on process 0)
        sums["choice_refit_loss_sum"] = float(losses.sum()) if self.rank == 0 or self.reduce is None else 0.0
        return sums

    def _start(self, plan: Plan) -> int:
        """Where `plan` starts (search/prefix.py). The first plan to start at a boundary checks it: the model's
        outputs on the first batch must be those of the whole forward pass, or the boundary is dropped."""
        start = self.prefix.start(plan)
        while self.prefix.needs_check(start):
            self.prefix.batch = 0
            self.model.set_skip((start,))  # (every later block runs: one reading a replaced output would show)
            with self.prefix.watching_order():
                whole = self._recorded(self.batches[0])
            if self.prefix.enabled:
                with self.prefix.running((start,), start=start, record=False):
                    short = self._recorded(self.batches[0])
                self.prefix.checked(start, same_outputs(whole, short))
            self.prefix.counted_check(start)
            self.model.set_skip(plan)
            start = self.prefix.start(plan)
        return start

    def selection(self, plan: Plan) -> tuple[float, float]:
        """(the task's selection metric, higher is better; minus the loss): how plans are ranked."""
        m, name = self(plan), self.metric
        if name not in m:
            raise ValueError(f"search.verify_metric={name!r}: the {self.task.name} task's measurements have no {name!r} "
                             f"(they have {sorted(m)})")
        return (-m[name] if name.endswith("loss") else m[name]), -m["loss"]

    def _autocast(self):
        return self.autocast() if self.autocast else contextlib.nullcontext()

    @contextlib.contextmanager
    def _replaying(self, outputs: list | None):
        """Inside: calls of the model return `outputs` (its recorded outputs for one batch, in call order)
        instead of running it; with None, the model runs."""
        if outputs is None:
            yield
            return
        calls = iter(outputs)
        used = []

        def replay(*args, **kwargs):
            out = next(calls, None)
            if out is None:
                raise RuntimeError(f"{type(self.task).__name__} called the model more often in loss/score than recorded")
            used.append(1)
            return _moved(out, self.device)

        self.model.forward = replay  # an instance attribute shadows the method
        try:
            yield
        finally:
            del self.model.forward
        if len(used) != len(outputs):
            raise RuntimeError(f"{type(self.task).__name__} used {len(used)} of {len(outputs)} recorded model calls: "
                               "its loss and score must call the model alike for the head re-fit")

    @torch.no_grad()
    def _recorded(self, batch) -> list:
        """The model's outputs for `batch`, every call in order (a task may call the model more than once)."""
        outputs, forward = [], self.model.forward

        def record(*args, **kwargs):
            out = forward(*args, **kwargs)
            outputs.append(_moved(out, "cpu"))
            return out

        self.model.forward = record
        try:
            with eval_mode(self.model), self._autocast():
                self.task.score(self.model, to_device(batch, self.device))
        finally:
            del self.model.forward
        return outputs

    @torch.no_grad()
    def _scores(self, batches: list) -> dict[str, float]:
        sums: dict[str, float] = {}
        with eval_mode(self.model), self._autocast():
            for i, (batch, outputs) in enumerate(batches):
                if outputs is None:  # (the model runs on self.batches[i]; with recorded outputs it does not run)
                    self.prefix.batch = i
                with self._replaying(outputs):
                    for k, v in self.task.score(self.model, to_device(batch, self.device)).items():
                        sums[k] = sums.get(k, 0.0) + float(v)
        return sums

    def _cross_fitted(self) -> dict[str, float]:
        recorded = []
        for i, b in enumerate(self.batches):
            self.prefix.batch = i
            recorded.append((b, self._recorded(b)))
        halves = recorded[0::2], recorded[1::2]
        sums: dict[str, float] = {}
        for fit, score in (halves, halves[::-1]):
            with self._refitted_head(fit):
                for k, v in self._scores(score).items():
                    sums[k] = sums.get(k, 0.0) + v
        return sums

    @contextlib.contextmanager
    def _refitted_head(self, recorded: list):
        params = self.model.trainable_named_parameters()
        head = {n: p.detach().clone() for n, p in params.items() if n.startswith("head.")}
        for n, p in params.items():
            p.requires_grad_(n.startswith("head."))
        optimizer = torch.optim.AdamW([params[n] for n in head], lr=self.refit_lr, weight_decay=0.0)
        try:
            with eval_mode(self.model):
                for step in range(self.refit_steps):
                    batch, outputs = recorded[step % len(recorded)]
                    with self._replaying(outputs), self._autocast():
                        loss = self.task.loss(self.model, to_device(batch, self.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.requires_grad_(True)
                    if n in head:
                        p.copy_(head[n])
                        p.grad = None


def verify(meter: PlanMeter, n: int, k: int, gates: Sequence[float], proposals: dict[str, Plan],
           budget: int, penalty: Callable[[Plan], float] | None = None,
           gates_name: str = "gates top-k", steer: Sequence[float] | None = None) -> tuple[Plan, list[dict]]:
    """(the best measured plan, every measurement with where the plan came from).

    The top-k plan of `gates` is measured first, recorded as coming from `gates_name`. The local search tries
    one-swap neighbours in the order of `steer` (default: `gates`), most skippable first. Plans are ranked by
    the task's selection metric (then the loss); `penalty(plan)` is subtracted from the metric (the
    FLOPs-aware search's cost of the compute a plan keeps)."""
    steer = gates if steer is None else steer
    sources: dict[Plan, list[str]] = {}

    def key(plan: Plan) -> tuple:
        metric, neg_loss = meter.selection(plan)
        return (-(metric - (penalty(plan) if penalty else 0.0)), -neg_loss, plan)  # ascending: best first

    def measure(plan: Plan, source: str) -> None:
        sources.setdefault(plan, []).append(source)
        meter(plan)

    if math.comb(n, k) <= budget:
        for plan in itertools.combinations(range(n), k):
            measure(plan, "all plans")
    else:
        measure(top_k(gates, k), gates_name)
        for name, plan in proposals.items():
            if len(sources) < budget:
                measure(tuple(sorted(plan)), name)
        while len(sources) < budget:
            best = min(sources, key=key)
            fresh = [p for p in neighbours(best, n, steer) if p not in sources]
            if not fresh:
                break
            measure(fresh[0], f"one swap from {list(best)}")
    ranked = sorted(sources, key=key)
    table = [{"plan": list(p), "metrics": meter(p), "selection": meter.metric,
              "penalty": penalty(p) if penalty else 0.0, "sources": sources[p]} for p in ranked]
    return ranked[0], table


def measured_plans(verification: dict) -> tuple[str, list[tuple[Plan, float]]]:
    """(the selection metric, [(plan, its measured value)] best first) from a search result's
    `config["verification"]` table, as `verify` wrote it."""
    table = verification.get("measured", [])
    metric = table[0]["selection"] if table else "loss"
    return metric, [(tuple(m["plan"]), m["metrics"][metric]) for m in table]
