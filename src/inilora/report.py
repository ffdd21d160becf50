"""Tables, report files and plots of a grid's ``results.jsonl`` (docs/design.md §6).

Everything here reads result rows only (:mod:`inilora.results`), so ``inilora report RUN_DIR``
rebuilds the report of any grid (finished or not) without the models. The statistics (mean ± std,
paired t-test, Holm) are :mod:`inilora.stats`; this module lays them out for people.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fileio import atomic_write_bytes
from .results import read_results, read_results_noted  # noqa: F401 - read_results re-exported
from .stats import (  # noqa: F401 - re-exported: the report's statistics
    ANY,
    Stat,
    aggregate,
    cells,
    final_rung,
    first_rung,
    forgiveness,
    holm,
    matches,
    mean_std,
    methods_of,
    metrics_of,
    ordered,
    paired_p,
    setting_label,
    sweep_keys,
    tuned,
)

# ------------------------------------------------------------------------------------------------
# tables


def _percent(metric: str, values: Sequence[float]) -> bool:
    """Paper tables print scores ×100; losses, times and counts stay as they are."""
    if re.search(r"loss|perplexity|time|_s$|count|tokens", metric):
        return False
    return all(abs(v) <= 1.0 for v in values)


def _fmt_ms(mean: float, std: float, scale: float) -> str:
    if math.isnan(mean):
        return "—"
    digits = 1 if scale == 100 else 4
    text = f"{round(mean * scale, 9):.{digits}f}"  # float noise rounded away: one value, one printing
    return text + ("" if math.isnan(std) else f" ± {round(std * scale, 9):.{digits}f}")


#: marks a std of exactly 0 over ≥ 2 seeds: a tie (e.g. equal correct counts on a small eval set),
#: not a measured stability
TIE = "‡"


def _fmt_stat(s: Stat, scale: float) -> str:
    text = _fmt_ms(s.mean, s.std, scale)
    return text + (f" {TIE}" if len(s.values) >= 2 and s.std == 0 else "")


def _fmt_seeds(s: Stat, scale: float) -> str:
    digits = 1 if scale == 100 else 4
    return ", ".join(f"{round(v * scale, 9):.{digits}f}" for v in s.values)


def _notes(cell: list[Stat], baseline: str) -> list[str]:
    """Sentences a reader needs to not be misled at small n."""
    notes = []
    if any(len(s.values) >= 2 and s.std == 0 for s in cell):
        notes.append(f"{TIE} std exactly 0: every seed gave the same value (a tie, e.g. of correct counts on a small "
                     "evaluation set), not evidence of stability; more evaluation examples separate them.")
    constant = sorted({s.method for s in cell if len(s.values) >= 2 and s.n_pairs >= 2 and math.isnan(s.p)})
    if constant:
        notes.append(f"{', '.join(constant)}: the same difference to `{baseline}` on every seed, so the paired t-test "
                     "has no variance and gives no p-value (—); more seeds or evaluation examples are needed.")
    single = sorted({s.method for s in cell if len(s.values) < 2})
    if single:
        notes.append(f"{', '.join(single)}: one seed only, so no std and no test against `{baseline}` are possible "
                     "(—); run more seeds (rerunning the grid resumes it and adds them).")
    return notes


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "—"
    mark = "**" if p < 0.01 else "*" if p < 0.05 else ""
    return ("<1e-4" if p < 1e-4 else f"{p:.2g}") + mark


def _fmt_params(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(int(n))


def _params(rows: list[dict], task: str, method: str, setting: tuple) -> Any:
    for r in rows:
        if r["task"] == task and r["method"] == method and matches(r, setting) and "trainable_params" in r:
            return r["trainable_params"]
    return None


def n_eval(rows: list[dict], metric: str) -> str:
    """How many examples a metric was computed on ("n=16"; "n=16–128" when runs differ), or ""."""
    task = metric.split("/", 1)[0] if "/" in metric else None
    ns = set()
    for r in rows:
        counts = r.get("eval_examples") or {}
        n = counts.get(task or r.get("task"))
        if isinstance(n, int) and metric in r.get("metrics", {}):
            ns.add(n)
    if not ns:
        return ""
    return f"n={min(ns)}" if len(ns) == 1 else f"n={min(ns)}–{max(ns)}"


def _head(metric: str, scale: float, rows: list[dict]) -> str:
    parts = (["×100"] if scale == 100 else []) + ([n_eval(rows, metric)] if n_eval(rows, metric) else [])
    return metric + (f" ({', '.join(parts)})" if parts else "")


def markdown_tables(rows: list[dict], stats: list[Stat], baseline: str) -> str:
    """One paper-style table per (task, setting): methods × metrics (mean ± std, Holm p vs baseline)."""
    out: list[str] = []
    for task in dict.fromkeys(s.task for s in stats):
        for setting in dict.fromkeys(s.setting for s in stats if s.task == task):
            cell = [s for s in stats if s.task == task and s.setting == setting]
            metrics = list(dict.fromkeys(s.metric for s in cell))
            methods = list(dict.fromkeys(s.method for s in cell))
            scale = {m: 100.0 if _percent(m, [v for s in cell if s.metric == m for v in s.values]) else 1.0
                     for m in metrics}
            n = max(len(s.values) for s in cell)
            out.append(f"### {task} — {setting_label(setting)}\n")
            header = ["method", "# params"]
            for m in metrics:
                header += [_head(m, scale[m], rows), "per seed", f"p vs {baseline} (Holm)"]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            for method in methods:
                line = [f"**{method}**" if method == baseline else method,
                        _fmt_params(_params(rows, task, method, setting))]
                for m in metrics:
                    s = next((x for x in cell if x.metric == m and x.method == method), None)
                    if s is None:
                        line += ["—", "—", "—"]
                        continue
                    line += [_fmt_stat(s, scale[m]), _fmt_seeds(s, scale[m]),
                             "baseline" if method == baseline else _fmt_p(s.p_holm)]
                out.append("| " + " | ".join(line) + " |")
            seeds = sorted({seed for x in cell for seed in x.seeds})
            out.append(f"\nmean ± std over up to {n} seeds (ddof = 1; per seed: seeds {', '.join(map(str, seeds))} "
                       f"in order); p: paired t-test across seeds against `{baseline}`, Holm-corrected over the "
                       "other methods of this table and metric (* p < 0.05, ** p < 0.01).")
            out.extend(_notes(cell, baseline))
            out.append("")
    return "\n".join(out)


def sweep_tables(stats: list[Stat], rows: list[dict]) -> str:
    """Paper Table 3/4/6 style: headline metric, methods × values of each swept key."""
    keys = sweep_keys(rows)
    out: list[str] = []
    for key in keys:
        for task in dict.fromkeys(s.task for s in stats):
            headline = next((r.get("headline") for r in rows if r["task"] == task and r.get("headline")), None)
            cell = [s for s in stats if s.task == task and s.metric == headline]
            if not cell:
                continue
            others = list(dict.fromkeys(tuple((k, v) for k, v in s.setting if k != key) for s in cell))
            values = list(dict.fromkeys(dict(s.setting)[key] for s in cell))  # ascending: stats.cells orders them
            if len(values) < 2:
                continue
            scale = 100.0 if _percent(headline, [v for s in cell for v in s.values]) else 1.0
            for rest in others:
                title = f"### {task}: {headline} vs `{key}`" + (f" ({setting_label(rest)})" if setting_label(rest) != "default" else "")
                out += [title + "\n", "| method | " + " | ".join(_fmt_value(v) for v in values) + " |",
                        "|---|" + "---|" * len(values)]
                for method in dict.fromkeys(s.method for s in cell):
                    line = [method]
                    for v in values:
                        want = tuple((k, v if k == key else dict(rest)[k]) for k in keys)
                        s = next((x for x in cell if x.method == method and x.setting == want), None)
                        if s is None:
                            line.append("—")
                            continue
                        p = "" if math.isnan(s.p_holm) else f" (p {_fmt_p(s.p_holm)})"
                        line.append(_fmt_ms(s.mean, s.std, scale) + p)
                    out.append("| " + " | ".join(line) + " |")
                out.append("")
    return "\n".join(out)


def tuned_tables(rows: list[dict], baseline: str) -> str:
    """Each method at its own best value of every ``tune`` key of the grid, chosen on the metric
    named there; the choice's evidence (the ``on`` mean at every value) is printed beside it."""
    spec = next((r["tune"] for r in rows if r.get("tune")), {})
    out: list[str] = []
    for key, on in spec.items():
        found = tuned(rows, key, on, baseline)
        for task in dict.fromkeys(t.task for t in found):
            for rest in dict.fromkeys(t.rest for t in found if t.task == task):
                group = [t for t in found if t.task == task and t.rest == rest]
                head = group[0].stat.metric
                scale = 100.0 if _percent(head, [v for t in group for v in t.stat.values]) else 1.0
                on_scale = 100.0 if _percent(on, [v for t in group for v in t.on_means.values()]) else 1.0
                values = ordered(v for t in group for v in t.on_means)  # one axis for every method
                label = setting_label(rest)
                out += [f"### {task}: each method at its own best `{key}`, chosen on {on}"
                        + (f" ({label})" if label != "default" else "") + "\n",
                        f"| method | chosen `{key}` | {on} mean{' ×100' if on_scale == 100 else ''} at "
                        + ", ".join(_fmt_value(v) for v in values)
                        + f" | {_head(head, scale, rows)} at the choice | per seed | p vs {baseline} (Holm) |",
                        "|---|---|---|---|---|---|"]
                for t in group:
                    evidence = ", ".join("—" if v not in t.on_means else
                                         (f"**{t.on_means[v] * on_scale:.1f}**" if v == t.choice
                                          else f"{t.on_means[v] * on_scale:.1f}") for v in values)
                    chosen = _fmt_value(t.choice) + (f" ({t.edge} tried)" if t.edge else "")
                    out.append(f"| {t.method} | {chosen} | {evidence} | {_fmt_stat(t.stat, scale)} | "
                               f"{_fmt_seeds(t.stat, scale)} | "
                               f"{'baseline' if t.method == baseline else _fmt_p(t.stat.p_holm)} |")
                out.append(f"\nThe choice uses {on} only (its mean over seeds); {head} is then read at that value. "
                           f"p: paired t-test across seeds against `{baseline}` at `{baseline}`'s own choice, "
                           "Holm-corrected over the other methods.\n")
                at_edge = [f"{t.method} ({t.edge})" for t in group if t.edge]
                if at_edge:
                    out.append(f"At an end of the range tried: {', '.join(at_edge)} — the best `{key}` may lie "
                               "beyond it, so that row is a bound on the method at its own best, not a measurement "
                               "of it; extend the sweep to settle it.\n")
    return "\n".join(out)


