#!/usr/bin/env bash
# Creates tools/.venv-original: the Python packages that the original talkative-lens code
# (safety-research/talkative-probes at the commit in tools/original_harness.py) imports, for
# tools/gen_original_talkative_golden.py, tools/train_talkative.py and
# tools/talkative_quality.py. Safe to run again.
#
# Why a second environment beside tools/.venv: the original's modules need a transformers
# release from 4.55 on (they import Mxfp4Config, transformers.masking_utils, HybridCache) and
# before 5.0 (HybridCache and the cache API they use are gone there); tools/.venv has 5.x.
# torch 2.8.0 is the first release the original's pyproject allows. Its training and website
# dependencies (deepspeed, wandb, hydra, bitsandbytes, fastapi...) are not needed: only its
# `lens` package is imported. pandas, matplotlib and seaborn are imported by its analyzer
# module at the top; omegaconf by its checkpoint manager; gguf lets transformers read the
# demo model's GGUF file.
set -euo pipefail
tools="$(cd "$(dirname "$0")" && pwd)"
venv="$tools/.venv-original"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-original-venv: creating $venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "torch==2.8.0" "transformers==4.56.2" "tokenizers==0.22.2" "numpy==2.2.6" \
  "safetensors==0.8.0" "peft==0.17.1" "accelerate==1.10.1" "gguf==0.19.0" \
  "sentencepiece==0.2.3" "pandas==3.1.1" "matplotlib==3.11.2" "seaborn==0.13.2" \
  "omegaconf==2.4.0" "tqdm==4.70.1"
echo "setup-original-venv: done: $("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
