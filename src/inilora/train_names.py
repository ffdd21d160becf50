"""The names a training config refers to, checked with no model library imported: an embedded model
alias, the task and the eval tasks. ``inilora train`` runs this first, so a typo is refused in a
fraction of a second; the train package's own check (:func:`inilora.train.check_all`) repeats it."""

from __future__ import annotations

from typing import Any

from .checks import check_model_name
from .tasks import TaskError, get_task


def check_names(config: Any) -> None:
    """``config``: a TrainConfig. Raises InitError / TaskError naming the field."""
    check_model_name(config.model, "model")
    get_task(config.task)
    for name in config.eval_tasks or []:
        try:
            get_task(name)
        except TaskError as exc:
            raise TaskError(f"eval_tasks: {exc}") from None


__all__ = ["check_names"]
