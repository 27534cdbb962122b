"""Replacement adapters distilled from the blocks they replace, and training warm-started from a search."""

import copy
import json

import pytest
import torch
from conftest import VOCAB_SIZE, classification_examples, make_bert, make_llama, tiny_tokenizer

from archskip import AdapterConfig, SkipModel, SkipPlan, TaskConfig, TrainConfig
from archskip.artifact import SEARCH_ADAPTERS, ArtifactError, load_search_adapters
from archskip.cli import main
from archskip.data import text as text_data
from archskip.distill import distill_replacements
from archskip.nn_utils import eval_mode
from archskip.tasks import CausalLM, build_task
from archskip.train import Trainer

PLAN = SkipPlan((1, 2), 4)


def encoder_setup(seed: int = 0):
    torch.manual_seed(seed)
    base = make_bert()
    examples = classification_examples(96, seed=seed)
    model = SkipModel(copy.deepcopy(base), AdapterConfig(hidden=8, skip_hidden=32))
    task = build_task(TaskConfig(max_length=16), tiny_tokenizer(), examples)
    task.attach_head(model)
    return base, model, task, examples


def hidden_gap(model: SkipModel, base, task, examples) -> float:
    """Mean squared distance of the last hidden states of `model` (as it is) to the frozen base model's."""
    batch = task.collate(examples[:32])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), eval_mode(model), eval_mode(base):
        return float(((model(**inputs).last_hidden_state - base(**inputs).last_hidden_state) ** 2).mean())


def test_distillation_brings_the_skipped_model_closer_to_the_base_and_touches_only_replacements():
    base, model, task, examples = encoder_setup()
    model.apply_plan(PLAN)
    before_state = model.trainable_state_dict()
    gap_before = hidden_gap(model, base, task, examples)
    losses = distill_replacements(model, task, examples, steps=60, lr=1e-2, batch_size=16)
    assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
    changed = {n for n, t in model.trainable_state_dict().items() if not torch.equal(t, before_state[n])}
    assert changed and all(".replacement." in n for n in changed)
    assert {n.split(".")[1] for n in changed} == {"1", "2"}  # the plan's two replacements, nothing else
    assert hidden_gap(model, base, task, examples) < 0.5 * gap_before
    assert all(not layer.distilling and layer.distill_loss is None for layer in model.candidates)


def test_distillation_on_a_decoder_leaves_the_kv_cache_alone():
    torch.manual_seed(0)
    model = SkipModel(make_llama(), AdapterConfig.lavin())
    task = CausalLM(tiny_tokenizer(), max_length=24)
    examples = [{"text": " ".join(f"w{(i * 7 + j) % 60}" for j in range(6)), "label": f"w{i % 60}"} for i in range(32)]
    model.apply_plan(SkipPlan((1, 3), 5))
    losses = distill_replacements(model, task, examples, steps=20, lr=1e-3, batch_size=8)
    assert losses[-1] < losses[0]
    ids = task.collate(examples[:2])["input_ids"][:, :5]
    masked = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    model.prune()
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=4, do_sample=False), masked)  # pruned == masked


def test_trainer_distills_first_when_asked():
    _, model, task, examples = encoder_setup(1)
    model.apply_plan(PLAN)
    reference = copy.deepcopy(model)
    cfg = TrainConfig(max_steps=1, batch_size=16, lr=1e-9, distill_steps=20, distill_lr=1e-2)
    Trainer(model, task, cfg, progress=False).fit(examples)
    reference_losses = distill_replacements(reference, task, examples, steps=20, lr=1e-2, batch_size=16)
    assert reference_losses  # the same distillation, run by hand, gives the same replacements (lr 1e-9 after it)
    for name, t in reference.trainable_state_dict().items():
        if ".replacement." in name:
            torch.testing.assert_close(model.trainable_state_dict()[name], t, atol=1e-6, rtol=0)


def test_warm_start_loads_the_search_adapters_of_the_plan(tiny_encoder_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    data = str(text_data.write_csv(tmp_path / "train.csv", classification_examples(120, seed=3)))
    common = ["--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--adapter.hidden", "8",
              "--adapter.skip_hidden", "16", "--train.batch_size", "16"]
    main(["search", *common, "--search.k", "2", "--search.update_every", "1", "--search.supernet", "on", "--train.epochs", "2",
          "--output_dir", str(tmp_path / "s")])
    saved = load_file(str(tmp_path / "s" / SEARCH_ADAPTERS))
    plan = json.loads((tmp_path / "s" / "search_result.json").read_text())["plan"]

    from archskip.config import RunConfig
    from archskip.pipeline import build_model, load_splits

    cfg = RunConfig.from_dict({"model": {"name_or_path": str(tiny_encoder_dir)}, "data": {"train": data},
                               "adapter": {"hidden": 8, "skip_hidden": 16}})
    model, _ = build_model(cfg, load_splits(cfg).train)
    model.apply_plan(SkipPlan.from_dict(plan))
    assert load_search_adapters(model, tmp_path / "s") == len(model.trainable_named_parameters())
    for name, t in model.trainable_state_dict().items():
        assert torch.equal(t, saved[name]), name  # the plan's adapters and the head, as the search left them

    main(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--train.warm_start",
          str(tmp_path / "s"), "--train.epochs", "1", "--output_dir", str(tmp_path / "t")])
    assert (tmp_path / "t" / "artifact" / "archskip.json").is_file()

    from transformers import BertConfig, BertModel

    wider = BertModel(BertConfig(vocab_size=VOCAB_SIZE, hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                                 intermediate_size=64))
    other = SkipModel(wider, AdapterConfig(hidden=8, skip_hidden=16))
    other.apply_plan(SkipPlan.from_dict(plan))
    with pytest.raises(ArtifactError, match="warm_start"):
        load_search_adapters(other, tmp_path / "s")


