"""Comparison grids: CompareConfig → runs → one ``results.jsonl``, resumable.

Each run is one TrainConfig in its own directory under the grid's output folder. A run counts as
finished when its ``metrics.json`` exists (the training pipeline writes it last); only then is its
line appended to ``results.jsonl`` (flush + fsync), so a grid killed at any moment restarts where it
stopped: finished runs are skipped (a finished run missing from the file is re-read, not re-run), a
run directory without ``metrics.json`` is wiped and run again — unless it holds a complete Trainer
checkpoint, from which the pipeline resumes (docs/design.md §8). A partial result never reaches the file.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from . import rates
from .config import (
    CompareConfig,
    ConfigError,
    TrainConfig,
    flatten,
    from_dict,
    set_dotted,
    to_dict,
)
from .errors import InitError
from .results import RESULTS, RUNS, append_result, json_default, read_results  # noqa: F401 - re-exported
from .reuse import Reusable, copy_run, marker, reused_row

#: keys of a run result kept in results.jsonl (the rest stays in the run's own folder)
KEPT = ("metrics", "eval_examples", "headline", "train_loss", "trainable_params", "wall_s", "cpu_s", "approx_loss",
        "eval_history", "info", "harness", "device", "threads", "precision", "versions",  # the last four: where a number was measured
        "items", "init_factor_rms")  # per-example right/wrong per eval set (item-level tests); factor sizes at init

RunFn = Callable[..., dict]


@dataclass
class PlannedRun:
    """One cell of the grid: ``label`` is the method column of the report (a method or variant name)."""

    run_id: str
    label: str
    seed: int
    settings: dict[str, Any]  # the swept keys that apply to this run, key → value
    config: TrainConfig
    shared_by: list[dict[str, Any]] = field(default_factory=list)  # settings of every grid cell it serves
    extra_row: dict[str, Any] = field(default_factory=dict)  # written into its results row (a race's rung)


def scored_on(metrics: dict[str, Any], config: CompareConfig) -> dict[str, str]:
    """Each metric's split: "validation" for the task a tuned key is chosen on, else "test" (the
    held-out examples the tables report; an NLU task's one evaluation split counts as test)."""
    tuning = {on.split("/", 1)[0] for on in config.tune.values() if "/" in on}
    return {m: "validation" if m.split("/", 1)[0] in tuning else "test" for m in metrics}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+_-]+", "-", text).strip("-") or "x"


def _short_names(keys: Iterable[str]) -> dict[str, str]:
    """``lora.rank`` → ``rank`` unless two keys end the same way (then the full dotted key)."""
    keys = list(keys)
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _method_of(config: CompareConfig, label: str) -> tuple[str, dict[str, Any]]:
    variant = config.variants.get(label)
    return (variant.method, dict(variant.options)) if variant else (label, {})


def _accepts(spec: Any, option: str) -> bool:
    """``spec``: a method's registry entry (``train.resolve``): an init method or a training mode."""
    return option in spec.options


# TrainConfig keys a variant's ``settings`` may not touch: the grid sets them (or ``options`` does)
_NOT_SETTINGS = ("method", "seed", "output_dir", "method_options")


