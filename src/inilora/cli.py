"""The ``inilora`` command: a thin typer layer over the public Python API."""

from __future__ import annotations

import ast
import json
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .checks import check_model_name, check_positive
from .errors import InitError, sigterm_as_interrupt

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Better starting points for LoRA: IniLoRA and friends on top of PEFT.")
console = Console(stderr=True)

#: dtype names the options accept, with the short aliases people type
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16", "float64": "float64"}


def parse_options(pairs: list[str], option: str = "--option") -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals when they parse as one, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"takes key=value, got {pair!r}", param_hint=f"'{option}'")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def split_names(values: list[str] | None) -> list[str] | None:
    """``--targets q_proj,v_proj`` and ``--targets q_proj --targets v_proj`` alike."""
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    return names or None


def _dtype(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    name = DTYPES.get(value.strip().lower().removeprefix("torch."))
    if name is None:
        raise typer.BadParameter(f"unknown dtype {value!r}; use one of float32, bfloat16, float16 "
                                 "(or fp32, bf16, fp16)", param_hint=f"'{option}'")
    return name


def _iterations(text: str | None) -> list[int]:
    try:
        return [int(t) for t in (text or "").split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"expects whole numbers separated by commas, e.g. 100,1000,4000; got {text!r}",
                                 param_hint="'--checkpoints'") from None


def _fail(exc: Exception | str, code: int = 2) -> None:
    _say_error(str(exc))
    raise typer.Exit(code)


def _guarded(fn):
    """Every command's refusals and failures as one line: ``InitError`` (the input is refused)
    exit 2, ``OSError`` (a failure while working) exit 1, Ctrl-C during a fit: how to resume."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InitError as exc:
            _fail(exc, 2)
        except OSError as exc:
            _fail(exc, 1)
        except KeyboardInterrupt as exc:
            from .approx import FitInterrupted

            code = _stop_code(exc)
            if isinstance(exc, FitInterrupted):
                _fail(f"{exc}. Run the same command again to resume from there.", code)
            _fail(f"{'terminated (SIGTERM)' if code == 143 else 'interrupted'} "
                  "(a finished output is never replaced by a partial one)", code)

    return run


def _stop_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM (128 + the signal), as a shell reports a process they ended."""
    from .errors import Terminated

    return 143 if isinstance(exc, Terminated) or getattr(exc, "signum", None) == signal.SIGTERM else 130


def _check_method(method: str, opts: dict[str, Any]) -> None:
    """The method exists and takes these options with these values (its own checks, no weights)."""
    from .methods import get_method

    spec = get_method(method)
    if not spec.peft_backed or spec.options:
        spec.resolve_options(opts)
    elif opts:
        raise InitError(f"method {method!r} is PEFT's own and takes no options; got {', '.join(opts)}.")


def _check_calibration(method: str, spec_text: str | None) -> None:
    """A data-driven method needs --calibration, the others refuse it; the task is looked up."""
    from .train.calibration import check_spec
    from .methods import get_method

    needs = get_method(method).calibration
    if needs and spec_text is None:
        raise InitError(f"method {method!r} is data-driven ({needs}): give --calibration TASK[:N], e.g. "
                        "--calibration offline-topic:32 (`inilora tasks` lists the tasks).")
    if spec_text is not None:
        if not needs:
            raise InitError(f"method {method!r} takes no calibration data; drop --calibration.")
        check_spec(spec_text)


def _model_input(model: str) -> list[Path]:
    """A local model folder is an input the output must not replace."""
    path = Path(model)
    return [path] if path.exists() else []


def _precheck(model: str, method: str, rank: int, lora_alpha: float, targets: list[str] | None,
              use_rslora: bool = False):
    """Rank, alpha and targets against the model's *config* (a weightless skeleton): a wrong
    one fails in a second, before the weights load.  Returns the LoraConfig to use."""
    from .bridge import check_plan  # first: it imports peft quietly (chatter.import_peft)
    from .checks import check_lora_numbers
    from .models import load_skeleton
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=targets, use_rslora=use_rslora)
    check_lora_numbers(config)
    skeleton = load_skeleton(model)
    if skeleton is not None:
        check_plan(skeleton, config, method)  # default targets filled as get_peft_model fills them
    return config


