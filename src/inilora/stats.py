"""Statistics of result rows (docs/design.md §6), below the report, the plots and the demo.

mean ± std over seeds (ddof = 1); a paired t-test across seeds of each method against the
baseline (runs pair by seed: one seed is one number for init and training); Holm's correction
over the non-baseline methods within one (task, metric, setting) cell; all-zero differences
give p = 1.  A *setting* is one combination of a grid's swept values; a row without a swept key
serves every value of it.  Imports numpy and scipy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ANY = object()  # a setting that does not apply to a run (it serves every value of that key)


# ------------------------------------------------------------------------------------------------
# statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof = 1; NaN for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def paired_p(method: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided paired t-test p-value; 1 when every difference is 0; NaN with < 2 pairs, and NaN when
    every difference is the same non-zero number (no variance: the t statistic is infinite and its
    p = 0 would claim certainty from, say, two seeds that tied on a small evaluation set)."""
    from scipy import stats

    a, b = np.asarray(method, dtype=float), np.asarray(baseline, dtype=float)
    if a.size < 2:
        return math.nan
    d = a - b
    if np.all(d == 0):
        return 1.0
    if np.ptp(d) <= 1e-9 * np.max(np.abs(d)):  # the same difference on every seed (to rounding)
        return math.nan
    with warnings.catch_warnings():  # near-constant differences: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(a, b).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, math.nan)
    m = valid.size
    running = 0.0
    for rank, idx in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


# ------------------------------------------------------------------------------------------------
# aggregation


@dataclass
class Stat:
    task: str
    metric: str
    setting: tuple  # ((key, value), ...) over the grid's sweep keys
    method: str
    values: list[float]
    seeds: list[int]
    mean: float
    std: float
    p: float = math.nan  # paired t-test vs the baseline
    p_holm: float = math.nan
    n_pairs: int = 0


def _key(value: Any) -> Any:
    """Settings read back from JSON: lists become tuples so they can key a cell."""
    return tuple(_key(v) for v in value) if isinstance(value, list) else value


def _setting_order(rest: tuple) -> tuple:
    """Settings in ascending order of their values (numbers before the rest), not as runs finished."""
    return tuple((k, (0, v, "") if numeric([v]) else (1, 0, str(v))) for k, v in rest)


def rest_of(row: dict, key: str) -> tuple:
    """The row's other swept settings than ``key``: a value of ``key`` is chosen *within* each of them
    (a rate per training-set size, per rank), so rows are grouped by it before any choice."""
    return tuple((k, _key(v)) for k, v in sorted(row.get("settings", {}).items()) if k != key)


def cells(rows: list[dict]) -> list[tuple]:
    """Every combination of swept values seen in ``rows`` (a row without a key serves all its values)."""
    keys = sweep_keys(rows)
    seen: dict[str, list] = {k: [] for k in keys}
    for row in rows:
        for k in keys:
            if k in row.get("settings", {}):
                v = _key(row["settings"][k])
                if v not in seen[k]:
                    seen[k].append(v)
    combos = [[]]
    for k in keys:
        combos = [c + [(k, v)] for c in combos for v in (ordered(seen[k]) or [ANY])]
    return [tuple(c) for c in combos]


def sweep_keys(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for k in row.get("sweep_keys", list(row.get("settings", {}))):
            if k not in keys:
                keys.append(k)
    return keys


def matches(row: dict, setting: tuple) -> bool:
    settings = row.get("settings", {})
    return all(k not in settings or _key(settings[k]) == v for k, v in setting)


def methods_of(rows: list[dict], baseline: str | None = None) -> list[str]:
    """Methods in the order the runs first name them, the baseline first: one order for every table
    and plot, whatever order a resumed or split study finished its runs in."""
    out: list[str] = []
    for row in rows:
        if row["method"] not in out:
            out.append(row["method"])
    baseline = baseline or (rows[0].get("baseline") if rows else None)
    return sorted(out, key=lambda m: m != baseline)  # stable: the rest keep their order


def metrics_of(rows: list[dict]) -> list[str]:
    """Metric names, each task's headline first, in the order the runs reported them."""
    out: list[str] = []
    for row in rows:
        for name in [row.get("headline")] + list(row.get("metrics", {})):
            if name and name not in out:
                out.append(name)
    return out


def aggregate(rows: list[dict], baseline: str | None = None) -> list[Stat]:
    """One Stat per (task, metric, setting, method), with the baseline tests filled in."""
    baseline = baseline or (rows[0].get("baseline", "lora") if rows else "lora")
    stats: list[Stat] = []
    order = methods_of(rows, baseline)
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task]
        for setting in cells(trows):
            srows = [r for r in trows if matches(r, setting)]
            for metric in metrics_of(srows):
                group: list[Stat] = []
                for method in order:
                    by_seed = {r["seed"]: float(r["metrics"][metric]) for r in srows
                               if r["method"] == method and metric in r.get("metrics", {})}
                    if not by_seed:
                        continue
                    seeds = sorted(by_seed)
                    values = [by_seed[s] for s in seeds]
                    m, s = mean_std(values)
                    group.append(Stat(task, metric, setting, method, values, seeds, m, s))
                _test(group, baseline)
                stats.extend(group)
    return stats


