"""Where rows come from: the hub by default, or a local copy in the hub's schema.

Every hub-backed task loads through :func:`load_split`, so tests (and users without network) run
the same code path on local files: ``task.load(split, source=...)`` or the environment variable
``INILORA_DATA_<TASK>`` (task name upper-cased, ``-`` → ``_``, e.g. ``INILORA_DATA_GLUE_COLA``).
A source is a ``datasets.Dataset`` / ``DatasetDict``, a file (it serves every split), or a folder
holding one file set per split: ``<split>.jsonl|json|parquet|csv`` or ``<split>-*.parquet`` (the
hub's own layout), optionally under a sub-folder named after the config (``cola/…``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .base import TaskError

_EXT_BUILDER = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}

T = TypeVar("T")


def env_var(task_name: str) -> str:
    return "INILORA_DATA_" + re.sub(r"[^A-Za-z0-9]", "_", task_name).upper()


def permutation(n: int, seed: int) -> list[int]:
    """The seeded order of ``n`` rows that every subsample takes its first rows from."""
    return np.random.default_rng(seed).permutation(n).tolist()


def subsample_indices(n: int, limit: int | None, seed: int) -> list[int] | None:
    """Indices of a deterministic subsample (in original order), or None for "all of it".

    The first ``limit`` of one seeded permutation: a smaller limit is a subset of a larger one."""
    if limit is None or limit >= n:
        return None
    if limit < 1:
        raise TaskError(f"limit must be ≥ 1 or None, got {limit}")
    return sorted(permutation(n, seed)[:limit])


def subsample(rows: Any, limit: int | None, seed: int) -> Any:
    """``rows`` (a Dataset or a list) cut to ``limit`` deterministically from ``seed``."""
    idx = subsample_indices(len(rows), limit, seed)
    if idx is None:
        return rows
    if isinstance(rows, list):
        return [rows[i] for i in idx]
    return rows.select(idx)


def _split_files(folder: Path, split: str) -> list[Path]:
    found: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _EXT_BUILDER and (path.stem == split or path.name.startswith(split + "-")):
            found.append(path)
    return found


def _from_files(files: Sequence[Path]) -> Any:
    import datasets

    suffixes = {f.suffix for f in files}
    builders = {_EXT_BUILDER[s] for s in suffixes}
    if len(builders) != 1:
        raise TaskError(f"mixed file types for one split: {', '.join(map(str, files))}")
    return datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")


def load_local(source: Any, split: str, config: str | None = None) -> Any:
    """A split from a local source (see the module docstring)."""
    import datasets

    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise TaskError(f"source has no split {split!r}; it has {', '.join(source)}")
        return source[split]
    if isinstance(source, datasets.Dataset):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in _EXT_BUILDER:
            raise TaskError(f"{path}: unsupported file type; use one of {', '.join(_EXT_BUILDER)}")
        return _from_files([path])
    if not path.is_dir():
        raise TaskError(f"data source {str(path)!r} does not exist")
    folders = [path / config, path] if config and (path / config).is_dir() else [path]
    for folder in folders:
        files = _split_files(folder, split)
        if files:
            return _from_files(files)
    raise TaskError(f"{path}: no file for split {split!r} (expected {split}.jsonl, {split}.parquet, "
                    f"{split}-*.parquet or .csv/.json, optionally under {config or '<config>'}/)")


def load_split(task_name: str, hub: str, config: str | None, split: str, source: Any = None,
               data_files: Any = None) -> Any:
    """One split as a ``datasets.Dataset``: from ``source``, else ``$INILORA_DATA_<TASK>``, else the hub."""
    if source is None:
        source = os.environ.get(env_var(task_name)) or None
    if source is not None:
        return load_local(source, split, config)
    import datasets

    try:
        return datasets.load_dataset(hub, config, split=split, data_files=data_files)
    except Exception as exc:  # offline, unknown split, renamed repo: one clear message
        raise TaskError(f"{task_name}: could not load {hub}{'/' + config if config else ''} split {split!r} "
                        f"from the hub ({type(exc).__name__}: {exc}); pass source=<local copy> or set "
                        f"{env_var(task_name)}") from exc


__all__ = ["env_var", "load_local", "load_split", "permutation", "subsample", "subsample_indices"]
