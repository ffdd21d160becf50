"""Each method at its own best learning rate, paid for by successive halving (issue 28): the rules.

This module decides from result rows alone (which rates run at which rung, what the race saved,
what a replay on a full grid would have picked); ``runner.race`` runs the cells it names.

At one shared rate a comparison of inits mostly measures whose rate it is (docs/results.md,
question 2: IniLoRA 29 points ahead of LoRA at 1e-3, 39 behind at 8e-3; at each one's own best
LoRA is 3.9 ahead). So ``tune: {learning_rate: VALIDATION-METRIC}`` makes ``compare`` choose every
method's rate on a validation split disjoint from the test split, then score that rate on test.

**Default grids** (one place: :data:`RATE_FACTOR`, :func:`default_grid`). Without a
``sweep.learning_rate`` each method gets 5 rates, a factor 2 apart (16× span), centred on
``base.learning_rate × RATE_FACTOR[method]``: ``base.learning_rate`` is where LoRA's optimum is
expected. Residual inits start with large factors (IniLoRA's entries ≈ 7×, α's ≈ 20× LoRA's A on
SmolLM2), and with Adam one step moves the weight in proportion to them: their measured best rates
were 8× (IniLoRA) and ≥ 32× (IniLoRA-α) below LoRA's (question 2). Methods never measured here
take the factor of the family their factors' size puts them in (one factor zero or both small:
LoRA's; both large, with the residual frozen: IniLoRA's), said so beside them; an unknown one
LoRA's. On NLU (every-init-nlu) every init's best was LoRA's 8e-3: there the families do not
separate, so the factors come from NLG, where they do.

**Successive halving** (``race:`` in the config). Every rate of a method trains rung 0 — the first
``race.first`` (⅙) of the full run's steps (its schedule, warmup and decay, stopped there with a
checkpoint), graded on the validation task only — over *all* seeds (a paired race); the best
``ceil(n/eta)`` rates by mean validation score *continue* their checkpoints (rungs between grow
geometrically); the last rung completes the full run, graded on validation and test, and the
method's pick is its best full run by validation. A pick at an end of the grid adds one rate past
it (×/÷ the grid's step), which races from rung 0, up to ``race.extend`` times; past that the
report calls the row a bound. Every decision is a function of ``results.jsonl`` alone, so an
interrupted race resumes at the rung it was in and the report recomputes the choices.

Why not Optuna's ``SuccessiveHalvingPruner`` or Ray Tune's ASHA: both are *asynchronous* — a trial
is promoted or stopped when it reports, against whichever trials reached the rung before it (the
first one to arrive is never stopped), so the choice would depend on the order runs finish and
could not be recomputed from the rows; their rung state lives in a Study / Tune experiment beside
``results.jsonl``, a second record to keep consistent across a kill; and ASHA wants Tune to own the
training loop and its checkpoints, which the runner's cell loop (and its resume rule) owns here.
The synchronous rule is a sort and a slice; it is all this module adds.

A rung continues the previous rung's checkpoint (``TrainConfig.resume_from``; the rung before it
stopped there with ``stop_at``) rather than restarting with a smaller budget of its own: so a
finalist's last rung is bit for bit the full grid's run at that rate (the race can only lose a rate
the grid would have picked, never score a finalist differently), and a rung costs only the steps it
adds — with η = 3 over 5 rates, 5·⅙ + 2·⅚ = 2.5 full runs of 5 (½); the classic rung 0 at 1/η paid
5·⅓ + 2·⅔ = 3 (0.6), restarting each rung 3.67 (0.73). Rung 0 at ⅙ is the measured choice: replayed
exactly on a validation-ranked NLU grid it kept more of the grid's picks than ⅓ did (3 of 4 vs 2 of 4;
docs/results.md, "A validation-ranked race").
Each rung is still an ordinary cell the runner (or its Ray backend) runs; the continuation is a file
path in its config, checked to be a prefix of the same run. The risk — an early rung may favour
other rates than the full run — is measured, not assumed: :func:`replay` and the demo report it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .config import CompareConfig

#: a method's default rate centre relative to LoRA's (``base.learning_rate``), and why
RATE_FACTOR: dict[str, tuple[float, str]] = {
    "lora": (1.0, "B = 0: the reference"),
    "gaussian": (1.0, "B = 0, like LoRA"),
    "eva": (1.0, "B = 0, like LoRA"),
    "mica": (1.0, "A = 0: nothing to move, like LoRA"),
    "milora": (1.0, "small factors (the minor singular part: RMS 0.005 on MiniLM q/v, IniLoRA's 0.10)"),
    "loftq": (1.0, "small factors without quantization (RMS 0.026 on MiniLM q/v, LoRA's A 0.029)"),
    "inilora": (1 / 8, "measured: best 8× below LoRA's (question 2)"),
    "inilora-alpha": (1 / 32, "measured: best ≥ 32× below LoRA's (question 2)"),
    "inilora-beta-kn": (1 / 8, "residual init of IniLoRA's factor size (not measured: IniLoRA's)"),
    "inilora-beta-ku": (1 / 8, "residual init of IniLoRA's factor size (not measured: IniLoRA's)"),
    "pissa": (1 / 8, "residual init with IniLoRA's factor size (RMS 0.10 on MiniLM q/v; not measured: IniLoRA's)"),
    "olora": (1 / 8, "residual init with large factors (RMS 0.13 / 0.05; not measured: IniLoRA's)"),
    "peft-orthogonal": (1 / 8, "residual init with large factors (RMS 0.07; not measured: IniLoRA's)"),
    "corda": (1 / 8, "residual init with large factors (RMS 0.08 / 0.11; not measured: IniLoRA's)"),
    "lora-ga": (1 / 8, "residual init with gradient-shaped, rescaled factors (not measured: IniLoRA's)"),
}
GRID_POINTS = 5
GRID_STEP = 2.0  # 5 points a factor 2 apart: a 16× span


def rate_factor(method: str) -> float:
    return RATE_FACTOR.get(method, (1.0, ""))[0]


def _clean(rate: float) -> float:
    return float(f"{rate:.3g}")


def default_grid(method: str, centre: float, points: int = GRID_POINTS, step: float = GRID_STEP) -> list[float]:
    """``points`` rates ``step`` apart, centred on ``centre × RATE_FACTOR[method]``."""
    mid = centre * rate_factor(method)
    half = (points - 1) / 2
    return [_clean(mid * step ** (i - half)) for i in range(points)]


def grids(config: CompareConfig) -> dict[str, list[float]]:
    """Each method's starting grid: its variant's ``only.learning_rate`` (rates of the sweep it alone
    runs: methods whose optima lie far apart each get their own), else the config's
    ``sweep.learning_rate``, else its family's default."""
    out = {}
    for label in config.methods:
        variant = config.variants.get(label)
        if variant and "learning_rate" in variant.only:
            out[label] = sorted(variant.only["learning_rate"])
        elif "learning_rate" in config.sweep:
            out[label] = sorted(config.sweep["learning_rate"])
        else:
            out[label] = default_grid(method_of(config, label), config.base.learning_rate, config.race.points,
                                      config.race.step)
    return out


