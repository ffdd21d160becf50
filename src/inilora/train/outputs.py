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

    from ..version import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "inilora": __version__}
