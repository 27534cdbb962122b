"""Artifacts: save -> load gives identical outputs; wrong base, newer format, corruption are refused."""

import json

import pytest
import torch
from conftest import classification_examples, perturb_trainable
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from archskip import AdapterConfig, SkipModel, SkipPlan, TaskConfig
from archskip.artifact import META, WEIGHTS, ArtifactError, load_artifact, save_artifact
from archskip.tasks import build_task


def trained_model(model_dir, plan=(1, 3)):
    base = AutoModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = SkipModel(base, AdapterConfig(hidden=8, skip_hidden=16), name_or_path=str(model_dir), trainable=["pooler"])
    task = build_task(TaskConfig(max_length=16), tok, classification_examples(20))
    task.attach_head(model)
    model.apply_plan(SkipPlan(plan, 4))
    perturb_trainable(model)
    return model.eval(), task


def logits(model, task, examples):
    with torch.no_grad():
        return task.logits(model, task.collate(examples))


def test_save_load_gives_identical_outputs(tiny_encoder_dir, tmp_path):
    model, task = trained_model(tiny_encoder_dir)
    examples = classification_examples(6, seed=9)
    ref = logits(model, task, examples)
    save_artifact(model, task, tmp_path / "art", metrics={"accuracy": 0.5})
    assert (tmp_path / "art" / WEIGHTS).is_file() and (tmp_path / "art" / META).is_file()

    pruned, task2 = load_artifact(tmp_path / "art")
    assert pruned.pruned and len(pruned.base.encoder.layer) == 2
    torch.testing.assert_close(logits(pruned, task2, examples), ref, rtol=1e-5, atol=1e-6)
    unpruned, _ = load_artifact(tmp_path / "art", prune=False)
    assert torch.equal(logits(unpruned, task2, examples), ref)
    meta = json.loads((tmp_path / "art" / META).read_text())
    assert meta["plan"] == {"skip": [1, 3], "num_candidates": 4} and meta["metrics"] == {"accuracy": 0.5}
    assert meta["task"]["labels"] == ["neg", "pos"]


def test_artifact_holds_only_what_the_plan_uses(tiny_encoder_dir, tmp_path):
    from safetensors.torch import load_file

    model, task = trained_model(tiny_encoder_dir, plan=(2,))
    save_artifact(model, task, tmp_path / "art")
    keys = set(load_file(tmp_path / "art" / WEIGHTS))
    assert {k.split(".")[1] for k in keys if k.startswith("candidates.") and ".replacement." in k} == {"2"}
    assert not any(k.startswith("candidates.2.sites") for k in keys)
    assert any(k.startswith("head.") for k in keys) and "base.pooler.dense.weight" in keys


def test_artifact_for_another_base_model_is_refused(tiny_encoder_dir, tmp_path, tokenizer):
    model, task = trained_model(tiny_encoder_dir)
    save_artifact(model, task, tmp_path / "art")
    other = BertModel(BertConfig(vocab_size=124, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ArtifactError, match="was made for base model .*tiny-bert.*a different architecture or size"):
        load_artifact(tmp_path / "art", other, tokenizer)


def test_newer_corrupt_or_incomplete_artifacts_are_refused(tiny_encoder_dir, tmp_path):
    model, task = trained_model(tiny_encoder_dir)
    art = tmp_path / "art"
    save_artifact(model, task, art)
    meta = json.loads((art / META).read_text())
    (art / META).write_text(json.dumps({**meta, "format": 2}))
    with pytest.raises(ArtifactError, match="has format 2; this archskip .* reads formats up to 1: upgrade"):
        load_artifact(art)
    (art / META).write_text("{oops")
    with pytest.raises(ArtifactError, match="is corrupt"):
        load_artifact(art)
    (art / META).write_text(json.dumps({k: v for k, v in meta.items() if k != "task"}))
    with pytest.raises(ArtifactError, match=r"is incomplete or corrupt: it lacks \['task'\]"):
        load_artifact(art)
    (art / META).write_text(json.dumps(meta))
    (art / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(art)
    with pytest.raises(ArtifactError, match="is not an archskip artifact"):
        load_artifact(tmp_path / "nothing")


def test_artifact_with_missing_keys_names_them(tiny_encoder_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model, task = trained_model(tiny_encoder_dir)
    art = save_artifact(model, task, tmp_path / "art")
    state = load_file(art / WEIGHTS)
    state.pop("head.out.weight")
    save_file(state, art / WEIGHTS)
    with pytest.raises(ArtifactError, match=r"missing \['head.out.weight'\]"):
        load_artifact(art)


def test_saving_needs_a_plan(tiny_encoder_dir, tmp_path):
    base = AutoModel.from_pretrained(tiny_encoder_dir)
    model = SkipModel(base, AdapterConfig(hidden=8, skip_hidden=16))
    task = build_task(TaskConfig(), AutoTokenizer.from_pretrained(tiny_encoder_dir), classification_examples(10))
    with pytest.raises(ArtifactError, match="apply a plan"):
        save_artifact(model, task, tmp_path / "art")
