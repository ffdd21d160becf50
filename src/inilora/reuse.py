"""Runs another grid already finished, taken instead of trained again (``compare --reuse DIR``).

A study that adds arms to an earlier one (``direction-nlu`` adds three to ``nlu-dev-lr``'s IniLoRA
and PiSSA) would otherwise spend CPU-hours reproducing rows it has. A finished run is reused only
when it *is* the planned run: its whole resolved ``TrainConfig`` equals the planned one but for
where it lives (``output_dir``, and a ``resume_from`` inside its own grid), the rule a resumed grid
applies to its own rows; a run that merely looks alike (another label, one option changed) is
trained. Its folder must be complete (``metrics.json``).

The run's folder is built under a temporary name beside its place and moved in, so an interrupted
copy leaves no half run; its ``config.yaml`` is rewritten to say where it now lives. The row keeps what
was measured (metrics, per-example items, ``device``, ``threads``, ``versions``, ``finished_at``) and
says where (``reused_from``): a reused number is the original measurement, not a rerun.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .fileio import replace_dir, temp_dir
from .results import RESULTS, RUNS, json_default, read_results


def run_key(config: dict[str, Any]) -> str:
    """A run's identity: its resolved config as JSON without its place — ``output_dir`` dropped, a
    ``resume_from`` inside a grid's ``runs/`` kept from ``runs/`` on (the prefix run and checkpoint)."""
    data = json.loads(json.dumps(config, default=json_default))
    data.pop("output_dir", None)
    resume = data.get("resume_from")
    if isinstance(resume, str) and RUNS in Path(resume).parts[:-1]:
        parts = Path(resume).parts
        data["resume_from"] = str(Path(*parts[len(parts) - 1 - parts[::-1].index(RUNS):]))
    return json.dumps(data, sort_keys=True)


class Reusable:
    """The finished runs of the grid folders ``sources``, indexed by what they are."""

    def __init__(self, sources: Iterable[str | Path], root: Path):
        self.index: dict[str, dict[str, Any]] = {}
        self.root = root
        for source in sources:
            source = Path(source)
            if not (source / RESULTS).is_file():
                raise ConfigError(f"--reuse {source}: no {RESULTS} there (a comparison's output folder holds one)")
            if source.resolve() == root.resolve():
                continue  # a grid's own rows are resumed anyway
            for row in read_results(source):
                folder = _folder(row, source)
                if row.get("config") and folder is not None:
                    self.index.setdefault(run_key(row["config"]), {**row, "output_dir": str(folder)})

    def __len__(self) -> int:
        return len(self.index)

    def find(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The finished row that is exactly the run ``config`` (a resolved TrainConfig of this grid)."""
        return self.index.get(run_key(config))


def _folder(row: dict[str, Any], source: Path) -> Path | None:
    """A row's complete run folder: where it says, else under ``source`` (a grid folder moved or
    reached by another path); None when neither holds its ``metrics.json``."""
    out = row.get("output_dir")
    if not out:
        return None
    for folder in (Path(out), source / RUNS / Path(out).name):
        if (folder / "metrics.json").is_file():
            return folder.resolve()
    return None


def copy_run(row: dict[str, Any], destination: Path) -> None:
    """Copy a finished run's folder to ``destination`` (built beside it, then moved into place, so a
    kill leaves no half run); its config.yaml names the new place. An unfinished run of this grid
    there (no row) is replaced: it restarts as the copy."""
    tmp = temp_dir(destination.parent, destination.name)
    try:
        shutil.copytree(row["output_dir"], tmp, symlinks=True, dirs_exist_ok=True)
        config_file = tmp / "config.yaml"
        if config_file.is_file():
            data = yaml.safe_load(config_file.read_text()) or {}
            data["output_dir"] = str(destination)
            config_file.write_text(yaml.safe_dump(data, sort_keys=False))
        replace_dir(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def reused_row(row: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """This grid's row for a reused run: ``fresh`` (built as for a run of this grid) with the original's
    measurement record kept and its origin named."""
    return {**fresh, "finished_at": row.get("finished_at", fresh.get("finished_at")),
            "reused_from": row["output_dir"]}