def _check_methods(config: CompareConfig) -> dict[str, Any]:
    """Each label's method looked up once (``train.resolve``: an init method or a training mode),
    its option names checked; returns label → registry entry."""
    from .errors import InitError
    from .train import resolve

    if config.baseline not in config.methods:
        raise ConfigError(f"baseline: {config.baseline!r} is not one of methods {config.methods}")
    specs = {}
    for label in config.methods:
        method, options = _method_of(config, label)
        try:
            specs[label] = resolve(method)
            specs[label].resolve_options({**config.base.method_options, **options}, check=False)
        except InitError as exc:  # names only here: a sweep may supply values; each run is checked in expand
            raise ConfigError(f"methods: {label}: {exc}") from None
    for label, variant in config.variants.items():
        for key, values in variant.only.items():
            if key not in config.sweep:
                raise ConfigError(f"variants.{label}.only: {key!r} is not a sweep key (sweep: {', '.join(config.sweep) or 'none'})")
            missing = [v for v in values if v not in config.sweep[key]]
            if not values or missing:
                raise ConfigError(f"variants.{label}.only.{key}: {missing or 'nothing'} not among the swept values "
                                  f"{config.sweep[key]}")
        untuned = [k for k in variant.only if k not in config.tune]
        if untuned and label == config.baseline:  # along a tuned key each method is compared at its own best:
            # the baseline need not run where it is not (a shared-value table there has no baseline row)
            raise ConfigError(f"variants.{label}.only.{untuned[0]}: the baseline runs in every cell of the sweep "
                              f"(except along a tuned key: tune.{untuned[0]} would allow it)")
        for key in variant.settings:
            if key in config.sweep:
                raise ConfigError(f"variants.{label}.settings.{key}: swept (sweep.{key}); a variant cannot override it")
            if key.split(".")[0] in _NOT_SETTINGS:
                raise ConfigError(f"variants.{label}.settings.{key}: not a training setting here "
                                  f"({'use options' if key.startswith('method_options') else 'set by the comparison'})")
    unused = sorted(set(config.variants) - set(config.methods))
    if unused:
        raise ConfigError(f"variants: {', '.join(unused)} not listed in methods")
    return specs


def expand(config: CompareConfig, output_dir: str | Path | None = None) -> list[PlannedRun]:
    """The grid's runs in execution order (settings, then seed, then method), each with a stable,
    readable id; raises ConfigError for any key or method that cannot run, before any run starts."""
    specs = _check_methods(config)
    root = Path(output_dir or config.output_dir)
    keys = list(config.sweep)
    short = _short_names(keys)
    for key in keys:
        if key.startswith("method_options."):
            option = key.split(".", 1)[1]
            if "." in option:
                raise ConfigError(f"sweep.{key}: method options are not nested")
            if not any(_accepts(specs[m], option) for m in config.methods):
                raise ConfigError(f"sweep.{key}: no method of {config.methods} takes option {option!r}")
    base = to_dict(config.base)
    planned: dict[str, PlannedRun] = {}
    for values in itertools.product(*(config.sweep[k] for k in keys)):
        cell = dict(zip(keys, values))
        for seed in config.seeds:
            for label in config.methods:
                variant = config.variants.get(label)
                only = variant.only if variant else {}
                if any(cell[k] not in values for k, values in only.items()):
                    continue
                run = build_run(config, label, seed, cell, root, base=base, short=short, specs=specs)
                if run.run_id in planned:
                    planned[run.run_id].shared_by.append(cell)
                    continue
                planned[run.run_id] = run
    return list(planned.values())


def build_run(config: CompareConfig, label: str, seed: int, cell: dict[str, Any], root: Path, *,
              base: dict[str, Any] | None = None, short: dict[str, str] | None = None,
              extra: dict[str, Any] | None = None, tag: str = "",
              specs: dict[str, Any] | None = None) -> PlannedRun:
    """One cell: ``label`` at ``seed`` with the swept values ``cell`` over ``base``; ``extra`` sets
    further TrainConfig keys that are not swept (a race's rung budget), ``tag`` goes into the id.
    ``specs``: label → registry entry, as :func:`_check_methods` resolved them (looked up here if not given)."""
    from .errors import InitError

    spec = (specs if specs is not None else _check_methods(config))[label]
    base = to_dict(config.base) if base is None else base
    short = short or _short_names(cell)
    variant = config.variants.get(label)
    method, options = _method_of(config, label)
    applies = {k: v for k, v in cell.items()
               if not k.startswith("method_options.") or _accepts(spec, k.split(".", 1)[1])}
    data = json.loads(json.dumps(base))  # deep copy of plain data
    data["method"] = method
    data["seed"] = seed
    data["method_options"] = {**data.get("method_options", {}), **options}
    for key, value in (variant.settings if variant else {}).items():
        set_dotted(data, key, value)
    for key, value in {**applies, **(extra or {})}.items():
        set_dotted(data, key, value)
    parts = [_slug(label)] + [_slug(f"{short.get(k, k)}={_fmt(v)}") for k, v in applies.items()]
    run_id = "_".join(parts + ([_slug(tag)] if tag else []) + [f"seed={seed}"])
    data["output_dir"] = str(root / RUNS / run_id)
    try:
        train_config = from_dict(TrainConfig, data)
        if not getattr(spec, "peft_backed", False) or getattr(spec, "options", None):
            spec.resolve_options(train_config.method_options)
        if getattr(spec, "calibration", None) and not train_config.calibration.task:
            raise ConfigError(f"method {method!r} is data-driven: add a calibration: block (task:, examples:)")
    except InitError as exc:  # ConfigError too: the run's whole config, values included
        raise ConfigError(f"run {run_id}: {exc}") from None
    return PlannedRun(run_id, label, seed, applies, train_config, [cell])


