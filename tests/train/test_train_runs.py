"""End to end at tiny size: MiniLM on offline-topic (NLU), SmolLM2 on offline-arith (NLG), and a
training process killed with SIGKILL after its first checkpoint that, re-run, ends exactly where an
uninterrupted run does (a residual method, so A0/B0 and the residual must survive the resume)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from inilora.config import GenerationSettings, TrainConfig, from_dict, to_dict
from inilora.train import run

NLU = {"model": "embedded:minilm", "task": "offline-topic", "method": "inilora-alpha", "train_size": 16, "eval_size": 8,
           "max_length": 32, "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 3}


@pytest.fixture(scope="module")
def nlu_run(tmp_path_factory):
    cfg = TrainConfig(output_dir=str(tmp_path_factory.mktemp("nlu") / "run"), **NLU)
    return cfg, run(cfg, progress=False)


def test_nlu_end_to_end(nlu_run):
    cfg, result = nlu_run
    out = Path(cfg.output_dir)
    assert result["headline"] == "accuracy" and list(result["metrics"]) == ["accuracy"]
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert [e["epoch"] for e in result["epochs"]] == [1.0, 2.0]
    assert result["best_epoch"] in (1.0, 2.0)
    assert result["metrics"]["accuracy"] == max(e["accuracy"] for e in result["epochs"])
    assert [s for s, _ in result["train_loss"]] == [1, 2, 3, 4]
    # r=8 on 6 layers × (query, value) of 384×384, plus the 4-class head (384·4 + 4)
    assert result["trainable_params"] == 6 * 2 * 8 * (384 + 384) + 384 * 4 + 4
    assert result["wall_s"] > 0 and result["output_dir"] == cfg.output_dir
    assert result["eval_examples"] == {"offline-topic": 8}  # a report's "n=8" beside the numbers
    # outputs
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["metrics"] == result["metrics"]
    assert from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text())) == cfg
    log = json.loads((out / "train_log.json").read_text())
    assert log["train_loss"] == result["train_loss"] and len(log["eval"]) == 2
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    assert (out / "adapter" / "inilora_init" / "adapter_model.safetensors").is_file()


def test_finished_run_is_returned_as_stored(nlu_run):
    cfg, result = nlu_run
    again = run(cfg, progress=False)  # no training: metrics.json is the result
    assert again == json.loads(json.dumps(result))


def test_folder_of_another_config_is_refused(nlu_run):
    from inilora.config import ConfigError

    cfg, _ = nlu_run
    with pytest.raises(ConfigError, match="another configuration.*learning_rate"):
        run(dataclasses.replace(cfg, learning_rate=5e-4), progress=False)


_KILLED_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from transformers import TrainerCallback
    from inilora.config import TrainConfig, from_dict
    from inilora.train import run
    import json

    class StopAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            Path(sys.argv[2]).write_text(str(state.global_step))  # the checkpoint is complete here
            time.sleep(600)  # wait to be killed

    run(from_dict(TrainConfig, json.loads(sys.argv[1])), progress=False, callbacks=[StopAfterFirstSave()])
""")


def test_resume_after_sigkill_matches_uninterrupted(nlu_run, tmp_path):
    ref_cfg, reference = nlu_run
    cfg = dataclasses.replace(ref_cfg, output_dir=str(tmp_path / "run"))
    marker = tmp_path / "saved"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, json.dumps(to_dict(cfg)), str(marker)],
                             env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"training child exited early: {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    out = Path(cfg.output_dir)
    assert marker.read_text() == "2" and (out / "checkpoint-2").is_dir()
    assert not (out / "metrics.json").exists()  # killed: no result, partial or otherwise

    resumed = run(cfg, progress=False)
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["global_step"] == 4
    assert resumed["metrics"] == pytest.approx(reference["metrics"], abs=1e-6)
    assert [e["accuracy"] for e in resumed["epochs"]] == [e["accuracy"] for e in reference["epochs"]]
    for (s1, l1), (s2, l2) in zip(resumed["train_loss"], reference["train_loss"], strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5, abs=1e-6)


def test_nlg_end_to_end(tmp_path):
    cfg = TrainConfig(model="embedded:smollm2", task="offline-arith", method="lora", train_size=8, eval_size=3,
                      max_length=96, max_steps=2, batch_size=2, learning_rate=2e-3, logging_steps=1,
                      output_dir=str(tmp_path / "run"), generation=GenerationSettings(max_new_tokens=6, batch_size=3))
    result = run(cfg, progress=False)
    assert result["headline"] == "offline-arith-test/accuracy"
    assert 0.0 <= result["metrics"]["offline-arith-test/accuracy"] <= 1.0
    assert [s for s, _ in result["train_loss"]] == [1, 2]
    assert result["trainable_params"] == 30 * 8 * ((576 + 576) + (576 + 192))  # q: 576→576, v: 576→192
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    completions = log["eval_records"]["offline-arith-test"]
    assert len(completions) == 3 and all(len(r["completions"]) == 1 for r in completions)
    bits = result["items"]["offline-arith-test"]  # per-example verdicts, in the eval set's order
    assert bits == "".join("1" if r["correct"] else "0" for r in completions)
    assert bits.count("1") / 3 == pytest.approx(result["metrics"]["offline-arith-test/accuracy"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_killed_during_evaluation_resumes_without_training(nlu_run, tmp_path):
    """The last checkpoint holds the final step, metrics.json is missing: evaluate, never train more."""
    import shutil

    ref_cfg, reference = nlu_run
    shutil.copytree(ref_cfg.output_dir, tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()
    cfg = dataclasses.replace(ref_cfg, output_dir=str(tmp_path / "run"))
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    result = run(cfg, progress=False)
    assert result["resumed_from"] == "checkpoint-4" and result["global_step"] == 4
    assert result["metrics"] == reference["metrics"] and result["train_loss"] == reference["train_loss"]


def test_cli_train_shows_a_finished_run_and_applies_overrides(nlu_run, tmp_path):
    from typer.testing import CliRunner

    from inilora.cli import app

    cfg, result = nlu_run
    data = to_dict(cfg)
    data["seed"] = 99  # the --set below restores the run's seed: overrides apply before the checks
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["train", str(path), "--set", f"seed={cfg.seed}", "--no-progress"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout.strip().splitlines()[-1])
    assert shown["metrics"] == result["metrics"] and shown["output_dir"] == cfg.output_dir
    bad = CliRunner().invoke(app, ["train", str(path), "--set", "lora.rnk=4"])
    assert bad.exit_code == 2 and "did you mean 'rank'" in bad.output
