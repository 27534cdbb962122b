"""METER with DAS: the dual-stream model, stream-wise skipping, its tasks, FLOPs-aware search, CLI end to end."""

import json

import pytest
import torch
from conftest import VOCAB_SIZE, assert_a_step_moves_only_trainables, perturb_trainable, record_sites, tiny_tokenizer
from test_vilt import arrows  # noqa: F401  (the tiny arrow fixture)
from torch import nn
from transformers import CLIPVisionConfig, RobertaConfig

from archskip import AdapterConfig, SearchConfig, SkipModel, SkipPlan, TaskConfig, TrainConfig
from archskip.cli import main
from archskip.data.images import SquareImageSpec
from archskip.data.vilt_arrow import NLVR2Dataset, VQADataset
from archskip.models.meter import FusionLayer, METERConfig, METERModel, save_meter
from archskip.profile import block_costs
from archskip.search import run_search
from archskip.tasks import assemble, build_task


def tiny_config() -> METERConfig:
    return METERConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=32, patch_size=8).to_dict(),
        text_config=RobertaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, pad_token_id=0, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_dict(),
        hidden_size=32, num_fusion_layers=3, num_attention_heads=4, intermediate_size=64, initializer_range=0.2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # no dropout: overfitting tests stay deterministic


def tiny_meter() -> METERModel:
    torch.manual_seed(0)
    m = METERModel(tiny_config()).eval()
    m.init_classifier_token()
    return m


def inputs(n=2):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB_SIZE, (n, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(n, 3, 32, 32, generator=g)}


def test_candidates_are_the_two_streams_in_reference_order():
    model = SkipModel(tiny_meter(), AdapterConfig(hidden=8, skip_hidden=16))
    assert model.num_candidates == 6 and model.layers_path == "fusion"
    assert all(isinstance(layer.block, FusionLayer) for layer in model.candidates)
    assert set(model.candidates[0].sites) == {"attn", "cross", "ffn"}


def test_no_skip_zero_init_equals_the_unadapted_model():
    base = tiny_meter()
    x = inputs()
    with torch.no_grad():
        ref = base(**x).pooler_output
        model = SkipModel(base, AdapterConfig(hidden=8, skip_hidden=16, init="zero", skip_init="zero"))
        out = model(**x).pooler_output
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("skip", [(0,), (3,), (1, 4), (0, 1, 2), (3, 4, 5)])
def test_pruned_equals_wrapped_stream_by_stream(skip):
    model = SkipModel(tiny_meter(), AdapterConfig(hidden=8, skip_hidden=16))
    perturb_trainable(model)
    model.apply_plan(SkipPlan(skip, 6))
    x = inputs()
    with torch.no_grad():
        wrapped = model(**x).pooler_output
        total = model.parameter_counts()[1]
        model.prune()
        pruned = model(**x).pooler_output
    torch.testing.assert_close(pruned, wrapped, rtol=0, atol=0)
    assert model.parameter_counts()[1] < total
    assert all(model.candidates[i].block is None for i in skip)


def test_skipping_one_stream_changes_only_what_it_should():
    """Skipping the last image-side half-layer leaves the text stream's final state untouched."""
    model = SkipModel(tiny_meter(), AdapterConfig(hidden=8, skip_hidden=16))
    x = inputs()
    with torch.no_grad():
        full = model(**x)
        model.set_skip([5])  # image side, last stage
        skipped = model(**x)
    torch.testing.assert_close(skipped.text_feats, full.text_feats, rtol=0, atol=0)
    assert not torch.allclose(skipped.image_feats, full.image_feats)


