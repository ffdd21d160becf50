"""Datasets, prompts, graders and sandboxed execution for the paper's experiments (no LoRA here).

``get_task(name)`` returns a registered task; each task family is one module that registers its
tasks on import (into :mod:`.base`'s registry). Families are imported here, on first lookup — never
by ``base``, which every family imports — so ``import inilora`` stays light and no import runs in a circle.
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
    register_task,
    registered_task,
    registered_tasks,
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


def get_task(name: str) -> Task:
    """The task called ``name`` (every family imported first); an unknown name lists the close ones."""
    _load_all()
    return registered_task(name)


def available_tasks() -> dict[str, Task]:
    """Every task of every family, by name."""
    _load_all()
    return registered_tasks()


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
