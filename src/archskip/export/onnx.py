"""Export an encoder (with its classification head, if it has one) as an ONNX graph (docs/export.md).

    <dir>/model.onnx          inputs  input_ids, attention_mask (int64, batch x sequence), and token_type_ids
                                      when the encoder takes them; or pixel_values (float, batch x C x H x W)
                              output  logits (batch x labels) with a classification head, else
                                      last_hidden_state (batch x sequence x hidden)
    <dir>/onnx_model.json     those names and shapes, the labels, the pooling, the plan, how it was verified
    <dir>/tokenizer files     when a tokenizer is known; processor files when an image processor is

The graph is traced from the SkipModel itself (its hooks included) with torch's TorchScript-based exporter, then
run on an input of another batch size and length and compared with the model: with ONNX Runtime when it is
installed (`pip install "archskip[export]"`), else with the ONNX reference evaluator after `onnx.checker`.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import PlanError
from .hf import ONNX_META, ExportError, evaluating, preprocessing, refuse, write_dir

OPSET = 17


class _Graph(nn.Module):
    """The SkipModel's forward as positional tensors in, one tensor out (what ONNX traces)."""

    def __init__(self, model, task, names: list[str]):
        super().__init__()
        self.model, self.names = model, names
        self.task = task

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.names, inputs))
        if self.model.head is not None:
            return self.task.logits(self.model, x)
        return self.model(**x).last_hidden_state


def graph_inputs(model) -> list[str]:
    base = model.base
    params = inspect.signature(base.forward).parameters
    if getattr(base, "main_input_name", "input_ids") == "pixel_values":
        return ["pixel_values"]
    if "pixel_values" in params and "input_ids" in params:
        raise ExportError(f"a {type(base).__name__} reads text and images: ONNX export covers text or vision encoders")
    names = ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if "token_type_ids" in params else names


def example_inputs(model, names: list[str], batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Token ids with the first row padded at the end, token types 0 then 1; or random images."""
    cfg = model.base.config
    g = torch.Generator().manual_seed(seed)
    device = next(model.base.parameters()).device
    if names == ["pixel_values"]:
        size, channels = cfg.image_size, getattr(cfg, "num_channels", 3)
        return (torch.randn(batch, channels, size, size, generator=g).to(device),)
    vocab = cfg.vocab_size
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length - 2:] = 0
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1 if getattr(cfg, "type_vocab_size", 2) > 1 else 0
    by_name = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return tuple(by_name[n].to(device) for n in names)


def export_onnx(model, out_dir: str | Path, *, task=None, tokenizer=None, processor=None, opset: int = OPSET,
                check: bool = True) -> dict:
    """Write `model` (an encoder SkipModel with a plan) as `out_dir/model.onnx`, with the tokenizer and processor
    as `save_pretrained` writes them; returns what was written and how it was verified: {"dir", "inputs",
    "outputs", "verified_with", "max_abs_diff"}."""
    if model.plan is None:
        raise PlanError("apply_plan(plan) before exporting: the plan decides which blocks are exported")
    if model.is_decoder:
        raise ExportError("ONNX export covers encoders; a decoder generates with a KV cache, which needs its model "
                          "code: export it as a model directory (format 'hf')")
    refuse(model, task)
    names = graph_inputs(model)
    output = "logits" if model.head is not None else "last_hidden_state"
    axes = {n: {0: "batch"} if n == "pixel_values" else {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if output == "logits" or names == ["pixel_values"] else {0: "batch", 1: "sequence"}
    graph = _Graph(model, task, names)
    save_preprocessing = preprocessing(task, tokenizer, processor)

    def fill(tmp: Path) -> dict:
        path = tmp / "model.onnx"
        with evaluating(graph), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python values it records as constants
            torch.onnx.export(graph, example_inputs(model, names, 2, 8, seed=0), str(path), dynamo=False,
                              input_names=names, output_names=[output], dynamic_axes=axes, opset_version=opset)
        verified = verify(model, graph, names, path) if check else {"verified_with": None, "max_abs_diff": None}
        meta = {
            "kind": "archskip.onnx",
            "inputs": {n: _shape_doc(n) for n in names},
            "outputs": {output: "batch x labels (float32)" if output == "logits" else
                        ("batch x sequence x hidden" if names != ["pixel_values"] else "batch x tokens x hidden")},
            "labels": [str(n) for n in task.labels.names] if model.head is not None else None,
            "pooling": task.pooling if model.head is not None else None,
            "plan": {"num_candidates": model.num_candidates, "skip": list(model.plan.skip)},
            "base_model": model.name_or_path,
            "opset": opset,
            **verified,
        }
        (tmp / ONNX_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        save_preprocessing(tmp)
        return verified

    verified = write_dir(out_dir, fill)
    return {"dir": str(out_dir), "inputs": names, "outputs": [output], **verified}


def _shape_doc(name: str) -> str:
    return "batch x channels x height x width (float32)" if name == "pixel_values" else "batch x sequence (int64)"


def verify(model, graph: nn.Module, names: list[str], path: Path, tol: float = 1e-4) -> dict:
    """Run the ONNX file on an input of another shape than the traced one and compare with the model."""
    x = example_inputs(model, names, 3, 11, seed=1)
    with evaluating(graph), torch.no_grad():
        ref = graph(*x).float().cpu().numpy()
    feed = {n: t.cpu().numpy() for n, t in zip(names, x)}
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got, how = session.run(None, feed)[0], f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        try:
            import onnx
            from onnx.reference import ReferenceEvaluator
        except ImportError:
            raise ExportError("checking the ONNX file needs onnxruntime or onnx: pip install \"archskip[export]\" "
                              "(or pass check=False)") from None
        onnx.checker.check_model(str(path))
        got, how = ReferenceEvaluator(str(path)).run(None, feed)[0], f"onnx.reference (onnx {onnx.__version__})"
    diff = float(abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    if not diff <= tol * max(1.0, float(abs(ref).max())):
        raise ExportError(f"the ONNX graph computes something else than the model (max abs difference {diff:.3g}, "
                          f"{how}): not written")
    return {"verified_with": how, "max_abs_diff": diff}
