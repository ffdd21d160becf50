"""Datasets, prompts, graders and sandboxed execution for the paper's experiments (no LoRA here).

``get_task(name)`` returns a registered task; each task family is one module that registers its
tasks on import. Modules are imported on first lookup, so ``import inilora`` stays light.
"""

from __future__ import annotations

import importlib

from .base import (
    ChoiceEval,
    ClassificationTask,
    GenerationEval,
    SFTTask,
    Task,
    TaskError,
    available_tasks,
    get_task,
    register_task,
    require_columns,
)

#: one module per task family; each registers its tasks when imported
_FAMILIES = ("glue", "sft", "evals", "offline")
_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for family in _FAMILIES:  # a family that failed to import is retried (and re-raises) next time
            importlib.import_module(f"{__name__}.{family}")
        _loaded = True


__all__ = [
    "ChoiceEval",
    "ClassificationTask",
    "GenerationEval",
    "SFTTask",
    "Task",
    "TaskError",
    "available_tasks",
    "get_task",
    "register_task",
    "require_columns",
]
