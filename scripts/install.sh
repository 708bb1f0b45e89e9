#!/usr/bin/env bash
# Set up simcore in ./.venv on a fresh machine: scripts/install.sh [EXTRAS]   (e.g. "llm" or "dev,llm")
# Versions are pinned by constraints.txt (regenerate it as its header says when pyproject.toml changes).
# llama-cpp-python compiles from source (10-14 min on 2 cores). The portable flags matter: the
# default native build uses AMX paths that crash on some CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-llm}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF}"
# constraints.txt: the versions the tests were run with, so a fresh machine and CI install the same ones
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
if [[ ",${extras}," == *",browser,"* ]] && [[ -x .ci/install-browser.sh ]]; then
  bash .ci/install-browser.sh
fi