# Where a fusion half-layer's sub-layers meet its stream, from FusionLayer.forward and transformers' BertAttention,
# BertSelfOutput and BertOutput (not from backbones/meter.py). With x the half-layer's own stream, y the other's:
#   a = LN1(dense1(self_attn(x)) + x);  c = LN2(dense2(cross_attn(a, y)) + a);  out = LN3(dense3(inter(c)) + c).
# The adapters (docs/meter.md): f_attn(x) into LN1's input and f_cross(a) into LN2's, beside the residual; f_ffn(c)
# added to the half-layer's output, after LN3.
METER_TAPS = dict(
    ins={"A": "attention.output.LayerNorm", "C": "crossattention.output.LayerNorm", "F": "output.LayerNorm"},
    outs={"a": "attention", "c": "crossattention", "dA": "attention.output.dense",
          "dC": "crossattention.output.dense", "dF": "output.dense", "LN3": "output.LayerNorm"},
)


@pytest.mark.parametrize("index, tokens", [(0, 6), (3, 1 + 16)], ids=["text", "image"])
def test_adapters_read_and_add_to_the_residual_stream(index, tokens):
    """Stage 0 of each stream: text half-layer 0 (6 tokens) and image half-layer 0 (CLS + 4 x 4 patches)."""
    model = SkipModel(tiny_meter(), AdapterConfig(hidden=8, skip_hidden=16))
    perturb_trainable(model, scale=0.5)
    assert set(model.candidates[index].sites) == {"attn", "cross", "ffn"}
    x = inputs()
    close = dict(rtol=1e-5, atol=1e-5)
    runs = {active: record_sites(model, index, lambda: model(**x), set(active), **METER_TAPS)
            for active in ((), ("attn",), ("cross",), ("ffn",), ("attn", "cross", "ffn"))}
    for active, r in runs.items():
        assert r["x"].shape[0] == 2 * tokens  # the half-layer reads its own stream
        torch.testing.assert_close(r["x"], runs[()]["x"], rtol=0, atol=0)  # stage 0 reads the embeddings in every run
        d = {}  # what each running adapter adds, once checked that it reads the stream
        for site, stream in (("attn", "x"), ("cross", "a"), ("ffn", "c")):
            d[site] = 0
            if site in active:
                torch.testing.assert_close(r[f"in_{site}"], r[stream], **close)
                d[site] = r[f"d_{site}"]
        # post-LN self- and cross-attention: the adapter's output goes into the post-LayerNorm with the residual
        torch.testing.assert_close(r["A"], r["dA"] + r["x"] + d["attn"], **close)
        torch.testing.assert_close(r["C"], r["dC"] + r["a"] + d["cross"], **close)
        # the FFN: its post-LayerNorm sees the sub-layer and the residual only; the adapter adds after it
        torch.testing.assert_close(r["F"], r["dF"] + r["c"], **close)
        torch.testing.assert_close(r["out"], r["LN3"] + d["ffn"], **close)


def test_a_step_moves_only_adapters_and_head():
    """Both streams' adapters and replacements train (one half-layer of each skipped); no base weight moves."""
    model = SkipModel(tiny_meter(), AdapterConfig(hidden=8, skip_hidden=16))
    model.head = nn.Linear(model.base.config.pooled_size, 2)
    model.apply_plan(SkipPlan((1, 4), 6))
    perturb_trainable(model)
    before = {n: p.detach().clone() for n, p in model.trainable_named_parameters().items()}
    x = inputs()
    assert_a_step_moves_only_trainables(model, lambda m: m.head(m(**x).pooler_output).logsumexp(-1).mean())
    moved = {n.split(".")[1] for n, p in model.trainable_named_parameters().items()
             if n.startswith("candidates.") and not torch.equal(p, before[n])}
    assert moved == {str(i) for i in range(6)}


def test_image_side_blocks_cost_more_flops():
    model = SkipModel(tiny_meter(), AdapterConfig(hidden=8, skip_hidden=16))
    task = build_task(TaskConfig(name="vqa", num_labels=3, image_size=64, image_resize="square", image_norm="clip"),
                      tiny_tokenizer())
    task.attach_head(model)
    batch = task.collate([{"image": torch.zeros(3, 64, 64), "text": "w1 w2", "labels": [0], "scores": [1.0]}])
    costs = block_costs(model, task, batch)
    assert len(costs) == 6 and min(costs) > 0
    assert min(costs[3:]) > 2 * max(costs[:3])  # 65 image tokens vs 4 text tokens


