"""The NLU dev split (disjoint from training and reported rows; it, not the reported rows, picks the
best epoch) and the per-example record every run keeps (``items``: one "1"/"0" per example)."""

from __future__ import annotations

import pytest

from inilora.config import TrainConfig
from inilora.tasks import TaskError, get_task
from inilora.train import nlu, run

TINY = {"model": "embedded:minilm", "task": "offline-topic", "method": "lora", "train_size": 16, "eval_size": 8,
        "max_length": 32, "epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 1, "seed": 1}


def test_dev_rows_are_disjoint_and_do_not_change_the_training_rows():
    task = get_task("offline-topic")
    train, dev = nlu.load_train_dev(task, 64, 32)
    assert list(train["sentence"]) == list(nlu.load_split(task, "train", 64)["sentence"])  # as without a dev split
    reported = set(nlu.load_split(task, "validation", None)["sentence"])
    assert len(dev) == 32 and not set(dev["sentence"]) & set(train["sentence"]) and not set(dev["sentence"]) & reported
    _, dev_big = nlu.load_train_dev(task, 256, 32)
    assert list(dev_big["sentence"]) == list(dev["sentence"])  # one dev split whatever the training size
    assert nlu.load_train_dev(task, 64, 0)[1] is None
    n = len(task.load("train"))
    with pytest.raises(TaskError, match="dev_size 32 \\+ train_size"):
        nlu.load_train_dev(task, n - 31, 32)


def _mean(bits: str) -> float:
    return bits.count("1") / len(bits)


@pytest.fixture(scope="module")
def with_and_without_dev(tmp_path_factory):
    root = tmp_path_factory.mktemp("dev")
    return {n: run(TrainConfig(output_dir=str(root / f"dev{n}"), dev_size=n, **TINY), progress=False) for n in (0, 8)}


@pytest.mark.parametrize("dev_size", [0, 8])
def test_best_epoch_is_chosen_on_dev_and_items_match_the_metrics(with_and_without_dev, dev_size):
    result = with_and_without_dev[dev_size]
    on = "dev/accuracy" if dev_size else "accuracy"
    epochs = result["epochs"]
    assert len(epochs) == 2
    best = max(epochs, key=lambda e: (e[on], -e["step"]))  # ties: the earlier epoch
    assert result["best_step"] == best["step"] and result["metrics"]["accuracy"] == best["accuracy"]
    assert result["selected_on"] == ("dev" if dev_size else "reported rows")
    rms = result["init_factor_rms"]
    assert rms["B"] == 0.0 and rms["A"] > 0  # LoRA: B = 0 at init, A Kaiming-uniform
    items = result["items"]
    assert len(items["test"]) == 8 and _mean(items["test"]) == pytest.approx(result["metrics"]["accuracy"])
    if dev_size:
        assert list(result["metrics"]) == ["accuracy", "dev/accuracy"]
        assert len(items["dev"]) == 8 and _mean(items["dev"]) == pytest.approx(result["metrics"]["dev/accuracy"])
    else:
        assert list(result["metrics"]) == ["accuracy"] and set(items) == {"test"}


def test_a_dev_split_changes_what_is_selected_never_what_is_trained(with_and_without_dev):
    """Same training loss and same reported-row accuracy at every epoch, bit for bit: the dev
    evaluation draws nothing from the RNG that later dropout masks come from."""
    plain, dev = with_and_without_dev[0], with_and_without_dev[8]
    assert dev["train_loss"] == plain["train_loss"]
    assert [e["accuracy"] for e in dev["epochs"]] == [e["accuracy"] for e in plain["epochs"]]


def test_dev_size_is_refused_for_an_sft_task(tmp_path):
    from inilora.config import ConfigError

    cfg = TrainConfig(model="embedded:smollm2", task="offline-arith", dev_size=8, output_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="dev_size"):
        run(cfg, progress=False)
    assert not (tmp_path / "r").exists()
