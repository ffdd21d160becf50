"""Runs another grid already finished, taken instead of trained again (``compare --reuse DIR``).

A study that adds arms to an earlier one (``direction-nlu`` adds three to ``nlu-dev-lr``'s IniLoRA
and PiSSA) would otherwise spend CPU-hours reproducing rows it has. A finished run is reused only
when it *is* the planned run: its whole resolved ``TrainConfig`` equals the planned one but for
where it lives (``output_dir``, and a ``resume_from`` inside its own grid), the rule a resumed grid
applies to its own rows; a run that merely looks alike (another label, one option changed) is
trained. Its folder must be complete (``metrics.json``).

The run's folder is copied under a temporary name and renamed into place, so an interrupted copy
leaves no half run; its ``config.yaml`` is rewritten to say where it now lives. The row keeps what
was measured (metrics, per-example items, ``device``, ``threads``, ``versions``, ``finished_at``) and
says where (``reused_from``): a reused number is the original measurement, not a rerun.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .results import RESULTS, json_default, read_results

#: config keys that say where a run lives, not what it is
_PLACE = ("output_dir", "resume_from")


def run_key(config: dict[str, Any], root: Path) -> str:
    """A run's identity: its resolved config as JSON, with its place in the grid ``root`` made relative."""
    data = json.loads(json.dumps(config, default=json_default))
    for key in _PLACE:
        value = data.get(key)
        if isinstance(value, str) and value:
            path = Path(value)
            data[key] = str(path.relative_to(root)) if path.is_relative_to(root) else value
    data.pop("output_dir", None)
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
                config, out = row.get("config"), row.get("output_dir")
                if not config or not out or not (Path(out) / "metrics.json").is_file():
                    continue  # an incomplete or foreign row: nothing to copy
                self.index.setdefault(run_key(config, source.resolve()), {**row, "_source": source.resolve()})

    def __len__(self) -> int:
        return len(self.index)

    def find(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The finished row that is exactly the run ``config`` (a resolved TrainConfig of this grid)."""
        return self.index.get(run_key(config, self.root.resolve()))


def copy_run(row: dict[str, Any], destination: Path) -> None:
    """Copy a finished run's folder to ``destination`` atomically; its config.yaml names the new place."""
    if destination.exists():
        shutil.rmtree(destination)  # an unfinished run of this grid (no row): it restarts as a copy
    tmp = destination.with_name(f".{destination.name}.reusing")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(row["output_dir"], tmp, symlinks=True)
    config_file = tmp / "config.yaml"
    if config_file.is_file():
        data = yaml.safe_load(config_file.read_text()) or {}
        data["output_dir"] = str(destination)
        config_file.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, destination)


def reused_row(row: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """This grid's row for a reused run: ``fresh`` (built as for a run of this grid) with the original's
    measurement record kept and its origin named."""
    return {**fresh, "finished_at": row.get("finished_at", fresh.get("finished_at")),
            "reused_from": row["output_dir"]}
