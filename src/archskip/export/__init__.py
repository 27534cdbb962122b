"""Export a pruned model: a self-contained Hugging Face model directory (`save_pretrained`), or an encoder as an
ONNX graph (`export_onnx`). docs/export.md."""

from __future__ import annotations

from .hf import ExportError, save_pretrained
from .onnx import export_onnx

__all__ = ["ExportError", "export_onnx", "save_pretrained"]
