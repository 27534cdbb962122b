"""The DAS search loop: determinism, planted redundancy, reward data, NaN rewards, the result file."""

import itertools
import json
import random
from dataclasses import replace

import pytest
import torch
from conftest import make_bert, random_sentence, tiny_tokenizer

from archskip import AdapterConfig, SearchConfig, SkipModel, TrainConfig
from archskip.config import ConfigError
from archskip.data.loader import make_loader
from archskip.demo import how_chosen
from archskip.plan import SearchResult
from archskip.search import RESULT_FILE, DASHooks, run_search
from archskip.search.verify import measured_plans
from archskip.tasks.base import Task, evaluate

PLANTED = (1, 4)


class FeatureMatch(Task):
    """Reproduce the full frozen model's final hidden states (MSE): a task that needs exactly the
    blocks that compute something, so which blocks are redundant is known by construction."""

    name = "feature_match"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def collate(self, examples):
        enc = self.tokenizer([e["text"] for e in examples], return_tensors="pt", padding=True)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "target": torch.stack([e["target"] for e in examples])}

    def loss(self, model, batch):
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return ((hidden - batch["target"]) ** 2).mean()

    def score(self, model, batch):
        n = len(batch["target"])
        return {"n": n, "loss_sum": float(self.loss(model, batch)) * n}


def planted_model(seed: int) -> torch.nn.Module:
    """A 6-block BERT whose blocks 1 and 4 are near-identity: their output projections scaled to ~0.

    (Post-LN: such a block computes LN(x + ~0) = x, since x already left a LayerNorm.)
    """
    torch.manual_seed(seed)
    base = make_bert(layers=6, initializer_range=0.1)
    with torch.no_grad():
        for i in PLANTED:
            layer = base.encoder.layer[i]
            for lin in (layer.attention.output.dense, layer.output.dense):
                lin.weight.mul_(1e-4)
                lin.bias.mul_(1e-4)
    return base


def setup(seed: int, n: int = 256):
    tok = tiny_tokenizer()
    base = planted_model(seed)
    rng = random.Random(seed)
    texts = [random_sentence(rng, 8) for _ in range(n)]
    with torch.no_grad():
        target = base(**tok(texts, return_tensors="pt", padding=True)).last_hidden_state
    examples = [{"text": t, "target": target[i]} for i, t in enumerate(texts)]
    model = SkipModel(base, AdapterConfig(hidden=8, skip_hidden=16))
    return model, FeatureMatch(tok), examples


SEARCH = SearchConfig(k=2, samples=3, update_every=1, warmup_epochs=1.0, mode="faithful")
VERIFIED = SearchConfig(k=2, samples=3, update_every=1, warmup_epochs=1.0, reward_fraction=0.25)  # the default mode
WITH_SUPERNET = replace(VERIFIED, supernet="on")  # the default mode, its bandit's supernet trained anyway
TRAIN = TrainConfig(epochs=3, batch_size=32, lr=3e-3, log_every=1000)


def test_planted_redundancy_is_found_in_at_least_9_of_10_seeds():
    hits = []
    for seed in range(10):
        model, task, examples = setup(seed)
        result = run_search(model, task, examples, SEARCH, TRAIN, seed=seed, progress=False)
        hits.append(result.plan.skip == PLANTED)
    assert sum(hits) >= 9, f"planted blocks {PLANTED} found in {sum(hits)}/10 seeds: {hits}"


def test_the_default_verified_search_finds_the_planted_blocks(monkeypatch):
    from archskip.train import Trainer

    assert SearchConfig().mode == "verified" and not SearchConfig().trains_supernet
    # the default reads no supernet, so it trains none: plans are measured on the frozen model only
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("the default search trained a supernet"))
    for seed in range(5):
        model, task, examples = setup(seed)
        before = {n: p.detach().clone() for n, p in model.trainable_named_parameters().items()}
        result = run_search(model, task, examples, VERIFIED, TRAIN, seed=seed, progress=False)
        assert result.config["supernet"] is False and result.method == "das-verified"
        assert all(torch.equal(before[n], p) for n, p in model.trainable_named_parameters().items())
        assert result.plan.skip == PLANTED, (seed, result.config["verification"]["measured"][:3])
        table = result.config["verification"]["measured"]
        assert len(table) == 15 and {tuple(m["plan"]) for m in table} == set(itertools.combinations(range(6), 2))
        assert table[0]["plan"] == list(PLANTED) and table[0]["metrics"]["loss"] == min(m["metrics"]["loss"] for m in table)
        # measured on the frozen model with the blocks removed: the planted blocks are identities there
        assert result.config["verification"]["measured_on"] == "frozen"
        assert table[0]["metrics"]["loss"] < 1e-4 < table[1]["metrics"]["loss"]


