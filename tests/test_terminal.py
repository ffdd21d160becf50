"""What a person sees: the common commands, run as a user runs them (a fresh process whose output
goes to a log, not a terminal), print status lines and results, and nothing else: no traceback,
no Python warning with a source line, no third-party chatter, and a fit that is never silent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("inilora")
pytestmark = pytest.mark.skipif(not CLI.exists(), reason="the inilora console script is not installed here")
NOISE = ("Traceback", "UserWarning", "FutureWarning", "DeprecationWarning", "RuntimeWarning", "bitsandbytes",
         "kernels", "Loading weights", "Writing model shards", "Could not find a config file", ".py:")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from inilora.models import tiny_model

    root = tmp_path_factory.mktemp("terminal")
    tiny_model("llama-gqa").save_pretrained(str(root / "tiny"))
    return root


def _run(home, *args):
    env = {**os.environ, "INILORA_CACHE": str(home / "cache"), "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    done = subprocess.run([str(CLI), *args], cwd=home, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_common_commands_print_no_noise(home):
    outputs = {
        "methods": _run(home, "methods"),
        "init": _run(home, "init", "--model", "tiny", "--method", "inilora-alpha", "--rank", "4", "--out", "a"),
        "init inilora": _run(home, "init", "--model", "tiny", "--method", "inilora", "--steps", "300", "--rank", "4",
                             "--out", "b"),
        "export": _run(home, "export", "a", "--base", "tiny", "--out", "e"),
    }
    for command, text in outputs.items():
        for word in NOISE:
            assert word not in text, f"`inilora {command}` printed {word!r}:\n{text}"
    fit = outputs["init inilora"]
    assert "IniLoRA fit: step 0/300" in fit and "step 300/300 (100 %)" in fit  # steps, not matrix-iterations
    assert "loss nan" not in fit
    assert "wrote a" in " ".join(outputs["init"].split())