def pinned_rate_notice(rows: list[dict]) -> str:
    """Several methods at one learning rate, not tuned: said in the report's first lines."""
    methods = methods_of(rows)
    tuned_rate = any("learning_rate" in (r.get("tune") or {}) for r in rows)
    swept = any("learning_rate" in r.get("settings", {}) for r in rows)
    if len(methods) < 2 or tuned_rate or swept:
        return ""
    rates = sorted({r["config"]["learning_rate"] for r in rows if isinstance(r.get("config"), dict)
                    and "learning_rate" in r["config"]})
    at = ", ".join(_fmt_value(x) for x in rates) or "one rate"
    return (f"> **Every method ran at the same learning rate ({at}).** Rates favour methods differently: residual "
            "inits want rates 8–32× below LoRA's (docs/results.md, question 2), so this table says mostly whose rate "
            "it is. For each method at its own best rate, chosen on a validation split, add "
            "`tune: {learning_rate: VALIDATION-TASK/METRIC}` to the config (tuned mode; `inilora demo` does).\n")


def verdict(rows: list[dict], baseline: str | None = None) -> str:
    """One honest sentence: who is ahead with each method at its own best rate, and whether it is
    significant (paired t-test by seed, Holm) — or why no test is possible."""
    baseline = baseline or (rows[0].get("baseline", "lora") if rows else "lora")
    spec = next((r["tune"] for r in rows if r.get("tune")), {})
    if "learning_rate" not in spec:
        return ""
    found = [t for t in tuned(rows, "learning_rate", spec["learning_rate"], baseline)]
    if len(found) < 2:
        return "Too few methods finished their race for an own-best comparison yet (run again to resume)."
    task = found[0].task
    rests = list(dict.fromkeys(t.rest for t in found if t.task == task))
    opening = "At each method's own best learning rate (chosen on validation)"
    if len(rests) == 1:
        return f"{opening}, {_verdict([t for t in found if t.task == task], rows, baseline)}"
    # a rate chosen within each value of another swept setting: one sentence per value, named
    return f"{opening} at each setting: " + " ".join(
        f"{setting_label(rest)}: {_verdict([t for t in found if t.task == task and t.rest == rest], rows, baseline)}"
        for rest in rests)


