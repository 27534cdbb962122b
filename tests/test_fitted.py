"""Fitted replacements (search/fitted.py): the closed-form fit of each block, and plans measured with it."""

import copy
import random
from dataclasses import replace

import pytest
import torch
from conftest import DEC, random_sentence, tiny_tokenizer
from test_search import PLANTED, TRAIN, VERIFIED, LogitMatch, setup
from torch import nn

from archskip import AdapterConfig, SearchConfig, SkipModel
from archskip.config import ConfigError
from archskip.data.loader import make_loader
from archskip.demo import how_chosen
from archskip.search import run_search
from archskip.search.fitted import fit_replacements, fitted_as_replacement, frozen_measurement
from archskip.search.removal import removal_loss
from archskip.tasks.base import to_device

FITTED = replace(VERIFIED, verify_replacement="fitted")


def decoder(seed: int, skip_hidden: int, n: int = 48):
    """A tiny LLaMA (hidden 32) with LaVIN adapters, a next-token-logits task and its examples."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(**DEC, initializer_range=0.1)).eval()
    tok = tiny_tokenizer()
    rng = random.Random(seed)
    texts = [random_sentence(rng, 8) for _ in range(n)]
    model = SkipModel(base, AdapterConfig.lavin(hidden=skip_hidden // 4))  # skip_hidden = 4 x hidden
    return model, LogitMatch(tok), tok, texts


def with_targets(model, tok, texts):
    with torch.no_grad(), model.adapters_disabled():
        target = model(**tok(texts, return_tensors="pt", padding=True)).logits
    return [{"text": t, "target": target[i]} for i, t in enumerate(texts)]


def block_io(model, task, batches, index):
    """(norm(x), block(x) - x) of candidate `index` on the non-padding tokens, read independently of the fit."""
    layer = model.candidates[index]
    seen = []

    def read(module, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        y = out[0] if isinstance(out, tuple) else out
        seen.append((layer.replacement.norm(x), y - x))

    handle = layer.register_forward_hook(read, with_kwargs=True)
    zs, ds = [], []
    with torch.no_grad(), model.adapters_disabled():
        for batch in batches:
            seen.clear()
            task.loss(model, to_device(batch, "cpu"))
            keep = batch["attention_mask"].reshape(-1).bool()
            z, d = seen[0]
            zs.append(z.reshape(-1, z.shape[-1])[keep].double())
            ds.append(d.reshape(-1, d.shape[-1])[keep].double())
    handle.remove()
    return torch.cat(zs), torch.cat(ds)


def test_a_full_rank_fit_is_the_least_squares_map_of_an_independent_solver():
    model, task, tok, texts = decoder(0, skip_hidden=128)  # rank min(64, 32) = the hidden size: no rank limit
    batches = list(make_loader(with_targets(model, tok, texts), task.collate, 16))
    fit = fit_replacements(model, task, batches, device="cpu")
    assert fit["rank"] == 32
    for index in (1, 3):
        z, d = block_io(model, task, batches, index)
        z1 = torch.cat([z, torch.ones_like(z[:, :1])], 1)
        w = torch.linalg.lstsq(z1, d).solution  # the reference: LAPACK's least squares, float64
        fitted = copy.deepcopy(fit["modules"][index]).double()
        # on the inputs it was fitted to, the fitted change is the least-squares prediction (up to the small ridge)
        ours = fitted.up(fitted.down(z))
        ref = z1 @ w
        assert torch.allclose(ours, ref, rtol=0, atol=1e-3 * ref.abs().max()), (ours - ref).abs().max()
        x = torch.randn(5, 32)  # and the module adds it to its input: x + change(norm(x))
        norm = model.candidates[index].replacement.norm
        assert torch.allclose(fit["modules"][index](x) - x, fitted.up(fitted.down(norm(x).double())).float(), atol=1e-5)
        left = ((d - z1 @ w) ** 2).sum() / (d ** 2).sum()
        assert fit["unexplained"][index] == pytest.approx(float(left), abs=1e-3)


def test_a_reduced_rank_fit_has_that_rank_and_beats_truncating_the_full_fit():
    model, task, tok, texts = decoder(1, skip_hidden=8)  # rank 4 of 32
    batches = list(make_loader(with_targets(model, tok, texts), task.collate, 16))
    fit = fit_replacements(model, task, batches, device="cpu")
    assert fit["rank"] == 4
    for index in range(model.num_candidates):
        m = fit["modules"][index]
        assert m.down.weight.shape == (4, 32) and torch.linalg.matrix_rank(m.up.weight) == 4
        z, d = block_io(model, task, batches, index)
        z1 = torch.cat([z, torch.ones_like(z[:, :1])], 1)
        w = torch.linalg.lstsq(z1, d).solution
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        truncated = (u[:, :4] * s[:4]) @ vh[:4]  # another rank-4 map: the full fit's top singular directions
        truncated_left = float(((d - z1 @ truncated) ** 2).sum() / (d ** 2).sum())
        assert fit["unexplained"][index] <= truncated_left + 1e-6  # reduced-rank regression is the best rank-4 map
        assert 0.0 <= fit["unexplained"][index] <= 1.0


class LinearBlock(nn.Module):
    """A block computing x + L(norm(x)) with L of rank 2 (plus a bias): exactly what a fit of rank >= 2 recovers."""

    def __init__(self, norm: nn.Module, dim: int, tuple_out: bool):
        super().__init__()
        self.norm, self.tuple_out = norm, tuple_out
        self.a, self.b = nn.Linear(dim, 2), nn.Linear(2, dim)
        self.requires_grad_(False)

    def forward(self, hidden, *args, **kwargs):
        out = hidden + self.b(self.a(self.norm(hidden)))
        return (out,) if self.tuple_out else out


def test_a_block_that_is_a_linear_map_measures_as_if_kept_and_the_replacements_come_back():
    model, task, tok, texts = decoder(2, skip_hidden=16)  # rank 8
    torch.manual_seed(2)
    layer = model.candidates[2]
    layer.block = LinearBlock(layer.replacement.norm, 32, layer.spec.returns_tuple)
    examples = with_targets(model, tok, texts)  # targets: the model with that linear block
    originals = [l.replacement for l in model.candidates]
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    fitted = removal_loss(model, task, examples, 1, shortlist=5, batch_size=16, replacement="fitted")
    identity = removal_loss(model, task, examples, 1, shortlist=5, batch_size=16)
    loss = {name: {tuple(m["plan"]): m["metrics"]["loss"] for m in r.config["verification"]["measured"]}
            for name, r in (("fitted", fitted), ("identity", identity))}
    assert fitted.plan.skip == (2,) and loss["fitted"][(2,)] < 1e-6  # replaced by its fit, it is as if kept
    assert loss["identity"][(2,)] > 1e3 * loss["fitted"][(2,)]  # removed, it is not
    assert all(loss["fitted"][p] > 1e3 * loss["fitted"][(2,)] for p in loss["fitted"] if p != (2,))
    v = fitted.config["verification"]
    assert v["replacement"] == "fitted" and v["fit"]["rank"] == 8 and v["fit"]["unexplained"][2] < 1e-6
    assert identity.config["verification"]["replacement"] == "identity" and "fit" not in identity.config["verification"]
    assert [l.replacement for l in model.candidates] == originals
    after = model.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after) and not any(l.skipped for l in model.candidates)


def test_fitted_as_replacement_restores_the_replacements_after_an_error():
    model, task, tok, texts = decoder(3, skip_hidden=16)
    originals = [l.replacement for l in model.candidates]
    with pytest.raises(RuntimeError, match="boom"):
        with fitted_as_replacement(model, [nn.Identity() for _ in model.candidates]):
            assert all(isinstance(l.replacement, nn.Identity) for l in model.candidates)
            raise RuntimeError("boom")
    assert [l.replacement for l in model.candidates] == originals
    assert all(s.active for l in model.candidates for s in l.sites.values())


@pytest.mark.parametrize("supernet", ["auto", "on"])  # measured by removal_loss, or after the supernet's training
def test_the_default_search_with_fitted_replacements_finds_the_planted_blocks(supernet):
    for seed in range(2):
        model, task, examples = setup(seed)
        result = run_search(model, task, examples, replace(FITTED, supernet=supernet), TRAIN, seed=seed, progress=False)
        assert result.config["supernet"] is (supernet == "on")
        v = result.config["verification"]
        assert result.plan.skip == PLANTED, (seed, v["measured"][:3])
        assert v["replacement"] == "fitted" and v["fit"]["rank"] == 8  # skip_hidden 16
        assert all(type(l.replacement).__name__ == "ReplacementAdapter" for l in model.candidates)
        assert "replaced by a least-squares linear fit of it (rank 8)" in how_chosen(result)  # what report.md says


def test_fitted_replacements_are_refused_where_they_cannot_run(monkeypatch):
    with pytest.raises(ConfigError, match="verify_replacement='fitted'.*verify_on='supernet'"):
        SearchConfig(verify_replacement="fitted", verify_on="supernet")
    with pytest.raises(ConfigError, match="verify_replacement"):
        SearchConfig(verify_replacement="linear")
    model, task, examples = setup(0, n=64)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP"):
        run_search(model, task, examples, FITTED, TRAIN, seed=0, progress=False)
    with pytest.raises(ValueError, match="'linear': expected 'identity' or 'fitted'"):  # (the library call)
        with frozen_measurement(model, task, examples, "linear", batch_size=8, device="cpu"):
            pass


def test_every_statistic_is_summed_across_processes_before_the_fit():
    """With `reduce` (accelerate's sum over processes), the fit uses the summed statistics: two processes that saw the
    same batches fit exactly what one process fits (least squares is unchanged when every statistic doubles)."""
    model, task, tok, texts = decoder(4, skip_hidden=16)
    batches = list(make_loader(with_targets(model, tok, texts), task.collate, 16))
    calls = []

    def twice(t):
        calls.append(t.shape)
        return 2 * t

    one = fit_replacements(model, task, batches, device="cpu")
    two = fit_replacements(model, task, batches, device="cpu", reduce=twice)
    assert len(calls) == 3 * model.num_candidates  # Z'Z, Z'Y and |Y|^2 of every candidate
    assert one["unexplained"] == pytest.approx(two["unexplained"], abs=1e-6)
    x = torch.randn(3, 7, 32)
    for a, b in zip(one["modules"], two["modules"]):
        assert torch.allclose(a(x), b(x), atol=1e-5)


def test_a_replacement_started_from_its_fit_computes_the_fit_and_recovers_a_linear_block():
    from archskip import SkipPlan
    from archskip.distill import start_replacements_from_fits

    model, task, tok, texts = decoder(5, skip_hidden=16)  # width 16: a rank-8 fit, written as 8 + 8 ReLU units
    torch.manual_seed(5)
    layer = model.candidates[2]
    layer.block = LinearBlock(layer.replacement.norm, 32, layer.spec.returns_tuple)
    examples = with_targets(model, tok, texts)
    batches = list(make_loader(examples, task.collate, 16))
    model.apply_plan(SkipPlan((1, 2), model.num_candidates))
    fit = fit_replacements(model, task, batches, device="cpu", candidates=[1, 2])
    assert fit["modules"][0] is None and fit["unexplained"][2] < 1e-6
    left = start_replacements_from_fits(model, task, examples, batch_size=16)
    assert left == pytest.approx([fit["unexplained"][1], fit["unexplained"][2]], abs=1e-6)
    x = torch.randn(4, 6, 32)
    for i in (1, 2):  # the ReLU bottleneck computes the linear fit exactly: relu(h) - relu(-h) = h
        assert torch.allclose(model.candidates[i].replacement(x), fit["modules"][i](x), atol=1e-5)
    # skipping only the linear block, its started replacement gives the model it replaced (before any training)
    model2, task2, tok2, _ = decoder(5, skip_hidden=16)
    torch.manual_seed(5)
    model2.candidates[2].block = LinearBlock(model2.candidates[2].replacement.norm, 32, layer.spec.returns_tuple)
    model2.apply_plan(SkipPlan((2,), model2.num_candidates))
    start_replacements_from_fits(model2, task2, examples, batch_size=16)
    enc = tok(texts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        skipped = model2(**enc).logits
        with model2.adapters_disabled():
            kept = model2(**enc).logits
    assert torch.allclose(skipped, kept, atol=2e-3), (skipped - kept).abs().max()  # (the fit's small ridge)


def test_training_with_fit_replacements_starts_there_and_router_replacements_are_refused(tmp_path):
    from archskip import SkipPlan, TrainConfig
    from archskip.runlog import RunLogger
    from archskip.train import Trainer

    model, task, tok, texts = decoder(6, skip_hidden=16)
    examples = with_targets(model, tok, texts)
    model.apply_plan(SkipPlan((1, 3), model.num_candidates))
    cfg = TrainConfig(epochs=1, max_steps=1, batch_size=16, lr=1e-3, log_every=1, fit_replacements=True)
    Trainer(model, task, cfg, out_dir=tmp_path, logger=RunLogger(tmp_path), progress=False).fit(examples)
    rows = (tmp_path / "fit_replacements.csv").read_text().splitlines()
    assert rows[0].startswith("step") and "mean_unexplained" in rows[0] and len(rows) == 2
    assert all(float(p.detach().abs().sum()) > 0 for i in (1, 3) for p in model.candidates[i].replacement.down.parameters())
    from transformers import LlamaConfig, LlamaForCausalLM

    router = SkipModel(LlamaForCausalLM(LlamaConfig(**DEC)).eval(), AdapterConfig.lavin(multimodal=True))
    router.apply_plan(SkipPlan((1,), router.num_candidates))
    with pytest.raises(ConfigError, match="fit_replacements.*router"):
        Trainer(router, task, cfg, progress=False).fit(examples)


def test_a_run_config_that_cannot_start_from_fits_is_refused_before_any_work():
    from archskip.config import RunConfig

    with pytest.raises(ConfigError, match="fit_replacements.*router"):
        RunConfig.from_dict({"adapter": {"kind": "router", "style": "sequential"}, "train": {"fit_replacements": True}})
    with pytest.raises(ConfigError, match="skip_hidden=1"):
        RunConfig.from_dict({"adapter": {"skip_hidden": 1}, "train": {"fit_replacements": True}})
    assert RunConfig.from_dict({"train": {"fit_replacements": True}}).train.fit_replacements is True
