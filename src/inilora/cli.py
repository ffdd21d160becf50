"""The ``inilora`` command: a thin typer layer over the public Python API."""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import InitError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Better starting points for LoRA: IniLoRA and friends on top of PEFT.")
console = Console(stderr=True)

#: query/value projections under the names common architectures give them (SPEC: default targets)
DEFAULT_TARGETS = (("q_proj", "v_proj"), ("query", "value"), ("c_attn",), ("q", "v"), ("Wqkv",))


def default_targets(model) -> list[str]:
    """The attention query and value projections of ``model``, under its own names."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    for group in DEFAULT_TARGETS:
        if all(g in names for g in group):
            return list(group)
    raise typer.BadParameter("cannot find query/value projections in this model; pass --targets NAME [NAME ...]")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals when they parse as one, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--option takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    # escaped: a key like "[red]" prints as written; soft-wrapped: paths in it stay copy-pasteable
    console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def methods() -> None:
    """List the initialization methods."""
    from .methods import methods as all_methods

    table = Table(title="inilora init methods")
    table.add_column("method", style="bold")
    table.add_column("residual")
    table.add_column("description")
    table.add_column("options")
    for m in all_methods():
        opts = ", ".join(f"{k}={v!r}" for k, v in m.options.items() if k not in ("cache", "biases", "progress"))
        table.add_row(m.name, "yes" if m.residual else "no", m.summary, opts or ("(PEFT)" if m.peft_backed else ""))
    Console().print(table)


@app.command()
def init(
    model: str = typer.Option(..., help="Hub name, local folder or embedded:smollm2 / embedded:minilm."),
    method: str = typer.Option("inilora", help="Init method (`inilora methods` lists them)."),
    rank: int = typer.Option(8, "--rank", "-r", help="LoRA rank r."),
    lora_alpha: float | None = typer.Option(None, help="LoRA alpha; default r (s = 1, as the paper's scripts)."),
    targets: list[str] | None = typer.Option(None, "--targets", help="Target module names (default: q/v)."),
    seed: int = typer.Option(0, help="Seed of the random draws."),
    out: Path = typer.Option(..., help="Folder for the ready-to-train adapter."),
    steps: int | None = typer.Option(None, help="inilora: approximation steps (default 20000)."),
    engine: str | None = typer.Option(None, help="inilora: approximation engine."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="Method option key=value (repeatable)."),
    use_rslora: bool = typer.Option(False, help="rsLoRA scaling alpha/√r."),
    dtype: str | None = typer.Option(None, help="Load the base in this dtype (float32, bfloat16, ...)."),
    residual_dtype: str | None = typer.Option(None, help="Keep replaced base weights in this dtype."),
    cache: bool = typer.Option(True, help="Use the fit cache ($INILORA_CACHE)."),
) -> None:
    """Write an initialised, ready-to-train adapter: factors, metadata and A0/B0, never a full model."""
    from peft import LoraConfig

    from . import get_peft_model
    from .errors import InitError
    from .models import load_model
    from .progress import approximation_progress

    opts = parse_options(option or [])
    if steps is not None:
        opts["steps"] = steps
    if engine is not None:
        opts["engine"] = engine
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "adapter_config.json").exists())):
        _fail(InitError(f"--out {out} exists and is not an adapter folder; it would be replaced. Choose a new folder."))
    try:
        base = load_model(model, dtype=dtype)
        config = LoraConfig(r=rank, lora_alpha=lora_alpha if lora_alpha is not None else rank,
                            target_modules=list(targets) if targets else default_targets(base),
                            use_rslora=use_rslora)
        peft_model = get_peft_model(base, config, method, seed=seed, residual_dtype=residual_dtype, cache=cache,
                                    progress=approximation_progress(force=True), **opts)
    except (InitError, OSError) as exc:
        _fail(exc)
    peft_model.peft_config["default"].base_model_name_or_path = model
    _save_adapter(peft_model, out)
    _print_report(peft_model.inilora_report, out)


def _save_adapter(peft_model, out: Path) -> None:
    """Save beside ``out`` and swap it in: an interrupted save never leaves a half-written adapter."""
    import os
    import shutil
    import tempfile

    from .exports import _replace_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        peft_model.save_pretrained(str(tmp))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@app.command()
def approximate(
    model: str = typer.Option(..., help="Hub name, local folder or embedded:smollm2 / embedded:minilm."),
    rank: int = typer.Option(8, "--rank", "-r", help="LoRA rank r."),
    targets: list[str] | None = typer.Option(None, "--targets", help="Target module names (default: q/v)."),
    seed: int = typer.Option(0, help="Seed of the initial factors."),
    steps: int = typer.Option(20000, help="Approximation steps."),
    checkpoints: str | None = typer.Option(None, help="Also cache these iterations, e.g. 100,1000,4000."),
    engine: str | None = typer.Option(None, help="Approximation engine (default auto: triton on CUDA, "
                                         "cpu-fused on CPU, else torch)."),
    device: str | None = typer.Option(None, help="Run the fit on this device (cpu, cuda, cuda:1)."),
    devices: str | None = typer.Option(None, help="Split the matrices over these devices, e.g. cuda:0,cuda:1."),
    resume: bool = typer.Option(True, help="Snapshot the fit's state in the cache and continue an interrupted run."),
    dtype: str | None = typer.Option(None, help="Load the base in this dtype."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="Method option key=value (repeatable)."),
    report: Path | None = typer.Option(None, help="Write the per-matrix report (JSON) here."),
) -> None:
    """Precompute IniLoRA's fit once per base model and fill the cache that `init` and
    `get_peft_model` read (same options, same cache keys)."""
    from peft import LoraConfig

    from . import get_peft_model
    from .errors import InitError
    from .models import load_model
    from .progress import approximation_progress

    opts = parse_options(option or [])
    opts["steps"] = steps
    if engine is not None:
        opts["engine"] = engine
    if checkpoints:
        opts["checkpoints"] = [int(t) for t in checkpoints.split(",") if t.strip()]
    if not resume:
        opts["resume"] = False  # else the method's default (or -o resume=N: also every N steps)
    if devices:
        opts["devices"] = [d.strip() for d in devices.split(",") if d.strip()]
    try:
        base = load_model(model, dtype=dtype)
        if device:
            base = base.to(device)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets) if targets else default_targets(base))
        peft_model = get_peft_model(base, config, "inilora", seed=seed, cache=True, measure_drift=False,
                                    progress=approximation_progress(force=True), **opts)
    except (InitError, OSError) as exc:
        _fail(exc)
    rep = peft_model.inilora_report
    _print_report(rep, None)
    console.print(f"  engine: {rep.info.get('engine')}")
    if rep.info.get("resumed_from") is not None:
        console.print(f"  resumed an interrupted fit at iteration {rep.info['resumed_from']}")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"model": model, "rank": rank, "seed": seed, "info": rep.info,
                                      "fit": rep.fit}, indent=2, default=str))


def _print_report(report, out: Path | None) -> None:
    if out is not None:
        console.print(f"[bold green]wrote[/] {out}  (method {report.method})")
    init = report.info.get("init")
    if init:
        console.print("  init distribution: " + ", ".join(f"{g}: N({v['mean']:g}, {v['std']:g}²)"
                                                            for g, v in init.items()))
    if report.info.get("cache"):
        console.print(f"  fit cache: {report.info['cache']}")
    if report.fit:
        rel = [f["rel_error"] for f in report.fit.values()]
        opt = [f["optimum"] for f in report.fit.values()]
        console.print(f"  relative error ‖W0 − s·B0A0‖/‖W0‖: mean {sum(rel) / len(rel):.4f} "
                      f"(Eckart–Young optimum {sum(opt) / len(opt):.4f}) over {len(rel)} matrices")
    if report.drift:
        d = report.drift
        extra = f", top-1 agreement {d['top1_agreement']:.1%}" if "top1_agreement" in d else ""
        console.print(f"  output drift at init: {d['max_rel']:.2e} ({d['dtype']}){extra}")
    if report.residual and out is not None:
        console.print("  This adapter belongs to a residual base: load it with inilora.load(base, dir) or "
                      "convert it with `inilora export`.")


@app.command()
def export(
    adapter_dir: Path = typer.Argument(..., help="Adapter folder saved from an inilora model."),
    base: str | None = typer.Option(None, help="The unmodified base (default: the one recorded)."),
    layout: str = typer.Option("plain", help="plain | merged | residual"),
    out: Path = typer.Option(..., help="Output folder."),
    dtype: str | None = typer.Option(None, help="Target dtype (default: the base's)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Convert a saved adapter to a layout that loads without inilora."""
    from .errors import InitError
    from .exports import export as do_export

    try:
        report = do_export(adapter_dir, out, layout, base=base, dtype=dtype, overwrite=overwrite)
    except (InitError, OSError) as exc:
        _fail(exc)
    msg = f"[bold green]wrote[/] {report.out_dir} (layout {report.layout}, {report.dtype})"
    if report.drift is not None:
        msg += f"; drift vs merged {report.drift:.2e}"
    console.print(msg)
    json.dump({"layout": report.layout, "dtype": report.dtype, "drift": report.drift,
               "top1_agreement": report.top1_agreement}, sys.stdout)
    sys.stdout.write("\n")


