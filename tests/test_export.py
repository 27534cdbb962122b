"""Export (docs/export.md): a pruned model written as a Hugging Face model directory loads with plain transformers
in a Python where archskip cannot be imported, and computes what the pruned SkipModel computes (decoders: the same
greedy continuation with a KV cache); a tampered directory is refused; `archskip export` from an artifact; an
encoder classifier as ONNX, checked with ONNX Runtime (or the ONNX reference evaluator)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import VOCAB_SIZE, classification_examples, make_bert, make_tiny, perturb_trainable, tiny_tokenizer
from safetensors.torch import load_file, save_file

from archskip import AdapterConfig, SkipModel, SkipPlan, TaskConfig
from archskip.artifact import load_artifact, save_artifact
from archskip.cli import main
from archskip.errors import OutputError, PlanError
from archskip.export import ExportError, export_onnx, save_pretrained
from archskip.tasks import build_task

ADAPTED = AdapterConfig(hidden=8, skip_hidden=16)
# name -> (tiny family, adapters, skipped blocks, export before or after prune()); the plans put replacement adapters
# before the first kept block (0), after a kept block, two in a row; gemma2 and qwen2_sliding keep mixed
# sliding-window and full-attention layers (window 4, which generation runs past)
DECODERS = {
    "llama": ("llama", ADAPTED, (0, 2), "before"),
    "llama_lavin": ("llama", AdapterConfig.lavin(hidden=4), (3,), "after"),  # sequential adapters, copied block norm
    "gpt2": ("gpt2", ADAPTED, (1, 2), "after"),
    "gemma2": ("gemma2", ADAPTED, (0,), "after"),
    "qwen2_sliding": ("qwen2_sliding", ADAPTED, (1,), "before"),
    # a vision-language model: PaliGemma 2 (a Gemma2 language model, layers alternating sliding / full), image + text
    "paligemma2": ("vlm:paligemma2", ADAPTED, (1,), "after"),
    "llava": ("vlm:llava", ADAPTED, (1, 2), "before"),
}


def vlm_tokenizer():
    """The tiny tokenizer with the VLMs' image token id (test_vlm_families.IMAGE) named `<image>`, as a processor
    expects, registered as the tokenizer's image token (split out of the text before the whitespace split)."""
    import test_vlm_families as vlm
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    del vocab[next(t for t, i in vocab.items() if i == vlm.IMAGE)]
    vocab["<image>"] = vlm.IMAGE
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]",
                                   extra_special_tokens={"image_token": "<image>"})


