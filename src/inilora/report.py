"""Tables, report files and plots of a grid's ``results.jsonl`` (SPEC §6).

Everything here reads result rows only (:mod:`inilora.results`), so ``inilora report RUN_DIR``
rebuilds the report of any grid (finished or not) without the models. The statistics (mean ± std,
paired t-test, Holm) are :mod:`inilora.stats`; this module lays them out for people.
"""

from __future__ import annotations

import json
import math
import re
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
    holm,
    matches,
    mean_std,
    methods_of,
    metrics_of,
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
    text = f"{mean * scale:.{digits}f}"
    return text + ("" if math.isnan(std) else f" ± {std * scale:.{digits}f}")


#: marks a std of exactly 0 over ≥ 2 seeds: a tie (e.g. equal correct counts on a small eval set),
#: not a measured stability
TIE = "‡"


def _fmt_stat(s: Stat, scale: float) -> str:
    text = _fmt_ms(s.mean, s.std, scale)
    return text + (f" {TIE}" if len(s.values) >= 2 and s.std == 0 else "")


def _fmt_seeds(s: Stat, scale: float) -> str:
    digits = 1 if scale == 100 else 4
    return ", ".join(f"{v * scale:.{digits}f}" for v in s.values)


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
                header += [f"{m}{' (×100)' if scale[m] == 100 else ''}", "per seed", f"p vs {baseline} (Holm)"]
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
                values = list(dict.fromkeys(v for t in group for v in t.on_means))  # ascending: stats.tuned orders them
                label = setting_label(rest)
                out += [f"### {task}: each method at its own best `{key}`, chosen on {on}"
                        + (f" ({label})" if label != "default" else "") + "\n",
                        f"| method | chosen `{key}` | {on} mean{' ×100' if on_scale == 100 else ''} at "
                        + ", ".join(_fmt_value(v) for v in values)
                        + f" | {head}{' ×100' if scale == 100 else ''} at the choice | per seed | p vs {baseline} (Holm) |",
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
    versions = next((r["versions"] for r in rows if r.get("versions")), {})
    libs = ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict) else ""
    return f"Measured on {devices}; runs finished {when}" + (f"; {libs}" if libs else "") + ".\n"


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
    stats = aggregate(rows, baseline)
    figures = []
    if plots:
        from .plots import make_plots

        figures = make_plots(rows, stats, output_dir / "plots")
    lines = [f"# {title}\n",
             (f"{len(rows)} finished runs: {len(methods_of(rows))} methods, "
             f"{len({r['seed'] for r in rows})} seeds, tasks {', '.join(dict.fromkeys(r['task'] for r in rows))}; "
             f"models {', '.join(dict.fromkeys(r.get('model', '?') for r in rows))}.\n"),
             _provenance(rows), _overrides(rows, baseline),
             "## Results\n", markdown_tables(rows, stats, baseline)]
    sweeps = sweep_tables(stats, rows)
    if sweeps.strip():
        lines += ["## Sweeps\n", sweeps]
    own_best = tuned_tables(rows, baseline)
    if own_best.strip():
        lines += ["## Each method at its own best setting\n", own_best]
    lines += ["## Runs\n", "| run | method | seed | " + "headline | wall (s) |", "|---|---|---|---|---|"]
    for r in rows:
        head = r.get("headline")
        val = r.get("metrics", {}).get(head)
        lines.append(f"| {r['run_id']} | {r['method']} | {r['seed']} | "
                     f"{head}={val:.4g} | {r.get('wall_s', float('nan')):.0f} |" if val is not None else
                     f"| {r['run_id']} | {r['method']} | {r['seed']} | — | — |")
    if figures:
        lines += ["\n## Plots\n"] + [f"![{f.stem}](plots/{f.name})" for f in figures]
    skipped = read_results_noted(output_dir)[1]
    if skipped:  # a torn line is never dropped without a word
        lines += ["\n## Skipped lines\n"] + [f"- {note}" for note in skipped]
    path = output_dir / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    _write_summary(output_dir / "summary.json", stats)
    return path


def _write_summary(path: Path, stats: list[Stat]) -> None:
    def clean(x: float) -> float | None:
        return None if isinstance(x, float) and math.isnan(x) else x

    data = [{"task": s.task, "metric": s.metric, "setting": {k: (None if v is ANY else v) for k, v in s.setting},
             "method": s.method, "mean": clean(s.mean), "std": clean(s.std), "n": len(s.values),
             "seeds": s.seeds, "p": clean(s.p), "p_holm": clean(s.p_holm)} for s in stats]
    atomic_write_bytes(path, json.dumps(data, indent=1, default=str).encode())


def summary_table(rows: list[dict], stats: list[Stat] | None = None, baseline: str | None = None,
                  title: str = "results"):
    """A rich table of every task's headline metric per method (the terminal summary); columns that
    hold one value only (a single task, no sweep) move into the title."""
    from rich.table import Table

    baseline = baseline or (rows[0].get("baseline", "lora") if rows else "lora")
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
    notes = [n for n in notes if n not in title]
    scales = {id(s): 100.0 if _percent(s.metric, s.values) else 1.0 for s in shown}
    one_scale = len(set(scales.values())) == 1
    table = Table(title=title + (f" ({', '.join(notes)})" if notes else ""),
                  caption="\n".join(_notes(shown, baseline)) or None, caption_justify="left")
    stat_col = "mean ± std" + (" (×100)" if one_scale and 100.0 in scales.values() else "")
    for col in cols + ["method", "# params", stat_col, "per seed", "n", f"p vs {baseline} (Holm)"]:
        table.add_column(col)
    for s in shown:
        scale = scales[id(s)]
        values = {"task": s.task, "setting": setting_label(s.setting), "metric": s.metric}
        table.add_row(*[values[c] for c in cols], s.method, _fmt_params(_params(rows, s.task, s.method, s.setting)),
                      _fmt_stat(s, scale) + (" (×100)" if scale == 100 and not one_scale else ""),
                      _fmt_seeds(s, scale), str(len(s.values)), "—" if s.method == baseline else _fmt_p(s.p_holm))
    return table
