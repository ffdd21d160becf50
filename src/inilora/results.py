"""The results layer: one row per finished run, appended to a grid's ``results.jsonl``.

The bottom of the experiment stack: the runner appends rows, and the report, plots and
demo read them; this module imports none of those (nor torch).  A row's shape is declared
by :class:`ResultRow`; rows are plain JSON objects, so a report can be rebuilt from the file
alone, on any machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypedDict

RESULTS = "results.jsonl"
RUNS = "runs"  # a grid folder: results.jsonl, and runs/<run id>/ for each run


class ResultRow(TypedDict, total=False):
    """One finished run as the grid records it (every key optional to a reader: older files lack some)."""

    run_id: str  # stable, readable id: method, swept values, seed
    method: str  # the grid's label for the method (a variant name or the registry name)
    init: str  # the registry method (or training mode) that ran
    seed: int  # one number for the init and the training: runs pair by seed
    task: str
    model: str
    settings: dict[str, Any]  # the swept values that applied to this run
    sweep_keys: list[str]
    baseline: str
    tune: dict[str, str]  # swept key → the metric each method's own best value of it is chosen on
    title: str
    metrics: dict[str, float]
    headline: str  # the metric tables and plots lead with
    train_loss: list[list[float]]  # [step, loss] pairs
    approx_loss: list[list[float]]  # the fit's mean loss curve (inilora)
    eval_history: list[dict[str, Any]]  # NLU: the metrics of every epoch (the best is reported)
    info: dict[str, Any]  # the init's report (σ̄ per module type, cache hit or miss, engine)
    precision: str  # "fp32" or "bf16"
    trainable_params: int
    wall_s: float
    cpu_s: float
    device: str
    threads: int
    versions: dict[str, str]
    harness: dict[str, Any]  # lm-eval runs: its version, each task's version, shots, samples
    config: dict[str, Any]  # the run's whole resolved TrainConfig: a rerun of another config is refused
    output_dir: str
    finished_at: str  # ISO time, UTC
    reused_from: str  # taken from another grid (``compare --reuse``): the run folder it was measured in


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def append_result(path: Path, row: ResultRow | dict[str, Any]) -> None:
    """Append one line, fsynced; a line torn by an earlier kill gets its newline first."""
    text = json.dumps(row, default=json_default) + "\n"
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:  # a line torn by a kill has no newline: do not glue onto it
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(text.encode())
        fh.flush()
        os.fsync(fh.fileno())


def read_results(output_dir: str | Path) -> list[ResultRow]:
    """The rows of ``results.jsonl`` (last line per run id wins); see :func:`read_results_noted`."""
    return read_results_noted(output_dir)[0]


#: the keys the report reads from every row, with their JSON types
_REQUIRED = {"run_id": str, "method": str, "seed": int, "task": str}


def read_results_noted(output_dir: str | Path) -> tuple[list[ResultRow], list[str]]:
    """The rows of ``results.jsonl`` and a note for each line skipped.

    A line that is not JSON was torn by a kill while being written (the runner appends the next row
    on a fresh line): skipped, its run unfinished as far as the grid knows, and named in the notes so
    the report says so.  A line that is JSON but not a result row (``null``, ``[1, 2]``, a row without
    its run id) was written by someone else: an ``InitError`` naming the line, never a guess.
    """
    from .errors import InitError

    path = Path(output_dir) / RESULTS
    if not path.is_file():
        return [], []
    rows: dict[str, ResultRow] = {}
    notes: list[str] = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InitError(f"{path} is not text; give the folder `inilora compare` wrote, or restore the file") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{RESULTS} line {number} skipped: not a whole JSON row (torn by a kill while being "
                         "written); that run is not counted (run the grid again to redo it)")
            continue
        kind = {type(None): "null", bool: "true/false", int: "number", float: "number", str: "string",
                list: "list"}.get(type(row))
        bad = None if isinstance(row, dict) else f"a JSON {kind}, not a result row"
        if bad is None:
            wrong = [k for k, tp in _REQUIRED.items() if not isinstance(row.get(k), tp) or isinstance(row.get(k), bool)]
            if wrong or not isinstance(row.get("metrics", {}), dict):
                bad = f"a result row without a valid {', '.join(wrong) or 'metrics'}"
        if bad is not None:
            raise InitError(f"{path} line {number} is {bad}: the file was edited or is damaged; remove that line "
                            "(or restore the file) and run again")
        rows[row["run_id"]] = row
    return list(rows.values()), notes


__all__ = ["RESULTS", "ResultRow", "append_result", "json_default", "read_results", "read_results_noted"]