def _verdict(found: list, rows: list[dict], baseline: str) -> str:
    """Who leads one group of own-best choices, by how much, and how significantly (one sentence)."""
    if len(found) < 2:
        return "too few methods have finished here for a comparison yet (run again to resume)."
    group = sorted(found, key=lambda t: -t.stat.mean)
    lead, head = group[0], group[0].stat.metric
    scale = 100.0 if _percent(head, [v for t in group for v in t.stat.values]) else 1.0
    nums = ", ".join(f"{t.method} {round(t.stat.mean * scale, 9):.1f} at {_fmt_value(t.choice)}" for t in group)
    seeds = min(len(t.stat.values) for t in group)
    n = n_eval(rows, head)
    where = f"{head} ({'×100, ' if scale == 100 else ''}{n + ', ' if n else ''}{seeds} seed{'s' * (seeds != 1)})"
    if lead.method == baseline:
        tests = [(t.method, t.stat.p_holm) for t in group[1:]]
    else:
        tests = [(lead.method, lead.stat.p_holm)] if any(t.method == baseline for t in group) else []
    tests = [(m, p) for m, p in tests if not math.isnan(p)]
    ps = ", ".join(f"{m} p = {p:.2g}" for m, p in tests)
    if seeds < 2 or not tests:
        sig = ("no test is possible (fewer than 2 paired seeds, or the same difference on every seed), so this is "
               "not evidence of a difference")
    elif all(p < 0.05 for _, p in tests):
        sig = f"the difference is significant (paired t-test over seeds vs {baseline}, Holm: {ps})"
    elif any(p < 0.05 for _, p in tests):
        sig = f"significant against some methods only (paired t-test over seeds vs {baseline}, Holm: {ps})"
    else:
        sig = f"the difference is not significant (paired t-test over seeds vs {baseline}, Holm: {ps})"
    bound = [t.method for t in group if t.edge]
    edge = f" ({', '.join(bound)}: best rate at the grid's edge, a bound)" if bound else ""
    return f"{lead.method} is ahead on {where}: {nums}; {sig}.{edge}"


