"""Every config of a grid checked as far as it can be without its data or weights, before the first
run trains (and in ``--dry-run``): names first (no model library), then each distinct cell's task,
method, schedule, device, the model's config against the task, and a LoRA cell's rank and targets
against the model's weightless skeleton."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..config import TrainConfig, to_dict
from ..errors import InitError
from ..train_names import check_names
from .modes import is_lora


def check_all(configs: Sequence[tuple[str, TrainConfig]]) -> None:
    """``configs``: (run id, config) pairs. Raises InitError (ConfigError, TaskError) prefixed with
    the run id of the first config that cannot run."""
    for run_id, config in configs:  # the names first: a typo costs no transformers import
        _named(run_id, check_names, config)
    from .pipeline import check

    seen: set[str] = set()
    skeletons: dict[str, Any] = {}
    for run_id, c in configs:
        key = json.dumps([c.model, c.task, c.eval_tasks, c.method, c.scheduler, c.device, to_dict(c.lora),
                          to_dict(c.calibration)], default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            method = check(c)[3]
            if is_lora(method):
                _check_lora_plan(c, skeletons)
        except InitError as exc:
            raise type(exc)(f"run {run_id}: {exc}") from None


def _named(run_id: str, fn, *args) -> None:
    try:
        fn(*args)
    except InitError as exc:
        raise type(exc)(f"run {run_id}: {exc}") from None


def _check_lora_plan(c: TrainConfig, skeletons: dict[str, Any]) -> None:
    """Rank, alpha and targets of a LoRA cell against the model's weightless skeleton."""
    from ..bridge import check_plan  # first: it imports peft quietly
    from ..models import load_skeleton
    from peft import LoraConfig

    if c.model not in skeletons:
        skeletons[c.model] = load_skeleton(c.model)
    if skeletons[c.model] is not None:
        check_plan(skeletons[c.model], LoraConfig(r=c.lora.rank, lora_alpha=c.lora.lora_alpha,
                                                  target_modules=c.lora.targets, use_rslora=c.lora.use_rslora),
                   c.method)
