"""Calibration batches made from a task: ``--calibration TASK[:N]`` and the YAML ``calibration:``
block. N seeded training examples, tokenized, with the labels a gradient-based init needs. The
batches then go to :func:`inilora.get_peft_model` (``calibration=``), which digests them.
"""

from __future__ import annotations

import torch

from ..errors import InitError

#: ``--calibration TASK`` without ``:N``
DEFAULT_EXAMPLES = 32
BATCH_SIZE = 8


def parse_spec(spec: str) -> tuple[str, int]:
    """``TASK[:N]`` → (task, N); checked without loading anything."""
    task, _, n = str(spec).partition(":")
    if not task:
        raise InitError(f"--calibration must be TASK[:N] (e.g. offline-topic:32), got {spec!r}.")
    if n:
        if not n.isdigit() or int(n) < 1:
            raise InitError(f"--calibration {spec!r}: N must be a whole number ≥ 1.")
        return task, int(n)
    return task, DEFAULT_EXAMPLES


def check_spec(spec: str) -> tuple[str, int]:
    """:func:`parse_spec` and the task looked up (an unknown task fails before any model loads)."""
    from ..tasks import get_task

    task, n = parse_spec(spec)
    get_task(task)
    return task, n


def from_task(spec: str, tokenizer, *, seed: int = 0, batch_size: int = BATCH_SIZE,
              max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """N seeded training examples of a task, tokenized and padded, ``labels`` included: the class for
    a classification task, the tokens (padding → -100) for an SFT task."""
    from ..tasks import ClassificationTask, SFTTask

    name, n = check_spec(spec)
    from ..tasks import get_task

    task = get_task(name)
    if isinstance(task, ClassificationTask):
        rows = task.load(task.train_split, limit=n, seed=seed)
        texts = [tuple(r[c] for c in task.text_columns) for r in rows]
        labels = [r["label"] for r in rows]
    elif isinstance(task, SFTTask):
        rows = task.load(task.train_split, limit=n, seed=seed)
        texts = [(r["prompt"] + r["response"],) for r in rows]
        labels = None
    else:
        raise InitError(f"--calibration {spec!r}: {name} is an evaluation task; use a training task "
                        "(a classification or SFT task of `inilora tasks`).")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = list(zip(*texts[start:start + batch_size]))
        enc = tokenizer(*chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if labels is None:
            batch["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        else:
            batch["labels"] = torch.as_tensor(labels[start:start + batch_size])
        batches.append(batch)
    return batches
