#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) with a hard 10-minute limit; arguments are passed on
# (e.g. --layers 8 for a quicker look, --dry-run for the CPU path).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout 600 "$PY" bench/gpu_check.py "$@"