@app.command()
@_guarded
def methods() -> None:
    """List the initialization methods."""
    from .methods import methods as all_methods

    table = Table(title="inilora init methods")
    table.add_column("method", style="bold")
    table.add_column("residual")
    table.add_column("needs")
    table.add_column("description")
    table.add_column("options")
    for m in all_methods():
        opts = ", ".join(f"{k}={v!r}" for k, v in m.options.items())
        table.add_row(m.name, "yes" if m.residual else "no", m.needs, m.summary,
                      opts or ("(PEFT)" if m.peft_backed else ""))
    Console().print(table)


@app.command()
@_guarded
def init(
    model: str = typer.Option(..., help="Hub name, local folder or embedded:smollm2 / embedded:minilm."),
    method: str = typer.Option("inilora", help="Init method (`inilora methods` lists them)."),
    rank: int = typer.Option(8, "--rank", "-r", min=1, help="LoRA rank r."),
    lora_alpha: float | None = typer.Option(None, help="LoRA alpha > 0; default r (s = 1, as the paper's scripts)."),
    targets: list[str] | None = typer.Option(None, "--targets", help="Target module names, e.g. q_proj,v_proj "
                                             "(default: the query/value projections)."),
    seed: int = typer.Option(0, help="Seed of the random draws."),
    out: Path = typer.Option(..., help="Folder for the ready-to-train adapter."),
    overwrite: bool = typer.Option(False, help="Replace --out if it holds an adapter inilora wrote (and nothing else)."),
    steps: int | None = typer.Option(None, min=0, help="inilora: approximation steps (default 20000)."),
    engine: str | None = typer.Option(None, help="inilora: approximation engine."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="Method option key=value (repeatable)."),
    use_rslora: bool = typer.Option(False, help="rsLoRA scaling alpha/√r."),
    dtype: str | None = typer.Option(None, help="Load the base in this dtype (float32, bfloat16, ...)."),
    residual_dtype: str | None = typer.Option(None, help="Keep replaced base weights in this dtype."),
    cache: bool = typer.Option(True, help="Use the fit cache ($INILORA_CACHE)."),
    calibration: str | None = typer.Option(None, help="Data-driven methods (eva, corda, lora-ga): TASK[:N], N "
                                           "seeded training examples of a task of `inilora tasks` (default 32)."),
) -> None:
    """Write an initialised, ready-to-train adapter: factors, metadata and A0/B0, never a full model."""
    from .outdir import check_output_dir

    # cheapest checks first: a typo is answered before torch, then the model library, is imported
    dtype, residual_dtype = _dtype(dtype, "--dtype"), _dtype(residual_dtype, "--residual-dtype")
    opts = parse_options(option or [])
    if steps is not None:
        opts["steps"] = steps
    if engine is not None:
        opts["engine"] = engine
    check_positive(lora_alpha, "lora_alpha (--lora-alpha)")
    check_model_name(model, "--model")
    check_output_dir(out, what="--out", overwrite=overwrite, inputs=_model_input(model))
    _check_method(method, opts)
    _check_calibration(method, calibration)

    from .approx import snapshot_on_interrupt
    from .bridge import get_peft_model
    from .models import load_model
    from .progress import approximation_progress

    config = _precheck(model, method, rank, lora_alpha if lora_alpha is not None else rank, split_names(targets),
                       use_rslora)
    base = load_model(model, dtype=dtype)
    batches = None
    if calibration is not None:
        from .train.calibration import from_task
        from .models import load_tokenizer

        batches = from_task(calibration, load_tokenizer(model), seed=seed)
    with snapshot_on_interrupt():
        peft_model = get_peft_model(base, config, method, seed=seed, residual_dtype=residual_dtype, cache=cache,
                                    progress=approximation_progress(force=True), calibration=batches, **opts)
    peft_model.peft_config["default"].base_model_name_or_path = model
    _save_adapter(peft_model, out)
    _print_report(peft_model.inilora_report, out)


