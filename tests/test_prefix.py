"""Prefix states (search/prefix.py): a measured plan starts at its first skipped block from hidden states kept from
an earlier plan. The measurements must be those of whole forward passes, on every family, with fewer blocks run;
where the shortcut would change the outputs (a task reading every layer, a task that generates) it is not used."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import (
    TINY_DECODERS,
    TINY_TEXT_ENCODERS,
    TINY_VISION_ENCODERS,
    classification_examples,
    image_inputs,
    make_bert,
    make_tiny,
    text_inputs,
    tiny_tokenizer,
)

from archskip import AdapterConfig, SkipModel
from archskip.search.removal import removal_loss
from archskip.search.verify import PlanMeter, removed_as_identity
from archskip.tasks.base import Task
from archskip.tasks.classification import LabelVocab, SequenceClassification

ADAPTER = AdapterConfig(hidden=8, skip_hidden=16)


class OutputEnergy(Task):
    """The mean square of the model's first output (logits or last hidden states): reads every position."""

    name = "output_energy"

    def __init__(self, every_layer: bool = False, generate: bool = False, use_cache: bool = True, output: str | None = None):
        self.every_layer, self.generates_in_score, self.use_cache, self.output = every_layer, generate, use_cache, output

    def collate(self, examples):
        return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}

    def _per_example(self, model, batch) -> torch.Tensor:
        if self.generates_in_score:  # (greedy continuation with a KV cache, then a forward over it)
            ids = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=0, use_cache=self.use_cache)
            batch = {"input_ids": ids}
        if self.output:  # (a model whose output is no ModelOutput: METER's namespace)
            return getattr(model(**batch), self.output).float().square().flatten(1).mean(1)
        out = model(**batch, output_hidden_states=self.every_layer)
        if self.every_layer:  # (L + 1, B, T, C)
            return torch.stack(out.hidden_states).float().square().mean(dim=(0, 2, 3))
        return out[0].float().square().flatten(1).mean(1)  # (B,)

    def loss(self, model, batch):
        return self._per_example(model, batch).mean()

    def score(self, model, batch):
        per = self._per_example(model, batch)
        return {"n": len(per), "loss_sum": float(per.sum())}


def examples_for(name: str, n: int = 12) -> list[dict]:
    batch = image_inputs(batch=n) if name in TINY_VISION_ENCODERS else text_inputs(batch=n, length=9)
    if name in TINY_DECODERS:
        batch = {"input_ids": batch["input_ids"]}
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def count_block_calls(model: SkipModel) -> list[int]:
    calls = [0]
    for layer in model.candidates:
        layer.block.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def measure_all(model, task, examples, k: int, prefix_mb: float, **kw) -> tuple[dict, PlanMeter]:
    with removed_as_identity(model):
        meter = PlanMeter(model, task, examples, 4, device="cpu", prefix_mb=prefix_mb, **kw)
        plans = list(itertools.combinations(range(model.num_candidates), k))
        random.Random(0).shuffle(plans)  # (boundaries kept, then reused, in no particular order)
        measured = {p: meter(p) for p in plans}
    return measured, meter


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for plan in a:
        assert a[plan]["loss"] == pytest.approx(b[plan]["loss"], rel=1e-5), plan


@pytest.mark.parametrize("name", [*TINY_DECODERS, *TINY_TEXT_ENCODERS, *TINY_VISION_ENCODERS])
def test_plans_measured_from_kept_states_equal_whole_forward_passes_with_fewer_blocks_run(name):
    torch.manual_seed(0)
    model = SkipModel(make_tiny(name), ADAPTER)
    task, examples = OutputEnergy(), examples_for(name, n=32)  # (8 batches: the saving outweighs the checks)
    calls = count_block_calls(model)
    whole, _ = measure_all(model, task, examples, 1, prefix_mb=0)
    whole_calls, calls[0] = calls[0], 0
    short, meter = measure_all(model, task, examples, 1, prefix_mb=64)
    assert_same(short, whole)
    assert calls[0] < whole_calls  # (the checks' extra forwards included)
    summary = meter.prefix.summary()
    assert summary["rejected"] == [] and summary["boundaries"] and summary["block_passes_saved"] > 0
    assert [layer.skipped for layer in model.candidates] == [False] * model.num_candidates  # the plan is restored


def test_a_classification_head_refitted_per_plan_measures_alike():
    torch.manual_seed(0)
    examples = classification_examples(24)
    model = SkipModel(make_bert(layers=5), ADAPTER)
    task = SequenceClassification(tiny_tokenizer(), LabelVocab.from_examples(examples), max_length=16)
    task.attach_head(model)
    whole, _ = measure_all(model, task, examples, 2, prefix_mb=0, refit_steps=4)
    short, meter = measure_all(model, task, examples, 2, prefix_mb=64, refit_steps=4)
    assert_same(short, whole)
    assert meter.prefix.summary()["block_passes_saved"] > 0