def test_frozen_verification_restores_the_supernet_and_measures_with_adapters_off(monkeypatch):
    from archskip.search import das

    model, task, examples = setup(0, n=128)
    seen = {}
    real = das.verify_plans

    def spy(model, *args, **kwargs):
        seen["before"] = {n: p.detach().clone() for n, p in model.trainable_named_parameters().items()}
        active = []
        orig_loss = task.loss
        monkeypatch.setattr(task, "loss", lambda m, b: active.append(
            any(s.active for layer in m.candidates for s in layer.sites.values())) or orig_loss(m, b))
        out = real(model, *args, **kwargs)
        monkeypatch.setattr(task, "loss", orig_loss)
        seen["active"] = active
        return out

    monkeypatch.setattr(das, "verify_plans", spy)
    run_search(model, task, examples, replace(WITH_SUPERNET, shortlist=6), TRAIN, seed=0, progress=False)
    assert seen["active"] and not any(seen["active"])  # every measurement (and block influence) ran adapters off
    after = model.trainable_named_parameters()
    assert all(torch.equal(seen["before"][n], after[n]) for n in after)  # the trained supernet is given back
    assert any(float(p.detach().abs().sum()) > 0 for n, p in after.items() if ".replacement.up" in n)  # (it had trained)


@pytest.mark.parametrize("verify_on,supernet", [("frozen", "auto"), ("frozen", "on"), ("supernet", "auto")])
def test_verification_with_a_small_budget_searches_locally(verify_on, supernet):
    model, task, examples = setup(1)
    cfg = replace(VERIFIED, shortlist=6, verify_on=verify_on, supernet=supernet)
    result = run_search(model, task, examples, cfg, TRAIN, seed=1, progress=False)
    v = result.config["verification"]
    assert v["measured_on"] == verify_on and result.config["supernet"] == cfg.trains_supernet
    # removal_loss and verify_plans record alike what a removed block became (a supernet's are its trained adapters)
    assert v.get("replacement") == ("identity" if verify_on == "frozen" else None) and "fit" not in v
    assert len(v["measured"]) == 6  # the budget, not all 15 plans
    sources = {s for m in v["measured"] for s in m["sources"]}
    assert {"last-k", "block influence"} <= sources and any(s.startswith("one swap") for s in sources)
    assert ("gates top-k" in sources) == cfg.trains_supernet  # the bandit proposes a plan only when it ran
    assert list(result.plan.skip) == v["measured"][0]["plan"]  # the lowest measured loss wins
    assert result.plan.skip == PLANTED
    metric, ranked = measured_plans(v)  # the reader the demo and the benchmark use
    assert metric == "loss" and ranked[0][0] == PLANTED and [x for _, x in ranked] == sorted(x for _, x in ranked)
    paragraph = how_chosen(result)
    assert "measured 6 plans by" in paragraph and f"skip {list(PLANTED)}" in paragraph and f"{ranked[0][1]:.3f}" in paragraph


def test_exact_mode_finds_the_planted_blocks_too():
    hits = 0
    for seed in range(3):
        model, task, examples = setup(seed)
        cfg = SearchConfig(k=2, samples=3, update_every=2, warmup_epochs=1.0, mode="exact", gate_lr=0.3)
        hits += run_search(model, task, examples, cfg, TRAIN, seed=seed, progress=False).plan.skip == PLANTED
    assert hits >= 2


def test_search_is_deterministic_for_a_seed(tmp_path):
    results = []
    for run in range(2):
        model, task, examples = setup(3, n=160)
        results.append(run_search(model, task, examples, SEARCH, TrainConfig(epochs=2, batch_size=16), seed=3,
                                  progress=False, out_dir=tmp_path / f"r{run}"))
    a, b = results
    assert a.scores == b.scores and a.plan == b.plan
    assert [h["gates"] for h in a.history] == [h["gates"] for h in b.history]
    assert (tmp_path / "r0" / "policy.csv").is_file()
    a.save(tmp_path / "r0" / RESULT_FILE)
    saved = SearchResult.load(tmp_path / "r0" / RESULT_FILE)
    assert saved.plan == a.plan and saved.scores == a.scores and saved.seed == 3
    assert saved.base_model["fingerprint"] == results[0].base_model["fingerprint"] != ""