def llava_processor():
    """LLaVA's processor for test_vlm_families' tiny LLaVA: 16 x 16 images, patches of 8 without the CLS token, so
    one `<image>` in a text becomes 4 image tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    images = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return LlavaProcessor(image_processor=images, tokenizer=vlm_tokenizer(), patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def siglip_image_processor():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": 16, "width": 16})


# what the VLM rows are exported with and run on, in the plain Python too: name -> (processor, the auto class that
# loads it from the export, the file it is saved in, texts with their images, or None: the image processor
# alone, beside the row's own token ids)
PROCESSORS = {
    "llava": (llava_processor, "AutoProcessor", "processor_config.json", ["<image> w1 w2 w3", "<image> w4 w5"]),
    "paligemma2": (siglip_image_processor, "AutoImageProcessor", "preprocessor_config.json", None),
}


def images() -> torch.Tensor:
    """Two RGB images (uint8, height x width x channel) of another size than the model reads: resized by the
    processor."""
    return torch.randint(0, 256, (2, 20, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))


def processed(processor, texts, inputs: dict) -> dict:
    """What `processor` makes of images() (and `texts`), on top of `inputs` (PLAIN does the same)."""
    pictures = list(images().numpy())
    if texts is None:
        return {**inputs, **processor(images=pictures, return_tensors="pt")}
    return dict(processor(images=pictures, text=texts, padding=True, return_tensors="pt"))
NEW_TOKENS = 12
IMAGE = VOCAB_SIZE - 1  # the VLMs' image token (test_vlm_families.IMAGE)

# Runs in a fresh Python in which archskip cannot be imported: loads each job's directory with plain transformers.
PLAIN = textwrap.dedent('''
    import importlib.abc, importlib.util, os, sys

    class NoArchskip(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "archskip":
                raise ImportError(f"{name} is hidden in this process")

    sys.meta_path.insert(0, NoArchskip())
    sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p, "archskip", "__init__.py"))]
    try:
        import archskip  # noqa: F401
        raise SystemExit("archskip is importable")
    except ImportError:
        pass
    import torch, transformers

    jobs = torch.load(sys.argv[1], weights_only=True)
    results = {}
    for job in jobs:
        try:
            kwargs = {} if job["trust"] is None else {"trust_remote_code": job["trust"]}
            model = getattr(transformers, job["auto"]).from_pretrained(job["dir"], **kwargs).eval()
            r = {"class": type(model).__name__,
                 "base": next(c.__name__ for c in type(model).__mro__ if c.__module__.startswith("transformers.models.")),
                 "layers": model.config.get_text_config(decoder=True).num_hidden_layers,
                 "id2label": dict(model.config.id2label),
                 "archskip_modules": sorted(m for m in sys.modules if m.split(".")[0] == "archskip")}
            if job.get("processor"):  # the export's own processor, on the images (and texts) the test gave
                p = job["processor"]
                proc = getattr(transformers, p["auto"]).from_pretrained(job["dir"], trust_remote_code=True)
                pictures = list(p["images"].numpy())
                y = ({**job["inputs"], **proc(images=pictures, return_tensors="pt")} if p["texts"] is None else
                     dict(proc(images=pictures, text=p["texts"], padding=True, return_tensors="pt")))
                with torch.no_grad():
                    r["processed"], r["processed_output"] = dict(y), model(**y).logits
            x = job.get("inputs")
            if job.get("texts"):
                tok = transformers.AutoTokenizer.from_pretrained(job["dir"], trust_remote_code=True)
                x = dict(tok(job["texts"], padding=True, return_tensors="pt"))
            with torch.no_grad():
                out = model(**x)
                r["output"] = out.logits if hasattr(out, "logits") else out.last_hidden_state
                if job.get("generate"):
                    x = {"attention_mask": torch.ones_like(x["input_ids"]), **x}
                    r["generated"] = model.generate(**x, **job["generate"], do_sample=False, pad_token_id=0,
                                                    eos_token_id=None, use_cache=True)
            results[job["id"]] = r
        except Exception as e:
            results[job["id"]] = {"error": f"{type(e).__name__}: {e}"}
    torch.save(results, sys.argv[2])
''')


def prompt() -> torch.Tensor:
    return torch.randint(5, 124, (2, 9), generator=torch.Generator().manual_seed(3))


def decoder_and_inputs(family: str):
    """(tiny model, inputs, generate options) for a family of test_families or, 'vlm:<name>', test_vlm_families."""
    if family.startswith("vlm:"):
        import test_vlm_families as vlm

        name = family.removeprefix("vlm:")
        return vlm.make(name), vlm.inputs_for(name), {"max_new_tokens": NEW_TOKENS, "suppress_tokens": vlm.SPECIAL}
    return make_tiny(family), {"input_ids": prompt()}, {"max_new_tokens": NEW_TOKENS}


def export_decoder(name: str, out) -> dict:
    family, adapter, skip, when = DECODERS[name]
    torch.manual_seed(0)
    base, inputs, gen = decoder_and_inputs(family)
    model = SkipModel(base, adapter)
    perturb_trainable(model, scale=0.1)
    model.apply_plan(SkipPlan(skip, model.num_candidates))
    if when == "after":
        model.prune()
    if name in PROCESSORS:
        make_processor, _, _, texts = PROCESSORS[name]
        processor = make_processor()
        tokenizer = None if hasattr(processor, "tokenizer") else tiny_tokenizer()  # a processor saves its own
        result = model.save_pretrained(out, tokenizer=tokenizer, processor=processor)
    else:
        result = model.save_pretrained(out, tokenizer=tiny_tokenizer())
    assert not model.pruned or when == "after"  # exporting leaves the model as it was
    model.prune()
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**{"attention_mask": torch.ones_like(inputs["input_ids"]), **inputs}, **gen,
                                   do_sample=False, pad_token_id=0, eos_token_id=None)
    got = {"model": model, "result": result, "logits": logits, "generated": generated, "inputs": inputs, "gen": gen}
    if name in PROCESSORS:
        got["processed"] = processed(processor, texts, inputs)
        with torch.no_grad():
            got["processed_output"] = model(**got["processed"]).logits
    return got


def bert_artifact(root):
    """A tiny BERT directory, and an artifact trained on it: classification head (mean pooling), plan (1, 3), the
    pooler unfrozen."""
    from transformers import AutoModel, AutoTokenizer

    d = root / "tiny-bert"
    torch.manual_seed(0)
    make_bert().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    model = SkipModel(AutoModel.from_pretrained(d).eval(), ADAPTED, name_or_path=str(d), trainable=["pooler"])
    task = build_task(TaskConfig(max_length=16, pooling="mean"), AutoTokenizer.from_pretrained(d),
                      classification_examples(20))
    task.attach_head(model)
    model.apply_plan(SkipPlan((1, 3), 4))
    perturb_trainable(model)
    save_artifact(model, task, root / "artifact")
    return load_artifact(root / "artifact")


def tamper(src, dst, *, drop=None, add=None, reshape=None, config=None):
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(64, 32)
    if reshape:
        state[reshape] = torch.zeros(3, 3)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def three_blocks_described(cfg):
    cfg["num_hidden_layers"] = 3
    cfg["archskip"]["blocks"].append(cfg["archskip"]["blocks"][-1])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Every export and tampered directory, loaded in one fresh Python without archskip; (expected, results)."""
    root = tmp_path_factory.mktemp("export")
    expected, jobs = {}, []
    for name in DECODERS:
        expected[name] = export_decoder(name, root / name)
        auto = "AutoModelForImageTextToText" if DECODERS[name][0].startswith("vlm:") else "AutoModelForCausalLM"
        jobs.append({"id": name, "dir": str(root / name), "auto": auto, "trust": True,
                     "inputs": expected[name]["inputs"], "generate": expected[name]["gen"]})
        if name in PROCESSORS:
            _, processor_auto, _, texts = PROCESSORS[name]
            jobs[-1]["processor"] = {"auto": processor_auto, "images": images(), "texts": texts}
    model, task = bert_artifact(root)
    texts = [e["text"] for e in classification_examples(6, seed=9)]
    model.save_pretrained(root / "bert", task=task)
    with torch.no_grad():
        expected["bert"] = {"model": model, "logits": task.logits(model, task.collate([{"text": t} for t in texts]))}
    jobs.append({"id": "bert", "dir": str(root / "bert"), "auto": "AutoModelForSequenceClassification", "trust": True,
                 "texts": texts})

    src = root / "llama"
    tampered = {
        "missing": tamper(src, root / "t-missing", drop="archskip.blocks.0.sites.attn.up.weight"),
        "unexpected": tamper(src, root / "t-unexpected", add="model.layers.2.mlp.up_proj.weight"),
        "shape": tamper(src, root / "t-shape", reshape="archskip.blocks.1.sites.mlp.down.weight"),
        "layers": tamper(src, root / "t-layers", config=lambda c: c.update(num_hidden_layers=3)),
        "layers_and_blocks": tamper(src, root / "t-layers2", config=three_blocks_described),
    }
    for key, d in tampered.items():
        jobs.append({"id": key, "dir": str(d), "auto": "AutoModelForCausalLM", "trust": True,
                     "inputs": {"input_ids": prompt()}})
    jobs.append({"id": "untrusted", "dir": str(src), "auto": "AutoModelForCausalLM", "trust": False,
                 "inputs": {"input_ids": prompt()}})

    torch.save(jobs, root / "jobs.pt")
    (root / "plain.py").write_text(PLAIN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(root / "modules"),
           "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(root / "plain.py"), str(root / "jobs.pt"), str(root / "results.pt")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=root, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return expected, torch.load(root / "results.pt", weights_only=True), root


# ---- the round trip -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_loads_without_archskip_and_generates_the_same(plain, name):
    expected, results, root = plain
    exp, got = expected[name], results[name]
    assert "error" not in got, got.get("error")
    assert got["archskip_modules"] == [] and got["class"] == f"Archskip{type(exp['model'].base).__name__}"
    assert got["base"] == type(exp["model"].base).__name__  # the transformers class, adapters added by hooks
    assert got["layers"] == len(exp["model"].plan.keep) == exp["model"].layers_config.num_hidden_layers
    torch.testing.assert_close(got["output"], exp["logits"], rtol=0, atol=1e-5)
    assert torch.equal(got["generated"], exp["generated"])  # greedy, with a KV cache, past the sliding window
    assert exp["result"]["max_abs_diff"] is not None and exp["result"]["max_abs_diff"] <= 1e-5
    cfg = json.loads((root / name / "config.json").read_text())
    assert cfg["model_type"] == "archskip" and cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_archskip.")
    assert [b["candidate"] for b in cfg["archskip"]["blocks"]] == list(exp["model"].plan.keep)
    text = cfg.get("text_config", cfg)  # a vision-language model's blocks are described by its text config
    if "layer_types" in text:  # the per-layer list cut to the kept blocks
        assert len(text["layer_types"]) == text["num_hidden_layers"] == len(exp["model"].plan.keep)
    files = set(os.listdir(root / name))
    assert {"modeling_archskip.py", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    if name in PROCESSORS:  # its processor, loaded from the directory, makes the same inputs, hence the same logits
        assert PROCESSORS[name][2] in files
        assert got["processed"].keys() == exp["processed"].keys()
        for key, value in exp["processed"].items():
            assert torch.equal(got["processed"][key], value), key
        assert (exp["processed"]["input_ids"] == IMAGE).sum() == 8  # with the images in them: 4 image tokens a row
        torch.testing.assert_close(got["processed_output"], exp["processed_output"], rtol=0, atol=1e-5)
    imports = {a.name.split(".")[0] for n in ast.walk(ast.parse((root / name / "modeling_archskip.py").read_text()))
               if isinstance(n, (ast.Import, ast.ImportFrom)) for a in (n.names if isinstance(n, ast.Import) else
                                                                          [ast.alias(n.module or "")])}
    assert imports == {"__future__", "copy", "torch", "transformers"}


def test_mixed_layer_types_are_cut_to_the_kept_blocks(plain):
    _, _, root = plain
    gemma2 = json.loads((root / "gemma2" / "config.json").read_text())
    assert gemma2["layer_types"] == ["full_attention", "sliding_attention", "full_attention"]  # of 4, block 0 skipped
    qwen2 = json.loads((root / "qwen2_sliding" / "config.json").read_text())
    assert qwen2["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    paligemma2 = json.loads((root / "paligemma2" / "config.json").read_text())["text_config"]
    assert paligemma2["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]


def test_bert_classifier_from_an_artifact_loads_without_archskip(plain):
    expected, results, root = plain
    got = results["bert"]
    assert "error" not in got, got.get("error")
    assert got["archskip_modules"] == [] and got["class"] == "ArchskipBertModelForSequenceClassification"
    assert got["layers"] == 2 and got["id2label"] == {0: "neg", 1: "pos"}
    torch.testing.assert_close(got["output"], expected["bert"]["logits"], rtol=0, atol=1e-5)  # its own tokenizer
    cfg = json.loads((root / "bert" / "config.json").read_text())
    assert cfg["archskip"]["head"] == {"kind": "classification", "pooling": "mean", "num_labels": 2,
                                       "labels": ["neg", "pos"]}
    sites = cfg["archskip"]["blocks"][0]["sites"]
    assert sites["attn"] == {**sites["attn"], "kind": "residual_arg", "module": "attention.output"}
    assert [r["candidate"] for r in cfg["archskip"]["blocks"][0]["after"]] == [1]


# ---- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, words", [
    ("missing", ["missing from the weights", "archskip.blocks.0.sites.attn.up.weight"]),
    ("unexpected", ["unexpected in the weights", "model.layers.2.mlp.up_proj.weight"]),
    ("shape", ["archskip.blocks.1.sites.mlp.down.weight"]),
    ("layers", ["describes 3 blocks", "2 kept blocks"]),
    ("layers_and_blocks", ["missing from the weights", "model.layers.2."]),
    ("untrusted", ["trust_remote_code=True"]),
])
def test_a_tampered_directory_is_refused(plain, case, words):
    _, results, _ = plain
    error = results[case].get("error")
    assert error is not None, f"{case}: loaded without an error"
    for w in words:
        assert w in error, error


def test_what_cannot_be_exported_is_refused(tmp_path):
    model = SkipModel(make_tiny("llama"), ADAPTED)
    with pytest.raises(PlanError, match="apply_plan"):
        model.save_pretrained(tmp_path / "x")
    conv = SkipModel(make_tiny("deberta_v2_conv"), ADAPTED)
    conv.apply_plan(SkipPlan((1,), 4))
    with pytest.raises(ExportError, match="keep every block's place"):
        conv.save_pretrained(tmp_path / "x")
    router = SkipModel(make_tiny("llama"), AdapterConfig.lavin(hidden=4, multimodal=True))
    router.apply_plan(SkipPlan((1,), 4))
    with pytest.raises(ExportError, match="router"):
        router.save_pretrained(tmp_path / "x")
    bert = SkipModel(make_bert(), ADAPTED)
    build_task(TaskConfig(), tiny_tokenizer(), classification_examples(10)).attach_head(bert)
    bert.apply_plan(SkipPlan((1,), 4))
    with pytest.raises(ExportError, match="pass task="):
        bert.save_pretrained(tmp_path / "x")
    model.apply_plan(SkipPlan((1,), 4))
    with pytest.raises(ExportError, match="ONNX export covers encoders"):
        export_onnx(model, tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an archskip export"):
        model.save_pretrained(tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["notes.txt"] and not (tmp_path / "x").exists()


@pytest.mark.parametrize("pruned", [False, True])
def test_the_base_models_own_save_pretrained_is_refused(tmp_path, pruned):
    """transformers would load what the wrapped base's own save_pretrained writes without an error, with random
    blocks (their weights are stored under SkippableLayer names) and no adapters: it is refused, for the base
    and for every model inside it that holds the blocks, and nothing is written."""
    import copy
    import pickle

    import test_vlm_families as vlm
    from transformers import LlamaForCausalLM

    llama = SkipModel(make_tiny("llama"), ADAPTED)
    paligemma = SkipModel(vlm.make("paligemma"), ADAPTED)
    for m in (llama, paligemma):
        m.apply_plan(SkipPlan((1,), 4))
        if pruned:
            m.prune()
    owners = [llama.base, llama.base.model, copy.deepcopy(llama.base), pickle.loads(pickle.dumps(llama.base)),
              paligemma.base, paligemma.base.model, paligemma.base.model.language_model]
    for i, owner in enumerate(owners):
        with pytest.raises(ExportError, match=r"SkipModel\.save_pretrained\(dir, task=\.\.\.\) or `archskip export"):
            owner.save_pretrained(tmp_path / str(i))
        assert not (tmp_path / str(i)).exists()
    with pytest.raises(ExportError, match=f"this {type(paligemma.base.model.language_model).__name__} is wrapped"):
        paligemma.base.model.language_model.save_pretrained(tmp_path / "x")
    # the vision tower holds no block: its own save_pretrained is untouched; so is the class
    paligemma.base.model.vision_tower.save_pretrained(tmp_path / "vision")
    LlamaForCausalLM(llama.base.config).save_pretrained(tmp_path / "plain")
    assert (tmp_path / "vision" / "config.json").exists() and (tmp_path / "plain" / "model.safetensors").exists()
    # what to use instead works on the same model
    assert llama.save_pretrained(tmp_path / "export")["kept"] == [0, 2, 3]


# ---- the command line and ONNX -------------------------------------------------------------------------------------
def test_cli_exports_an_artifact_trained_for_two_steps(tiny_encoder_dir, tmp_path, capsys):
    from archskip.data import text as text_data
    from archskip.export.modeling_archskip import ArchskipLoadError

    data = str(text_data.write_csv(tmp_path / "train.csv", classification_examples(60, seed=1)))
    main(["train", "--model.name_or_path", str(tiny_encoder_dir), "--data.train", data, "--plan", "2",
          "--adapter.hidden", "8", "--adapter.skip_hidden", "16", "--train.max_steps", "2", "--train.batch_size", "8",
          "--output_dir", str(tmp_path / "t")])
    capsys.readouterr()
    artifact = str(tmp_path / "t" / "artifact")
    main(["export", "--artifact", artifact, "--out", str(tmp_path / "hf")])
    result = json.loads(capsys.readouterr().out)
    assert result["kept"] == [0, 1, 3] and result["max_abs_diff"] <= 1e-5
    main(["export", "--artifact", artifact, "--out", str(tmp_path / "hf")])  # an earlier export is replaced
    capsys.readouterr()

    from archskip.export import modeling_archskip

    model, task = load_artifact(artifact)
    examples = classification_examples(5, seed=4)
    loaded = modeling_archskip.ArchskipBertModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    batch = task.collate(examples)
    tok = type(task.tokenizer).from_pretrained(tmp_path / "hf")  # (in this process: no dynamic module to cache)
    tok_batch = tok([e["text"] for e in examples], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tok_batch).logits, task.logits(model, batch), rtol=0, atol=1e-5)
    with pytest.raises(ArchskipLoadError, match="a classification head: load it with AutoModelForSequenceClassification"):
        modeling_archskip.ArchskipBertModel.from_pretrained(tmp_path / "hf")

    main(["export", "--artifact", artifact, "--out", str(tmp_path / "onnx"), "--format", "onnx"])
    result = json.loads(capsys.readouterr().out)
    assert result["outputs"] == ["logits"] and result["max_abs_diff"] <= 1e-4

    with pytest.raises(SystemExit):
        main(["export", "--artifact", artifact, "--out", str(tmp_path / "t")])  # a directory that is no export
    assert "not an archskip export" in capsys.readouterr().err


def test_cli_exports_a_vision_language_artifact_with_its_processor(tmp_path, capsys):
    """`archskip export` of an artifact trained on a LLaVA whose directory has a processor: the export holds the
    processor (the artifact knows only its tokenizer; the processor comes from the base model's directory), and
    what it makes of images and texts gives the pruned model's logits. A text model's export holds none."""
    import test_vlm_families as vlm
    from transformers import AutoProcessor

    from archskip.export.hf import base_processor
    from archskip.export.modeling_archskip import ArchskipLlavaForConditionalGeneration

    base_dir = tmp_path / "tiny-llava"
    torch.manual_seed(0)
    vlm.make("llava").save_pretrained(base_dir)
    llava_processor().save_pretrained(base_dir)
    model, task = load_artifact_of(base_dir, tmp_path / "artifact", TaskConfig(name="causal_lm", max_length=16))
    main(["export", "--artifact", str(tmp_path / "artifact"), "--out", str(tmp_path / "hf")])
    assert json.loads(capsys.readouterr().out)["kept"] == [0, 3]
    assert {"processor_config.json", "tokenizer.json"} <= set(os.listdir(tmp_path / "hf"))

    texts = ["<image> w1 w2 w3", "<image> w4 w5"]
    want = processed(AutoProcessor.from_pretrained(base_dir), texts, {})
    got = processed(AutoProcessor.from_pretrained(tmp_path / "hf", trust_remote_code=True), texts, {})
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert (got["input_ids"] == IMAGE).sum() == 8
    loaded = ArchskipLlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**got).logits, model(**want).logits, rtol=0, atol=1e-5)

    bert_dir = tmp_path / "tiny-bert"
    make_bert().save_pretrained(bert_dir)
    tiny_tokenizer().save_pretrained(bert_dir)
    assert base_processor(str(bert_dir)) is None and base_processor("random:llama-7b") is None


def load_artifact_of(base_dir, artifact_dir, task_config):
    """An artifact (plan (1, 2), perturbed adapters) on the model in `base_dir`, loaded back as the CLI does."""
    from archskip.config import ModelConfig
    from archskip.models import load_pretrained

    base, tokenizer, _ = load_pretrained(ModelConfig(name_or_path=str(base_dir)))
    model = SkipModel(base, ADAPTED, name_or_path=str(base_dir))
    task = build_task(task_config, tokenizer)
    model.apply_plan(SkipPlan((1, 2), model.num_candidates))
    perturb_trainable(model, scale=0.1)
    save_artifact(model, task, artifact_dir)
    return load_artifact(artifact_dir)


def test_processor_refusals(tmp_path):
    model = SkipModel(make_tiny("llama"), ADAPTED)
    model.apply_plan(SkipPlan((1,), 4))
    with pytest.raises(ExportError, match="processor= got a tokenizer"):
        save_pretrained(model, tmp_path / "x", processor=tiny_tokenizer())
    with pytest.raises(ExportError, match="must be a transformers processor or image processor"):
        save_pretrained(model, tmp_path / "x", processor=lambda image: image)
    with pytest.raises(ExportError, match="holds a tokenizer and tokenizer= is another one"):
        save_pretrained(model, tmp_path / "x", tokenizer=tiny_tokenizer(), processor=llava_processor())
    assert not (tmp_path / "x").exists()


def test_onnx_export_of_the_bert_classifier(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    model, task = bert_artifact(tmp_path)
    result = export_onnx(model, tmp_path / "onnx", task=task)
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.graph.output] == ["logits"] and result["max_abs_diff"] <= 1e-4
    meta = json.loads((tmp_path / "onnx" / "onnx_model.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["pooling"] == "mean" and meta["plan"]["skip"] == [1, 3]

    examples = classification_examples(7, seed=5)  # another batch size and length than traced
    batch = task.collate(examples)
    with torch.no_grad():
        ref = task.logits(model, batch).numpy()
    feed = {k: batch[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")}
    try:
        import onnxruntime
    except ImportError:
        assert result["verified_with"].startswith("onnx.reference")
    else:
        assert result["verified_with"].startswith("onnxruntime")
        got = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, feed)[0]
        assert abs(got - ref).max() <= 1e-4
    # without ONNX Runtime, the graph is checked and run by the ONNX reference evaluator
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = export_onnx(model, tmp_path / "onnx", task=task)
    assert result["verified_with"].startswith("onnx.reference") and result["max_abs_diff"] <= 1e-4


def test_onnx_export_of_a_vision_encoder_holds_its_image_processor(tmp_path):
    """A ViT exported as ONNX with its image processor: the directory alone (no archskip, no base model) turns
    images of another size into the graph's input, and the graph gives the pruned model's hidden states."""
    pytest.importorskip("onnx")
    from transformers import AutoImageProcessor, ViTImageProcessor

    torch.manual_seed(0)
    model = SkipModel(make_tiny("vit"), ADAPTED)
    perturb_trainable(model, scale=0.1)
    model.apply_plan(SkipPlan((2,), model.num_candidates))
    result = export_onnx(model, tmp_path / "onnx", processor=ViTImageProcessor(size={"height": 16, "width": 16}))
    assert result["inputs"] == ["pixel_values"] and "preprocessor_config.json" in os.listdir(tmp_path / "onnx")
    pixels = processed(AutoImageProcessor.from_pretrained(tmp_path / "onnx"), None, {})["pixel_values"]
    assert pixels.shape == (2, 3, 16, 16)
    with torch.no_grad():
        want = model.prune()(pixel_values=pixels).last_hidden_state.numpy()
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        got = ReferenceEvaluator(str(tmp_path / "onnx" / "model.onnx")).run(None, {"pixel_values": pixels.numpy()})[0]
    else:
        got = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, {"pixel_values": pixels.numpy()})[0]
    assert abs(got - want).max() <= 1e-4
