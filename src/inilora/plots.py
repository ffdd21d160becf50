"""PNG plots of a grid's results (matplotlib, Agg: no display needed).

Analogues of the paper's figures: training loss per method (Fig. 5), metric vs a swept setting
(Fig. 2 approximation steps, Fig. 3 init std, Fig. 6 learning rate, rank, data size), headline per
method (Fig. 4, distributions), and the approximation loss vs iteration of inilora runs.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np

from .fileio import atomic_write

MAX_PANELS = 12


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write (one resolution for every plot of a report) and release the figure."""
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))
    _plt().close(fig)
    return path


def _wrap(title: str, fig, fontsize: float = 10) -> str:
    """A title broken into lines that fit the figure's width (one too long is cut at both edges)."""
    chars = int(fig.get_figwidth() * 72 / (fontsize * 0.6))
    return "\n".join(textwrap.wrap(title, max(20, chars)))


def _sensitivity(rows: list[dict], out_dir: Path) -> list[Path]:
    """Validation score vs learning rate per method (mean ± std over seeds), at one budget: a race's
    rung 0 (every rate tried) or a plain grid's runs; the chosen rates are circled."""
    from .stats import first_rung, mean_std, methods_of, ordered

    spec = next((r["tune"] for r in rows if r.get("tune")), {})
    on = spec.get("learning_rate")
    rows = [r for r in first_rung(rows) if "learning_rate" in r.get("settings", {}) and on in r.get("metrics", {})]
    if not on or not rows:
        return []
    plt = _plt()
    files = []
    for task in dict.fromkeys(r["task"] for r in rows):
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for method in methods_of([r for r in rows if r["task"] == task]):
            mrows = [r for r in rows if r["task"] == task and r["method"] == method]
            rates = ordered(r["settings"]["learning_rate"] for r in mrows)
            if len(rates) < 2:  # a method run at one rate only: no curve to read
                continue
            pts = [mean_std([r["metrics"][on] for r in mrows if r["settings"]["learning_rate"] == x]) for x in rates]
            ax.errorbar(rates, [p[0] for p in pts], yerr=[0 if math.isnan(p[1]) else p[1] for p in pts],
                        marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(on)
        budget = sorted({r.get("budget_steps") for r in rows if r.get("budget_steps")})
        where = f", rung 0: {budget[0]} steps" if budget else ""
        ax.set_title(_wrap(f"{task}: validation score vs learning rate (mean ± std over seeds{where})", fig))
        ax.legend(fontsize=7)
        files.append(_save(fig, out_dir / f"sensitivity_{_slug(task)}.png"))
    return files


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "-", text).strip("-")