def test_reward_batches_come_from_held_out_training_data_and_change(monkeypatch):
    model, task, examples = setup(0, n=200)
    seen_reward_texts: list[tuple] = []
    seen_train_texts: set = set()
    orig_collate = task.collate

    def spy(exs):
        return {**orig_collate(exs), "texts": tuple(e["text"] for e in exs)}

    orig_next = DASHooks._next_reward_batch

    def next_batch(self):
        b = orig_next(self)
        seen_reward_texts.append(b["texts"])
        return b

    orig_loss = task.loss

    def loss(m, batch):
        if m.training:
            seen_train_texts.update(batch["texts"])
        return orig_loss(m, batch)

    monkeypatch.setattr(task, "collate", spy)
    monkeypatch.setattr(task, "loss", loss)
    monkeypatch.setattr(DASHooks, "_next_reward_batch", next_batch)
    run_search(model, task, examples, SearchConfig(k=1, update_every=3, warmup_epochs=0.5, reward_batch_size=8,
                                                   supernet="on"),
               TrainConfig(epochs=2, batch_size=16), seed=0, progress=False)
    assert len(seen_reward_texts) >= 5
    assert len(set(seen_reward_texts)) == len(seen_reward_texts), "a reward batch was reused"
    reward_texts = {t for b in seen_reward_texts for t in b}
    assert not reward_texts & seen_train_texts, "reward examples were also trained on"
    assert reward_texts <= {e["text"] for e in examples}


def test_reward_evaluation_runs_in_eval_mode_without_grad(monkeypatch):
    model, task, examples = setup(0, n=120)
    modes = []
    orig = task.loss

    def loss(m, batch):
        if not m.training:
            modes.append(torch.is_grad_enabled())
        return orig(m, batch)

    monkeypatch.setattr(task, "loss", loss)
    run_search(model, task, examples, SearchConfig(k=1, update_every=2, warmup_epochs=0.0, supernet="on"),
               TrainConfig(epochs=1, batch_size=16),
               progress=False)
    assert modes and not any(modes)


def test_nan_reward_loss_skips_the_candidate_and_keeps_gates_finite(monkeypatch):
    model, task, examples = setup(0, n=120)
    orig = task.loss

    def loss(m, batch):
        value = orig(m, batch)
        if not m.training and m.candidates[0].skipped:
            return value * float("nan")
        return value

    monkeypatch.setattr(task, "loss", loss)
    with pytest.warns(UserWarning, match="non-finite reward loss"):
        result = run_search(model, task, examples, SearchConfig(k=2, update_every=2, warmup_epochs=0.0, supernet="on"),
                            TrainConfig(epochs=1, batch_size=16), progress=False)
    assert all(torch.isfinite(torch.tensor(h["gates"])).all() for h in result.history)
    assert all(0 not in c for h in result.history for c in h["configs"])


def test_search_errors():
    model, task, examples = setup(0, n=60)
    with pytest.raises(ConfigError, match="search.k=0"):
        run_search(model, task, examples, SearchConfig(k=0), TRAIN, progress=False)
    with pytest.raises(ConfigError, match="made no policy update"):
        run_search(model, task, examples, SearchConfig(k=1, warmup_epochs=5.0, supernet="on"), TrainConfig(epochs=1),
                   progress=False)
    with pytest.raises(ConfigError, match="supernet='off' with search.mode='faithful'"):
        SearchConfig(mode="faithful", supernet="off")
    with pytest.raises(ConfigError, match="verify_on='supernet'"):
        SearchConfig(verify_on="supernet", supernet="off")