@app.command()
def compare(
    config: Path = typer.Argument(..., help="A comparison YAML (configs/paper/, configs/embedded/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the runs of the grid and exit."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Override the config's output_dir."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key: base.lora.rank=16 (repeatable)."),
) -> None:
    """Run a grid of methods × seeds × swept settings; resumable; writes results.jsonl and report.md."""
    from .runner import run_compare

    try:
        run_compare(config, dry_run=dry_run, output_dir=output_dir, overrides=parse_options(set_ or []),
                    console=console)
    except (InitError, OSError) as exc:
        _fail(exc)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A grid's output folder (holding results.jsonl)."),
    plots: bool = typer.Option(True, help="Also draw the PNG plots."),
) -> None:
    """Rebuild report.md, summary.json and the plots of a grid from its results.jsonl alone."""
    from rich.console import Console as _Console

    from .report import summary_table, write_report
    from .runner import read_results

    rows = read_results(run_dir)
    if not rows:
        _fail(FileNotFoundError(f"no finished runs in {run_dir / 'results.jsonl'}"))
    path = write_report(run_dir, rows, plots=plots)
    _Console().print(summary_table(rows, title=rows[0].get("title", "results")))
    console.print(f"[bold green]wrote[/] {path}")


@app.command()
def demo(
    out: Path | None = typer.Option(None, "--out", help="Output folder, resumed if it exists "
                                       "(default runs/demo, runs/demo-full with --full)."),
    full: bool = typer.Option(False, "--full", help="The larger version (more data, seeds and steps)."),
    nlu_task: str = typer.Option("offline-topic", help="NLU task: offline-topic or offline-qa-pair."),
    smoke: bool = typer.Option(False, "--smoke", hidden=True, help="Tiny sizes (tests)."),
) -> None:
    """The main job: compare init methods on the embedded models, offline, in minutes; report + plots."""
    from .demo import run_demo

    try:
        run_demo(out, full=full, nlu_task=nlu_task, smoke=smoke, console=console)
    except (InitError, OSError) as exc:
        _fail(exc)


def _set_value(text: str) -> Any:
    """A ``--set`` value: a Python literal (1e-3, [8, 16]), else YAML (true, null), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


@app.command()
def train(
    config: Path = typer.Argument(..., help="A training YAML (e.g. configs/embedded/train-nlu.yaml)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key: lora.rank=16, method=inilora "
                                                                 "(repeatable)."),
    progress: bool = typer.Option(True, help="Show the Trainer's progress bars."),
) -> None:
    """Fine-tune and evaluate one configuration; re-running resumes it, a finished run is shown as stored."""
    from .train import load_config, run

    overrides = {}
    for pair in set_ or []:
        if "=" not in pair:
            _fail(typer.BadParameter(f"--set takes key=value, got {pair!r}"))
        key, value = pair.split("=", 1)
        overrides[key.strip()] = _set_value(value.strip())
    try:
        result = run(load_config(config, overrides), progress=progress)
    except (InitError, OSError) as exc:
        _fail(exc)
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


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
