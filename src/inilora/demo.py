"""``inilora demo``: the main job — init methods compared on the embedded models, offline, in minutes.

Two grids, run with the same runner as ``inilora compare`` (so the demo resumes when re-run and
``inilora report`` rebuilds its report):

- NLU: all-MiniLM-L6-v2 (``embedded:minilm``) on ``offline-topic`` (or ``offline-qa-pair``),
  six methods × 3 seeds;
- NLG: SmolLM2-135M-Instruct (``embedded:smollm2``) SFT on ``offline-arith``, graded on held-out
  problems with the exact GSM8K grader — as many methods as the budget allows (lora, inilora,
  inilora-alpha first).

Sizes were chosen by measuring on 2 CPU cores (README: "the demo"). The inilora fit uses the
``cpu-fused`` engine (``torch`` where no compiler is found) and fewer than the paper's 20000 steps
in the quick demo — it says so when it starts; ``--full`` runs the paper's 20000. The fit is
cached per seed in ``$INILORA_CACHE``: a second demo skips it.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import CompareConfig, GenerationSettings, LoraSettings, TrainConfig

NLU_METHODS = ["lora", "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta-kn"]
NLG_METHODS = ["lora", "inilora", "inilora-alpha", "pissa", "milora", "inilora-beta-kn"]  # by priority
NLU_TASKS = ("offline-topic", "offline-qa-pair")


@dataclass(frozen=True)
class Sizes:
    """Everything the demo's time depends on (quick, full and smoke presets below)."""

    seeds: tuple[int, ...]
    nlu_methods: tuple[str, ...]
    nlu_train: int
    nlu_eval: int
    nlu_epochs: float
    nlu_max_length: int
    nlu_batch: int
    nlg_methods: int  # how many of NLG_METHODS
    nlg_seeds: tuple[int, ...]
    nlg_train: int
    nlg_eval: int
    nlg_steps: int
    nlg_max_length: int
    nlg_new_tokens: int
    nlg_batch: int
    fit_steps: int  # inilora approximation steps (paper: 20000)
    budget_s: float  # no NLG run starts past this (the NLU grid and the first NLG seed always complete)
    engine: str | None = None  # approximation engine; None: cpu-fused on the CPU, torch on a GPU


# Sizes measured on this project's 2-core machine (`inilora demo`, 2 threads, Nov 2026): an NLU run
# (512 examples = 32 steps of 16, 128 evals) 10-13 s when the machine is quiet; an NLG run (8 steps of
# 4, 16 graded problems × 32 new tokens) ≈ 22 s, + ≈ 20 s for each seed's SmolLM2 fit (cpu-fused,
# 4000 steps) and ≈ 20 s once for the SmolLM2 safetensors copy. Quiet total ≈ 8 min; a busier machine
# is bounded by `budget_s`: no NLG run starts after it (the first NLG seed of every method still runs).
QUICK = Sizes(seeds=(0, 11, 22), nlu_methods=tuple(NLU_METHODS), nlu_train=512, nlu_eval=128, nlu_epochs=1,
              nlu_max_length=32, nlu_batch=16, nlg_methods=3, nlg_seeds=(0, 11, 22), nlg_train=32, nlg_eval=16,
              nlg_steps=8, nlg_max_length=96, nlg_new_tokens=32, nlg_batch=4, fit_steps=4000, budget_s=480)
FULL = Sizes(seeds=(0, 11, 22, 33, 44), nlu_methods=tuple(NLU_METHODS), nlu_train=2048, nlu_eval=500, nlu_epochs=2,
             nlu_max_length=64, nlu_batch=16, nlg_methods=6, nlg_seeds=(0, 11, 22, 33, 44), nlg_train=512,
             nlg_eval=200, nlg_steps=64, nlg_max_length=96, nlg_new_tokens=32, nlg_batch=8, fit_steps=20000,
             budget_s=float("inf"))
SMOKE = Sizes(seeds=(0, 1), nlu_methods=("lora", "inilora"), nlu_train=16, nlu_eval=16, nlu_epochs=1,
              nlu_max_length=32, nlu_batch=16, nlg_methods=1, nlg_seeds=(0,), nlg_train=4, nlg_eval=2, nlg_steps=1,
              nlg_max_length=96, nlg_new_tokens=8, nlg_batch=4, fit_steps=20, budget_s=float("inf"), engine="torch")


def _engine(sizes: Sizes) -> str:
    """The engine ``engine="auto"`` picks where the demo trains (cpu-fused on the CPU when its kernel
    builds, triton on a GPU, else torch), resolved up front so the header can say which ran."""
    if sizes.engine:
        return sizes.engine
    import torch

    from .approx import resolve_engine

    return resolve_engine("auto", ["cuda" if torch.cuda.is_available() else "cpu"])


def _fit_options(method: str, sizes: Sizes, engine: str) -> dict[str, Any]:
    return {"steps": sizes.fit_steps, "engine": engine} if method == "inilora" else {}


