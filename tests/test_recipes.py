"""Every shipped recipe parses for its stage, with the values the paper uses."""

from pathlib import Path

import pytest
import yaml

from archskip.cli import main
from archskip.config import RunConfig

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_for_its_stage(path, capsys):
    stage = "search" if path.stem.endswith("search") else "train"
    with pytest.raises(SystemExit) as e:
        main([stage, "--config", str(path), "--print_config"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    raw = yaml.safe_load(path.read_text())
    assert printed["model"]["name_or_path"] == raw["model"]["name_or_path"]
    RunConfig.from_dict({k: v for k, v in raw.items() if k != "plan"})  # the library's own validation too
    if stage == "train":
        assert raw["plan"].endswith("search_result.json")


def test_vilt_recipes_follow_the_paper():
    r = {p.stem: yaml.safe_load(p.read_text()) for p in RECIPES if p.stem.startswith("vilt-")}
    assert set(r) == {f"vilt-{t}-{s}" for t in ("vqa", "nlvr2", "f30k") for s in ("search", "train")}
    for name, cfg in r.items():
        assert cfg["adapter"]["hidden"] == 96 and cfg["adapter"]["skip_hidden"] == 192 and cfg["task"]["max_length"] == 40
        assert cfg["train"]["epochs"] == (3 if name.endswith("search") else 10)
        if name.endswith("search"):
            s = cfg["search"]
            assert (s["k"], s["samples"], s["update_every"], s["gate_lr"], s["warmup_epochs"]) == (1, 3, 10, 1.0, 1.0)
    assert (r["vilt-vqa-train"]["train"]["lr"], r["vilt-vqa-train"]["train"]["head_lr_mult"]) == (1e-4, 10)
    assert r["vilt-vqa-train"]["train"]["batch_size"] * r["vilt-vqa-train"]["train"]["grad_accum"] == 256
    assert r["vilt-nlvr2-train"]["train"]["batch_size"] * r["vilt-nlvr2-train"]["train"]["grad_accum"] == 128
    assert r["vilt-f30k-train"]["train"]["batch_size"] * r["vilt-f30k-train"]["train"]["grad_accum"] == 256
    assert r["vilt-f30k-train"]["data"]["test"] == "f30k_caption_karpathy_test"


def test_lavin_recipes_follow_the_reference():
    r = {p.stem: yaml.safe_load(p.read_text()) for p in RECIPES if p.stem.startswith("lavin-")}
    assert set(r) == {f"lavin-{t}-{s}" for t in ("sqa", "boolq", "csqa", "gsm8k") for s in ("search", "train")}
    ks = {"sqa": 6, "boolq": 6, "csqa": 6, "gsm8k": 4}
    for name, cfg in r.items():
        a, t = cfg["adapter"], cfg["train"]
        assert (a["style"], a["hidden"], a["skip_hidden"], a["skip_norm"], a["init"]) == ("sequential", 8, 32, "block", "zero")
        assert t["batch_size"] * t["grad_accum"] * 2 == 32 and t["schedule"] == "cosine" and t["betas"] == [0.9, 0.95]
        if name.endswith("search"):
            s = cfg["search"]
            assert s["k"] == ks[name.split("-")[1]] and s["gate_lr"] == 0.05 and s["updates_per_epoch"] == 150 and s["samples"] == 3
    assert r["lavin-sqa-train"]["model"]["vision"] and r["lavin-sqa-train"]["adapter"]["kind"] == "router"
    assert r["lavin-sqa-train"]["train"]["lr"] == pytest.approx(9e-3 * 32 / 256) and r["lavin-sqa-train"]["train"]["epochs"] == 20
    assert r["lavin-boolq-train"]["adapter"]["kind"] == "bottleneck" and "vision" not in r["lavin-boolq-train"]["model"]
    assert r["lavin-gsm8k-train"]["task"]["max_new_tokens"] == 256


def test_meter_recipes_follow_the_paper():
    r = {p.stem: yaml.safe_load(p.read_text()) for p in RECIPES if p.stem.startswith("meter-")}
    assert set(r) == {f"meter-{t}-{s}" for t in ("vqa", "nlvr2", "f30k") for s in ("search", "train")}
    for name, cfg in r.items():
        a, t = cfg["adapter"], cfg["train"]
        assert (a["hidden"], a["skip_hidden"]) == (96, 288) and t["lr_mult"] == {"sites": 5, "pooler": 5}
        if name.endswith("search"):
            assert cfg["search"]["k"] == 4
    expect = {"vqa": (384, 50, 512, 2.5e-5, 50), "nlvr2": (288, 50, 256, 5e-5, 10), "f30k": (384, 40, 512, 5e-5, 5)}
    for short, (img, tlen, eff, lr, head) in expect.items():
        cfg = r[f"meter-{short}-train"]
        t = cfg["train"]
        assert (cfg["task"]["image_size"], cfg["task"]["max_length"], t["batch_size"] * t["grad_accum"], t["lr"], t["head_lr_mult"]) == \
            (img, tlen, eff, lr, head)
