#!/usr/bin/env bash
# GPU acceptance check: device-parametrized tests on CUDA, the synthetic preset trained ~300 steps in
# fp32 / bf16 / fp16, fpn bench res101 at scale 600 against torchvision; one report.json + report.md.
# Needs only a CUDA machine with this repository (and its requirements). Under 8 minutes on one GPU.
#
#   scripts/gpu_check.sh [--out DIR] [--steps tests,train,bench]
#   scripts/gpu_check.sh --dry-run      # or DRY=1: the same on the CPU with tiny sizes (no CUDA needed)
#
# Details: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
