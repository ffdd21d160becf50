"""bench/gpu_check.sh, the one prepared check for a CUDA machine, keeps working: its CPU dry path
(a tiny LLaMA-shaped checkpoint, ``inilora approximate`` end to end, the engine timed) runs here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_path_runs_every_step_and_says_no_gpu_figure(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, INILORA_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--engine", "torch",
                           "--layers", "1", "--steps", "5", "--engine-steps", "4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "DRY RUN on the CPU: no GPU figure" in out
    assert "Triton trust check not run" in out
    assert "end to end: inilora approximate, 5 steps, engine torch" in out
    assert "ms/step" in out and "× floor" in out