def check_grid(runs: list[PlannedRun]) -> None:
    """Every cell of the grid checked as far as it can be without data or weights, before the first
    run (and in ``--dry-run``), through the train face (:func:`inilora.train.check_all`): a mistake in
    the last cell is refused before the first one trains. (``expand`` has checked keys, types and
    method options.)"""
    from .train import check_all

    try:
        check_all([(run.run_id, run.config) for run in runs])
    except InitError as exc:  # ConfigError and TaskError too: one line naming the run
        raise ConfigError(str(exc)) from None


# ------------------------------------------------------------------------------------------------
# results file


def _row(run: PlannedRun, result: dict[str, Any], config: CompareConfig) -> dict[str, Any]:
    row = {"run_id": run.run_id, "method": run.label, "init": run.config.method, "seed": run.seed,
           "task": run.config.task, "model": run.config.model, "settings": run.settings,
           "sweep_keys": list(config.sweep), "baseline": config.baseline, "title": config.title}
    if config.tune:
        row["tune"] = dict(config.tune)
    row.update({k: result[k] for k in KEPT if k in result})
    row.update({"rung": 0, "rungs": 1, "budget_steps": run.config.max_steps if run.config.max_steps > 0 else None})
    row.update(run.extra_row)  # a race's rung, its budget
    row["rate"] = run.config.learning_rate
    row["scored_on"] = scored_on(row.get("metrics", {}), config)
    row["config"] = to_dict(run.config)
    row["output_dir"] = run.config.output_dir
    row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return row


def _check_same_configs(runs: list[PlannedRun], previous: dict[str, dict], root: Path) -> None:
    """A finished run of the same id but another configuration must not pass for this grid's run.
    Where it lives is not its configuration (``reuse.run_key``): a grid folder moved elsewhere resumes."""
    from .reuse import run_key

    for run in runs:
        stored = previous.get(run.run_id, {}).get("config")
        planned = to_dict(run.config)
        if stored is not None and run_key(stored) != run_key(planned):
            ours, theirs = json.loads(run_key(planned)), json.loads(run_key(stored))
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            hint = ""
            if "stop_at" in diff and stored.get("stop_at") and run.config.max_steps > 0:  # a race's rung moved
                hint = (f" Its rung stopped at step {stored['stop_at']} of {run.config.max_steps} (race.first "
                        f"decides where; ⅙ by default since 2026-12-07): to continue that race, set race.first: "
                        f"{stored['stop_at'] / run.config.max_steps:.10g}.")
            raise ConfigError(f"{root} holds a finished run {run.run_id} of another configuration (differs in: "
                              f"{', '.join(diff)}); choose another output_dir, or delete it to start over.{hint}")