def configs(out: Path, sizes: Sizes, nlu_task: str = "offline-topic") -> tuple[CompareConfig, CompareConfig]:
    """The demo's two grids."""
    from .config import Variant

    engine = _engine(sizes)
    nlu = CompareConfig(
        base=TrainConfig(model="embedded:minilm", task=nlu_task, train_size=sizes.nlu_train,
                         eval_size=sizes.nlu_eval, max_length=sizes.nlu_max_length, epochs=sizes.nlu_epochs,
                         batch_size=sizes.nlu_batch, learning_rate=3e-3, warmup_ratio=0.06, logging_steps=2,
                         lora=LoraSettings(rank=8), device="auto"),
        methods=list(sizes.nlu_methods), seeds=list(sizes.seeds), output_dir=str(out / "nlu"),
        variants={"inilora": Variant(method="inilora", options=_fit_options("inilora", sizes, engine))},
        title=f"inilora demo — NLU: all-MiniLM-L6-v2 on {nlu_task}")
    nlg_methods = NLG_METHODS[: sizes.nlg_methods]
    nlg = CompareConfig(
        base=TrainConfig(model="embedded:smollm2", task="offline-arith", train_size=sizes.nlg_train,
                         eval_size=sizes.nlg_eval, max_length=sizes.nlg_max_length, max_steps=sizes.nlg_steps,
                         batch_size=sizes.nlg_batch, learning_rate=5e-4, warmup_ratio=0.03, scheduler="cosine",
                         logging_steps=2, lora=LoraSettings(rank=8), device="auto",
                         generation=GenerationSettings(max_new_tokens=sizes.nlg_new_tokens, batch_size=32)),
        methods=nlg_methods, seeds=list(sizes.nlg_seeds), output_dir=str(out / "nlg"),
        variants=({"inilora": Variant(method="inilora", options=_fit_options("inilora", sizes, engine))}
                  if "inilora" in nlg_methods else {}),
        title="inilora demo — NLG: SmolLM2-135M-Instruct on offline-arith (GSM8K-style grading)")
    return nlu, nlg


def run_demo(out: str | Path | None = None, *, full: bool = False, nlu_task: str = "offline-topic",
             smoke: bool = False, console=None, sizes: Sizes | None = None, run_fn=None) -> dict[str, Path]:
    """Run both grids, write their reports, print the terminal summary; returns the report paths."""
    from rich.console import Console

    from .config import ConfigError

    if nlu_task not in NLU_TASKS:
        raise ConfigError(f"--nlu-task must be one of {', '.join(NLU_TASKS)}, got {nlu_task!r}")
    out = Path(out) if out is not None else Path("runs/demo-smoke" if smoke else "runs/demo-full" if full else "runs/demo")
    check_demo_folder(out)  # before the heavy imports: a refusal takes a fraction of a second
    from .report import summary_table, write_report
    from .runner import run_grid

    console = console or Console(stderr=True)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes, once per run
    sizes = sizes or (SMOKE if smoke else FULL if full else QUICK)
    start = time.time()
    nlu, nlg = configs(out, sizes, nlu_task)
    fit = nlu.variants["inilora"].options
    note = "" if fit["steps"] >= 20000 else " (the paper uses 20000; `inilora demo --full` runs them)"
    console.rule("[bold]inilora demo")
    console.print(f"NLU: embedded:minilm on {nlu_task}, {len(nlu.methods)} methods × {len(nlu.seeds)} seeds, "
                  f"{sizes.nlu_train} training examples × {sizes.nlu_epochs:g} epochs\n"
                  f"NLG: embedded:smollm2 on offline-arith, {', '.join(nlg.methods)} × {len(nlg.seeds)} seeds, "
                  f"{sizes.nlg_steps} steps, graded on {sizes.nlg_eval} held-out problems\n"
                  f"inilora fit: {fit['steps']} approximation steps, engine {fit['engine']}{note}; "
                  f"cached per seed in {os.environ.get('INILORA_CACHE', '~/.cache/inilora')}", soft_wrap=True)
    paths: dict[str, Path] = {}
    short: list[str] = []
    stdout = Console()
    for name, grid in (("nlu", nlu), ("nlg", nlg)):
        console.print(f"\n[bold]{grid.title}", soft_wrap=True)
        if name == "nlg":  # the first seed of every NLG method always runs; the other seeds as time allows
            run_grid(replace(grid, seeds=grid.seeds[:1]), run_fn=run_fn, console=console)
        deadline = None if name == "nlu" else start + sizes.budget_s
        rows = run_grid(grid, run_fn=run_fn, console=console, deadline=deadline)
        if not rows:
            continue
        paths[name] = write_report(grid.output_dir, rows, title=grid.title, baseline=grid.baseline)
        stdout.print(summary_table(rows, baseline=grid.baseline, title=grid.title))
        seeds = {m: len({r["seed"] for r in rows if r["method"] == m}) for m in {r["method"] for r in rows}}
        if min(seeds.values()) < 2:
            short.append(f"{name.upper()} has {min(seeds.values())} seed for some methods, so it has no statistics "
                         "(no std, no test against lora)")
    elapsed = time.time() - start
    console.print(f"\n[bold green]demo finished in {elapsed / 60:.1f} min[/]; reports: "
                  + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
    for line in short:  # said plainly, with the way to more seeds
        console.print(f"[yellow]{line}; run `inilora demo` again: it resumes and adds the seeds left out.[/]",
                      soft_wrap=True)
    return paths


def check_demo_folder(out: Path) -> None:
    """A demo folder holds the demo's two grids (``nlu/``, ``nlg/``) or nothing: a folder of the user's
    files is refused before any work, as `train` and `compare` refuse theirs (``outdir.check_run_folder``)."""
    from .config import ConfigError
    from .outdir import check_run_folder

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a folder path")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("nlu", "nlg"))
        if foreign:
            raise ConfigError(f"--out {out} holds files that are not an inilora demo ({', '.join(foreign[:5])}); "
                              "choose a new folder")
    for grid in ("nlu", "nlg"):
        check_run_folder(out / grid, marker="compare.yaml", kind="comparison", error=ConfigError)


def scaled(sizes: Sizes, **changes: Any) -> Sizes:
    """A preset with some sizes changed (benchmarks, tests)."""
    return replace(sizes, **changes)
