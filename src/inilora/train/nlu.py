"""NLU: a sequence-classification head on the encoder, evaluated each epoch, best epoch reported.

The paper reports each GLUE task's best epoch by its own metric (Matthews for CoLA, Pearson for
STS-B, accuracy otherwise), so every epoch is evaluated and the best one is picked from the
Trainer's log history — which a resumed run restores from its checkpoint, so resuming loses no
epoch.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedTokenizerBase,
)

from ..tasks import ClassificationTask, require_columns


def load_split(task: ClassificationTask, split: str, limit: int | None) -> Any:
    """Rows of ``split`` with the columns the pipeline needs, checked before any work.

    Subsamples use data seed 0 whatever the run's seed: every method and seed sees the same rows,
    so runs pair by seed on the same data.
    """
    ds = task.load(split, limit=limit, seed=0)
    require_columns(list(ds.column_names), [*task.text_columns, "label"], f"task {task.name!r}, split {split!r}")
    if len(ds) == 0:
        from ..tasks import TaskError

        raise TaskError(f"task {task.name!r}, split {split!r} has no rows")
    return ds


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


def metrics_fn(task: ClassificationTask):
    """Trainer ``compute_metrics``: class ids (or scores, regression) → the task's metrics."""

    def compute(pred: EvalPrediction) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        preds = logits.squeeze(-1) if task.num_labels == 1 else np.argmax(logits, axis=-1)
        return {k: float(v) for k, v in task.compute_metrics(preds.tolist(), pred.label_ids.tolist()).items()}

    return compute


def epoch_metrics(log_history: list[dict], task: ClassificationTask) -> list[dict[str, float]]:
    """One entry per evaluation: epoch, step and the task's metrics (``eval_`` prefix dropped)."""
    out = []
    for entry in log_history:
        if f"eval_{task.metrics[0]}" not in entry:
            continue
        row = {"epoch": float(entry.get("epoch", 0.0)), "step": int(entry.get("step", 0))}
        row.update({m: float(entry[f"eval_{m}"]) for m in task.metrics if f"eval_{m}" in entry})
        if "eval_loss" in entry:
            row["loss"] = float(entry["eval_loss"])
        out.append(row)
    return out


def best_epoch(epochs: list[dict[str, float]], headline: str) -> dict[str, float]:
    """The evaluation with the highest headline metric (every metric here is higher-is-better);
    ties go to the earlier epoch, NaN (e.g. Pearson of constant predictions) counts as worst."""
    if not epochs:
        raise RuntimeError("no evaluation was logged; cannot pick the best epoch")
    def key(row: dict[str, float]) -> tuple[float, int]:
        value = row[headline]
        return (float("-inf") if math.isnan(value) else value, -row["step"])  # NaN never wins

    return max(epochs, key=key)
