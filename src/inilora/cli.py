"""The ``inilora`` command: a thin typer layer over the public Python API."""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

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
    console.print(f"[bold red]error:[/] {exc}")
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
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha; default r (s = 1, as the paper's scripts)."),
    targets: Optional[List[str]] = typer.Option(None, "--targets", help="Target module names (default: q/v)."),
    seed: int = typer.Option(0, help="Seed of the random draws."),
    out: Path = typer.Option(..., help="Folder for the ready-to-train adapter."),
    steps: Optional[int] = typer.Option(None, help="inilora: approximation steps (default 20000)."),
    engine: Optional[str] = typer.Option(None, help="inilora: approximation engine."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Method option key=value (repeatable)."),
    use_rslora: bool = typer.Option(False, help="rsLoRA scaling alpha/√r."),
    dtype: Optional[str] = typer.Option(None, help="Load the base in this dtype (float32, bfloat16, ...)."),
    residual_dtype: Optional[str] = typer.Option(None, help="Keep replaced base weights in this dtype."),
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
    peft_model.save_pretrained(str(out))
    _print_report(peft_model.inilora_report, out)


@app.command()
def approximate(
    model: str = typer.Option(..., help="Hub name, local folder or embedded:smollm2 / embedded:minilm."),
    rank: int = typer.Option(8, "--rank", "-r", help="LoRA rank r."),
    targets: Optional[List[str]] = typer.Option(None, "--targets", help="Target module names (default: q/v)."),
    seed: int = typer.Option(0, help="Seed of the initial factors."),
    steps: int = typer.Option(20000, help="Approximation steps."),
    checkpoints: Optional[str] = typer.Option(None, help="Also cache these iterations, e.g. 100,1000,4000."),
    engine: Optional[str] = typer.Option(None, help="Approximation engine."),
    device: Optional[str] = typer.Option(None, help="Run the fit on this device (cpu, cuda, cuda:1)."),
    dtype: Optional[str] = typer.Option(None, help="Load the base in this dtype."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Method option key=value (repeatable)."),
    report: Optional[Path] = typer.Option(None, help="Write the per-matrix report (JSON) here."),
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
    base: Optional[str] = typer.Option(None, help="The unmodified base (default: the one recorded)."),
    layout: str = typer.Option("plain", help="plain | merged | residual"),
    out: Path = typer.Option(..., help="Output folder."),
    dtype: Optional[str] = typer.Option(None, help="Target dtype (default: the base's)."),
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


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