def _mean_curve(curves: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std of (step, value) curves on the first curve's steps (others interpolated)."""
    steps = np.asarray([c[0] for c in curves[0]], dtype=float)
    ys = np.stack([np.interp(steps, [c[0] for c in cur], [c[1] for c in cur]) for cur in curves])
    return steps, ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else np.zeros_like(steps)


def make_plots(rows: list[dict], stats: list, out_dir: Path, all_rows: list[dict] | None = None) -> list[Path]:
    """Every plot the rows support; returns the files written. ``rows``: the full runs; ``all_rows``:
    with a race's shorter rungs too (the sensitivity plot reads every rate tried)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    files += _sensitivity(all_rows if all_rows is not None else rows, out_dir)
    files += _train_loss(rows, stats, out_dir)
    files += _sweeps(rows, stats, out_dir)
    files += _bars(rows, stats, out_dir)
    files += _approx(rows, out_dir)
    return files


def _train_loss(rows: list[dict], stats: list, out_dir: Path) -> list[Path]:
    from .stats import matches, setting_label

    plt = _plt()
    files = []
    for task in dict.fromkeys(s.task for s in stats):
        settings = list(dict.fromkeys(s.setting for s in stats if s.task == task))[:MAX_PANELS]
        ncol = min(3, len(settings))
        nrow = math.ceil(len(settings) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
        drawn = False
        for ax, setting in zip(axes.flat, settings):
            trows = [r for r in rows if r["task"] == task and matches(r, setting) and r.get("train_loss")]
            for method in dict.fromkeys(r["method"] for r in trows):
                curves = [r["train_loss"] for r in trows if r["method"] == method]
                steps, mean, std = _mean_curve(curves)
                line, = ax.plot(steps, mean, label=f"{method} (n={len(curves)})")
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
                drawn = True
            ax.set_title(setting_label(setting), fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(settings):]:
            ax.axis("off")
        if drawn:
            fig.suptitle(f"{task}: training loss (mean ± std over seeds)")
            files.append(_save(fig, out_dir / f"train_loss_{_slug(task)}.png"))
        else:
            plt.close(fig)
    return files


def _sweeps(rows: list[dict], stats: list, out_dir: Path) -> list[Path]:
    from .stats import numeric as all_numbers
    from .stats import setting_label, sweep_keys

    plt = _plt()
    files = []
    keys = sweep_keys(rows)
    for task in dict.fromkeys(s.task for s in stats):
        headline = next((r.get("headline") for r in rows if r["task"] == task and r.get("headline")), None)
        cell = [s for s in stats if s.task == task and s.metric == headline]
        for key in keys:
            values = list(dict.fromkeys(dict(s.setting)[key] for s in cell))  # ascending: stats.cells orders them
            if len(values) < 2:
                continue
            numeric = all_numbers(values)
            fig, ax = plt.subplots(figsize=(6, 4))
            rests = list(dict.fromkeys(tuple((k, v) for k, v in s.setting if k != key) for s in cell))
            for rest in rests:
                for method in dict.fromkeys(s.method for s in cell):
                    pts = [(dict(s.setting)[key], s.mean, s.std) for s in cell if s.method == method
                           and tuple((k, v) for k, v in s.setting if k != key) == rest]
                    if not pts:
                        continue
                    xs = [p[0] if numeric else values.index(p[0]) for p in pts]
                    label = method + (f" ({setting_label(rest)})" if setting_label(rest) != "default" else "")
                    ax.errorbar(xs, [p[1] for p in pts], yerr=[0 if math.isnan(p[2]) else p[2] for p in pts],
                                marker="o", capsize=3, label=label)
            if numeric and min(values) > 0 and max(values) / min(values) >= 8:  # learning rates, stds
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=30)
            ax.set_xlabel(key)
            ax.set_ylabel(headline)
            ax.set_title(_wrap(f"{task}: {headline} vs {key.rsplit('.', 1)[-1]}", fig), fontsize=10)
            ax.legend(fontsize=7)
            files.append(_save(fig, out_dir / f"sweep_{_slug(task)}_{_slug(key)}.png"))
    return files


def _bars(rows: list[dict], stats: list, out_dir: Path) -> list[Path]:
    from .stats import setting_label

    plt = _plt()
    files = []
    for task in dict.fromkeys(s.task for s in stats):
        headline = next((r.get("headline") for r in rows if r["task"] == task and r.get("headline")), None)
        cell = [s for s in stats if s.task == task and s.metric == headline]
        settings = list(dict.fromkeys(s.setting for s in cell))[:MAX_PANELS]
        methods = list(dict.fromkeys(s.method for s in cell))
        fig, ax = plt.subplots(figsize=(min(16, max(6, 1.1 * len(methods) * len(settings))), 4))
        width = 0.8 / len(settings)
        for i, setting in enumerate(settings):
            pts = {s.method: s for s in cell if s.setting == setting}
            xs = [j + i * width for j, m in enumerate(methods) if m in pts]
            ax.bar(xs, [pts[m].mean for m in methods if m in pts], width,
                   yerr=[0 if math.isnan(pts[m].std) else pts[m].std for m in methods if m in pts],
                   capsize=3, label=setting_label(setting))
            for m in methods:
                if m in pts:
                    x = methods.index(m) + i * width
                    ax.scatter([x] * len(pts[m].values), pts[m].values, color="k", s=6, zorder=3)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))], methods, rotation=20)
        ax.set_ylabel(headline)
        ax.set_title(_wrap(f"{task}: {headline} per method (mean ± std, dots: seeds)", fig), fontsize=10)
        if len(settings) > 1:
            ax.legend(fontsize=7)
        files.append(_save(fig, out_dir / f"methods_{_slug(task)}.png"))
    return files


def approx_curve(row: dict) -> list[list[float]] | None:
    """The run's approximation loss vs iteration (mean over matrices), if the result carries it.

    Accepts ``approx_loss`` as ``[[t, loss], ...]`` or as ``{matrix: [[t, loss], ...]}``."""
    curve = row.get("approx_loss")
    if not curve:
        return None
    if isinstance(curve, dict):
        per = [{int(t): float(v) for t, v in c} for c in curve.values() if c]
        if not per:
            return None
        steps = sorted(set.intersection(*(set(p) for p in per)))
        return [[t, float(np.mean([p[t] for p in per]))] for t in steps]
    return [[float(t), float(v)] for t, v in curve]


def _approx(rows: list[dict], out_dir: Path) -> list[Path]:
    plt = _plt()
    curves = [(r, approx_curve(r)) for r in rows]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    seen = set()
    drawn: dict[tuple, list] = {}  # identical curves (a deterministic fit, a shared one) are drawn once
    for row, curve in curves:
        key = (row.get("model"), row["method"], row["seed"], curve[-1][0])
        if key in seen:  # the same fit serves many runs (tasks, lr, ...): draw it once
            continue
        seen.add(key)
        same = (row.get("model"), row["method"], json.dumps(curve))
        drawn.setdefault(same, []).append(row["seed"])
    for (_, method, curve), seeds in drawn.items():
        curve = json.loads(curve)
        label = f"{method} seed {seeds[0]}" if len(seeds) == 1 else \
            f"{method} seeds {', '.join(map(str, seeds))} (×{len(seeds)} identical)"
        ax.plot([c[0] for c in curve], [c[1] for c in curve], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("approximation iteration")
    ax.set_ylabel("MSE ‖W0 − U Pᵀ‖² / dk (mean over matrices)")
    ax.set_title("IniLoRA approximation loss")
    if len(drawn) <= 12:
        ax.legend(fontsize=7)
    return [_save(fig, out_dir / "approx_loss.png")]
