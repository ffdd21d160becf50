"""``inilora demo``: the main job — init methods compared fairly on the embedded models, offline, in minutes.

Run with the same runner as ``inilora compare`` (so the demo resumes when re-run and
``inilora report`` rebuilds its report):

- NLG, first and always: SmolLM2-135M-Instruct (``embedded:smollm2``) SFT on ``offline-arith``,
  **each method at its own best learning rate** — raced over its own grid by successive halving
  (:mod:`inilora.rates`), chosen on ``offline-arith-val``, graded on the disjoint test problems with
  the exact GSM8K grader. The summary ends with one sentence: who is ahead, and whether it is
  significant.
- NLU: all-MiniLM-L6-v2 (``embedded:minilm``) on ``offline-topic`` (or ``offline-qa-pair``) at one
  shared rate — those tasks have one held-out split, so no rate can be chosen fairly on them; its
  report says so. The quick demo runs it only when its time budget leaves room (``--full`` always).

Sizes were chosen by measuring on 2 CPU cores (README: "the demo"). The inilora fit uses the
``cpu-fused`` engine (``torch`` where no compiler is found) and fewer than the paper's 20000 steps
in the quick demo — it says so when it starts; ``--full`` runs the paper's 20000. The fit is
cached per seed in ``$INILORA_CACHE``: a second demo skips it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import CompareConfig, GenerationSettings, LoraSettings, RaceSettings, TrainConfig

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
    nlg_eval: int  # test problems, and validation problems the rates are chosen on (as many)
    nlg_steps: int  # the full run; the race's first rung trains steps / race_eta
    nlg_max_length: int
    nlg_new_tokens: int
    nlg_batch: int
    fit_steps: int  # inilora approximation steps (paper: 20000)
    budget_s: float  # no run starts past this; the NLU grid starts only with nlu_min_s of it left
    engine: str | None = None  # approximation engine; None: cpu-fused on the CPU, torch on a GPU
    nlg_lr: float = 8e-3  # LoRA's grid centre (measured best at 24 steps: docs/results.md question 2)
    rate_points: int = 3  # rates per method, rate_step apart: 3 × 4 = a 16× span
    rate_step: float = 4.0
    race_eta: int = 3
    race_rungs: int = 2
    race_first: float = 1 / 3  # rung 0 = the first third: at the quick demo's 12 steps, ⅙ would be 2 steps
    race_extend: int = 0  # the quick demo calls an edge pick a bound instead of spending ~2 min past it
    nlu: bool = True  # run the shared-rate NLU grid (as the budget allows)
    nlu_min_s: float = 0.0


# Sizes measured on this project's 2-core machine (README, "the demo": 8 min 51 s, fresh cache, the
# whole NLG race). NLG: rung 0 = the first 4 of 12 steps graded on 32 validation problems; the best
# third continues to 12 steps, graded on 32 validation + 32 test problems; 2 methods × 3 rates × 3
# seeds at rung 0 (≈ 27 s each on one thread, two at a time), 1 rate per method continued (≈ 55 s
# each), the fits (≈ 25 s per seed) and the one-time model copy (≈ 30 s). No run starts past budget_s.
QUICK = Sizes(seeds=(0, 11, 22), nlu_methods=("lora", "inilora", "inilora-alpha"), nlu_train=512, nlu_eval=128,
              nlu_epochs=1, nlu_max_length=32, nlu_batch=16, nlg_methods=2, nlg_seeds=(0, 11, 22), nlg_train=48,
              nlg_eval=32, nlg_steps=12, nlg_max_length=96, nlg_new_tokens=32, nlg_batch=4, fit_steps=4000,
              budget_s=540, nlu_min_s=150)
FULL = Sizes(seeds=(0, 11, 22, 33, 44), nlu_methods=tuple(NLU_METHODS), nlu_train=2048, nlu_eval=500, nlu_epochs=2,
             nlu_max_length=64, nlu_batch=16, nlg_methods=3, nlg_seeds=(0, 11, 22, 33, 44), nlg_train=256,
             nlg_eval=200, nlg_steps=24, nlg_max_length=96, nlg_new_tokens=32, nlg_batch=4, fit_steps=20000,
             budget_s=float("inf"), rate_points=5, rate_step=2.0, race_extend=1)
SMOKE = Sizes(seeds=(0, 1), nlu_methods=("lora", "inilora"), nlu_train=16, nlu_eval=16, nlu_epochs=1,
              nlu_max_length=32, nlu_batch=16, nlg_methods=2, nlg_seeds=(0, 1), nlg_train=4, nlg_eval=2, nlg_steps=3,
              nlg_max_length=96, nlg_new_tokens=8, nlg_batch=4, fit_steps=20, budget_s=float("inf"), engine="torch",
)


def _engine(sizes: Sizes) -> str:
    """The engine ``engine="auto"`` picks where the demo trains (cpu-fused on the CPU when its kernel
    builds, triton on a GPU, else torch), resolved up front so the header can say which ran."""
    if sizes.engine:
        return sizes.engine
    import torch

    from .approx import resolve_engine

    return str(resolve_engine("auto", ["cuda" if torch.cuda.is_available() else "cpu"]))  # a name for the config


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
        title=f"inilora demo — NLU: all-MiniLM-L6-v2 on {nlu_task}, one shared rate")
    nlg_methods = NLG_METHODS[: sizes.nlg_methods]
    nlg = CompareConfig(
        base=TrainConfig(model="embedded:smollm2", task="offline-arith", train_size=sizes.nlg_train,
                         eval_size=sizes.nlg_eval, max_length=sizes.nlg_max_length, max_steps=sizes.nlg_steps,
                         batch_size=sizes.nlg_batch, learning_rate=sizes.nlg_lr, warmup_ratio=0.03,
                         scheduler="cosine", logging_steps=2, lora=LoraSettings(rank=8), device="auto",
                         eval_tasks=["offline-arith-test", "offline-arith-val"],
                         generation=GenerationSettings(max_new_tokens=sizes.nlg_new_tokens, batch_size=32)),
        methods=nlg_methods, seeds=list(sizes.nlg_seeds), output_dir=str(out / "nlg"),
        variants=({"inilora": Variant(method="inilora", options=_fit_options("inilora", sizes, engine))}
                  if "inilora" in nlg_methods else {}),
        tune={"learning_rate": "offline-arith-val/accuracy"},
        race=RaceSettings(eta=sizes.race_eta, rungs=sizes.race_rungs, first=sizes.race_first, extend=sizes.race_extend,
                          points=sizes.rate_points, step=sizes.rate_step),
        title="inilora demo — NLG: SmolLM2-135M-Instruct on offline-arith, each method at its own best rate")
    return nlu, nlg


def demo_backend():
    """Two runs side by side, half the cores each, on a CPU with ≥ 2 cores: the demo's small runs use
    threads poorly, and two one-thread runs finish ≈ 1.5× sooner than one after another on two threads
    (:class:`~inilora.backends.Processes`); one at a time on a GPU (it has one device)."""
    import torch

    from .backends import InProcess, Processes, cores

    if torch.cuda.is_available() or cores() < 2:
        return InProcess()
    return Processes(workers=2, threads=cores() // 2)


def run_demo(out: str | Path | None = None, *, full: bool = False, nlu_task: str = "offline-topic",
             smoke: bool = False, console=None, sizes: Sizes | None = None, run_fn=None,
             backend=None) -> dict[str, Path]:
    """Run the fair NLG comparison (and the NLU grid as the budget allows), write their reports,
    print the terminal summary and the one-sentence finding; returns the report paths. ``backend``:
    where the runs execute (default :func:`demo_backend`; a ``run_fn`` given must then be picklable)."""
    from rich.console import Console

    from .config import ConfigError

    if nlu_task not in NLU_TASKS:
        raise ConfigError(f"--nlu-task must be one of {', '.join(NLU_TASKS)}, got {nlu_task!r}")
    out = Path(out) if out is not None else Path("runs/demo-smoke" if smoke else "runs/demo-full" if full else "runs/demo")
    check_demo_folder(out)  # before the heavy imports: a refusal takes a fraction of a second
    from .rates import default_grid, method_of, rung_steps
    from .report import own_best_table, summary_table, verdict, write_report
    from .runner import run_grid

    console = console or Console(stderr=True)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes, once per run
    sizes = sizes or (SMOKE if smoke else FULL if full else QUICK)
    start = time.time()
    backend = backend or demo_backend()
    nlu, nlg = configs(out, sizes, nlu_task)
    fit = nlg.variants["inilora"].options if "inilora" in nlg.variants else nlu.variants["inilora"].options
    note = "" if fit["steps"] >= 20000 else " (the paper uses 20000; `inilora demo --full` runs them)"
    rungs = rung_steps(sizes.nlg_steps, sizes.race_eta, sizes.race_rungs, sizes.race_first)
    grids = "; ".join(f"{m} " + ", ".join(f"{r:g}" for r in default_grid(method_of(nlg, m), sizes.nlg_lr,
                                                                         sizes.rate_points, sizes.rate_step))
                      for m in nlg.methods)
    console.rule("[bold]inilora demo")
    console.print(f"NLG: embedded:smollm2 on offline-arith, {', '.join(nlg.methods)}, each at its own best "
                  f"learning rate, up to {len(nlg.seeds)} seeds as time allows\n"
                  f"  rates ({grids}) raced on {min(sizes.nlg_eval, 100)} validation problems: every rate {rungs[0]} step{'s' * (rungs[0] != 1)}, "
                  f"the best 1/{sizes.race_eta} continue to the full {rungs[-1]}; graded on {sizes.nlg_eval} test problems\n"
                  + (f"{backend.workers} runs at a time, {backend.threads} thread{'s' * (backend.threads != 1)} each\n"
                     if getattr(backend, "workers", 1) > 1 else "") +
                  f"inilora fit: {fit['steps']} approximation steps, engine {fit['engine']}{note}; "
                  f"cached per seed in {os.environ.get('INILORA_CACHE', '~/.cache/inilora')}", soft_wrap=True)
    paths: dict[str, Path] = {}
    short: list[str] = []
    stdout = Console(width=80)
    deadline = start + sizes.budget_s
    console.print(f"\n[bold]{nlg.title}", soft_wrap=True)
    rows = run_grid(nlg, run_fn=run_fn, console=console, deadline=deadline, backend=backend)
    sentence = ""
    if rows:
        paths["nlg"] = write_report(nlg.output_dir, rows, title=nlg.title, baseline=nlg.baseline)
        stdout.print(own_best_table(rows, baseline=nlg.baseline, title="NLG: each method at its own best rate"))
        sentence = verdict(rows, nlg.baseline)
    left = deadline - time.time()
    if sizes.nlu and left >= sizes.nlu_min_s:
        console.print(f"\n[bold]{nlu.title}", soft_wrap=True)
        nrows = run_grid(nlu, run_fn=run_fn, console=console, deadline=None if math.isinf(left) else deadline,
                         backend=backend)
        if nrows:
            paths["nlu"] = write_report(nlu.output_dir, nrows, title=nlu.title, baseline=nlu.baseline)
            stdout.print(summary_table(nrows, baseline=nlu.baseline, title=nlu.title, per_seed=False))
            seeds = {m: len({r["seed"] for r in nrows if r["method"] == m}) for m in {r["method"] for r in nrows}}
            if min(seeds.values()) < 2:
                short.append(f"NLU has {min(seeds.values())} seed for some methods, so it has no statistics")
    elif sizes.nlu:
        console.print(f"\nNLU grid skipped: {max(left, 0) / 60:.1f} min of the demo's budget left "
                      "(`inilora demo --full` runs it)", soft_wrap=True)
    elapsed = time.time() - start
    console.print(f"\n[bold green]demo finished in {elapsed / 60:.1f} min[/]; reports: "
                  + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
    for line in short:  # said plainly, with the way to more seeds
        console.print(f"[yellow]{line}; run `inilora demo` again: it resumes and adds the seeds left out.[/]",
                      soft_wrap=True)
    if sentence:
        stdout.print(f"\n[bold]Finding:[/] {sentence}", highlight=False)
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
