"""What a task is, and the one registry of tasks.

Four kinds, one small class each, so the training pipeline dispatches on the kind and never on a
task's name:

- :class:`ClassificationTask` — NLU (GLUE and the offline analogues): one or two text columns and a
  label (``num_labels == 1`` is regression, STS-B), the paper's metrics.
- :class:`SFTTask` — NLG fine-tuning data (MetaMathQA, CodeAlpaca, ShareGPT, offline arithmetic):
  rows of ``prompt`` (already in the task's template) and ``response``; the loss is on the response.
- :class:`GenerationEval` — graded generation (GSM8K, MATH, HumanEval, offline arithmetic):
  examples with a ``prompt`` and a ``reference``; ``score`` turns completions into metrics.
- :class:`ChoiceEval` — multiple choice by next-token scoring (MMLU 0-shot, A/B/C/D).

Tasks know nothing of LoRA or models (docs/design.md §9): they hand out ``datasets.Dataset`` rows / example
dicts and grade strings. Hub loaders are the defaults; offline tasks share the hub schemas.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InitError


class TaskError(InitError):
    """Unknown task, missing column, unavailable split: raised before any training starts."""


@dataclass(frozen=True)
class Task:
    """Fields every task has. ``source`` says where the data comes from (hub id, package, generated)."""

    name: str
    description: str
    source: str

    def load(self, split: str, limit: int | None = None, seed: int = 0, source: Any = None) -> Any:  # pragma: no cover
        """Rows of ``split`` (a ``datasets.Dataset`` or a list of example dicts), at most ``limit``,
        subsampled deterministically with ``seed`` when ``limit`` is smaller than the split.
        ``source``: a local copy in the hub schema instead of the hub (see ``tasks.sources``); tasks
        that are generated or shipped offline refuse one."""
        raise NotImplementedError


@dataclass(frozen=True)
class ClassificationTask(Task):
    """NLU: ``load`` returns a Dataset with ``text_columns`` and an int (float for regression) ``label``."""

    text_columns: tuple[str, ...] = ("sentence",)
    num_labels: int = 2  # 1: regression
    metrics: tuple[str, ...] = ("accuracy",)  # the first is the headline (best-epoch selection)
    train_split: str = "train"
    eval_split: str = "validation"
    max_length: int = 128
    label_names: tuple[str, ...] = ()  # id → name (id2label); empty for regression

    def compute_metrics(self, predictions: Sequence[Any], labels: Sequence[Any]) -> dict[str, float]:
        """``metrics`` of predicted class ids (or logits, argmax taken; or scores for regression)
        against labels, in [0, 1] scale (correlations in [-1, 1])."""
        from .metrics import compute

        return compute(self.metrics, predictions, labels, regression=self.num_labels == 1)


@dataclass(frozen=True)
class SFTTask(Task):
    """NLG training data: ``load`` returns a Dataset with ``prompt`` (templated) and ``response``."""

    max_length: int = 512
    eval_tasks: tuple[str, ...] = ()  # GenerationEval / ChoiceEval names run after training
    train_split: str = "train"


@dataclass(frozen=True)
class GenerationEval(Task):
    """Graded generation: ``load`` returns example dicts with ``id``, ``prompt``, ``reference``."""

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()  # completion is cut at the first of these
    metrics: tuple[str, ...] = ("accuracy",)
    eval_split: str = "test"

    def grade(self, completion: str, example: dict[str, Any]) -> bool:  # pragma: no cover
        raise NotImplementedError

    def truncate(self, completion: str) -> str:
        """``completion`` cut at the first of ``stop`` (for generators that do not stop on strings)."""
        cut = min((i for i in (completion.find(s) for s in self.stop) if i >= 0), default=len(completion))
        return completion[:cut]

    def score(self, examples: Sequence[dict[str, Any]], completions: Sequence[Sequence[str]]) -> dict[str, float]:
        """Default: the fraction of examples whose first completion grades correct."""
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completion lists")
        if not examples:
            return {self.metrics[0]: 0.0}
        right = sum(bool(c) and self.grade(c[0], ex) for ex, c in zip(examples, completions))
        return {self.metrics[0]: right / len(examples)}


@dataclass(frozen=True)
class ChoiceEval(Task):
    """Multiple choice: examples with ``id``, ``prompt``, ``choices`` (e.g. "A".."D") and ``answer``."""

    eval_split: str = "test"
    metrics: tuple[str, ...] = ("accuracy",)

    def score(self, examples: Sequence[dict[str, Any]], predictions: Sequence[str]) -> dict[str, float]:
        """Accuracy of the predicted choices (e.g. the highest-scoring letter) against ``answer``."""
        if len(examples) != len(predictions):
            raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
        right = sum(p == ex["answer"] for ex, p in zip(examples, predictions))
        return {self.metrics[0]: right / len(examples) if examples else 0.0}


# ------------------------------------------------------------------------------------------------
# the registry

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    _TASKS[task.name] = task
    return task


def registered_task(name: str) -> Task:
    """The task registered as ``name`` (families not yet imported are not searched: use
    :func:`inilora.tasks.get_task`, which imports them first); an unknown name lists the close ones."""
    try:
        return _TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_TASKS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TaskError(f"unknown task {name!r}{hint}; known tasks: {', '.join(sorted(_TASKS))}") from None


def registered_tasks() -> dict[str, Task]:
    """Every task registered so far, by name."""
    return dict(sorted(_TASKS.items()))


def require_columns(columns: Sequence[str], required: Sequence[str], where: str) -> None:
    """Raise a :class:`TaskError` naming every missing column and those present."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise TaskError(f"{where}: missing column(s) {', '.join(missing)}; it has {', '.join(columns) or 'none'}. "
                        "Rename or map the dataset's columns to these names (`inilora tasks` shows each schema).")


__all__ = [
    "ChoiceEval",
    "ClassificationTask",
    "GenerationEval",
    "SFTTask",
    "Task",
    "TaskError",
    "register_task",
    "registered_task",
    "registered_tasks",
    "require_columns",
]