def _save_adapter(peft_model, out: Path) -> None:
    """Save beside ``out`` and swap it in: an interrupted save never leaves a half-written adapter."""
    import shutil

    from .chatter import quiet
    from .fileio import replace_dir, temp_dir
    from .outdir import record_adapter_files

    tmp = temp_dir(out.parent, out.name)
    try:
        with quiet():
            peft_model.save_pretrained(str(tmp))
        record_adapter_files(tmp)  # what --overwrite may later replace: files that still hold these bytes
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@app.command()
@_guarded
def approximate(
    model: str = typer.Option(..., help="Hub name, local folder or embedded:smollm2 / embedded:minilm."),
    rank: int = typer.Option(8, "--rank", "-r", min=1, help="LoRA rank r."),
    targets: list[str] | None = typer.Option(None, "--targets", help="Target module names, e.g. q_proj,v_proj "
                                             "(default: the query/value projections)."),
    seed: int = typer.Option(0, help="Seed of the initial factors."),
    steps: int = typer.Option(20000, min=0, help="Approximation steps."),
    checkpoints: str | None = typer.Option(None, help="Also cache these iterations, e.g. 100,1000,4000."),
    engine: str | None = typer.Option(None, help="Approximation engine (default auto: triton on CUDA, "
                                         "cpu-fused on CPU, else torch)."),
    device: str | None = typer.Option(None, help="Run the fit on this device (cpu, cuda, cuda:1)."),
    devices: str | None = typer.Option(None, help="Split the matrices over these devices, e.g. cuda:0,cuda:1."),
    resume: bool = typer.Option(True, help="Snapshot the fit's state in the cache and continue an interrupted run."),
    dtype: str | None = typer.Option(None, help="Load the base in this dtype."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="Method option key=value (repeatable)."),
    report: Path | None = typer.Option(None, help="Write the per-matrix report (JSON) here."),
    overwrite: bool = typer.Option(False, help="Replace --report if it is a report inilora wrote."),
) -> None:
    """Precompute IniLoRA's fit once per base model and fill the cache that `init` and
    `get_peft_model` read (same options, same cache keys)."""
    from .outdir import check_output_file

    dtype = _dtype(dtype, "--dtype")
    check_model_name(model, "--model")
    opts = parse_options(option or [])
    opts["steps"] = steps
    if engine is not None:
        opts["engine"] = engine
    if checkpoints:
        opts["checkpoints"] = _iterations(checkpoints)
    if not resume:
        opts["resume"] = False  # else the method's default (or -o resume=N: also every N steps)
    if devices:
        opts["devices"] = [d.strip() for d in devices.split(",") if d.strip()]
    if report is not None:
        check_output_file(report, what="--report", overwrite=overwrite, marker=REPORT_MARKER)
    _check_method("inilora", opts)
    if device:
        _check_device(device, "--device")
    for d in opts.get("devices") or []:
        _check_device(d, "--devices")
    from .approx import snapshot_on_interrupt
    from .bridge import get_peft_model
    from .cache import FitCache
    from .models import load_model
    from .progress import approximation_progress

    FitCache().check_writable()
    config = _precheck(model, "inilora", rank, rank, split_names(targets))
    base = load_model(model, dtype=dtype)
    if device:
        base = base.to(device)
    with snapshot_on_interrupt():
        peft_model = get_peft_model(base, config, "inilora", seed=seed, cache=True, measure_drift=False,
                                    progress=approximation_progress(force=True), **opts)
    rep = peft_model.inilora_report
    _print_report(rep, None)
    detail = rep.info.get("engine_detail")
    console.print(f"  engine: {rep.info.get('engine')}" + (f" — {detail}" if detail else ""))
    if rep.info.get("resumed_from") is not None:
        console.print(f"  resumed an interrupted fit at iteration {rep.info['resumed_from']}")
    if report is not None:
        from .cache import atomic_write_json

        report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(report, {REPORT_MARKER: 1, "model": model, "rank": rank, "seed": seed,
                                   "info": rep.info, "fit": rep.fit})


#: the key that marks a JSON report as inilora's own (``approximate --report``)
REPORT_MARKER = "inilora_report"


