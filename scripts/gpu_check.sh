#!/usr/bin/env bash
# The GPU check: run it at once on any machine with a GPU (a few minutes on one H100).
#
#   scripts/gpu_check.sh                 # cuda when present, else small CPU sizes
#   scripts/gpu_check.sh --device cpu    # what CI runs (about a minute on 2 cores)
#   scripts/gpu_check.sh --out gpu.json  # the table as JSON too
#
# It trains SAM and GAM on ResNet-20 (synthetic CIFAR-shaped data, bf16 autocast on CUDA),
# times surfaces (loop, vmap) against the forward floor, checks λmax and trace on the
# device against float64 on the CPU, runs a 1-process torchrun surface, and prints one
# table with peak memory. Put the figures in BENCHMARKS.md with the card's name.
#
# On a machine that cannot install anything (a lent GPU box without internet) but whose
# python3 already holds torch and the core packages (numpy, scipy, matplotlib, h5py,
# tqdm), it runs from the source tree with that python3, installing nothing: the check
# needs none of plotly, mnist1d, meshio or the test tools.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${SHARPSCAPE_VENV:-$here/.venv}"
if [[ ! -x "$venv/bin/python" ]] \
    && python3 -c "import torch, numpy, scipy, matplotlib, h5py, tqdm" >/dev/null 2>&1; then
    echo "[gpu_check] no venv at $venv: running from the source tree with $(command -v python3)" >&2
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
    exec python3 benchmarks/gpu_check.py "$@"
fi
exec bash scripts/run.sh -- "$venv/bin/python" benchmarks/gpu_check.py "$@"