def test_unfreezing_the_last_kept_blocks_trains_them_and_the_artifact_keeps_them(tmp_path):
    """The 'Reassessing Layer Pruning' recipe: drop the last k blocks, fine-tune the last kept ones in full."""
    from archskip.artifact import load_artifact, save_artifact

    _, model, task, examples = encoder_setup(2)
    model.apply_plan(SkipPlan.last(1, 4))
    assert model.unfreeze_kept(2) == [1, 2]  # blocks 0, 1, 2 are kept: the last two of them
    before = {n: t for n, t in model.trainable_state_dict().items() if ".block." in n}
    assert before and {n.split(".")[1] for n in before} == {"1", "2"}
    Trainer(model, task, TrainConfig(max_steps=3, batch_size=16, lr=1e-2), progress=False).fit(examples)
    after = model.trainable_state_dict()
    assert all(not torch.equal(after[n], t) for n, t in before.items() if n.endswith("dense.weight"))
    save_artifact(model, task, tmp_path / "a")
    model.prune()
    batch = task.collate(examples[:8])
    torch.manual_seed(2)  # the same frozen base model as encoder_setup(2)
    loaded, _ = load_artifact(tmp_path / "a", base=make_bert(), tokenizer=tiny_tokenizer())
    with torch.no_grad():
        torch.testing.assert_close(task.logits(loaded, batch), task.logits(model.eval(), batch))


def test_reassess_method_gives_last_k_and_train_fine_tunes_the_last_three_kept_blocks(tiny_encoder_dir, tmp_path, capsys):
    """`--search.method reassess` is the 'Reassessing Layer Pruning' baseline end to end through the CLI."""
    data = str(text_data.write_csv(tmp_path / "train.csv", classification_examples(80, seed=4)))
    common = ["--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--adapter.hidden", "8",
              "--adapter.skip_hidden", "16", "--train.batch_size", "16"]
    main(["search", *common, "--search.method", "reassess", "--search.k", "1", "--output_dir", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "search_result.json").read_text())
    assert result["method"] == "reassess" and result["plan"]["skip"] == [3]
    main(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--train.max_steps", "2",
          "--output_dir", str(tmp_path / "t")])
    assert "train.unfreeze_kept=3" in capsys.readouterr().out
    meta = json.loads((tmp_path / "t" / "artifact" / "archskip.json").read_text())
    assert meta["base_model"]["unfrozen_blocks"] == [0, 1, 2]  # blocks 0-2 kept (of 4), all three fine-tuned
    main(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--train.max_steps", "2",
          "--train.unfreeze_kept", "1", "--output_dir", str(tmp_path / "u")])
    assert json.loads((tmp_path / "u" / "artifact" / "archskip.json").read_text())["base_model"]["unfrozen_blocks"] == [2]


def test_a_default_search_over_a_supernet_search_leaves_nothing_to_warm_start_from(tiny_encoder_dir, tmp_path, capsys):
    """The default search trains no supernet: in a directory where a supernet search ran, it removes the earlier
    adapters (they no longer match the record), and warm-starting from it is refused before any work."""
    data = str(text_data.write_csv(tmp_path / "train.csv", classification_examples(120, seed=3)))
    common = ["--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--adapter.hidden", "8",
              "--adapter.skip_hidden", "16", "--train.batch_size", "16", "--output_dir", str(tmp_path / "s")]
    main(["search", *common, "--search.k", "1", "--search.update_every", "1", "--search.supernet", "on"])
    assert (tmp_path / "s" / SEARCH_ADAPTERS).is_file()
    main(["search", *common, "--search.k", "1"])
    assert not (tmp_path / "s" / SEARCH_ADAPTERS).exists()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", *common[:-2], "--plan", str(tmp_path / "s" / "search_result.json"), "--train.warm_start",
              str(tmp_path / "s"), "--output_dir", str(tmp_path / "t")])
    assert "no search adapters" in capsys.readouterr().err and not (tmp_path / "t").exists()