def _check_device(name: str, option: str) -> None:
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise typer.BadParameter(f"unknown device {name!r}; use cpu, cuda or cuda:N", param_hint=f"'{option}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InitError(f"{option} {name}: no CUDA device is available here; use cpu.")


def _print_report(report, out: Path | None) -> None:
    if out is not None:
        _say(f"[bold green]wrote[/] {out}  (method {report.method})")
    init = report.info.get("init")
    if init:
        _say("  init distribution: " + ", ".join(f"{g}: N({v['mean']:g}, {v['std']:g}²)"
                                                            for g, v in init.items()))
    if report.info.get("cache"):
        _say(f"  fit cache: {report.info['cache']}")
    if report.fit:
        rel = [f["rel_error"] for f in report.fit.values()]
        opt = [f["optimum"] for f in report.fit.values()]
        _say(f"  relative error ‖W0 − s·B0A0‖/‖W0‖: mean {sum(rel) / len(rel):.4f} "
                      f"(Eckart–Young optimum {sum(opt) / len(opt):.4f}) over {len(rel)} matrices")
    if report.drift:
        d = report.drift
        extra = f", top-1 agreement {d['top1_agreement']:.1%}" if "top1_agreement" in d else ""
        _say(f"  output drift at init: {d['max_rel']:.2e} ({d['dtype']}){extra}")
    if report.residual and out is not None:
        _say("  This adapter belongs to a residual base: load it with inilora.load(base, dir) or "
                      "convert it with `inilora export`.")


@app.command()
@_guarded
def export(
    adapter_dir: Path = typer.Argument(..., help="Adapter folder saved from an inilora model."),
    base: str | None = typer.Option(None, help="The unmodified base (default: the one recorded)."),
    layout: str = typer.Option("plain", help="plain | merged | residual"),
    out: Path = typer.Option(..., help="Output folder."),
    dtype: str | None = typer.Option(None, help="Target dtype (default: the base's)."),
    overwrite: bool = typer.Option(False, help="Replace --out if it holds an export inilora wrote (and nothing else)."),
) -> None:
    """Convert a saved adapter to a layout that loads without inilora."""
    from .checks import LAYOUTS, check_adapter_dir
    from .outdir import check_output_dir

    if layout not in LAYOUTS:
        raise typer.BadParameter(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}", param_hint="'--layout'")
    dtype = _dtype(dtype, "--dtype")
    if not adapter_dir.is_dir():
        raise InitError(f"ADAPTER_DIR {adapter_dir} is not a folder; give the folder `inilora init` or "
                        "save_pretrained wrote.")
    check_adapter_dir(adapter_dir)
    check_output_dir(out, what="--out", overwrite=overwrite, inputs=[adapter_dir])
    from .exports import export as do_export

    report = do_export(adapter_dir, out, layout, base=base, dtype=dtype, overwrite=overwrite)
    msg = f"[bold green]wrote[/] {report.out_dir} (layout {report.layout}, {report.dtype})"
    if report.drift is not None:
        msg += f"; drift vs merged {report.drift:.2e}"
    console.print(msg)
    if report.base_folder:  # an embedded base: named by its hub name; tools that need a folder get this one
        console.print(f"base {report.base_model} is on disk at {report.base_folder} (lm-eval: "
                      f"pretrained={report.base_folder},peft={report.out_dir})", soft_wrap=True, highlight=False)
    json.dump({"layout": report.layout, "dtype": report.dtype, "drift": report.drift,
               "top1_agreement": report.top1_agreement, "base_model": report.base_model,
               "base_folder": report.base_folder}, sys.stdout)
    sys.stdout.write("\n")


@app.command()
@_guarded
def compare(
    config: Path = typer.Argument(..., help="A comparison YAML (configs/paper/, configs/embedded/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the runs of the grid and exit."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Override the config's output_dir."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key: base.lora.rank=16 (repeatable)."),
    old_o: list[str] | None = typer.Option(None, "-o", hidden=True),  # -o is --option everywhere else
    backend: str = typer.Option("in-process", help="in-process | processes: runs side by side on this machine, "
                                "`resources.num_cpus` threads each (default 1) | ray: each run a Ray task asking "
                                "the config's `resources` (resume works across backends)."),
    address: str | None = typer.Option(None, help="Ray cluster to join (auto, ray://HOST:10001); "
                                       "default: start a local Ray instance."),
    reuse: list[Path] | None = typer.Option(None, "--reuse", help="Another comparison's output folder: its "
                                            "finished runs that are exactly runs of this grid (same resolved "
                                            "config) are copied in instead of trained (repeatable); a folder with "
                                            "no runs/ (a committed results.jsonl) lends its rows alone."),
    methods: str | None = typer.Option(None, "--methods", help="Run only these of the grid's methods now, "
                                       "comma-separated (the grid stays the config's; run again without it "
                                       "for the rest)."),
) -> None:
    """Run a grid of methods × seeds × swept settings; resumable; writes results.jsonl and report.md."""
    if old_o:
        raise typer.BadParameter(f"compare has no -o (elsewhere -o is --option); for the output folder write "
                                 f"--output-dir {old_o[0]}, for a setting --set KEY=VALUE", param_hint="'-o'")
    overrides = _set_pairs(set_)
    _config_file(config)
    from .backends import get_backend
    from .runner import run_compare

    get_backend(backend, address=address)  # a typo in --backend costs nothing
    run_compare(config, dry_run=dry_run, output_dir=output_dir, overrides=overrides, console=console,
                backend=backend, address=address, reuse=reuse or (),
                only_methods=methods.split(",") if methods is not None else ())


@app.command()
@_guarded
def report(
    run_dir: Path = typer.Argument(..., help="A grid's output folder (holding results.jsonl)."),
    plots: bool = typer.Option(True, help="Also draw the PNG plots."),
) -> None:
    """Rebuild report.md, summary.json and the plots of a grid from its results.jsonl alone."""
    from rich.console import Console as _Console

    from .report import summary_table, write_report
    from .results import read_results_noted

    if run_dir.exists() and not run_dir.is_dir():
        raise InitError(f"RUN_DIR {run_dir} is a file; give the folder `inilora compare` wrote (it holds results.jsonl).")
    rows, skipped = read_results_noted(run_dir)
    if not rows:
        raise InitError(f"no finished runs in {run_dir / 'results.jsonl'}; give the folder `inilora compare` wrote.")
    for note in skipped:  # also in report.md
        _say(f"[yellow]note:[/] {note}")
    path = write_report(run_dir, rows, plots=plots)
    _Console().print(summary_table(rows, title=rows[0].get("title", "results")))
    console.print(f"[bold green]wrote[/] {path}")


@app.command()
@_guarded
def demo(
    out: Path | None = typer.Option(None, "--out", help="Output folder, resumed if it exists "
                                       "(default runs/demo, runs/demo-full with --full)."),
    full: bool = typer.Option(False, "--full", help="The larger version (more data, seeds and steps)."),
    nlu_task: str = typer.Option("offline-topic", help="NLU task: offline-topic or offline-qa-pair."),
    smoke: bool = typer.Option(False, "--smoke", hidden=True, help="Tiny sizes (tests)."),
) -> None:
    """The main job: compare init methods on the embedded models, offline, in minutes; report + plots."""
    from .demo import run_demo

    run_demo(out, full=full, nlu_task=nlu_task, smoke=smoke, console=console)


def _precheck_train(cfg) -> None:
    """What `train` can refuse before transformers: model and task names, the output folder (no torch
    yet), then the method and its options."""
    from .outdir import check_run_folder
    from .train_names import check_names

    check_names(cfg)
    out = Path(cfg.output_dir)
    if not (out / "config.yaml").is_file():
        check_run_folder(out, marker="config.yaml", kind="run")
    from .train import resolve  # the registries import torch, not transformers: a typo costs seconds, not 40

    spec = resolve(cfg.method)  # an init method or a training mode; unknown: one line naming both
    if not getattr(spec, "peft_backed", False) or getattr(spec, "options", None):
        spec.resolve_options(cfg.method_options)


def _config_file(path: Path) -> None:
    if not path.is_file():
        raise InitError(f"config file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))


def _set_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs, for `train` and `compare` alike; each value is kept as typed
    (:class:`~inilora.config.SetText`) and read by the type of the field it sets when the config loads."""
    from .config import SetText

    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"takes key=value, got {pair!r}", param_hint="'--set'")
        overrides[key.strip()] = SetText(value.strip())
    return overrides


@app.command()
@_guarded
def train(
    config: Path = typer.Argument(..., help="A training YAML (e.g. configs/embedded/train-nlu.yaml)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key: lora.rank=16, method=inilora "
                                                                 "(repeatable)."),
    progress: bool = typer.Option(True, help="Show the Trainer's progress bars."),
) -> None:
    """Fine-tune and evaluate one configuration; re-running resumes it, a finished run is shown as stored."""

    from .config import TrainConfig, load_yaml

    overrides = _set_pairs(set_)
    _config_file(config)
    cfg = load_yaml(config, TrainConfig, overrides)  # every key checked before torch is imported
    _precheck_train(cfg)
    from .train import run

    result = run(cfg, progress=progress)
    table = Table(title=f"{result['method']} on {result['task']} (seed {result['seed']})")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        table.add_row(name + (" (headline)" if name == result["headline"] else ""), f"{value:.4f}")
    Console(stderr=True).print(table)
    console.print(f"trainable parameters {result['trainable_params']:,}; {result['wall_s']:.0f} s on "
                  f"{result['device']}; [bold green]wrote[/] {result['output_dir']}/metrics.json")
    json.dump({k: result[k] for k in ("metrics", "headline", "trainable_params", "wall_s", "output_dir")}, sys.stdout)
    sys.stdout.write("\n")


@app.command()
@_guarded
def models() -> None:
    """List the embedded models: alias, the hub model each is a copy of, and its folder on disk (for
    tools that need a folder: lm-eval's pretrained=, vLLM)."""
    from .models import EMBEDDED_ALIASES, embedded_folder

    for alias, hub in EMBEDDED_ALIASES.items():  # plain lines: a folder stays whole, to copy or to grep
        try:
            folder = embedded_folder(alias)
            where = str(folder) if folder.is_dir() else f"{folder} (built on first use)"
        except FileNotFoundError as exc:
            where = f"not installed: {str(exc).split('. ')[0]}"
        print(f"{alias}\t{hub}\t{where}")


@app.command()
@_guarded
def tasks() -> None:
    """List the tasks (training data and evaluations) that `train` and `compare` accept."""
    from .tasks import available_tasks

    table = Table(title="inilora tasks")
    table.add_column("task", style="bold")
    table.add_column("kind")
    table.add_column("description")
    table.add_column("source")
    kinds = {"ClassificationTask": "NLU", "SFTTask": "SFT", "GenerationEval": "eval: generation",
             "ChoiceEval": "eval: choice"}
    for name, task in available_tasks().items():
        kind = next((k for c, k in kinds.items() if c in {b.__name__ for b in type(task).__mro__}), "?")
        if kind == "SFT" and getattr(task, "eval_tasks", ()):
            kind += " → " + ", ".join(task.eval_tasks)
        table.add_row(name, kind, task.description, task.source)
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    """The console script: one error style for every command (docs/design.md §8).

    A usage mistake (a bad option value, an unknown option) ends in one line naming the
    option, exit code 2; a refusal of the input (``InitError``: bad rank, a folder it may not
    replace, a damaged adapter) one line, exit 2; a failure while working (disk full, a model
    that cannot be found) one line, exit 1; Ctrl-C during a fit says how to resume, exit 130 —
    SIGTERM (a job's time limit) the same way, exit 143.
    A traceback only with ``--debug`` (anywhere on the line).
    """
    try:  # typer ≥ 0.2x vendors click; its exceptions are what the parser raises
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")
    logging.getLogger("inilora").setLevel(logging.DEBUG if debug else logging.INFO)  # status lines, plain
    if not debug:
        warnings.formatwarning = _plain_warning  # a real warning: one line, without our source line
    try:
        with sigterm_as_interrupt():  # a job's time limit stops the work through its cleanup, like Ctrl-C
            code = app(args=args, prog_name="inilora", standalone_mode=False)
    except click_exc.UsageError as exc:
        if debug:
            raise
        command = exc.ctx.command_path if exc.ctx is not None else "inilora"
        _say_error(f"{exc.format_message()} (see `{command} --help`)")
        code = 2
    except (typer.Abort, KeyboardInterrupt) as exc:  # click turns Ctrl-C outside a fit into Abort
        code = _stop_code(exc) if isinstance(exc, KeyboardInterrupt) else 130
        _say_error("terminated (SIGTERM)" if code == 143 else "interrupted")
    except Exception as exc:  # noqa: BLE001 - a genuine bug: short, with how to get the details
        if debug:
            raise
        _say_error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback "
                   "and please report it")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _say(text: str) -> None:
    """A status line on stderr, never wrapped: paths and numbers stay on one line in a log."""
    console.print(text, soft_wrap=True)


def _plain_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 - formatwarning's signature
    return f"warning: {message}\n"


def _say_error(message: str) -> None:
    """The one error line; escaped (a key like "[red]" prints as written), never wrapped (paths stay
    copy-pasteable)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