def race_section(rows: list[dict]) -> str:
    """What successive halving cost against the full grid, and how forgiving each method is."""
    from .rates import savings

    out: list[str] = []
    spent = savings(rows)
    if spent:
        steps = sorted({r["budget_steps"] for r in rows if "budget_steps" in r})
        out += [f"### What the race cost (successive halving, rungs of {' / '.join(map(str, steps))} steps)\n",
                "| method | rates per rung | optimizer steps (all seeds) | full grid | ratio | CPU s | full grid (est.) |",
                "|---|---|---|---|---|---|---|"]
        tot = [0, 0, 0.0, 0.0]
        for m, d in spent.items():
            out.append(f"| {m} | {' → '.join(map(str, d['per_rung']))} | {d['steps']} | {d['grid_steps']} | "
                       f"{d['steps'] / d['grid_steps']:.2f} | {d['cpu_s']:.0f} | {d['grid_cpu_s']:.0f} |")
            tot = [tot[0] + d["steps"], tot[1] + d["grid_steps"], tot[2] + d["cpu_s"], tot[3] + d["grid_cpu_s"]]
        ratio = f"{tot[2] / tot[3]:.2f}" if tot[3] and not math.isnan(tot[3]) else "—"
        out.append(f"\nAll methods: {tot[0]} of {tot[1]} optimizer steps ({tot[0] / tot[1]:.2f}); CPU time "
                   f"{ratio} of the full grid's estimate (its full runs' mean × rates × seeds; fixed costs — model "
                   "load, grading — do not shrink with the steps). Each rung continues the previous rung's checkpoint of "
                   "the same run (on the full schedule), so it pays only the steps it adds; rungs are ranked on "
                   "validation only.\n")
    spec = next((r["tune"] for r in rows if r.get("tune")), {})
    on = spec.get("learning_rate")
    if on and not spent:
        out.append(replay_table(rows, on))
    if on:
        forg = forgiveness(first_rung(rows), on)
        if forg:
            budget = sorted({r.get("budget_steps") for r in first_rung(rows) if r.get("budget_steps")})
            at = f" at rung 0 ({budget[0]} steps)" if budget else ""
            out += [f"### How forgiving each method is: rates within one standard error of its best{at}\n",
                    f"| method | best rate | range within 1 SE ({on}) | width |", "|---|---|---|---|"]
            for f in forg:
                out.append(f"| {f.method}{f' ({setting_label(f.rest)})' if f.rest else ''} | {_fmt_value(f.best)} | {_fmt_value(f.low)} – {_fmt_value(f.high)} | "
                           f"{'≥ ' if f.at_edge and f.width > 1 else ''}{f.width:.0f}× |")
            out.append("\nWidth 1×: only the best rate is within one SE of it — the method is sensitive to its rate; "
                       "≥: the range reaches an end of the rates tried. SE: std over seeds / √seeds at the best rate.\n")
    return "\n".join(out)