def method_of(config: CompareConfig, label: str) -> str:
    """The registry method (or training mode) behind a comparison label (a variant's or its own name)."""
    variant = config.variants.get(label)
    return variant.method if variant else label


def grid_step(grid: list[float]) -> float:
    """The ratio between neighbouring rates of a grid (its extension goes one such step further)."""
    g = sorted(grid)
    return (g[-1] / g[0]) ** (1 / (len(g) - 1)) if len(g) > 1 and g[0] > 0 else GRID_STEP


# ------------------------------------------------------------------------------------------------
# the race


def rung_steps(full: int, eta: int, rungs: int, first: float | None = None) -> list[int]:
    """Training steps of each rung: the last is the full run. ``first`` is rung 0's share of it, the
    rungs between growing geometrically; None: each rung ``eta``× shorter than the next (classic
    successive halving, where the steps grow by the factor the survivors shrink by)."""
    def steps(exact: float) -> int:  # up to a whole step, but a share written with a few digits (⅙ as
        # 0.1666666667) that lands within a millionth of a step of a whole one means that step
        return max(1, round(exact) if abs(exact - round(exact)) < 1e-6 else math.ceil(exact))

    if first is None or rungs == 1:
        return [steps(full / eta ** (rungs - 1 - k)) for k in range(rungs)]
    return [steps(full * first ** ((rungs - 1 - k) / (rungs - 1))) for k in range(rungs)]


def race_steps(config: CompareConfig) -> list[int]:
    """The training steps of each rung of ``config``'s race."""
    return rung_steps(config.base.max_steps, config.race.eta, config.race.rungs, config.race.first)


def survivors(means: dict[float, float], eta: int) -> list[float]:
    """The best ``ceil(n/eta)`` rates by mean validation score (ties: the lower rate)."""
    keep = math.ceil(len(means) / eta)
    return sorted(sorted(means, key=lambda r: (-means[r], r))[:keep])


