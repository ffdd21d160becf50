"""lm-evaluation-harness as an evaluation backend, run in-process on the live trained model.

lm-eval's ``HFLM`` wraps the model object itself (no export, no reload), so a residual adapter is
scored on its own residual base exactly as it trained. Metric names are lm-eval's own (``acc,none``,
``exact_match,strict-match``) under the task's name: ``gsm8k/exact_match,strict-match``; the result
records lm-eval's version. Tasks are checked before any model loads: a folder of task YAMLs
(``include_path``) is indexed alone first (well under a second), lm-eval's ~15k bundled tasks only
when a name is not found there (tens of seconds, once per process).
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, HarnessSettings


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("eval: harness lm-eval needs lm-evaluation-harness: pip install 'inilora[lmeval]' "
                          "(or scripts/bootstrap.sh --with lmeval)") from None
    return lm_eval


@functools.cache
def _manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults, verbosity="ERROR")


def task_manager(settings: HarnessSettings):
    """lm-eval's TaskManager that knows every task of ``settings`` (ConfigError naming any it does not)."""
    _lm_eval()
    include = None
    if settings.include_path:
        folder = Path(settings.include_path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"eval.include_path: {folder} is not a folder of lm-eval task YAMLs")
        include = str(folder.resolve())
        local = _manager(include, False)
        if all(t in local.all_tasks for t in settings.tasks):
            return local
    manager = _manager(include, True)
    missing = [t for t in settings.tasks if t not in manager.all_tasks]
    if missing:
        hints = [f"{t!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
            t, manager.all_tasks, n=1)) else "") for t in missing]
        raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {', '.join(hints)}; `lm_eval ls tasks` lists them"
                          + ("" if include else ", and eval.include_path adds a folder of your own"))
    return manager


def evaluate(model: Any, tokenizer: Any, settings: HarnessSettings, *, bf16: bool = False) -> tuple[dict[str, float], dict]:
    """lm-eval's metrics of the live ``model`` (``{task}/{metric},{filter}``), and what the row should
    record about the run (lm-eval's version, each task's version, sample counts, shots)."""
    lm_eval = _lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(settings)
    if settings.allow_code_execution:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")  # `evaluate`'s code_eval metric asks for it too
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "pretrained is not a str" and friends, per run
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
                  mixed_precision_dtype="bfloat16" if bf16 else None)
        limit = settings.limit if settings.limit is None or settings.limit < 1 else int(settings.limit)
        out = simple_evaluate(model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot, limit=limit,
                              task_manager=manager, log_samples=False, bootstrap_iters=0,
                              confirm_run_unsafe_code=settings.allow_code_execution, verbosity="ERROR")
    finally:
        model.train(was_training)
    metrics: dict[str, float] = {}
    for task, values in out["results"].items():
        for key, value in values.items():
            # lm-eval's metrics are "metric,filter"; "alias", "sample_len" and the stderrs are not scores
            if "," not in key or "_stderr," in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metrics[f"{task}/{key}"] = float(value)
    record = {"harness": "lm-eval", "version": lm_eval.__version__, "tasks": list(settings.tasks),
              "task_versions": {t: v for t, v in out.get("versions", {}).items()},
              "n_shot": dict(out.get("n-shot", {})), "n_samples": dict(out.get("n-samples", {})),
              "limit": settings.limit}
    return metrics, record