def replay_table(rows: list[dict], on: str, eta: int = 3) -> str:
    """A full grid's answer to "would successive halving have picked the same rates, for how much
    less?": replayed on its own training-loss curves (:func:`inilora.race.replay`)."""
    from .rates import replay

    lengths: dict[int, list[dict]] = {}  # runs of one length race together (a smaller train_size trains fewer steps)
    for r in rows:
        if r.get("train_loss"):
            lengths.setdefault(max(s for s, _ in r["train_loss"]), []).append(r)
    out = [f"### Successive halving replayed on this grid (η = {eta}, one rung; rung metric: training loss)\n",
           "| rung at step | method | race's pick | grid's pick | same | optimizer steps vs grid |",
           "|---|---|---|---|---|---|"]
    found = False
    for full, same_length in sorted(lengths.items()):
        logged = sorted({s for r in same_length for s, _ in r["train_loss"]})
        rungs = list(dict.fromkeys(next((s for s in logged if s >= full / d), full) for d in (6, 3)))
        for step in rungs:
            res = replay(same_length, on, [step], eta)
            for m, d in res.items():
                found = True
                out.append(f"| {step} of {full} | {m} | {_fmt_value(d['race_pick'])} | {_fmt_value(d['grid_pick'])} | "
                           f"{'yes' if d['same'] else '**no**'} | {d['steps'] / d['grid_steps']:.2f} |")
            if res:
                tot = sum(d["steps"] for d in res.values()) / sum(d["grid_steps"] for d in res.values())
                out.append(f"| {step} of {full} | all | | | {sum(d['same'] for d in res.values())}/{len(res)} | "
                           f"{tot:.2f} |")
    out.append("\nThe rows hold no validation score before the end of a run, so the replay's rung ranks rates by "
               "the training loss logged at that step (mean over seeds) — a continued race, each rung resuming the "
               "full run; the finalists are then ranked by validation at the end. `race:` in a config runs a real "
               "one (each rung continues the previous one's checkpoint, ranked on validation).\n")
    return "\n".join(out) if found else ""


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------------
# the report


