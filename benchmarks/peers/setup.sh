#!/usr/bin/env bash
# Build one virtual environment per peer framework, apart from simcore's own install:
#
#   benchmarks/peers/setup.sh                  # every peer
#   benchmarks/peers/setup.sh agenttorch mesa  # some of them
#   benchmarks/peers/setup.sh mesaframes       # one
#
# Environments go under $SIMCORE_PEERS_DIR (default: <repo>/.peers, gitignored), one folder per
# peer; a peer's folder gets a READY file (its `pip freeze`) only when its install finished, and
# `python -m benchmarks.peers` refuses to run a peer without it. Peers never enter .venv: their
# pins (camel-oasis pins pandas, pillow, pytest, sentence-transformers...) would fight ours.
#
# torch: the CPU build is used where pip can find it (TORCH_SPEC, default torch==2.13.0+cpu, e.g.
# from a local wheel folder); otherwise set TORCH_SPEC=torch (PyPI's default build, CUDA libraries
# included: several GB).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${SIMCORE_PEERS_DIR:-$root/.peers}"
py="${PEERS_PYTHON:-python3.11}"   # camel-oasis 0.2.5 needs Python >=3.10,<3.12
torch_spec="${TORCH_SPEC:-torch==2.13.0+cpu}"
all=(agenttorch oasis mesa mesaframes)
peers=("$@")
[[ ${#peers[@]} -gt 0 ]] || peers=("${all[@]}")

install_peer() {
  local name="$1" env="$dir/$1"
  case "$name" in
    agenttorch)  pkgs=("$torch_spec" "agent-torch==0.6.0") ;;
    oasis)       pkgs=("$torch_spec" "camel-oasis==0.2.5" "mcp>=1.3,<2") ;;  # camel-ai 0.2.78 imports mcp.server.FastMCP (gone in mcp 2)
    mesa)        pkgs=("mesa>=3.1,<4" "networkx>=3.2" "numpy>=1.26") ;;
    # mesa-frames' only release on PyPI is the pre-release 0.1.0a0 (Python >=3.8; numpy~=1.26, polars>=1)
    mesaframes)  pkgs=("mesa-frames==0.1.0a0" "polars>=1.0,<2" "numpy~=1.26") ;;
    *) echo "setup.sh: unknown peer '$name' (known: ${all[*]})" >&2; return 2 ;;
  esac
  echo "== $name -> $env: ${pkgs[*]}"
  rm -rf "$env"
  "$py" -m venv "$env" || return 1
  "$env/bin/python" -m pip install -q --upgrade pip || return 1
  # torch first, alone, so the peer's own requirements see it as satisfied (no CUDA build pulled in)
  if [[ "${pkgs[0]}" == torch* ]]; then
    "$env/bin/python" -m pip install -q "${pkgs[0]}" || return 1
    pkgs=("${pkgs[@]:1}")
  fi
  "$env/bin/python" -m pip install -q "${pkgs[@]}" || return 1
  "$env/bin/python" -m pip freeze > "$env/READY.tmp" && mv "$env/READY.tmp" "$env/READY"
  echo "== $name ready ($(wc -l < "$env/READY") packages)"
}

mkdir -p "$dir"
rc=0
for p in "${peers[@]}"; do
  install_peer "$p" || { echo "setup.sh: peer '$p' failed to install" >&2; rc=1; }
done
exit $rc
