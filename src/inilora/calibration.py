"""Calibration data for the data-driven inits (EVA, CorDA, LoRA-GA): the batches checked, and their
digest. Batches made from a task (``--calibration TASK[:N]``, the YAML ``calibration:`` block) are
:mod:`inilora.train.calibration`'s: the bridge takes batches and knows no tasks.

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