def test_a_reward_slice_too_small_for_every_process_is_refused_before_training(monkeypatch):
    """60 examples x 0.1 = 6 reward examples: one batch of 16, none for a second process. The reward stream
    would loop over empty passes for ever (a 2-process search hung at its first update): refuse it instead."""
    from archskip.train import Trainer

    model, task, examples = setup(0, n=60)
    monkeypatch.setattr(Trainer, "world", property(lambda self: 2))
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(ConfigError, match=r"6 reward examples: not one batch of 16 for each of 2 processes"):
        run_search(model, task, examples, SearchConfig(k=1, supernet="on"), TrainConfig(batch_size=16), progress=False)
    # a smaller reward batch gives each process one
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("reached training")))
    with pytest.raises(RuntimeError, match="reached training"):
        run_search(model, task, examples, SearchConfig(k=1, reward_batch_size=3, supernet="on"), TrainConfig(batch_size=16),
                   progress=False)


def test_search_trains_the_adapters_of_the_supernet():
    """Adapters trained under sampled configurations lower the mean loss over all configurations."""
    model, task, examples = setup(0, n=256)
    loader = make_loader(examples, task.collate, 64)

    def mean_loss():
        losses = []
        for c in itertools.combinations(range(6), 2):
            model.set_skip(c)
            losses.append(evaluate(model, task, loader)["loss"])
        model.set_skip([])
        return sum(losses) / len(losses)

    before = mean_loss()
    run_search(model, task, examples, SEARCH, TRAIN, progress=False)
    assert mean_loss() < 0.8 * before


class LogitMatch(FeatureMatch):
    """FeatureMatch on a decoder's next-token logits."""

    def loss(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return ((logits - batch["target"]) ** 2).mean()


def test_the_default_search_on_a_decoder_finds_the_planted_blocks_not_the_last_ones():
    """On a decoder the default must measure, not assume: it skips the two planted identity blocks in the
    middle, not the last blocks (which write the logits)."""
    from conftest import DEC
    from transformers import LlamaConfig, LlamaForCausalLM

    planted = (1, 2)
    for seed in range(2):
        torch.manual_seed(seed)
        base = LlamaForCausalLM(LlamaConfig(**{**DEC, "num_hidden_layers": 6}, initializer_range=0.1)).eval()
        with torch.no_grad():
            for i in planted:  # pre-LN: x + ~0 = x, the block is the identity
                base.model.layers[i].self_attn.o_proj.weight.mul_(1e-4)
                base.model.layers[i].mlp.down_proj.weight.mul_(1e-4)
        tok = tiny_tokenizer()
        rng = random.Random(seed)
        texts = [random_sentence(rng, 8) for _ in range(192)]
        with torch.no_grad():
            target = base(**tok(texts, return_tensors="pt", padding=True)).logits
        examples = [{"text": t, "target": target[i]} for i, t in enumerate(texts)]
        model = SkipModel(base, AdapterConfig(hidden=8, skip_hidden=16))
        result = run_search(model, LogitMatch(tok), examples, VERIFIED, TRAIN, seed=seed, progress=False)
        table = result.config["verification"]["measured"]
        assert result.plan.skip == planted, (seed, table[:3])
        last_k = next(m for m in table if tuple(m["plan"]) == (4, 5))
        assert last_k["metrics"]["loss"] > 3 * table[0]["metrics"]["loss"]  # measured, and clearly worse


def test_uniform_supernet_sampling_trains_every_plan_and_still_finds_the_planted_blocks(monkeypatch):
    """search.supernet_sampling='uniform': every training micro-batch runs under a uniform draw, not the policy's."""
    from dataclasses import replace

    from archskip.search.policy import SkipPolicy

    drawn = []
    uniform = SkipPolicy.sample_uniform

    def record(self):
        drawn.append(tuple(sorted(uniform(self))))
        return drawn[-1]

    monkeypatch.setattr(SkipPolicy, "sample_uniform", record)
    cfg = replace(WITH_SUPERNET, supernet_sampling="uniform")
    for seed in range(2):
        model, task, examples = setup(seed)
        before = len(drawn)
        result = run_search(model, task, examples, cfg, TRAIN, seed=seed, progress=False)
        assert result.plan.skip == PLANTED, (seed, result.config["verification"]["measured"][:3])
        micro_batches = 3 * len(make_loader(examples[: int(0.75 * len(examples))], task.collate, TRAIN.batch_size))
        assert len(drawn) - before == micro_batches  # one uniform draw per training micro-batch
    assert len(set(drawn)) >= 12  # spread over the 15 plans of C(6, 2) (36 draws), not concentrated where the gates point
    with pytest.raises(ConfigError, match="supernet_sampling"):
        SearchConfig(supernet_sampling="gates")


def test_the_default_search_without_a_supernet_measures_plans_as_removal_loss_does():
    """With no supernet the default search is the removal-loss measurement on the same examples: the same
    plan and the same measured table (on any task, not only where the planted blocks make it obvious)."""
    from archskip.search import METHODS, SearchRun

    results = []
    for method in ("das", "removal-loss"):
        model, task, examples = setup(2, n=160)
        cfg = replace(VERIFIED, method=method, shortlist=5, verify_examples=96)
        results.append(METHODS[method](SearchRun(model, task, examples, cfg, TRAIN, seed=2, progress=False)))
    das, removal = results
    assert das.plan == removal.plan and das.scores == removal.scores
    assert das.config["verification"]["measured"] == removal.config["verification"]["measured"]
    assert len(das.config["verification"]["measured"]) == 5 and das.config["verification"]["examples"] == 96


def test_a_killed_default_search_resumes_without_measuring_a_plan_twice(tmp_path, monkeypatch):
    """Each plan's measurement is written as it is made; --resume measures only the rest and ends with the
    table of an uninterrupted run. Other settings are refused on resume."""
    from archskip.search.verify import PlanMeter

    cfg = replace(VERIFIED, verify_examples=96)
    model, task, examples = setup(4, n=128)
    whole = run_search(model, task, examples, cfg, TRAIN, seed=4, progress=False)

    calls = []
    real = PlanMeter._scores

    def dies_after_5(self, batches):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, batches)

    monkeypatch.setattr(PlanMeter, "_scores", dies_after_5)
    model, task, examples = setup(4, n=128)
    with pytest.raises(KeyboardInterrupt):
        run_search(model, task, examples, cfg, TRAIN, seed=4, progress=False, out_dir=tmp_path)
    saved = json.loads((tmp_path / "measured_plans.json").read_text())
    assert len(saved["measured"]) == 5

    calls.clear()
    monkeypatch.setattr(PlanMeter, "_scores", lambda self, b: calls.append(1) or real(self, b))
    model, task, examples = setup(4, n=128)
    resumed = run_search(model, task, examples, cfg, TRAIN, seed=4, progress=False, out_dir=tmp_path, resume=True)
    assert len(calls) == 15 - 5  # only the plans the killed run had not measured
    assert resumed.plan == whole.plan
    assert resumed.config["verification"]["measured"] == whole.config["verification"]["measured"]

    model, task, examples = setup(4, n=128)
    with pytest.raises(ConfigError, match=r"other settings \(.*seed: 4 then, 5 now\)"):
        run_search(model, task, examples, cfg, TRAIN, seed=5, progress=False, out_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match=r"other settings \(examples_digest: '\w+' then, '\w+' now\)"):  # other data
        run_search(model, task, examples[::-1], cfg, TRAIN, seed=4, progress=False, out_dir=tmp_path, resume=True)


