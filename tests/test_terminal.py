"""What a person sees: the common commands, run as a user runs them (a fresh process whose output
goes to a log, not a terminal), print status lines and results, and nothing else: no traceback,
no Python warning with a source line, no third-party chatter, and a fit that is never silent."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("inilora")
pytestmark = pytest.mark.skipif(not CLI.exists(), reason="the inilora console script is not installed here")
#: on PYTHONPATH, with INILORA_TEST_PRETEND_BF16=1, bitsandbytes takes its AVX512-BF16 import path
#: here too (see its docstring)
PROBES = Path(__file__).with_name("probes")
NOISE = ("Traceback", "UserWarning", "FutureWarning", "DeprecationWarning", "RuntimeWarning", "bitsandbytes",
         "kernels", "Loading weights", "Writing model shards", "Could not find a config file", ".py:")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from inilora.models import tiny_model

    root = tmp_path_factory.mktemp("terminal")
    tiny_model("llama-gqa").save_pretrained(str(root / "tiny"))
    return root


def _env(home) -> dict[str, str]:
    """A user's environment: hub offline, no PYTHONWARNINGS, bitsandbytes probing for its kernel."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return {**env, "INILORA_CACHE": str(home / "cache"), "HF_HUB_OFFLINE": "1", "COLUMNS": "120",
            "INILORA_TEST_PRETEND_BF16": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBES), env.get("PYTHONPATH")]))}


def test_the_probe_makes_bitsandbytes_take_its_bf16_path(home):
    """The silence below is checked on that path only if the probe really takes it."""
    done = subprocess.run([sys.executable, "-c", "import bitsandbytes.functional as f; print(f.has_avx512bf16())"],
                          env=_env(home), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.stdout.strip() == "True", done.stderr


def _run(home, *args):
    env = _env(home)
    done = subprocess.run([str(CLI), *args], cwd=home, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def _grid(home) -> str:
    (home / "grid.yaml").write_text(f"output_dir: {home / 'grid'}\nmethods: [lora, inilora-alpha]\nseeds: [0]\n"
                                    f"base: {{model: {home / 'tiny'}, task: offline-topic, max_steps: 2}}\n")
    return "grid.yaml"


def test_common_commands_print_no_noise(home):
    outputs = {
        "methods": _run(home, "methods"),
        "init": _run(home, "init", "--model", "tiny", "--method", "inilora-alpha", "--rank", "4", "--out", "a"),
        "init inilora": _run(home, "init", "--model", "tiny", "--method", "inilora", "--steps", "300", "--rank", "4",
                             "--out", "b"),
        "export": _run(home, "export", "a", "--base", "tiny", "--out", "e"),
        # checking a grid imports the training pipeline, whose transformers Trainer imports PEFT
        "compare --dry-run": _run(home, "compare", _grid(home), "--dry-run"),
    }
    for command, text in outputs.items():
        for word in NOISE:
            assert word not in text, f"`inilora {command}` printed {word!r}:\n{text}"
    fit = outputs["init inilora"]
    assert "IniLoRA fit: step 0/300" in fit and "step 300/300 (100 %)" in fit  # steps, not matrix-iterations
    assert "loss nan" not in fit
    assert "wrote a" in " ".join(outputs["init"].split())


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_kernel_probe_is_quiet_in_our_imports_only(home):
    """The probe's lines exist (so the check above can fail), are dropped when inilora imports
    PEFT through the library API, and still reach a user who imports bitsandbytes themselves."""
    script = ("import logging, sys; logging.basicConfig(format='%(name)s: %(message)s')\n"
              "if sys.argv[1] == 'user': import bitsandbytes\n"
              "else:\n    import inilora; inilora.get_peft_model\n")
    said = {who: subprocess.run([sys.executable, "-c", script, who], cwd=home, env=_env(home), capture_output=True,
                                text=True, stdin=subprocess.DEVNULL) for who in ("user", "inilora")}
    assert all(done.returncode == 0 for done in said.values()), said
    assert "kernels-community" in said["user"].stderr
    assert "kernels-community" not in said["inilora"].stderr, said["inilora"].stderr
