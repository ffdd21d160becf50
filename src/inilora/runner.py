"""Comparison grids: CompareConfig → runs → one ``results.jsonl``, resumable.

Each run is one TrainConfig in its own directory under the grid's output folder. A run counts as
finished when its ``metrics.json`` exists (the training pipeline writes it last); only then is its
line appended to ``results.jsonl`` (flush + fsync), so a grid killed at any moment restarts where it
stopped: finished runs are skipped (a finished run missing from the file is re-read, not re-run), a
run directory without ``metrics.json`` is wiped and run again — unless it holds a complete Trainer
checkpoint, from which the pipeline resumes (SPEC §8). A partial result never reaches the file.
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

from .config import (
    TRAINING_MODES,
    CompareConfig,
    ConfigError,
    TrainConfig,
    from_dict,
    set_dotted,
    to_dict,
)
from .results import RESULTS, append_result, json_default, read_results  # noqa: F401 - re-exported

RUNS = "runs"
#: keys of a run result kept in results.jsonl (the rest stays in the run's own folder)
KEPT = ("metrics", "headline", "train_loss", "trainable_params", "wall_s", "cpu_s", "approx_loss", "eval_history",
        "info", "device", "threads", "precision", "versions",  # the last four: where a number was measured
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


def _accepts(method: str, option: str) -> bool:
    if method in TRAINING_MODES:
        return False
    from .methods import get_method

    return option in get_method(method).options


# TrainConfig keys a variant's ``settings`` may not touch: the grid sets them (or ``options`` does)
_NOT_SETTINGS = ("method", "seed", "output_dir", "method_options")


def _check_methods(config: CompareConfig) -> None:
    from .errors import InitError
    from .methods import get_method

    if config.baseline not in config.methods:
        raise ConfigError(f"baseline: {config.baseline!r} is not one of methods {config.methods}")
    for label in config.methods:
        method, options = _method_of(config, label)
        if method in TRAINING_MODES:
            from .train.bottleneck import MODES, check_options

            if method in MODES:
                try:
                    check_options(method, {**config.base.method_options, **options})
                except InitError as exc:
                    raise ConfigError(f"variants.{label}: {exc}") from None
            elif options:
                raise ConfigError(f"variants.{label}: training mode {method!r} takes no options")
            continue
        try:
            get_method(method).resolve_options({**config.base.method_options, **options}, check=False)
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
        if variant.only and label == config.baseline:
            raise ConfigError(f"variants.{label}.only: the baseline runs in every cell of the sweep")
        for key in variant.settings:
            if key in config.sweep:
                raise ConfigError(f"variants.{label}.settings.{key}: swept (sweep.{key}); a variant cannot override it")
            if key.split(".")[0] in _NOT_SETTINGS:
                raise ConfigError(f"variants.{label}.settings.{key}: not a training setting here "
                                  f"({'use options' if key.startswith('method_options') else 'set by the comparison'})")
    unused = sorted(set(config.variants) - set(config.methods))
    if unused:
        raise ConfigError(f"variants: {', '.join(unused)} not listed in methods")


def expand(config: CompareConfig, output_dir: str | Path | None = None) -> list[PlannedRun]:
    """The grid's runs in execution order (settings, then seed, then method), each with a stable,
    readable id; raises ConfigError for any key or method that cannot run, before any run starts."""
    from .errors import InitError
    from .methods import get_method

    _check_methods(config)
    root = Path(output_dir or config.output_dir)
    keys = list(config.sweep)
    short = _short_names(keys)
    for key in keys:
        if key.startswith("method_options."):
            option = key.split(".", 1)[1]
            if "." in option:
                raise ConfigError(f"sweep.{key}: method options are not nested")
            if not any(_accepts(_method_of(config, m)[0], option) for m in config.methods):
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
                method, options = _method_of(config, label)
                applies = {k: v for k, v in cell.items()
                           if not k.startswith("method_options.") or _accepts(method, k.split(".", 1)[1])}
                data = json.loads(json.dumps(base))  # deep copy of plain data
                data["method"] = method
                data["seed"] = seed
                data["method_options"] = {**data.get("method_options", {}), **options}
                for key, value in (variant.settings if variant else {}).items():
                    set_dotted(data, key, value)
                for key, value in applies.items():
                    set_dotted(data, key, value)
                parts = [_slug(label)] + [_slug(f"{short[k]}={_fmt(v)}") for k, v in applies.items()] + [f"seed={seed}"]
                run_id = "_".join(parts)
                data["output_dir"] = str(root / RUNS / run_id)
                try:
                    train_config = from_dict(TrainConfig, data)
                    if method not in TRAINING_MODES and not get_method(method).peft_backed:
                        get_method(method).resolve_options(train_config.method_options)
                except InitError as exc:  # ConfigError too: the run's whole config, values included
                    raise ConfigError(f"run {run_id}: {exc}") from None
                if run_id in planned:
                    planned[run_id].shared_by.append(cell)
                    continue
                planned[run_id] = PlannedRun(run_id, label, seed, applies, train_config, [cell])
    return list(planned.values())


# ------------------------------------------------------------------------------------------------
# results file


def _row(run: PlannedRun, result: dict[str, Any], config: CompareConfig) -> dict[str, Any]:
    row = {"run_id": run.run_id, "method": run.label, "init": run.config.method, "seed": run.seed,
           "task": run.config.task, "model": run.config.model, "settings": run.settings,
           "sweep_keys": list(config.sweep), "baseline": config.baseline, "title": config.title}
    if config.tune:
        row["tune"] = dict(config.tune)
    row.update({k: result[k] for k in KEPT if k in result})
    row["config"] = to_dict(run.config)
    row["output_dir"] = run.config.output_dir
    row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return row


def _check_same_configs(runs: list[PlannedRun], previous: dict[str, dict], root: Path) -> None:
    """A finished run of the same id but another configuration must not pass for this grid's run."""
    for run in runs:
        stored = previous.get(run.run_id, {}).get("config")
        if stored is not None and stored != json.loads(json.dumps(to_dict(run.config), default=json_default)):
            diff = sorted(k for k in set(stored) | set(to_dict(run.config))
                          if stored.get(k) != to_dict(run.config).get(k))
            raise ConfigError(f"{root} holds a finished run {run.run_id} of another configuration (differs in: "
                              f"{', '.join(diff)}); choose another output_dir, or delete it to start over.")