def test_flops_aware_reward_moves_the_plan_to_expensive_blocks():
    from test_search import PLANTED, setup

    costs = [1.0] * 6
    costs[2] = costs[3] = 20.0  # pretend blocks 2 and 3 are by far the most expensive
    plans = {}
    for w in (0.0, 1.0):
        model, task, examples = setup(0)
        cfg = SearchConfig(k=2, samples=3, update_every=1, warmup_epochs=1.0, cost_weight=w)
        plans[w] = run_search(model, task, examples, cfg, TrainConfig(epochs=3, batch_size=32, lr=3e-3), seed=0,
                              progress=False, block_costs=costs).plan.skip
    assert plans[0.0] == PLANTED and plans[1.0] == (2, 3)


@pytest.fixture(scope="module")
def meter_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-meter")
    save_meter(tiny_meter(), d)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_saved_directory_loads_by_path(meter_dir):
    from archskip import ModelConfig
    from archskip.models.load import load_pretrained

    m, tok, _ = load_pretrained(ModelConfig(name_or_path=str(meter_dir)))
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(m(**x).pooler_output, tiny_meter()(**x).pooler_output)
    assert tok is not None


@pytest.mark.parametrize("task_name", ["vqa", "nlvr2"])
def test_meter_tasks_overfit(arrows, task_name):  # noqa: F811
    spec = SquareImageSpec(32, "clip")
    ds = VQADataset(arrows, "vqav2_train", spec.transform(), num_answers=3) if task_name == "vqa" else \
        NLVR2Dataset(arrows, "nlvr2_dev", spec.transform())
    task = build_task(TaskConfig(name=task_name, num_labels=3 if task_name == "vqa" else None, image_size=32,
                                 image_resize="square", image_norm="clip", max_length=16), tiny_tokenizer(), ds)
    from archskip import ModelConfig

    model = assemble(tiny_meter(), task, AdapterConfig(hidden=8, skip_hidden=16),
                     ModelConfig(trainable=["pooler", "token_type_embeddings", "token4classifier"]))
    model.apply_plan(SkipPlan((1, 4), 6))
    if task_name == "nlvr2":
        assert model.base.token_type_embeddings.num_embeddings == 3
    batch = task.collate([ds[i] for i in range(len(ds))])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(60):
        loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("task, train, test, extra", [
    ("vqa", "vqav2_train", "vqav2_test", ["--task.num_labels", "3"]),
    ("retrieval", "f30k_caption_karpathy_train,f30k_caption_karpathy_val", "f30k_caption_karpathy_test", ["--task.negatives", "3"]),
])
def test_cli_search_train_eval(meter_dir, arrows, tmp_path, capsys, task, train, test, extra):  # noqa: F811
    common = ["--model.name_or_path", str(meter_dir), "--task.name", task, "--data.root", str(arrows), "--data.train", train,
              "--task.image_size", "32", "--task.image_resize", "square", "--task.image_norm", "clip", "--task.max_length", "16",
              "--adapter.hidden", "8", "--adapter.skip_hidden", "16", "--model.trainable", "[pooler,token4classifier]",
              "--train.batch_size", "2", "--train.lr_mult", '{"sites": 5, "pooler": 5}', *extra]
    main(["search", *common, "--search.k", "2", "--search.reward_fraction", "0.25", "--search.cost_weight", "0.1", "--train.epochs", "2", "--output_dir", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "search_result.json").read_text())
    assert len(result["plan"]["skip"]) == 2 and len(result["config"]["block_costs"]) == 6
    main(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--data.test", test, "--train.epochs", "1",
          "--output_dir", str(tmp_path / "t")])
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert test in metrics["test"]
    capsys.readouterr()
    main(["eval", "--artifact", str(tmp_path / "t" / "artifact"), "--data", str(arrows / f"{test}.arrow"), "--batch_size", "2"])
    assert test in json.loads(capsys.readouterr().out)