def _test(group: list[Stat], baseline: str) -> None:
    base = next((g for g in group if g.method == baseline), None)
    if base is None:
        return
    others = [g for g in group if g.method != baseline]
    for g in others:
        common = [s for s in g.seeds if s in base.seeds]
        g.n_pairs = len(common)
        g.p = paired_p([g.values[g.seeds.index(s)] for s in common], [base.values[base.seeds.index(s)] for s in common])
    for g, adj in zip(others, holm([g.p for g in others])):
        g.p_holm = adj


# ------------------------------------------------------------------------------------------------
# each method at its own best value of a swept key


@dataclass
class Tuned:
    """A method at the value of ``key`` that maximised its mean ``on`` metric (never the reported one)."""

    task: str
    rest: tuple  # the other swept settings this choice was made within
    method: str
    key: str
    choice: Any
    on: str
    on_means: dict[Any, float]  # every candidate value → its mean ``on`` metric (the evidence of the choice)
    stat: Stat  # the reported metric at ``choice``, with p vs the baseline at *its* own choice
    tried: list[Any] | None = None  # every value tried (a race's rung 0), when more than the candidates

    @property
    def edge(self) -> str:
        """"lowest" / "highest" when the choice is an end of this method's numeric range (its best
        may lie beyond what was tried: an own-best comparison is then a bound, not a result), else ""."""
        values = list(self.tried or self.on_means)
        if len(values) < 2 or not numeric(values):
            return ""
        return "lowest" if self.choice == min(values) else "highest" if self.choice == max(values) else ""


def tuned(rows: list[dict], key: str, on: str, baseline: str | None = None) -> list[Tuned]:
    """Per-method hyperparameter choice: for each task, other setting and method, the value of the
    swept ``key`` with the highest mean of metric ``on`` over seeds (ties: the smallest value, or the
    first seen for non-numbers);
    then the headline metric at that value, tested (paired by seed, Holm) against the baseline at
    the baseline's own choice. ``on`` should be a validation metric disjoint from the headline's
    examples, or the choice leaks the test set into the result."""
    baseline = baseline or (rows[0].get("baseline", "lora") if rows else "lora")
    out: list[Tuned] = []
    order = methods_of(rows, baseline)
    every = rows
    rows = final_rung(rows)  # a race: the choice is made among the full runs, from every rate tried
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task and key in r.get("settings", {})]
        headline = next((r.get("headline") for r in trows if r.get("headline")), None)
        for rest in sorted(dict.fromkeys(rest_of(r, key) for r in trows), key=_setting_order):
            group: list[Tuned] = []
            srows = [r for r in trows if all(_key(r["settings"].get(k)) == v for k, v in rest)]
            for method in order:
                mrows = [r for r in srows if r["method"] == method and on in r.get("metrics", {})
                         and headline in r.get("metrics", {})]
                values = ordered(_key(r["settings"][key]) for r in mrows)  # not the order runs finished in
                tried = ordered(_key(r["settings"][key]) for r in every if r["method"] == method
                                and r["task"] == task and key in r.get("settings", {}) and rest_of(r, key) == rest)
                if not values or len(tried) < 2:  # run at one value only (a variant's `only`): nothing was chosen
                    continue  # (a race's one finalist was chosen: among every rate tried)
                means = {v: mean_std([r["metrics"][on] for r in mrows if _key(r["settings"][key]) == v])[0]
                         for v in values}
                best = max(values, key=lambda v: (means[v], -values.index(v)))
                by_seed = {r["seed"]: float(r["metrics"][headline]) for r in mrows if _key(r["settings"][key]) == best}
                seeds = sorted(by_seed)
                m, sd = mean_std([by_seed[x] for x in seeds])
                stat = Stat(task, headline, rest + ((key, best),), method, [by_seed[x] for x in seeds], seeds, m, sd)
                group.append(Tuned(task, rest, method, key, best, on, means, stat, tried))
            _test([g.stat for g in group], baseline)
            out.extend(group)
    return out


