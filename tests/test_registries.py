"""Extension points: a search method, a task and a backbone family are each one definition plus one
registration, and everything else (CLI choices, --help, validation, dispatch, artifacts) follows."""

import json

import pytest
import torch
from conftest import classification_examples
from torch import nn

from archskip import AdapterConfig, SkipModel, SkipPlan
from archskip.backbones import FAMILIES, BackboneError, pre_norm_spec, register_family, spec_for
from archskip.cli import main
from archskip.config import ConfigError, SearchConfig, TaskConfig
from archskip.data import text as text_data
from archskip.plan import SearchResult
from archskip.search import METHODS, SearchRun, register_method
from archskip.tasks import TASKS, SequenceClassification, register_task


@pytest.fixture
def toy_method():
    @register_method("middle")
    def middle(run: SearchRun) -> SearchResult:
        """Skip the k blocks nearest the middle of the stack (a toy rule)."""
        n, k = run.model.num_candidates, run.search.k
        order = sorted(range(n), key=lambda i: (abs(i - (n - 1) / 2), i))
        return SearchResult(plan=SkipPlan(tuple(order[:k]), n), method="middle", scores=[0.0] * n, seed=run.seed)

    yield middle
    METHODS.pop("middle")


@pytest.fixture
def toy_task():
    @register_task
    class Uppercase(SequenceClassification):
        """A classification task that reads the text in upper case (anything a task does differently)."""

        name = "uppercase"

        def collate(self, examples):
            return super().collate([{**e, "text": e["text"].upper()} for e in examples])

    yield Uppercase
    TASKS.pop("uppercase")


def test_a_registered_method_runs_through_the_cli(toy_method, tiny_encoder_dir, tmp_path, capsys):
    data = str(text_data.write_csv(tmp_path / "train.csv", classification_examples(40, seed=1)))
    main(["search", "--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--search.method", "middle",
          "--search.k", "2", "--output_dir", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "search_result.json").read_text())
    assert result["method"] == "middle" and result["plan"]["skip"] == [1, 2]  # 4 blocks: the middle two
    assert result["base_model"]["fingerprint"]  # stamped by the search stage, as for every method
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "middle" in capsys.readouterr().out.split("--search.method {")[1].split("}")[0]


def test_a_registered_task_trains_evaluates_and_reloads_through_the_cli(toy_task, tiny_encoder_dir, tmp_path, capsys):
    data = str(text_data.write_csv(tmp_path / "train.csv", classification_examples(60, seed=2)))
    common = ["--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--task.name", "uppercase",
              "--adapter.hidden", "8", "--adapter.skip_hidden", "16", "--train.batch_size", "16"]
    main(["train", *common, "--plan", "3", "--train.epochs", "1", "--output_dir", str(tmp_path / "t")])
    meta = json.loads((tmp_path / "t" / "artifact" / "archskip.json").read_text())
    assert meta["task"]["name"] == "uppercase"
    capsys.readouterr()
    main(["eval", "--artifact", str(tmp_path / "t" / "artifact"), "--data", data])  # rebuilt from the registry
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "uppercase" in capsys.readouterr().out


def test_unknown_names_are_refused_with_the_registered_ones(toy_method):
    with pytest.raises(ConfigError, match="search.method='greedy' is not valid; expected one of 'das', .*'middle'"):
        SearchConfig(method="greedy")
    with pytest.raises(ConfigError, match="task.name='ranking' is not valid; expected one of 'classification'"):
        TaskConfig(name="ranking")


class ToyBlock(nn.Module):
    """A pre-LN block whose children none of the built-in families know."""

    def __init__(self, d: int):
        super().__init__()
        self.pre_attn, self.mix, self.pre_ffn, self.ffn = nn.LayerNorm(d), nn.Linear(d, d), nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        x = x + self.mix(self.pre_attn(x))
        return x + self.ffn(self.pre_ffn(x))


class ToyModel(nn.Module):
    def __init__(self, d: int = 8, n: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(ToyBlock(d) for _ in range(n))

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        for block in self.layers:
            x = block(x)
        return x


def test_a_registered_family_wraps_its_blocks():
    with pytest.raises(BackboneError, match="don't know where adapters go in a ToyBlock block"):
        spec_for(ToyBlock(8))

    @register_family("toy")
    def match(block):
        if isinstance(block, ToyBlock):
            return pre_norm_spec("toy", "pre_attn", "mix", "pre_ffn", "ffn")
        return None

    try:
        torch.manual_seed(0)
        base = ToyModel()
        x = torch.randn(2, 3, 8)
        want = base(x)
        model = SkipModel(base, AdapterConfig(hidden=4, skip_hidden=4, init="zero", skip_init="zero"))
        assert model.spec.family == "toy"
        torch.testing.assert_close(model(x), want)  # zero-initialised adapters change nothing
        model.apply_plan(SkipPlan((1,), 4))
        masked = model(x)
        model.prune()
        assert len(base.layers) == 3
        torch.testing.assert_close(model(x), masked)  # pruned == masked
    finally:
        FAMILIES.pop("toy")
