import torch
from conftest import text_inputs
from torch import nn

from archskip import AdapterConfig, SkipModel, SkipPlan
from archskip.profile import count_flops, measure_latency, parameter_counts, ratios


def test_flops_of_a_linear_layer():
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    assert count_flops(lambda: lin(x)) == 2 * 4 * 16 * 8


def test_pruning_cuts_flops_in_proportion():
    from conftest import DEC
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(LlamaConfig(**{**DEC, "hidden_size": 128, "intermediate_size": 256})).eval()
    model = SkipModel(base, AdapterConfig.lavin(hidden=2))  # adapters ~1% of a block
    x = text_inputs()
    full = count_flops(lambda: model(**x))
    head = count_flops(lambda: model.base.lm_head(torch.zeros(2, 7, 128)))
    per_block = (full - head) / 5
    model.apply_plan(SkipPlan((1, 2), 5))
    skipped = count_flops(lambda: model(**x))
    model.prune()
    pruned = count_flops(lambda: model(**x))
    assert pruned == skipped  # the wrapped model already did not run the skipped blocks
    assert abs((full - pruned) - 2 * per_block) / per_block < 0.05


def test_latency_is_measured_interleaved():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    lat = measure_latency(fns, warmup=1, repeats=5)
    assert set(lat) == {"a", "b"} and all(v.samples == 5 and v.median_s >= 0 for v in lat.values())
    timed = calls[2:]
    assert [timed[i : i + 2] for i in range(0, 10, 2)] and all(set(timed[i : i + 2]) == {"a", "b"} for i in range(0, 10, 2))
    assert ratios(lat, "a")["a"] == 1.0


def test_parameter_counts():
    lin = nn.Linear(3, 2)
    lin.bias.requires_grad_(False)
    assert parameter_counts(lin) == (6, 8)
