"""The command line, end to end on a tiny local model: search -> train -> eval -> profile, and errors."""

import json

import pytest
import yaml
from conftest import classification_examples

from archskip.cli import main
from archskip.data import text as text_data


def write_csv(path, rows):
    return str(text_data.write_csv(path, rows))  # the CLI takes the path as a string


@pytest.fixture
def data(tmp_path):
    return write_csv(tmp_path / "train.csv", classification_examples(200, seed=1))


def run(args, capsys):
    main(args)
    return capsys.readouterr().out


def test_search_train_eval_profile(tiny_encoder_dir, data, tmp_path, capsys):
    common = ["--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--adapter.hidden", "8",
              "--adapter.skip_hidden", "16", "--train.batch_size", "16"]
    out = run(["search", *common, "--search.k", "1", "--search.verify-examples", "64", "--train.epochs", "2",
               "--output-dir", str(tmp_path / "s")], capsys)  # dashes work as well as underscores
    assert "plan: skip [" in out
    result = json.loads((tmp_path / "s" / "search_result.json").read_text())
    assert len(result["plan"]["skip"]) == 1 and result["method"] == "das-verified"
    # the default measures every plan on the frozen model and trains no supernet: no policy, no search adapters
    assert result["config"]["supernet"] is False and len(result["config"]["verification"]["measured"]) == 4
    assert (tmp_path / "s" / "gates.png").stat().st_size > 1000 and (tmp_path / "s" / "config.yaml").is_file()
    assert not (tmp_path / "s" / "policy.csv").exists() and not (tmp_path / "s" / "search_adapters.safetensors").exists()
    with pytest.raises(SystemExit):  # nothing to warm-start from: refused before any work
        main(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--train.warm_start",
              str(tmp_path / "s"), "--output_dir", str(tmp_path / "w")])
    assert "no search adapters" in capsys.readouterr().err and not (tmp_path / "w").exists()

    out = run(["train", *common, "--plan", str(tmp_path / "s" / "search_result.json"), "--train.epochs", "3",
               "--train.lr", "0.01", "--output_dir", str(tmp_path / "t")], capsys)
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["plan"] == result["plan"]["skip"] and 0.0 <= metrics["test"]["test"]["accuracy"] <= 1.0
    assert (tmp_path / "t" / "train.csv").is_file() and (tmp_path / "t" / "eval.csv").is_file()
    meta = json.loads((tmp_path / "t" / "artifact" / "archskip.json").read_text())
    assert meta["plan"]["skip"] == result["plan"]["skip"] and meta["run_config"]["train"]["lr"] == 0.01
    assert meta["base_model"]["name_or_path"] == str(tiny_encoder_dir) and len(meta["base_model"]["fingerprint"]) == 16

    out = run(["eval", "--artifact", str(tmp_path / "t" / "artifact"), "--data", data], capsys)
    assert 0.0 <= json.loads(out)["accuracy"] <= 1.0

    out = run(["profile", "--artifact", str(tmp_path / "t" / "artifact"), "--batch_size", "2", "--seq_len", "8",
               "--repeats", "2"], capsys)
    assert "| base |" in out and "| archskip |" in out and "latency_ratio" in out


def test_yaml_recipe_and_baseline_methods(tiny_encoder_dir, data, tmp_path, capsys):
    recipe = {
        "model": {"name_or_path": str(tiny_encoder_dir)},
        "data": {"train": data},
        "adapter": {"hidden": 8, "skip_hidden": 16},
        "search": {"method": "block-influence", "k": 2},
        "train": {"batch_size": 16},
        "output_dir": str(tmp_path / "bi"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = run(["search", "--config", str(tmp_path / "r.yaml")], capsys)
    assert "block-influence" in out
    for method in ("last-k", "random", "exhaustive", "removal-loss"):
        run(["search", "--config", str(tmp_path / "r.yaml"), "--search.method", method, "--train.epochs", "1",
             "--output_dir", str(tmp_path / method)], capsys)
        res = json.loads((tmp_path / method / "search_result.json").read_text())
        assert res["method"] == method and len(res["plan"]["skip"]) == 2
    assert json.loads((tmp_path / "last-k" / "search_result.json").read_text())["plan"]["skip"] == [2, 3]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plan", "7"], "skip index 7 is out of range; expected 0..3"),
        (["--plan", "1,1"], "appear more than once"),
        (["--plan", "0,1,2,3"], "cannot skip 4 of 4 candidates"),
        (["--plan", "x"], "is not a comma-separated list"),
        (["--plan", "none", "--data.train", "missing.csv"], "data file 'missing.csv' does not exist"),
        (["--plan", "none", "--model.name_or_path", "./no/such/model"], "model path './no/such/model' does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(tiny_encoder_dir, data, tmp_path, capsys, args, message):
    base = ["train", "--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        main(base + args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_errors_are_reported_by_the_parser(tiny_encoder_dir, data, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--search.k", "-2"])
    assert e.value.code != 0
    assert "search.k=-2 must be a non-negative integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--search.method", "greedy"])
    assert "greedy" in capsys.readouterr().err


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("search", "train", "eval", "profile", "demo"))