def test_a_task_reading_every_layer_rejects_the_shortcut_and_still_measures_right():
    torch.manual_seed(0)
    model = SkipModel(make_tiny("llama"), ADAPTER)
    task, examples = OutputEnergy(every_layer=True), examples_for("llama")
    whole, _ = measure_all(model, task, examples, 1, prefix_mb=0)
    short, meter = measure_all(model, task, examples, 1, prefix_mb=64)
    assert_same(short, whole)
    summary = meter.prefix.summary()
    assert summary["rejected"] and summary["block_passes_saved"] == 0  # (boundaries kept later: never checked)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_task_that_generates_in_its_score_runs_every_plan_whole(use_cache):
    """Each plan generates its own tokens: the states entering a block differ between plans after the prompt
    (with a KV cache, or without one: then the calls' inputs differ)."""
    torch.manual_seed(0)
    model = SkipModel(make_tiny("llama"), ADAPTER)
    task, examples = OutputEnergy(generate=True, use_cache=use_cache), examples_for("llama", n=12)
    whole, _ = measure_all(model, task, examples, 1, prefix_mb=0)
    short, meter = measure_all(model, task, examples, 1, prefix_mb=64)
    assert_same(short, whole)
    summary = meter.prefix.summary()
    assert not meter.prefix.enabled and summary["off"] and summary["boundaries"] == []


def test_a_model_whose_candidates_are_not_one_chain_is_never_shortcut():
    """METER interleaves its two streams' blocks (0, 3, 1, 4, 2, 5) and cross-attends between them."""
    from test_meter import inputs, tiny_meter

    batch = inputs(8)
    examples = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    task = OutputEnergy(output="pooler_output")
    measured = []
    for mb in (0, 64):
        model = SkipModel(tiny_meter(), ADAPTER)
        with removed_as_identity(model):
            meter = PlanMeter(model, task, examples, 4, device="cpu", prefix_mb=mb)
            measured.append({p: meter(p) for p in [(1, 4), (2, 4), (2, 5)]})
    assert_same(*measured)
    assert "in order" in meter.prefix.summary()["off"] and meter.prefix.summary()["block_passes_saved"] == 0


def test_a_budget_too_small_for_one_boundary_keeps_nothing():
    torch.manual_seed(0)
    model = SkipModel(make_tiny("llama"), ADAPTER)
    _, meter = measure_all(model, OutputEnergy(), examples_for("llama"), 1, prefix_mb=1e-4)
    assert meter.prefix.summary()["boundaries"] == [] and meter.prefix.summary()["block_passes_saved"] == 0


def test_removal_loss_reports_its_prefix_states_and_chooses_as_without_them():
    torch.manual_seed(0)
    model = SkipModel(make_tiny("llama"), ADAPTER)
    task, examples = OutputEnergy(), examples_for("llama", n=16)
    a = removal_loss(model, task, examples, 2, shortlist=4, batch_size=4, prefix_mb=0)
    b = removal_loss(model, task, examples, 2, shortlist=4, batch_size=4, prefix_mb=64)
    assert a.plan == b.plan
    assert [m["plan"] for m in a.config["verification"]["measured"]] == [m["plan"] for m in b.config["verification"]["measured"]]
    assert b.config["verification"]["prefix_states"]["block_passes_saved"] > 0
    assert a.config["verification"]["prefix_states"]["block_passes_saved"] == 0


def test_a_budget_for_one_boundary_keeps_the_most_recently_used_one_and_measures_alike():
    torch.manual_seed(0)
    model = SkipModel(make_tiny("llama"), ADAPTER)
    task, examples = OutputEnergy(), examples_for("llama")  # one boundary: 12 x 9 tokens x 32 floats = 13.5 KiB
    whole, _ = measure_all(model, task, examples, 1, prefix_mb=0)
    short, meter = measure_all(model, task, examples, 1, prefix_mb=20 / 1024)
    assert_same(short, whole)
    assert len(meter.prefix.summary()["boundaries"]) == 1


def test_outputs_compare_through_namespaces_and_never_agree_on_nothing():
    from types import SimpleNamespace

    from archskip.search.prefix import same_outputs

    t = torch.ones(2, 3)
    assert same_outputs(SimpleNamespace(a=t, b=None), SimpleNamespace(a=t.clone(), b=None))
    assert not same_outputs(SimpleNamespace(a=t), SimpleNamespace(a=t + 1e-2))
    assert not same_outputs(SimpleNamespace(b=None), SimpleNamespace(b=None))  # (nothing compared)
    assert not same_outputs((t,), (t, t))
