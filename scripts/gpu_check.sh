#!/usr/bin/env bash
# GPU acceptance check, one call under 8 minutes on one H100/H200: device-parametrized tests on CUDA, the synthetic
# preset end to end in bf16, fpn bench with the same trained weights as torchvision's (R101 600/1000 and R50
# 800/1333, with the GPU profile; the issue-20 levers off and on), fpn train with the real loader; one
# report.json + report.md in --out, exit code 0 when every check passed.
#
#   scripts/gpu_check.sh [--out DIR] [--steps tests,synthetic,bench,train,levers] [--budget SECONDS]
#   scripts/gpu_check.sh --dry-run      # or DRY=1: the same on the CPU with tiny sizes (no CUDA needed)
#
# Details: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
