"""Runs another grid already finished, taken instead of trained again (``compare --reuse DIR``).

A study that adds arms to an earlier one (``direction-nlu`` adds three to ``nlu-dev-lr``'s IniLoRA
and PiSSA) would otherwise spend CPU-hours reproducing rows it has. A finished run is reused only
when it *is* the planned run: its whole resolved ``TrainConfig`` equals the planned one but for
where it lives (``output_dir``, and a ``resume_from`` inside its own grid), the rule a resumed grid
applies to its own rows; a run that merely looks alike (another label, one option changed) is
trained. Its folder must be complete (``metrics.json``) and say it is that run (its ``config.yaml``),
and it must have run on the same kind of device this grid's runs will (a GPU run is bf16, a CPU run
fp32: ``device: auto`` alone does not say which).

What the config cannot see is not compared: data swapped in through ``INILORA_DATA_<TASK>``, a
local model file changed in place, or a change in inilora's own code between the two runs (rows
record ``versions``, ``inilora_source`` a digest of the package's source; the report says when they
differ). Reuse across such changes is the user's call.

The run's folder is built under a temporary name beside its place and moved in, so an interrupted
copy leaves no half run; its ``config.yaml`` becomes this grid's run's, and a ``reused.json`` marker
keeps the original row, so a copy whose row was not yet written (a kill in between) is recorded as
reused when the grid runs again, with or without ``--reuse``. The row keeps what was measured
(metrics, per-example items, ``device``, ``threads``, ``versions``, ``finished_at``) and names where
(``reused_from``: the folder of the original measurement, through any chain of reuses).

A source with no ``runs/`` folder at all is a *committed* grid — its ``results.jsonl`` and
``compare.yaml`` kept (``docs/results/<study>``) after the machine that ran it is gone. Its rows are
taken as rows: the same identity rule on the row's own resolved config, and no run folder copied (so
no adapter weights either; a row is all a comparison's tables, tests and plots read). A grid folder
that has ``runs/`` but lacks a row's folder is not such a source: that run was lost or unfinished
there, and is trained again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .fileio import atomic_write_json, replace_dir, temp_dir
from .results import RESULTS, RUNS, json_default, read_results

#: the marker a copied run folder carries: the row of the original measurement
MARKER = "reused.json"


def run_key(config: dict[str, Any]) -> str:
    """A run's identity: its resolved config as JSON without its place — ``output_dir`` dropped, and a
    ``resume_from`` inside the run's own grid (a prefix run's checkpoint) made relative to that grid."""
    data = json.loads(json.dumps(config, default=json_default))
    out = Path(data.pop("output_dir", "") or ".")
    resume = data.get("resume_from")
    if isinstance(resume, str) and resume and out.parent.name == RUNS:
        grid = out.parent.parent
        if Path(resume).is_relative_to(grid):
            data["resume_from"] = str(Path(resume).relative_to(grid))
    return json.dumps(data, sort_keys=True)


def device_kind(device: str | None) -> str:
    """"cuda" or "cpu" from a row's ``device`` ("cpu (AMD EPYC …)", or a GPU's name)."""
    return "cpu" if str(device or "cpu").startswith("cpu") else "cuda"


class Reusable:
    """The finished runs of the grid folders ``sources``, indexed by what they are. ``device``: the
    kind this grid's runs will run on ("cpu" or "cuda"); rows measured on another kind are left out."""

    def __init__(self, sources: Iterable[str | Path], root: Path, device: str = "cpu"):
        self.index: dict[str, dict[str, Any]] = {}
        self.left_out: dict[str, int] = {}  # why finished rows were not taken → how many
        for source in sources:
            source = Path(source)
            if not (source / RESULTS).is_file():
                raise ConfigError(f"--reuse {source}: no {RESULTS} there (a comparison's output folder holds one)")
            if source.resolve() == root.resolve():
                continue  # a grid's own rows are resumed anyway
            rows_only = not (source / RUNS).is_dir()  # a committed grid: its rows, no run folders
            for row in read_results(source):
                if not row.get("config"):
                    continue
                if device_kind(row.get("device")) != device:
                    self._skip(f"measured on {device_kind(row.get('device'))}, this grid runs on {device}")
                    continue
                folder = None if rows_only else _folder(row, source)
                if folder is None and not rows_only:
                    self._skip("run folder missing, unfinished or of another config")
                    continue
                self.index.setdefault(run_key(row["config"]), {**row, "_folder": folder and str(folder),
                                                                 "_source": str(source)})

    def _skip(self, why: str) -> None:
        self.left_out[why] = self.left_out.get(why, 0) + 1

    def __len__(self) -> int:
        return len(self.index)

    def find(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The finished row that is exactly the run ``config`` (a resolved TrainConfig of this grid)."""
        return self.index.get(run_key(config))


def _folder(row: dict[str, Any], source: Path) -> Path | None:
    """A row's complete run folder inside the grid ``source`` (``runs/<name>``; where the row says only
    when that is the same folder): finished, and its ``config.yaml`` the row's run. None otherwise."""
    out = row.get("output_dir")
    if not out:
        return None
    folder = source / RUNS / Path(out).name
    try:
        stored = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not (folder / "metrics.json").is_file() or not isinstance(stored, dict):
        return None
    if run_key(stored) != run_key(row["config"]):
        return None
    return folder.resolve()


def copy_run(row: dict[str, Any], destination: Path, config: dict[str, Any]) -> None:
    """Copy a finished run's folder to ``destination`` (built beside it, then moved into place, so a
    kill leaves no half run); its config.yaml becomes ``config`` (this grid's resolved run), and
    ``reused.json`` keeps the original row. An unfinished run of this grid there is replaced."""
    for stale in destination.parent.glob(f".{destination.name}.tmp-*"):  # an earlier copy, killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_dir(destination.parent, destination.name)
    try:
        shutil.copytree(row["_folder"], tmp, symlinks=True, dirs_exist_ok=True)
        (tmp / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config, default=json_default)),
                                                        sort_keys=False))
        atomic_write_json(tmp / MARKER, {k: v for k, v in row.items() if not k.startswith("_")}
                          | {"reused_from": origin(row)})
        replace_dir(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def origin(row: dict[str, Any]) -> str:
    """The folder a row's numbers were measured in, through any chain of reuses."""
    return row.get("reused_from") or row.get("_folder") or row["output_dir"]


def marker(folder: Path) -> dict[str, Any] | None:
    """The original row of a run folder that was copied in (``reused.json``), or None."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def reused_row(row: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """This grid's row for a reused run: ``fresh`` (built as for a run of this grid) with the original's
    measurement record kept and its origin named."""
    return {**fresh, "finished_at": row.get("finished_at", fresh.get("finished_at")), "reused_from": origin(row)}