def _means(rows: list[dict], label: str, rung: int, on: str, rates: Iterable[float], seeds: list[int]) -> dict | None:
    """Mean ``on`` per rate at ``rung`` over ``seeds``; None until every (rate, seed) has finished."""
    got: dict[tuple, float] = {(r["rate"], r["seed"]): r["metrics"][on] for r in rows
                               if r["method"] == label and r.get("rung") == rung and on in r.get("metrics", {})}
    out = {}
    for rate in rates:
        vals = [got.get((rate, s)) for s in seeds]
        if any(v is None for v in vals):
            return None
        out[rate] = sum(vals) / len(vals)
    return out


def plan(config: CompareConfig, rows: list[dict]) -> tuple[dict[str, list[list[float]]], dict[str, list[float]]]:
    """From the rows so far: per method, the rates of each rung reached so far and its grid (with the
    extensions its picks asked for). A rung whose predecessor is unfinished is not listed yet."""
    on, eta, rungs = config.tune["learning_rate"], config.race.eta, config.race.rungs
    seeds = list(config.seeds)
    out: dict[str, list[list[float]]] = {}
    final_grids: dict[str, list[float]] = {}
    for label, grid in grids(config).items():
        step = grid_step(grid)
        for _ in range(config.race.extend + 1):
            ladder = [sorted(grid)]
            for k in range(1, rungs):
                means = _means(rows, label, k - 1, on, ladder[-1], seeds)
                if means is None:
                    break
                ladder.append(survivors(means, eta) if k < rungs else ladder[-1])
            out[label], final_grids[label] = ladder, grid
            final = _means(rows, label, rungs - 1, on, ladder[-1], seeds) if len(ladder) == rungs else None
            if final is None or len(grid) - len(grids(config)[label]) >= config.race.extend:
                break
            pick = max(final, key=lambda r: (final[r], -r))
            if pick == min(grid):
                grid = sorted(grid + [_clean(pick / step)])
            elif pick == max(grid):
                grid = sorted(grid + [_clean(pick * step)])
            else:
                break
    return out, final_grids


def grid_extensions(config: CompareConfig, rows: list[dict]) -> list[tuple[str, dict[str, Any]]]:
    """A tuned *full* grid (``race: {rungs: 1}`` with a ``sweep.learning_rate``) grows past an edge as
    the race does: once a method's grid has finished at every rate and seed, a pick (the best mean of
    ``tune.learning_rate``, :func:`inilora.stats.tuned`) at an end of the rates tried adds the rate one
    grid step past it, up to ``race.extend`` rates beyond the method's grid — otherwise its row would
    be a bound, not its own best. A rate past the grid that some seeds lack (a grid stopped while it
    ran) is finished before anything is picked again: a pick on some of the seeds would decide what
    the rest never run. Returns (label, swept cell) for each rate to add, over every seed."""
    from .stats import matches, tuned

    if "learning_rate" not in config.tune or "learning_rate" not in config.sweep or config.race.extend < 1:
        return []
    on, seeds = config.tune["learning_rate"], set(config.seeds)
    out: list[tuple[str, dict[str, Any]]] = []
    for t in tuned(rows, "learning_rate", on, config.baseline):
        if t.method not in config.methods:
            continue
        grid = grids(config)[t.method]
        mine = [r for r in rows if r["method"] == t.method and r["task"] == t.task and on in r.get("metrics", {})
                and matches(r, t.rest)]
        tried = sorted({r["settings"]["learning_rate"] for r in mine})
        swept = {k: [v for v in config.sweep[k] if matches({"settings": {k: v}}, t.rest)]
                 for k in config.sweep if k != "learning_rate"}
        if not all(swept.values()):
            continue  # rows of a setting this config no longer sweeps
        unfinished = [rate for rate in tried + grid if {r["seed"] for r in mine if r["settings"]["learning_rate"] == rate}
                      < seeds]
        if unfinished:  # a rate still running (or stopped by a deadline, or killed): the pick may move
            add = [rate for rate in unfinished if rate not in grid]  # an extension begun: finish it first
        elif not t.edge or sum(rate not in grid for rate in tried) >= config.race.extend:
            continue  # inside its rates, or at the limit: the report calls the row a bound
        else:
            step = grid_step(grid)
            add = [_clean(t.choice / step if t.edge == "lowest" else t.choice * step)]
        for rate in add:
            cell = {k: rate if k == "learning_rate" else swept[k][0] for k in config.sweep}
            if (t.method, cell) not in out:  # several evaluation tasks may ask for the same rate
                out.append((t.method, cell))
    return out


# ------------------------------------------------------------------------------------------------
# what it cost, and what the full grid would have picked


