"""lm-eval as an evaluation backend: a local task (tests/data/lmeval, JSONL data, offline) scored in
`compare` on the live residual model equals lm-eval's own CLI run on the merged export of the same
adapter. Skipped when lm-eval is not installed (``pip install 'inilora[lmeval]'``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import inilora

from inilora.config import CompareConfig, ConfigError, HarnessSettings, TrainConfig, from_dict, to_dict

TASKS_DIR = Path(__file__).resolve().parents[1] / "data" / "lmeval"
TASKS = ["inilora_arith_choice", "inilora_arith_ppl"]
BIN = Path(sys.executable).parent


def test_harness_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="eval.tasks: must name at least one lm-eval task"):
        from_dict(TrainConfig, {"eval": {"harness": "lm-eval", "tasks": []}})
    with pytest.raises(ConfigError, match="eval.harness: expected one of 'lm-eval'"):
        from_dict(TrainConfig, {"eval": {"harness": "helm", "tasks": ["gsm8k"]}})
    with pytest.raises(ConfigError, match="eval.limit: a count must be a whole number"):
        from_dict(TrainConfig, {"eval": {"tasks": ["gsm8k"], "limit": 2.5}})
    # a config without `eval` resolves as it did before the key existed (old run folders still resume)
    assert "eval" not in to_dict(TrainConfig()) and to_dict(TrainConfig(eval=HarnessSettings(tasks=["x"])))["eval"]


def test_lm_eval_on_a_classification_task_or_a_missing_folder_is_refused(tmp_path):
    from inilora.train import run

    cfg = TrainConfig(task="offline-topic", output_dir=str(tmp_path / "nlu"), eval=HarnessSettings(tasks=["x"]))
    with pytest.raises(ConfigError, match="harness scores causal LMs after SFT"):
        run(cfg, progress=False)
    pytest.importorskip("lm_eval")
    cfg = TrainConfig(model="embedded:smollm2", task="offline-arith", output_dir=str(tmp_path / "nlg"),
                      eval=HarnessSettings(tasks=TASKS, include_path=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="eval.include_path: .*nowhere is not a folder of lm-eval task YAMLs"):
        run(cfg, progress=False)
    assert not (tmp_path / "nlg").exists()  # refused before the run folder was made


#: acc is a count of argmax agreements: the live residual model and the merged fp32 export differ by
#: ~1e-6 in log-likelihood, far below any choice margin here, so it must agree exactly; the
#: perplexities are continuous: relative 1e-4.
REL_TOL = 1e-4


def test_compare_scores_a_local_task_as_lm_eval_does_on_the_merged_export(tmp_path):
    pytest.importorskip("lm_eval")
    from inilora.runner import run_grid

    base = TrainConfig(model="embedded:smollm2", task="offline-arith", train_size=8, max_steps=2, batch_size=4,
                       learning_rate=1e-3, max_length=64, eval_tasks=[], logging_steps=1, device="cpu",
                       eval=HarnessSettings(tasks=TASKS, include_path=str(TASKS_DIR), batch_size=4, limit=4))
    grid = CompareConfig(base=base, methods=["pissa"], baseline="pissa", seeds=[0], output_dir=str(tmp_path / "grid"))
    (row,) = run_grid(grid, progress=False)
    ours = row["metrics"]
    assert row["headline"] == "inilora_arith_choice/acc,none"  # lm-eval's own metric names
    assert row["versions"]["lm_eval"] == row["harness"]["version"]
    assert row["harness"]["n_samples"]["inilora_arith_choice"]["effective"] == 4

    adapter = Path(row["output_dir"]) / "adapter"
    merged = tmp_path / "merged"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    inilora.export(adapter, merged, layout="merged")  # fp32, as lm-eval loads it below
    out = tmp_path / "lm_eval_out"
    subprocess.run([str(BIN / "lm_eval"), "run", "--model", "hf", "--model_args", f"pretrained={merged},dtype=float32",
                    "--tasks", *TASKS, "--include_path", str(TASKS_DIR), "--device", "cpu", "--batch_size", "4", "--limit", "4",
                    "--output_path", str(out)], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    (result_file,) = out.rglob("results_*.json")
    theirs = json.loads(result_file.read_text())["results"]
    for task in TASKS:
        for key, value in theirs[task].items():
            if "," not in key or "_stderr," in key:
                continue
            mine = ours[f"{task}/{key}"]
            if key.startswith("acc"):
                assert mine == value, (task, key)
            else:
                assert math.isclose(mine, value, rel_tol=REL_TOL), (task, key, mine, value)
