"""Training pipelines: one :class:`~inilora.config.TrainConfig` in, one finished run out.

``run(config)`` loads the model (a sequence classifier for NLU tasks, a causal LM for SFT tasks),
applies the method (an init method of the registry through :func:`inilora.get_peft_model`, or a
training mode of :mod:`.modes`: ``full``, ``bitfit``, ``houlsby``, ``pfeiffer``), trains with transformers' ``Trainer`` and evaluates with the task's own
metrics. It writes into ``config.output_dir``:

- ``config.yaml`` — the resolved config (the folder belongs to this config from then on);
- ``checkpoint-N/`` — Trainer checkpoints: re-running the same config resumes from the newest;
- ``adapter/`` — the trained adapter (LoRA methods; residual ones load with ``inilora.load``);
- ``train_log.json`` — training loss per logging step, evaluation per epoch, eval records;
- ``metrics.json`` — the result below, written last and atomically; a run that has it is finished
  and ``run`` returns it as stored.

The result holds ``metrics`` (flat name → float, the headline first: the task's first metric for
NLU at the best epoch; ``<eval task>/<metric>`` for NLG), ``headline``, ``train_loss``
(``[step, loss]`` pairs), ``trainable_params``, ``wall_s``, ``output_dir``, the best epoch and
per-epoch metrics (NLU), the device and library versions.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import bottleneck  # noqa: F401  (registers the houlsby / pfeiffer training modes)
from .modes import Mode, available_modes, resolve

#: the pipeline (transformers' Trainer) is imported on first use, so checking a grid's methods
#: (``resolve``) costs torch, not transformers
_LAZY = {"Plan": "pipeline", "check_all": "precheck", "load_config": "pipeline", "plan": "pipeline",
         "run": "pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def eval_tasks(config: Any) -> list[str]:
    """The evaluation tasks a run of ``config`` (a TrainConfig) grades, the headline first: what a
    grid may choose a rate on (any but the first) without selecting on the reported rows. A
    classification run with ``dev_size`` grades its held-out training rows as ``dev`` (``dev/accuracy``)."""
    from ..tasks import get_task

    if getattr(config, "dev_size", 0):
        return [config.task, "dev"]
    if config.eval_tasks is not None:
        return list(config.eval_tasks)
    return list(getattr(get_task(config.task), "eval_tasks", ()) or ())


__all__ = ["Mode", "Plan", "available_modes", "check_all", "eval_tasks", "load_config", "plan", "resolve", "run"]
