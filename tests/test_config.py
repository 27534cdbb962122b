import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from archskip.config import AdapterConfig, ConfigError, RunConfig, SearchConfig, TrainConfig


def test_yaml_roundtrip(tmp_path):
    cfg = RunConfig()
    cfg.search.k = 3
    cfg.train.betas = (0.9, 0.95)
    cfg.model.trainable = ["pooler"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    back = RunConfig.from_file(path)
    assert back == cfg


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"serch": {}}, r"unknown key\(s\) serch"),
        ({"search": {"kk": 2}}, r"unknown key\(s\) search.kk"),
        ({"search": {"k": "two"}}, "search.k='two' has the wrong type; expected int"),
        ({"search": {"k": -1}}, "search.k=-1 must be a non-negative integer"),
        ({"search": {"mode": "greedy"}}, "SearchConfig.mode='greedy' is not valid; expected one of 'verified', 'exact', 'faithful'"),
        ({"adapter": {"hidden": 0}}, "adapter.hidden=0 must be a positive integer"),
        ({"adapter": {"skip_hidden": -4}}, "adapter.skip_hidden=-4 must be a positive integer"),
        ({"train": {"lr": 0}}, "train.lr=0.0 must be > 0"),
        ({"train": {"batch_size": 0}}, "train.batch_size=0 must be >= 1"),
        ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, "must be < 1"),
        ({"search": {"reward_fraction": 1.5}}, r"search.reward_fraction=1.5 must be in \(0, 1\)"),
        ({"search": {"prefix_states_mb": -1}}, r"search.prefix_states_mb=-1.0 must be >= 0"),
        ({"search": {"verify_metric": "accuracy"}}, "SearchConfig.verify_metric='accuracy' is not valid; expected one of 'task', 'choice_loss', 'choice_refit_loss', 'text_loss'"),
        ({"task": "classification"}, "task. must be a mapping"),
    ],
)
def test_bad_values_are_named(mapping, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(mapping)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_file(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping, got list"):
        RunConfig.from_file(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_file(tmp_path / "bad.yaml")


def test_presets_and_derived_values():
    lavin = AdapterConfig.lavin()
    assert (lavin.style, lavin.hidden, lavin.skip_hidden, lavin.init, lavin.skip_init) == ("sequential", 8, 32, "zero", "zero")
    assert SearchConfig(mode="faithful").reward_kind == "exp_neg_loss"
    assert SearchConfig(mode="exact").reward_kind == "neg_loss"
    assert SearchConfig(mode="faithful", reward="neg_loss").reward_kind == "neg_loss"
    assert TrainConfig(betas=[0.9, 0.9]).betas == (0.9, 0.9)


@given(st.dictionaries(st.sampled_from(["k", "samples", "update_every", "gate_lr", "mode", "bogus"]),
                       st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5), st.none())))
def test_search_config_from_arbitrary_yaml_is_valid_or_a_config_error(d):
    try:
        cfg = RunConfig.from_dict({"search": d})
    except ConfigError:
        return
    assert cfg.search.k >= 0 and cfg.search.samples >= 1 and cfg.search.gate_step > 0


def test_yaml_number_written_as_text_is_explained():
    with pytest.raises(ConfigError, match=r"train.lr='5e-05' has the wrong type; expected a number \(YAML reads"):
        RunConfig.from_dict(yaml.safe_load("train:\n  lr: 5e-05\n"))
