"""NLU: a sequence-classification head on the encoder, evaluated each epoch, best epoch reported.

The paper reports each GLUE task's best epoch by its own metric (Matthews for CoLA, Pearson for
STS-B, accuracy otherwise), so every epoch is evaluated and the best one is picked from the
Trainer's log history — which a resumed run restores from its checkpoint, so resuming loses no
epoch. Picking the best epoch on the reported rows flatters every method a little; with
``dev_size`` > 0 a dev split (rows of the training split the run never trains on) picks it instead,
and the reported rows are only read.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedTokenizerBase,
    Trainer,
)

from ..tasks import ClassificationTask, TaskError, require_columns
from ..tasks.sources import permutation


def load_split(task: ClassificationTask, split: str, limit: int | None) -> Any:
    """Rows of ``split`` with the columns the pipeline needs, checked before any work.

    Subsamples use data seed 0 whatever the run's seed: every method and seed sees the same rows,
    so runs pair by seed on the same data.
    """
    ds = task.load(split, limit=limit, seed=0)
    require_columns(list(ds.column_names), [*task.text_columns, "label"], f"task {task.name!r}, split {split!r}")
    if len(ds) == 0:
        raise TaskError(f"task {task.name!r}, split {split!r} has no rows")
    return ds


def load_train_dev(task: ClassificationTask, train_size: int | None, dev_size: int) -> tuple[Any, Any]:
    """The training rows and ``dev_size`` dev rows, both from the training split and disjoint.

    The training rows are exactly those of ``load_split`` (the first ``train_size`` of the data-seed-0
    permutation), so adding a dev split changes no run's training data; the dev rows are the *last*
    ``dev_size`` of that permutation, so they do not move when ``train_size`` does (Table 4's sizes
    share one dev split)."""
    train = load_split(task, task.train_split, train_size)
    if dev_size <= 0:
        return train, None
    full = task.load(task.train_split, limit=None, seed=0)
    n = len(full)
    used = len(train)
    if used + dev_size > n:
        raise TaskError(f"task {task.name!r}: dev_size {dev_size} + train_size {used} exceed the {n} rows of split "
                        f"{task.train_split!r}; lower one of them")
    dev = full.select(sorted(permutation(n, 0)[n - dev_size:]))
    return train, dev


class DevNeutralTrainer(Trainer):
    """A Trainer whose dev-split evaluation leaves the global RNG as it found it.

    Each evaluation's DataLoader draws its base seed from torch's global generator, so an extra eval
    set would shift every later dropout mask: a run with a dev split would train differently from the
    same run without one. Evaluating dev under a forked RNG keeps training bit-identical, so adding a
    dev split changes what is *selected*, never what is trained."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if metric_key_prefix == "eval_dev":
            with torch.random.fork_rng(devices=[]):
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)


def tokenize(ds: Any, task: ClassificationTask, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Any:
    """Token ids and ``labels`` only (padding happens per batch in the collator)."""
    cols = list(task.text_columns)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(*[batch[c] for c in cols], truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return enc

    # a fresh fingerprint: hashing the tokenizer (datasets' default) costs seconds and buys nothing for
    # in-memory data, which is never cached
    return ds.map(encode, batched=True, remove_columns=list(ds.column_names), new_fingerprint=uuid.uuid4().hex)


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    return DataCollatorWithPadding(tokenizer)


class Predictions:
    """Every evaluation's predicted class ids, by (step, eval set): the best epoch's become the run's
    per-example record (``items``), so methods can be compared item by item, not only by their means.

    Trainer calls ``compute_metrics`` once per eval set, in the order of its ``eval_dataset`` dict,
    without saying which set it is; the order within one step tells them apart."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.step = lambda: 0  # the pipeline points this at the Trainer's state once it exists
        self.seen: dict[int, list[list[int]]] = {}
        self.labels: dict[str, list[int]] = {}

    def add(self, preds: list[Any], labels: list[Any]) -> None:
        calls = self.seen.setdefault(self.step(), [])
        if len(calls) < len(self.names):
            self.labels.setdefault(self.names[len(calls)], [int(x) for x in labels])
            calls.append([int(x) for x in preds])

    def correct(self, step: int) -> dict[str, str]:
        """Per eval set, one character per example at ``step``: "1" right, "0" wrong (empty when that
        evaluation ran in an earlier process, before a resume)."""
        calls = self.seen.get(step, [])
        return {name: "".join("1" if p == y else "0" for p, y in zip(preds, self.labels[name]))
                for name, preds in zip(self.names, calls)}


def metrics_fn(task: ClassificationTask, record: Predictions | None = None):
    """Trainer ``compute_metrics``: class ids (or scores, regression) → the task's metrics."""

    def compute(pred: EvalPrediction) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        preds = logits.squeeze(-1) if task.num_labels == 1 else np.argmax(logits, axis=-1)
        if record is not None and task.num_labels > 1:
            record.add(preds.tolist(), pred.label_ids.tolist())
        return {k: float(v) for k, v in task.compute_metrics(preds.tolist(), pred.label_ids.tolist()).items()}

    return compute


def epoch_metrics(log_history: list[dict], task: ClassificationTask, sets: tuple[str, ...] = ("",)) -> list[dict[str, float]]:
    """One entry per evaluation: epoch, step and the task's metrics (``eval_`` prefix dropped).

    ``sets``: the eval sets' names when Trainer evaluated a dict of them (logged as
    ``eval_<set>_<metric>``, one log entry per set); their metrics merge into one entry per step,
    keyed ``<set>/<metric>``. The default ``("",)`` reads a single eval set's ``eval_<metric>``."""
    by_step: dict[int, dict[str, float]] = {}
    for entry in log_history:
        for name in sets:
            prefix = f"eval_{name}_" if name else "eval_"
            if f"{prefix}{task.metrics[0]}" not in entry:
                continue
            step = int(entry.get("step", 0))
            row = by_step.setdefault(step, {"epoch": float(entry.get("epoch", 0.0)), "step": step})
            key = f"{name}/" if name else ""
            row.update({f"{key}{m}": float(entry[f"{prefix}{m}"]) for m in task.metrics if f"{prefix}{m}" in entry})
            if f"{prefix}loss" in entry:
                row[f"{key}loss"] = float(entry[f"{prefix}loss"])
    return [by_step[k] for k in sorted(by_step)]


def best_epoch(epochs: list[dict[str, float]], headline: str) -> dict[str, float]:
    """The evaluation with the highest headline metric (every metric here is higher-is-better);
    ties go to the earlier epoch, NaN (e.g. Pearson of constant predictions) counts as worst."""
    if not epochs:
        raise RuntimeError("no evaluation was logged; cannot pick the best epoch")
    def key(row: dict[str, float]) -> tuple[float, int]:
        value = row[headline]
        return (float("-inf") if math.isnan(value) else value, -row["step"])  # NaN never wins

    return max(epochs, key=key)
