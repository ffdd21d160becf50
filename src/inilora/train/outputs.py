"""The run folder: resolved config, checkpoints, logs and the final metrics.

``metrics.json`` is written last and atomically: its presence means the run finished, and a
finished run is returned as it is, never redone or overwritten. ``config.yaml`` pins the folder
to one configuration, so a re-run resumes only the *same* run.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import yaml

from ..fileio import atomic_write_bytes
from ..config import ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.json"
TRAIN_LOG = "train_log.json"
TRAINER_STATE = "trainer_state.json"  # Trainer writes it last into a checkpoint: a complete checkpoint has it


def finished(out: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of a finished run in ``out``, or None; refuses a folder of another config."""
    check_config(out, resolved)
    path = out / METRICS
    if path.is_file():
        return json.loads(path.read_text())
    return None


def check_config(out: Path, resolved: dict[str, Any]) -> None:
    path = out / CONFIG
    if not path.is_file():
        return
    stored = yaml.safe_load(path.read_text())
    if stored != resolved:
        diff = sorted(k for k in set(stored) | set(resolved) if stored.get(k) != resolved.get(k))
        raise ConfigError(
            f"{out} holds a run of another configuration (differs in: {', '.join(diff)}); "
            "choose another output_dir, or delete the folder to start over."
        )


def check_folder(out: Path) -> None:
    """A run folder holds our ``config.yaml`` or nothing (docs/design.md §8; ``outdir.check_run_folder``)."""
    from ..outdir import check_run_folder

    check_run_folder(out, marker=CONFIG, kind="run", error=ConfigError)


def write_config(out: Path, resolved: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CONFIG, yaml.safe_dump(resolved, sort_keys=False).encode())


def last_checkpoint(out: Path) -> Path | None:
    """The newest *complete* Trainer checkpoint (a kill during a save leaves one without its state)."""
    found = []
    for ckpt in out.glob("checkpoint-*"):
        step = ckpt.name.removeprefix("checkpoint-")
        if step.isdigit() and (ckpt / TRAINER_STATE).is_file():
            found.append((int(step), ckpt))
    return max(found)[1] if found else None


#: what may differ between a race's rung and the prefix run it continues (the rest must be equal)
PREFIX_FREE = ("stop_at", "resume_from", "output_dir", "eval_tasks")


def prefix_checkpoint(config: Any, resolved: dict[str, Any]) -> Path | None:
    """``config.resume_from`` checked to be a complete checkpoint of a *prefix of this run*: its
    folder's config equals ``resolved`` but for :data:`PREFIX_FREE` and stops before this run ends.
    Continuing anything else would train a hybrid silently, so it is refused."""
    if not config.resume_from:
        return None
    ckpt = Path(config.resume_from)
    if not (ckpt / TRAINER_STATE).is_file():
        raise ConfigError(f"resume_from: {ckpt} is not a complete Trainer checkpoint (no {TRAINER_STATE}); "
                          "its run has not reached that step yet")
    stored_path = ckpt.parent / CONFIG
    stored = yaml.safe_load(stored_path.read_text()) if stored_path.is_file() else None
    if not isinstance(stored, dict):
        raise ConfigError(f"resume_from: {ckpt} is not in a run folder (no {CONFIG} beside it)")
    diff = sorted(k for k in set(stored) | set(resolved)
                  if k not in PREFIX_FREE and stored.get(k) != resolved.get(k))
    if diff:
        raise ConfigError(f"resume_from: {ckpt} is a checkpoint of another run (differs in: {', '.join(diff)}); "
                          "a run continues only a prefix of itself")
    step = int(json.loads((ckpt / TRAINER_STATE).read_text()).get("global_step", 0))
    end = config.stop_at or config.max_steps
    if end > 0 and step > end:
        raise ConfigError(f"resume_from: {ckpt} is at step {step}, past this run's last step {end}")
    return ckpt


def _write_json(path: Path, obj: Any) -> None:
    """Atomic, like ``atomic_write_json``, but in insertion order: the headline metric stays first."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_log(out: Path, log: dict[str, Any]) -> None:
    _write_json(out / TRAIN_LOG, log)


def write_metrics(out: Path, result: dict[str, Any]) -> None:
    _write_json(out / METRICS, result)


def environment() -> dict[str, str]:
    """Versions that decide the numbers."""
    import peft
    import torch
    import transformers

    from ..version import __version__, source_digest

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "inilora": __version__, "inilora_source": source_digest()}
