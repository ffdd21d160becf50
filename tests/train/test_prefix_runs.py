"""A race's rung is a prefix of the full run: ``stop_at`` stops on the full schedule with a
checkpoint, ``resume_from`` continues it — and the result is bit for bit the straight run. A
checkpoint of any other run is refused, never continued."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inilora.config import ConfigError, TrainConfig
from inilora.train import run

# 16 rows, batch 4: 4 steps an epoch; 10 steps cross two epoch ends (each graded on dev and test),
# and the stop at step 3 lands mid-epoch, where resuming has to skip into the epoch's batches
TINY = TrainConfig(model="embedded:minilm", task="offline-topic", train_size=16, dev_size=8, eval_size=8,
                   max_length=24, max_steps=10, batch_size=4, learning_rate=4e-3, logging_steps=1, seed=3,
                   device="cpu")


def _same(a: dict, b: dict) -> None:
    assert a["train_loss"] == b["train_loss"]
    assert a["metrics"] == b["metrics"] and a["items"] == b["items"] and a["epochs"] == b["epochs"]


@pytest.mark.parametrize("method", ["lora", "inilora-alpha"])  # B = 0, and a residual init with W0 − s·B·A frozen
def test_stopped_then_continued_is_the_straight_run(tmp_path, method):
    base = replace(TINY, method=method)
    straight = run(replace(base, output_dir=str(tmp_path / "straight")), progress=False)
    first = run(replace(base, stop_at=3, output_dir=str(tmp_path / "r0")), progress=False)
    assert first["global_step"] == 3 and [s for s, _ in first["train_loss"]] == [1, 2, 3]
    assert (tmp_path / "r0" / "checkpoint-3" / "trainer_state.json").is_file()
    cont = run(replace(base, resume_from=str(tmp_path / "r0" / "checkpoint-3"), output_dir=str(tmp_path / "r1")),
               progress=False)
    assert cont["global_step"] == 10 and cont["continued_from"].endswith("checkpoint-3")
    _same(cont, straight)


def test_a_stopped_run_killed_after_its_checkpoint_does_not_train_past_its_stop(tmp_path):
    out = tmp_path / "r0"
    first = run(replace(TINY, method="lora", stop_at=3, output_dir=str(out)), progress=False)
    (out / "metrics.json").unlink()  # as if killed while evaluating, after the checkpoint was written
    again = run(replace(TINY, method="lora", stop_at=3, output_dir=str(out)), progress=False)
    assert again["global_step"] == 3 and again["resumed_from"] == "checkpoint-3"
    assert again["metrics"] == first["metrics"]


def test_only_a_prefix_of_the_same_run_is_continued(tmp_path):
    run(replace(TINY, method="lora", stop_at=3, output_dir=str(tmp_path / "r0")), progress=False)
    ckpt = str(tmp_path / "r0" / "checkpoint-3")
    with pytest.raises(ConfigError, match=r"checkpoint of another run \(differs in: learning_rate\)"):
        run(replace(TINY, method="lora", learning_rate=1e-3, resume_from=ckpt, output_dir=str(tmp_path / "x")),
            progress=False)
    with pytest.raises(ConfigError, match="not a complete Trainer checkpoint"):
        run(replace(TINY, method="lora", resume_from=str(tmp_path / "r0" / "checkpoint-9"),
                    output_dir=str(tmp_path / "y")), progress=False)
    with pytest.raises(ConfigError, match="at step 3, past this run's last step 2"):
        run(replace(TINY, method="lora", stop_at=2, resume_from=ckpt, output_dir=str(tmp_path / "z")), progress=False)


def test_stop_at_must_end_before_max_steps():
    with pytest.raises(ConfigError, match="stop_at: stops a run of max_steps early"):
        replace(TINY, stop_at=10)
    with pytest.raises(ConfigError, match="stop_at: must be ≥ 0"):
        replace(TINY, stop_at=-1)