def _check_root(root: Path) -> None:
    """A grid folder holds our ``compare.yaml`` or nothing (SPEC §8; ``outdir.check_run_folder``)."""
    from .outdir import check_run_folder

    check_run_folder(root, marker="compare.yaml", kind="comparison", error=ConfigError)


def _resumable(out: Path) -> bool:
    """A complete Trainer checkpoint (its state file is written last): the pipeline resumes from it."""
    return any((ckpt / "trainer_state.json").is_file() for ckpt in out.glob("checkpoint-*"))


def _finished(run: PlannedRun) -> bool:
    return (Path(run.config.output_dir) / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------------
# the grid


def plan_table(runs: list[PlannedRun], done: set[str]):
    """A rich table of the plan (``--dry-run``)."""
    from rich.table import Table

    table = Table(title=f"{len(runs)} runs ({len(done)} finished)")
    for col in ("run id", "method", "seed", "task", "settings", "status"):
        table.add_column(col)
    for run in runs:
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in run.settings.items()) or "—"
        table.add_row(run.run_id, run.label, str(run.seed), run.config.task, settings,
                      "done" if run.run_id in done else "to run")
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
) -> list[dict[str, Any]]:
    """Run (or, with ``dry_run``, only print) every unfinished run of the grid; return the rows of
    ``results.jsonl``. ``deadline`` (a ``time.time()``) stops before starting a run past it."""
    from rich.console import Console

    console = console or Console(stderr=True)
    root = Path(output_dir or config.output_dir)
    runs = expand(config, root)
    _check_root(root)
    previous = {r["run_id"]: r for r in read_results(root)}
    _check_same_configs(runs, previous, root)
    done = set(previous)
    if dry_run:
        console.print(plan_table(runs, done))
        return read_results(root)
    save_config(config, root)
    results = root / RESULTS
    todo = [r for r in runs if r.run_id not in done]
    bar = _progress(progress, console)
    task = bar.add_task("grid", total=len(runs), completed=len(runs) - len(todo), run="") if bar else None
    if run_fn is None:
        run_fn = _train_run(bar)
    try:
        for run in todo:
            if deadline is not None and time.time() > deadline:
                left = len(runs) - len(done)
                console.print(f"[yellow]time budget reached: {left} runs not started (run again to add them)[/]")
                break
            if bar:
                bar.update(task, run=run.run_id)
            out = Path(run.config.output_dir)
            if out.exists() and not _finished(run) and not _resumable(out):
                shutil.rmtree(out)  # a partial run without a usable checkpoint: start it again cleanly
            result = run_fn(run.config, progress=run_progress)
            if not _finished(run):
                raise RuntimeError(f"run {run.run_id} returned without writing {out / 'metrics.json'}")
            append_result(results, _row(run, result, config))
            done.add(run.run_id)
            if bar:
                bar.advance(task)
            if not getattr(console, "is_terminal", True):  # a log shows no bar: one line per finished run
                head = result.get("headline")
                value = result.get("metrics", {}).get(head)
                console.print(f"finished {len(done)}/{len(runs)}: {run.run_id}"
                              + (f"  {head} {value:.4f}" if isinstance(value, (int, float)) else "")
                              + f"  ({result.get('wall_s', 0):.0f} s)", soft_wrap=True, highlight=False)
    finally:
        if bar:
            bar.stop()
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
                overrides: dict[str, Any] | None = None, run_fn: RunFn | None = None, console=None) -> Path | None:
    """``inilora compare``: load the YAML strictly, apply ``--set`` overrides, run, write the report."""
    from rich.console import Console

    from .config import load_yaml

    config = load_yaml(config_path, CompareConfig, overrides)
    root = Path(output_dir or config.output_dir)
    rows = run_grid(config, run_fn=run_fn, dry_run=dry_run, output_dir=root, console=console)
    if dry_run or not rows:
        return None
    from .report import summary_table, write_report

    path = write_report(root, rows, title=config.title, baseline=config.baseline)
    Console().print(summary_table(rows, baseline=config.baseline, title=config.title))
    (console or Console(stderr=True)).print(f"[bold green]wrote[/] {path}")
    return path