def final_rung(rows: list[dict]) -> list[dict]:
    """The full runs: a race's (:mod:`inilora.rates`) last rung, and every row of a plain grid."""
    return [r for r in rows if r.get("rung", 0) == r.get("rungs", 1) - 1]


def first_rung(rows: list[dict]) -> list[dict]:
    """Every rate tried, at one budget: a race's rung 0, or every row of a plain grid."""
    return [r for r in rows if r.get("rung", 0) == 0]


@dataclass
class Forgiveness:
    """How forgiving a method is when its rate is not tuned: the rates whose mean ``on`` score lies
    within one standard error (over seeds) of the best rate's mean, as a contiguous range around it."""

    task: str
    method: str
    best: float
    low: float
    high: float
    at_edge: bool  # the range reaches an end of the rates tried: it may be wider
    means: dict[float, tuple[float, float, int]]  # rate → (mean, std, n)
    rest: tuple = ()  # the other swept settings this range was found within (stats.rest_of)

    @property
    def width(self) -> float:
        return self.high / self.low


def forgiveness(rows: list[dict], on: str, key: str = "learning_rate") -> list[Forgiveness]:
    """Per task, other swept setting (:func:`rest_of`) and method, from rows at one budget
    (:func:`first_rung`): the within-1-SE rate range."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task and key in r.get("settings", {}) and on in r.get("metrics", {})]
        for rest in sorted(dict.fromkeys(rest_of(r, key) for r in trows), key=_setting_order):
            srows = [r for r in trows if rest_of(r, key) == rest]
            for method in methods_of(srows):
                mrows = [r for r in srows if r["method"] == method]
                rates = ordered(r["settings"][key] for r in mrows)
                if len(rates) < 2 or not numeric(rates):
                    continue
                stats = {}
                for v in rates:
                    vals = [r["metrics"][on] for r in mrows if r["settings"][key] == v]
                    m, sd = mean_std(vals)
                    stats[v] = (m, sd, len(vals))
                best = max(rates, key=lambda v: (stats[v][0], -rates.index(v)))
                m, sd, n = stats[best]
                se = 0.0 if n < 2 or math.isnan(sd) else sd / math.sqrt(n)
                i = j = rates.index(best)
                while i > 0 and stats[rates[i - 1]][0] >= m - se:
                    i -= 1
                while j < len(rates) - 1 and stats[rates[j + 1]][0] >= m - se:
                    j += 1
                out.append(Forgiveness(task, method, best, rates[i], rates[j], i == 0 or j == len(rates) - 1, stats,
                                       rest))
    return out


def ordered(values: Iterable[Any]) -> list[Any]:
    """A swept key's values for a table's columns or a plot's axis: ascending when all are numbers
    (runs may finish in any order, e.g. one learning rate run first), else as first seen."""
    values = list(dict.fromkeys(values))
    return sorted(values) if numeric(values) else values


def numeric(values: Iterable[Any]) -> bool:
    """All plain numbers (bools are not)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def setting_label(setting: tuple) -> str:
    parts = [f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
             for k, v in setting if v is not ANY]
    return ", ".join(parts) or "default"


__all__ = ["ANY", "Forgiveness", "Stat", "Tuned", "aggregate", "cells", "final_rung", "first_rung", "forgiveness", "holm", "matches", "mean_std", "methods_of", "metrics_of",
           "numeric", "ordered", "paired_p", "rest_of", "setting_label", "sweep_keys", "tuned"]
