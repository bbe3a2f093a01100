#!/usr/bin/env bash
# GPU acceptance check, one call under 8 minutes on one H100/H200, its tasks in order of value (the plan printed
# first): device-parametrized tests on CUDA, the Triton kernel (toolchain, compile, kept sets), fpn bench with the
# same trained weights as torchvision's (R101 600/1000 first, then R50 800/1333, with the GPU profile), the
# synthetic preset end to end in bf16, fpn train with the real loader (issue 20's levers when asked for);
# report.md + report.json + details.tar.gz in --out (small), weights and datasets in --scratch (outside the repo);
# exit code 0 when every check passed.
#
#   scripts/gpu_check.sh [--out DIR] [--scratch DIR] [--steps tests,triton,synthetic,bench,train[,levers]]
#                        [--budget SECONDS]
#   scripts/gpu_check.sh --dry-run      # or DRY=1: the same on the CPU with tiny sizes (no CUDA needed)
#   PYTHON=/path/to/venv/bin/python scripts/gpu_check.sh ...
#
# The interpreter: PYTHON=${PYTHON:-...}: $PYTHON when set; else the activated virtualenv's ($VIRTUAL_ENV/bin/python);
# else the first of python3, python on PATH that has torch. Every command the check starts (pytest, fpn train,
# fpn bench) runs under that same interpreter (scripts/gpu_check.py starts them with its sys.executable).
#
# Details: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

has_torch() {  # the interpreter runs and finds torch (without importing it: fast)
    "$1" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' >/dev/null 2>&1
}

find_python() {
    if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        echo "$VIRTUAL_ENV/bin/python"
        return
    fi
    local candidate
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null && has_torch "$candidate"; then
            command -v "$candidate"
            return
        fi
    done
    echo "gpu_check.sh: no python3 or python with torch on PATH; set PYTHON=/path/to/python" >&2
    return 1
}

PYTHON=${PYTHON:-$(find_python)}
exec "$PYTHON" scripts/gpu_check.py "$@"
