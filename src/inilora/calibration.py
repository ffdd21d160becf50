"""Calibration data for the data-driven inits (EVA, CorDA, LoRA-GA): batches, their digest, and
batches made from a task (``--calibration TASK[:N]``, the YAML ``calibration:`` block).

A batch is a dict the model's forward accepts: ``input_ids``, ``attention_mask`` and, for methods
that need gradients, ``labels``.  The digest (sha256 of every tensor, in order) joins the adapter's
fingerprint and any cache key: the same data gives the same init, other data another entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .cache import tensor_digest
from .errors import InitError

#: ``--calibration TASK`` without ``:N``
DEFAULT_EXAMPLES = 32
BATCH_SIZE = 8


def materialize(calibration: Iterable[Mapping[str, Any]], method: str, kind: str,
                device: torch.device | None = None) -> list[dict[str, torch.Tensor]]:
    """The batches as a list of tensor dicts on ``device``, checked: one line per problem."""
    if isinstance(calibration, Mapping):
        calibration = [calibration]
    try:
        batches = list(calibration)
    except TypeError:
        raise InitError(f"calibration must be an iterable of batches (dicts of tensors), got "
                        f"{type(calibration).__name__}.") from None
    if not batches:
        raise InitError(f"method {method!r}: the calibration data is empty; give at least one batch.")
    out = []
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise InitError(f"calibration batch {i} is not a dict with input_ids (got {type(batch).__name__}).")
        if kind == "gradients" and "labels" not in batch:
            raise InitError(f"method {method!r} needs gradients: calibration batch {i} has no labels.")
        tensors = {}
        for k, v in batch.items():
            t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
            if t.dim() == 1 and k != "labels":
                t = t[None]
            tensors[k] = t.to(device) if device is not None else t
        out.append(tensors)
    return out


def digest(batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """What identifies the calibration data: sha256, batches, examples, tokens."""
    flat = {f"{i:06d}.{k}": v for i, b in enumerate(batches) for k, v in b.items()}
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    return {"sha256": tensor_digest(flat), "batches": len(batches),
            "examples": sum(int(b["input_ids"].shape[0]) for b in batches), "tokens": tokens}


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
    from .tasks import get_task

    task, n = parse_spec(spec)
    get_task(task)
    return task, n


def from_task(spec: str, tokenizer, *, seed: int = 0, batch_size: int = BATCH_SIZE,
              max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """N seeded training examples of a task, tokenized and padded, ``labels`` included: the class for
    a classification task, the tokens (padding → -100) for an SFT task."""
    from .tasks import ClassificationTask, SFTTask

    name, n = check_spec(spec)
    from .tasks import get_task

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