def test_the_measurement_counts_the_examples_every_process_measures():
    from archskip.search.verify import PlanMeter

    model, task, examples = setup(0, n=13)
    assert PlanMeter(model, task, examples, 4, device="cpu").examples == 13
    assert PlanMeter(model, task, examples, 4, device="cpu", rank=1, world=2).examples == 13  # 4 batches, 2 each
    assert PlanMeter(model, task, examples[:11], 4, device="cpu", world=2).examples == 8  # 3 batches: 1 each


def test_the_default_search_reads_each_measurement_example_once_besides_block_influence():
    """The examples are collated once (their digest for --resume is taken from the batches), not read again to be
    hashed; block influence reads its first 8 batches on its own."""
    from archskip.search import METHODS, SearchRun

    model, task, examples = setup(2, n=160)
    reads: dict[int, int] = {}

    class Counted(list):
        def __getitem__(self, i):
            reads[i] = reads.get(i, 0) + 1
            return super().__getitem__(i)

    cfg = replace(VERIFIED, shortlist=5, verify_examples=96, reward_batch_size=8)
    METHODS["das"](SearchRun(model, task, Counted(examples), cfg, TRAIN, seed=2, progress=False))
    assert len(reads) == 96 and sorted(reads.values()) == [1] * 32 + [2] * 64  # (8 batches of 8 also for block influence)
