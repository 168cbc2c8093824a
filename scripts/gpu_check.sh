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
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
exec bash scripts/run.sh -- "${SHARPSCAPE_VENV:-$here/.venv}/bin/python" benchmarks/gpu_check.py "$@"