def savings(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per method: optimizer steps the race trained (over seeds) vs the full grid over the same rates,
    CPU seconds likewise (the full grid's estimated from the full runs' mean)."""
    out: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r["method"] for r in rows if r.get("rungs", 1) > 1):
        mine = [r for r in rows if r["method"] == label and r.get("rungs", 1) > 1]
        rungs = mine[0]["rungs"]
        full = [r for r in mine if r["rung"] == rungs - 1]
        full_steps = max((r["budget_steps"] for r in mine), default=0)
        rates = sorted({r["rate"] for r in mine if r["rung"] == 0})
        seeds = sorted({r["seed"] for r in mine})
        steps = sum(r["budget_steps"] - r.get("start_step", 0) for r in mine)  # a rung pays the steps it adds
        grid_steps = len(rates) * len(seeds) * full_steps
        cpu = sum(r.get("cpu_s", 0.0) for r in mine)
        # a full run continued rung by rung cost its whole chain: the rungs of its rate and seed up to the last
        # (a rate in the last rung ran every rung before it at that seed: its rows are the chain)
        chain = [sum(x.get("cpu_s", 0.0) for x in mine if (x["rate"], x["seed"]) == (r["rate"], r["seed"]))
                 if r.get("start_step", 0) else r.get("cpu_s", 0.0) for r in full]
        full_cpu = (sum(chain) / len(chain) * len(rates) * len(seeds)) if chain else math.nan
        out[label] = {"rates": len(rates), "seeds": len(seeds),
                      "per_rung": [len({r["rate"] for r in mine if r["rung"] == k}) for k in range(rungs)],
                      "steps": steps, "grid_steps": grid_steps, "cpu_s": cpu, "grid_cpu_s": full_cpu}
    return out


def replay(rows: list[dict], on: str, rung_steps_: list[int], eta: int = 3) -> dict[str, dict[str, Any]]:
    """Successive halving replayed on a finished full grid whose rows carry no validation curve: the
    rung metric is the training loss at each rung's step (lower is better; ``train_loss`` is logged
    along every run, mean over seeds), the last rung is the full run's ``on`` (validation) — so it
    is a *continued*, not a restarted, race. Returns per method the race's pick, the grid's pick
    and the compute (optimizer steps) of each.

    A grid that sweeps another setting too (``train_size``, ``lora.rank``) chose a rate within each of
    its values, so it is replayed within each: keyed "method (setting)" there, and each group's runs
    end at their own last step (a smaller training set trains fewer steps). A rung past a group's end
    is no rung for it (its rates run whole)."""
    from .stats import rest_of, setting_label

    out: dict[str, dict[str, Any]] = {}
    key = "learning_rate"
    mine_all = [r for r in rows if key in r.get("settings", {}) and on in r.get("metrics", {})]
    groups: dict[tuple, list[dict]] = {}
    for r in mine_all:
        groups.setdefault((r["method"], r["task"], rest_of(r, key)), []).append(r)
    tasks = {task for _, task, _ in groups}
    for (label, task, rest), mine in groups.items():
        rates = sorted({r["settings"][key] for r in mine})
        if len(rates) < 2:
            continue
        seeds = sorted({r["seed"] for r in mine})
        full = max(max(s for s, _ in r["train_loss"]) for r in mine)

        def at(rate: float, step: int, mine=mine) -> float:
            vals = [next(v for s, v in r["train_loss"] if s >= step) for r in mine if r["settings"][key] == rate]
            return sum(vals) / len(vals)

        def val(rate: float, mine=mine) -> float:
            vals = [r["metrics"][on] for r in mine if r["settings"][key] == rate]
            return sum(vals) / len(vals)

        alive, spent, last = rates, 0, 0
        for step in (s for s in rung_steps_ if s < full):
            spent += len(alive) * (step - last) * len(seeds)
            last = step
            alive = survivors({r: -at(r, step) for r in alive}, eta)
        spent += len(alive) * (full - last) * len(seeds)
        pick = max(alive, key=lambda r: (val(r), -r))
        grid_pick = max(rates, key=lambda r: (val(r), -r))
        where = [setting_label(rest)] if rest else []
        where = [task, *where] if len(tasks) > 1 else where
        name = f"{label} ({', '.join(where)})" if where else label
        out[name] = {"race_pick": pick, "grid_pick": grid_pick, "same": pick == grid_pick, "steps": spent,
                     "grid_steps": len(rates) * full * len(seeds), "finalists": alive}
    return out


__all__ = ["GRID_POINTS", "GRID_STEP", "RATE_FACTOR", "default_grid", "grid_extensions", "grid_step", "grids",
           "method_of", "plan", "race_steps", "rate_factor", "replay", "rung_steps", "savings", "survivors"]