def _provenance(rows: list[dict]) -> str:
    """Where and when the numbers were measured: a wall time means nothing without its machine."""
    def threads(n: Any) -> str:
        return f"{n} thread" + ("" if n == 1 else "s")

    devices = ", ".join(dict.fromkeys(f"{r['device']} ({threads(r.get('threads', '?'))}, {r.get('precision', '?')})"
                                      for r in rows if r.get("device"))) or "not recorded"
    stamps = sorted(r["finished_at"] for r in rows if r.get("finished_at"))
    when = f"{stamps[0][:16]} – {stamps[-1][:16]} UTC" if stamps else "not recorded"
    libs = list(dict.fromkeys(", ".join(f"{k} {v}" for k, v in r["versions"].items())
                              for r in rows if isinstance(r.get("versions"), dict)))
    text = f"Measured on {devices}; runs finished {when}"
    if len(libs) == 1:
        text += f"; {libs[0]}"
    elif libs:
        text += "; library versions differ between runs: " + " | ".join(libs)
    taken = Counter(str(Path(r["reused_from"]).parent.parent) for r in rows if r.get("reused_from"))
    for source, n in taken.items():
        text += f". {n} of {len(rows)} runs were taken from {source} (`compare --reuse`), as measured there"
    return text + ".\n"


# keys that differ between methods by construction, not by a variant's ``settings``
_BY_METHOD = ("method", "seed", "output_dir", "method_options.")


def _overrides(rows: list[dict], baseline: str) -> str:
    """The training settings in which a method's runs differ from the baseline's of the same task,
    seed and sweep cell (a variant's ``settings``: full fine-tuning at its own rate): a table that
    compares systems at different settings must say so."""
    from .config import flatten

    def pairing(r: dict) -> tuple:  # the baseline run a run is compared with
        return r["task"], r["seed"], json.dumps(r.get("settings", {}), sort_keys=True, default=str)

    base = {pairing(r): flatten(r["config"]) for r in rows
            if r["method"] == baseline and isinstance(r.get("config"), dict)}
    found: dict[str, dict[str, set]] = {}
    for r in rows:
        ref = base.get(pairing(r))
        if r["method"] == baseline or ref is None or not isinstance(r.get("config"), dict):
            continue
        for key, value in flatten(r["config"]).items():
            if not key.startswith(_BY_METHOD) and key not in r.get("settings", {}) and ref.get(key) != value:
                found.setdefault(r["method"], {}).setdefault(key, set()).add(_fmt_value(value))
    if not found:
        return ""
    parts = [f"{m}: " + ", ".join(f"{k} = {' / '.join(sorted(v))}" for k, v in keys.items()) for m, keys in found.items()]
    return f"Settings that differ from the baseline's ({baseline}): " + "; ".join(parts) + ".\n"