def _check_root(root: Path, config: CompareConfig) -> None:
    """A grid folder holds our ``compare.yaml`` or nothing (docs/design.md §8; ``outdir.check_run_folder``),
    and a ``compare.yaml`` of this study: a grid may grow (methods, seeds, swept values) in its folder,
    but a config whose shared training settings differ is another study, whose rows would mix with
    these in one table and whose ``compare.yaml`` would replace this one's."""
    from .outdir import check_run_folder

    check_run_folder(root, marker="compare.yaml", kind="comparison", error=ConfigError)
    try:
        stored = yaml.safe_load((root / "compare.yaml").read_text())["base"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return  # no compare.yaml yet (or not one that names a base: nothing to compare with)
    if not isinstance(stored, dict):
        return
    varied = {"output_dir", "seed", "method", *config.sweep, *config.tune}  # what differs run to run
    old, new = flatten(stored), flatten(json.loads(json.dumps(to_dict(config.base), default=json_default)))
    diff = sorted(k for k in old.keys() & new.keys()
                  if old[k] != new[k] and not any(k == v or k.startswith(v + ".") for v in varied))
    if diff:
        raise ConfigError(f"{root} holds the comparison of another configuration (base differs in: "
                          f"{', '.join(diff)}); choose another output_dir, or delete it to start over.")


def _finished(run: PlannedRun) -> bool:
    return (Path(run.config.output_dir) / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------------
# the grid


def plan_table(runs: list[PlannedRun], done: set[str], reusable=None):
    """A rich table of the plan (``--dry-run``); ``reusable``: another grid's finished runs (:mod:`inilora.reuse`)."""
    from rich.table import Table

    table = Table(title=f"{len(runs)} runs ({sum(r.run_id in done for r in runs)} finished)")
    for col in ("run id", "method", "seed", "task", "settings", "status"):
        table.add_column(col)
    for run in runs:
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in run.settings.items()) or "—"
        found = reusable.find(to_dict(run.config)) if reusable is not None and run.run_id not in done else None
        taken = found and (found["_folder"] or f"the row of {found['_source']}")
        status = "done" if run.run_id in done else f"reuse {taken}" if found else "to run"
        table.add_row(run.run_id, run.label, str(run.seed), run.config.task, settings, status)
    return table


def save_config(config: CompareConfig, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / "compare.yaml.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    os.replace(tmp, output_dir / "compare.yaml")


def run_grid(
    config: CompareConfig,
    run_fn: RunFn | None = None,
    dry_run: bool = False,
    *,
    output_dir: str | Path | None = None,
    progress: bool = True,
    run_progress: bool = False,
    console=None,
    deadline: float | None = None,
    backend=None,
    reuse: Iterable[str | Path] = (),
    only_methods: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Run (or, with ``dry_run``, only print) every unfinished run of the grid; return the rows of
    ``results.jsonl``. ``deadline`` (a ``time.time()``) stops before starting a run past it.
    ``backend`` (:mod:`inilora.backends`) executes the runs: in this process unless one is given.
    ``reuse``: grid folders whose finished runs are taken where one is exactly a run of this grid.
    ``only_methods``: run only these methods' cells now (the grid, its folder and rows stay the whole
    config's; a later run without it adds the rest)."""
    from rich.console import Console

    from .backends import InProcess

    console = console or Console(stderr=True)
    backend = backend or InProcess()
    root = Path(output_dir or config.output_dir)
    reusable = Reusable(reuse, root, _device_kind(config)) if reuse else None
    if reusable is not None and reusable.left_out:  # said once, before anything runs (and in --dry-run)
        console.print("not reused: " + "; ".join(f"{n} rows {why}" for why, n in reusable.left_out.items()),
                      soft_wrap=True, highlight=False)
    chosen = _chosen_methods(config, only_methods)
    if race_mode(config):
        _check_methods(config)
        val_task = check_race(config)
        _check_root(root, config)
        check_grid(race_cells(config, root, rates.plan(config, read_results(root))[0], val_task))
        created = not root.exists()
        if not dry_run:
            save_config(config, root)
        return _removing_if_refused(root, created and not dry_run, lambda: race(
            config, root, run_fn=run_fn, progress=progress, run_progress=run_progress, console=console,
            deadline=deadline, dry_run=dry_run, backend=backend, reusable=reusable, chosen=chosen))
    _check_root(root, config)
    whole = expand(config, root)
    for key in config.tune:  # a full grid chooses each method's value too: never on test rows
        check_selection(config, key)
    previous = {r["run_id"]: r for r in read_results(root)}
    _check_same_configs(whole, previous, root)
    check_grid(whole)  # every cell, before the first run and in --dry-run (with --methods too)
    runs = [r for r in whole if chosen is None or r.label in chosen]
    runs += extensions(config, root, list(previous.values()), chosen)
    done = set(previous)
    if dry_run:
        console.print(plan_table(runs, done, reusable))
        return read_results(root)
    created = not root.exists()
    save_config(config, root)

    def execute() -> None:
        todo, seen = runs, set()
        while todo:  # the grid, then any rate an edge pick adds past it (rates.grid_extensions)
            with Execution(root, config, len(todo), run_fn, progress=progress, run_progress=run_progress,
                           console=console, deadline=deadline, backend=backend, reusable=reusable) as ex:
                for _ in ex.run(todo):
                    pass
            seen |= {r.run_id for r in todo}
            todo = [r for r in extensions(config, root, read_results(root), chosen) if r.run_id not in seen]

    _removing_if_refused(root, created, execute)
    return read_results(root)


def extensions(config: CompareConfig, root: Path, rows: list[dict[str, Any]],
               chosen: set[str] | None = None) -> list[PlannedRun]:
    """The runs a tuned full grid adds past an edge pick (:func:`inilora.rates.grid_extensions`),
    every seed, unfinished ones only; a finished run of that id but another configuration is refused."""
    done = {r["run_id"]: r for r in rows}
    specs = _check_methods(config)
    out = [build_run(config, label, seed, cell, root, specs=specs)
           for label, cell in rates.grid_extensions(config, rows) if chosen is None or label in chosen
           for seed in config.seeds]
    _check_same_configs(out, done, root)
    return [r for r in out if r.run_id not in done]


def _device_kind(config: CompareConfig) -> str:
    """Where this grid's runs will run, "cuda" or "cpu": the config's device, else a GPU when one is
    asked for (``resources.num_gpus``, Ray) or present here."""
    device = config.base.device
    if device != "auto":
        return "cuda" if device.startswith("cuda") else "cpu"
    if config.resources.get("num_gpus", 0) > 0:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _chosen_methods(config: CompareConfig, names: Iterable[str]) -> set[str] | None:
    """``compare --methods``: the labels to run now, each one of the config's methods (a typo is refused
    with the close name), or None for all."""
    import difflib

    names = list(names)
    if not names:
        return None
    if not any(n.strip() for n in names):
        raise ConfigError("--methods: no method named; give one or more of " + ", ".join(config.methods))
    names = [n.strip() for n in names if n.strip()]
    for name in names:
        if name not in config.methods:
            close = difflib.get_close_matches(name, config.methods, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"--methods: {name!r} is not one of this grid's methods; {hint}"
                              f"it has {', '.join(config.methods)}")
    return set(names)


def _removing_if_refused(root: Path, created: bool, work: Callable[[], Any]) -> Any:
    """``work()``; a refusal (InitError) before any run finished removes the folder this call created,
    so a refused command leaves nothing the user did not have."""
    try:
        return work()
    except InitError:
        if created and not read_results(root):
            shutil.rmtree(root, ignore_errors=True)
        raise


def race_mode(config: CompareConfig) -> bool:
    """Each method at its own best rate, raced (:mod:`inilora.rates`): a rate to tune, several methods."""
    return "learning_rate" in config.tune and (config.race.rungs > 1 or "learning_rate" not in config.sweep)


class Execution:
    """The grid's cell-execution loop: hands the unfinished cells to the backend (:mod:`inilora.backends`:
    in this process, or Ray tasks), appends each finished run's row to ``results.jsonl`` (the driver
    alone writes it) and yields it. A plain grid hands it every cell at once; a race
    (:mod:`inilora.rates`) one rung's cells at a time, deciding the next rung from the rows."""

    def __init__(self, root: Path, config: CompareConfig, total: int, run_fn: RunFn | None = None, *,
                 progress: bool = True, run_progress: bool = False, console=None, deadline: float | None = None,
                 backend=None, reusable: Reusable | None = None):
        from rich.console import Console

        from .backends import InProcess

        self.root, self.config, self.deadline = root, config, deadline
        self.console = console or Console(stderr=True)
        self.run_progress = run_progress
        self.backend = backend or InProcess()
        self.reusable = reusable
        self.done = {r["run_id"] for r in read_results(root)}
        self.stopped = False  # the deadline passed: no further cell starts
        self.bar = _progress(progress, self.console)
        self.task = self.bar.add_task("grid", total=total, completed=0, run="") if self.bar else None
        if run_fn is None and isinstance(self.backend, InProcess):
            run_fn = _train_run(self.bar)
        self.run_fn = run_fn

    def __enter__(self) -> Execution:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def grow(self, total: int) -> None:
        if self.bar:
            self.bar.update(self.task, total=total)

    def in_time(self) -> bool:
        return self.deadline is None or time.time() <= self.deadline

    def run(self, runs: list[PlannedRun]) -> Iterable[dict[str, Any]]:
        results = self.root / RESULTS
        bar, task, console = self.bar, self.task, self.console
        todo = [r for r in runs if r.run_id not in self.done]
        if bar:
            bar.advance(task, len(runs) - len(todo))
        for run, row in self._reused(todo):
            todo.remove(run)
            yield row
        on_start = (lambda run: bar.update(task, run=run.run_id)) if bar else None
        for run, result in self.backend.run(todo, self.run_fn, may_start=self.in_time, on_start=on_start,
                                            progress=self.run_progress):
            if not _finished(run):
                raise RuntimeError(f"run {run.run_id} returned without writing "
                                   f"{Path(run.config.output_dir) / 'metrics.json'} (with Ray on several "
                                   "nodes: is output_dir on a filesystem every node sees?)")
            row = _row(run, result, self.config)
            append_result(results, row)
            self.done.add(run.run_id)
            if bar:
                bar.advance(task)
            if not getattr(console, "is_terminal", True):  # a log shows no bar: one line per finished run
                head = result.get("headline")
                value = result.get("metrics", {}).get(head)
                console.print(f"finished {len(self.done)}: {run.run_id}"
                              + (f"  {head} {value:.4f}" if isinstance(value, (int, float)) else "")
                              + f"  ({result.get('wall_s', 0):.0f} s)", soft_wrap=True, highlight=False)
            yield row
        if any(r.run_id not in self.done for r in todo) and not self.in_time():
            self.stopped = True
            console.print("[yellow]time budget reached: runs left not started (run again to add them)[/]")


    def _reused(self, runs: list[PlannedRun]) -> Iterable[tuple[PlannedRun, dict[str, Any]]]:
        """Runs of ``runs`` taken from another grid (:mod:`inilora.reuse`): copied in now, or copied by an
        earlier pass killed before their row; their rows written. This grid's own finished runs are left
        to the backend, which returns them as they are."""
        out, sources = [], set()
        for run in runs:
            folder, finished = Path(run.config.output_dir), _finished(run)
            original, rows_of = (marker(folder) if finished else None), None
            if original is None:
                planned = to_dict(run.config)
                found = None if self.reusable is None or finished else self.reusable.find(planned)
                if found is None:
                    continue
                if found["_folder"] is None:  # a committed grid's row: the row is the whole of it
                    original = {k: v for k, v in found.items() if not k.startswith("_")}
                    rows_of = f"{found['_source']} (its rows)"
                else:
                    copy_run(found, folder, planned)
                    original = marker(folder)
            new = reused_row(original, _row(run, {k: original[k] for k in KEPT if k in original}, self.config))
            append_result(self.root / RESULTS, new)
            self.done.add(run.run_id)
            if self.bar:
                self.bar.advance(self.task)
            out.append((run, new))
            sources.add(rows_of or str(Path(new["reused_from"]).parent.parent))  # the grid measured in
        if out:
            self.console.print(f"reused {len(out)} finished runs of {', '.join(sorted(sources))}",
                               soft_wrap=True, highlight=False)
        return out


# ------------------------------------------------------------------------------------------------
# each method at its own best rate: what a race may select on, and the race (rules: inilora.rates)


def eval_tasks_of(config: CompareConfig) -> list[str]:
    from .train import eval_tasks

    return eval_tasks(config.base)


def check_selection(config: CompareConfig, key: str = "learning_rate") -> str:
    """The validation task ``key`` is chosen on; ConfigError when the choice would see test rows:
    the metric must belong to an evaluation task of the grid other than the first (the headline)."""
    on = config.tune[key]
    task, _, metric = on.partition("/")
    evals = eval_tasks_of(config)
    if not evals:
        raise ConfigError(f"tune.{key}: {config.base.task} has one held-out split, the one the tables report; "
                          f"choosing the rate on it ({on}) would select on test rows (tune on a task with a "
                          "validation set, e.g. offline-arith with eval_tasks [offline-arith-test, offline-arith-val])")
    if not metric or task not in evals:
        raise ConfigError(f"tune.{key}: {on!r} is not TASK/METRIC of an evaluation task of this grid "
                          f"({', '.join(evals)})")
    if task == evals[0]:
        raise ConfigError(f"tune.{key}: {on} chooses on {task}, the test set the tables report; "
                          f"choose on a validation task disjoint from it ({', '.join(evals[1:]) or 'add one'})")
    return task


def race_cells(config: CompareConfig, root: Path, ladders: dict[str, list[list[float]]],
               val_task: str) -> list[PlannedRun]:
    """The cells of every rung reached so far. Rung k is the full run's first ``budgets[k]`` steps (on
    the full schedule: ``stop_at``), continuing rung k-1's checkpoint of the same rate and seed
    (``resume_from``), so a finalist's last rung *is* the full grid's run, and a rung costs only the
    steps it adds. A rung before the last is graded on the validation task only (an SFT task's test
    set is read once, at the full run; a classification run always grades its dev and test rows)."""
    rungs = config.race.rungs
    budgets = rates.race_steps(config)
    keys = ["learning_rate"] + [k for k in config.sweep if k != "learning_rate"]
    specs = _check_methods(config)
    nlu = val_task == "dev"  # a classification run's own dev split (TrainConfig.dev_size)
    folders: dict[tuple, str] = {}  # (label, rate, seed, rung) → run folder: where rung k+1 continues
    out = []
    for label, ladder in ladders.items():
        for k, rung_rates in enumerate(ladder):
            for rate in rung_rates:
                for seed in config.seeds:
                    extra: dict[str, Any] = {}
                    if k < rungs - 1:
                        extra["stop_at"] = budgets[k]
                        if not nlu:
                            extra["eval_tasks"] = [val_task]
                    if k > 0:
                        prefix = Path(folders[label, rate, seed, k - 1])
                        extra["resume_from"] = str(prefix / f"checkpoint-{budgets[k - 1]}")
                    run = build_run(config, label, seed, {"learning_rate": rate}, root, extra=extra,
                                    tag=f"rung={k}", specs=specs)  # a race of other rungs refuses, never reuses, a folder
                    run.extra_row = {"rung": k, "rungs": rungs, "budget_steps": budgets[k],
                                     "start_step": budgets[k - 1] if k else 0, "sweep_keys": keys}
                    folders[label, rate, seed, k] = run.config.output_dir
                    out.append(run)
    return out


def check_race(config: CompareConfig) -> str:
    """Everything a race needs, refused in one line before any run: returns the validation task."""
    if config.base.max_steps <= 0:
        raise ConfigError("base.max_steps: a learning-rate race counts its rungs in optimizer steps; set max_steps")
    if any(k != "learning_rate" for k in config.sweep):
        raise ConfigError(f"sweep: a learning-rate race sweeps learning_rate only (also: {', '.join(config.sweep)})")
    return check_selection(config)


def race(config: CompareConfig, root: Path, *, run_fn=None, progress: bool = True, run_progress: bool = False,
         console=None, deadline: float | None = None, dry_run: bool = False, backend=None,
         reusable: Reusable | None = None, chosen: set[str] | None = None) -> list[dict[str, Any]]:
    """Run the race rung by rung (resuming from ``results.jsonl``); return the rows. ``chosen``: race
    only these methods now."""
    from rich.console import Console

    console = console or Console(stderr=True)
    val_task = check_race(config)
    rows = read_results(root)

    def cells_now(rows: list[dict[str, Any]]) -> list[PlannedRun]:
        ladders, _ = rates.plan(config, rows)
        return [c for c in race_cells(config, root, ladders, val_task) if chosen is None or c.label in chosen]

    if dry_run:
        cells = cells_now(rows)
        console.print(plan_table(cells, {r["run_id"] for r in rows}, reusable))
        console.print(f"(successive halving: later rungs are decided by the rows of rung 0; "
                      f"steps per rung {rates.race_steps(config)})")
        return rows
    with Execution(root, config, 0, run_fn, progress=progress, run_progress=run_progress, console=console,
                   deadline=deadline, backend=backend, reusable=reusable) as ex:
        while True:
            cells = cells_now(rows)
            _check_same_configs(cells, {r["run_id"]: r for r in rows}, root)
            ex.grow(len(cells))
            todo = [c for c in cells if c.run_id not in ex.done]
            if not todo:
                break
            if ex.bar:
                ex.bar.reset(ex.task, total=len(cells), completed=len(cells) - len(todo))
            for _ in ex.run(todo):
                pass
            rows = read_results(root)
            if ex.stopped:
                break
    return read_results(root)


def _train_run(bar) -> RunFn:
    """``inilora.train.run`` reporting its optimizer steps to the grid's progress display."""
    from transformers.utils import logging as hf_logging

    from .train import run  # the training pipeline (imports torch, transformers)

    hf_logging.disable_progress_bar()  # "Loading weights" bars for every run would bury the grid's
    hf_logging.set_verbosity_error()  # per-run load reports ("classifier: newly initialized") likewise
    if bar is None:
        return run
    from transformers import TrainerCallback

    task = bar.add_task("  training", total=None, visible=False, run="")

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            bar.reset(task, total=state.max_steps, completed=state.global_step, visible=True)

        def on_step_end(self, args, state, control, **kw):
            bar.update(task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kw):
            bar.update(task, visible=False)

    def run_with_steps(config: TrainConfig, *, progress: bool = False) -> dict:
        return run(config, progress=progress, callbacks=[Steps()])

    return run_with_steps


def _progress(enabled: bool, console):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[run]}"), console=console)
    bar.start()
    return bar


def run_compare(config_path: str | Path, *, dry_run: bool = False, output_dir: str | Path | None = None,
                overrides: dict[str, Any] | None = None, run_fn: RunFn | None = None, console=None,
                backend: str = "in-process", address: str | None = None,
                reuse: Iterable[str | Path] = (), only_methods: Iterable[str] = ()) -> Path | None:
    """``inilora compare``: load the YAML strictly, apply ``--set`` overrides, run on ``backend``
    (``in-process``, ``processes`` or ``ray``, see :mod:`inilora.backends`), write the report."""
    from rich.console import Console

    from .backends import get_backend
    from .config import load_yaml

    config = load_yaml(config_path, CompareConfig, overrides)
    executor = get_backend(backend, address=address, resources=config.resources)
    root = Path(output_dir or config.output_dir)
    rows = run_grid(config, run_fn=run_fn, dry_run=dry_run, output_dir=root, console=console, backend=executor,
                    reuse=reuse, only_methods=only_methods)
    if dry_run or not rows:
        return None
    from .report import own_best_table, summary_table, verdict, write_report

    path = write_report(root, rows, title=config.title, baseline=config.baseline)
    if "learning_rate" in config.tune:  # the own-best view first, the shared-rate one in the report
        Console().print(own_best_table(rows, baseline=config.baseline, title=config.title))
        Console().print(verdict(rows, config.baseline), highlight=False)
    else:
        Console().print(summary_table(rows, baseline=config.baseline, title=config.title))
    (console or Console(stderr=True)).print(f"[bold green]wrote[/] {path}")
    left = [m for m in config.methods if m not in {r["method"] for r in rows}]
    if left and only_methods:  # without --methods every run finished or the grid raised
        (console or Console(stderr=True)).print(f"no rows yet for {', '.join(left)}: the report covers the methods "
                                                 "that ran; run again without --methods for the rest",
                                                 soft_wrap=True, highlight=False)
    return path