def write_report(output_dir: str | Path, rows: list[dict] | None = None, *, title: str | None = None,
                 baseline: str | None = None, plots: bool = True) -> Path:
    """Write ``report.md`` (+ ``summary.json`` and PNG plots) into ``output_dir``; return its path."""
    output_dir = Path(output_dir)
    rows = read_results(output_dir) if rows is None else rows
    if not rows:
        raise FileNotFoundError(f"no finished runs in {output_dir / 'results.jsonl'}")
    baseline = baseline or rows[0].get("baseline", "lora")
    title = title or rows[0].get("title", "inilora comparison")
    full = final_rung(rows)  # a race's shorter rungs only choose; every table reports full runs
    stats = aggregate(full, baseline)
    figures = []
    if plots:
        from .plots import make_plots

        figures = make_plots(full, stats, output_dir / "plots", all_rows=rows)
    seeds = {m: len({r["seed"] for r in full if r["method"] == m}) for m in methods_of(full)}
    seed_text = ("no full run yet" if not seeds else f"{min(seeds.values())} seeds" if len(set(seeds.values())) == 1
                 else "seeds " + ", ".join(f"{m} {n}" for m, n in seeds.items()))
    rungs = f" and {len(rows) - len(full)} shorter race rungs" if len(rows) > len(full) else ""
    lines = [f"# {title}\n",
             (f"{len(full)} finished full runs{rungs}: {len(seeds)} methods, {seed_text}, tasks "
              f"{', '.join(dict.fromkeys(r['task'] for r in rows))}; "
              f"models {', '.join(dict.fromkeys(r.get('model', '?') for r in rows))}.\n"),
             pinned_rate_notice(full), _provenance(rows), _overrides(full, baseline)]
    own_best = tuned_tables(rows, baseline)
    if own_best.strip():
        sentence = verdict(rows, baseline)
        lines += ["## Each method at its own best setting\n"] + ([f"**{sentence}**\n"] if sentence else [])
        lines += [own_best, race_section(rows)]
        lines += ["## At shared settings (second view: one rate for all favours some methods)\n",
                  markdown_tables(full, stats, baseline)]
    else:
        lines += ["## Results\n", markdown_tables(full, stats, baseline)]
    sweeps = sweep_tables(stats, full)
    if sweeps.strip():
        lines += ["## Sweeps\n", sweeps]
    lines += ["## Runs\n", "| run | method | seed | rung | headline | wall (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        head = r.get("headline")
        val = r.get("metrics", {}).get(head)
        rung = f"{r['rung']} ({r.get('budget_steps', '?')} steps)" if r.get("rungs", 1) > 1 else "—"
        lines.append(f"| {r['run_id']} | {r['method']} | {r['seed']} | {rung} | "
                     f"{head}={val:.4g} | {r.get('wall_s', float('nan')):.0f} |" if val is not None else
                     f"| {r['run_id']} | {r['method']} | {r['seed']} | {rung} | — | — |")
    if figures:
        lines += ["\n## Plots\n"] + [f"![{f.stem}](plots/{f.name})" for f in figures]
    skipped = read_results_noted(output_dir)[1]
    if skipped:  # a torn line is never dropped without a word
        lines += ["\n## Skipped lines\n"] + [f"- {note}" for note in skipped]
    path = output_dir / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    _write_summary(output_dir / "summary.json", stats, rows)
    return path


def _write_summary(path: Path, stats: list[Stat], rows: list[dict] | None = None) -> None:
    """The statistics as JSON: a list of cells, or — with a tuned rate — ``{"own_best", "verdict",
    "cells"}`` so a script can read the fair view without parsing the report."""
    def clean(x: float) -> float | None:
        return None if isinstance(x, float) and math.isnan(x) else x

    spec = next((r["tune"] for r in rows or [] if r.get("tune")), {})

    data = [{"task": s.task, "metric": s.metric, "setting": {k: (None if v is ANY else v) for k, v in s.setting},
             "method": s.method, "mean": clean(s.mean), "std": clean(s.std), "n": len(s.values),
             "seeds": s.seeds, "p": clean(s.p), "p_holm": clean(s.p_holm)} for s in stats]
    if "learning_rate" in spec:
        own = [{"task": t.task, "method": t.method, "rate": t.choice, "edge": t.edge or None, "on": t.on,
                "metric": t.stat.metric, "mean": clean(t.stat.mean), "std": clean(t.stat.std), "seeds": t.stat.seeds,
                "p_holm": clean(t.stat.p_holm)} for t in tuned(rows, "learning_rate", spec["learning_rate"])]
        data = {"own_best": own, "verdict": verdict(rows), "cells": data}
    atomic_write_bytes(path, json.dumps(data, indent=1, default=str).encode())


def own_best_table(rows: list[dict], baseline: str | None = None, title: str = "each method at its own best rate"):
    """A rich table (≤ 80 columns) of each method at its own best learning rate: the demo's headline."""
    from rich.table import Table

    baseline = baseline or (rows[0].get("baseline", "lora") if rows else "lora")
    spec = next((r["tune"] for r in rows if r.get("tune")), {})
    found = tuned(rows, "learning_rate", spec["learning_rate"], baseline) if "learning_rate" in spec else []
    head = found[0].stat.metric if found else ""
    scale = 100.0 if found and _percent(head, [v for t in found for v in t.stat.values]) else 1.0
    n = n_eval(rows, head) if found else ""
    table = Table(title=title, caption=(f"{head}{' ×100' if scale == 100 else ''}"
                                        f"{', ' + n if n else ''}; rate chosen on {spec.get('learning_rate', '—')}")
                  if found else "no method has finished its race yet", caption_justify="left")
    rests = list(dict.fromkeys(t.rest for t in found))  # >1: a rate chosen within each value of another setting
    keys = {tuple(k for k, _ in rest) for rest in rests}
    one_key = len(rests) > 1 and len(keys) == 1 and len(next(iter(keys))) == 1  # its name heads the column

    def where(rest: tuple) -> list[str]:
        if len(rests) < 2:
            return []
        return [_fmt_value(rest[0][1]) if one_key else setting_label(rest)]

    heads = ([next(iter(keys))[0].rsplit(".", 1)[-1] if one_key else "setting"] if len(rests) > 1 else [])
    for col in heads + ["method", "rate", "mean ± std", "seeds", f"p vs {baseline}"]:
        table.add_column(col)
    for t in found:
        table.add_row(*where(t.rest), t.method,
                      _fmt_value(t.choice) + (f" ({t.edge})" if t.edge else ""),
                      _fmt_stat(t.stat, scale), str(len(t.stat.values)),
                      "—" if t.method == baseline else _fmt_p(t.stat.p_holm))
    return table


def summary_table(rows: list[dict], stats: list[Stat] | None = None, baseline: str | None = None,
                  title: str = "results", per_seed: bool = True):
    """A rich table of every task's headline metric per method (the terminal summary); columns that
    hold one value only (a single task, no sweep) move into the title."""
    from rich.table import Table

    baseline = baseline or (rows[0].get("baseline", "lora") if rows else "lora")
    rows = final_rung(rows)
    stats = aggregate(rows, baseline) if stats is None else stats
    heads = {t: next((r.get("headline") for r in rows if r["task"] == t), None) for t in {r["task"] for r in rows}}
    shown = [s for s in stats if s.metric == heads.get(s.task)]
    tasks = list(dict.fromkeys(s.task for s in shown))
    settings = list(dict.fromkeys(setting_label(s.setting) for s in shown))
    metrics = list(dict.fromkeys(s.metric for s in shown))
    cols = [c for c, many in (("task", len(tasks) > 1), ("setting", len(settings) > 1), ("metric", len(metrics) > 1))
            if many]
    notes = ([tasks[0]] if len(tasks) == 1 else []) + ([metrics[0]] if len(metrics) == 1 else []) + \
        ([settings[0]] if len(settings) == 1 and settings[0] != "default" else [])
    notes = [n for n in notes if n not in title] + ([n_eval(rows, metrics[0])] if len(metrics) == 1
                                                    and n_eval(rows, metrics[0]) else [])
    scales = {id(s): 100.0 if _percent(s.metric, s.values) else 1.0 for s in shown}
    one_scale = len(set(scales.values())) == 1
    table = Table(title=title + (f" ({', '.join(notes)})" if notes else ""),
                  caption="\n".join(_notes(shown, baseline)) or None, caption_justify="left")
    stat_col = "mean ± std" + (" (×100)" if one_scale and 100.0 in scales.values() else "")
    heads = cols + ["method", "# params", stat_col] + (["per seed"] if per_seed else []) + ["seeds", f"p vs {baseline}"]
    for col in heads:
        table.add_column(col)
    for s in shown:
        scale = scales[id(s)]
        values = {"task": s.task, "setting": setting_label(s.setting), "metric": s.metric}
        table.add_row(*[values[c] for c in cols], s.method, _fmt_params(_params(rows, s.task, s.method, s.setting)),
                      _fmt_stat(s, scale) + (" (×100)" if scale == 100 and not one_scale else ""),
                      *([_fmt_seeds(s, scale)] if per_seed else []), str(len(s.values)),
                      "—" if s.method == baseline else _fmt_p(s.p_holm))
    return table
