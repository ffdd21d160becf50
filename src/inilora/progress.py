"""Progress of long work (the approximation), kept out of the engines.

Engines report ``progress(done, total, loss)``; the inilora method reports it in *steps*
(``done`` of ``total`` = 20000 by default).  On a terminal this is a rich bar with the step,
the current loss and the time left; in a log (CI, ``nohup``, a pipe) it is a plain line at
every tenth of the work or every 30 s, whichever comes first, so a long fit is never silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

ProgressFn = Callable[[int, int, float], None]


def approximation_progress(description: str = "IniLoRA fit", force: bool = False, *,
                           every_s: float = 30.0) -> ProgressFn | None:
    """A progress callback; None when stderr is not a terminal, unless ``force`` (then plain lines)."""
    if sys.stderr.isatty():
        return _bar(description)
    return _lines(description, every_s) if force else None


def _bar(description: str) -> ProgressFn:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                   TextColumn("loss {task.fields[loss]:.3e}"), TimeRemainingColumn(), transient=False)
    state: dict = {}

    def update(done: int, total: int, loss: float) -> None:
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(description, total=total, loss=loss)
        bar.update(state["task"], completed=done, loss=loss)
        if done >= total:
            bar.stop()

    return update


def _lines(description: str, every_s: float) -> ProgressFn:
    start = time.monotonic()
    state = {"tenth": -1, "last": start}

    def update(done: int, total: int, loss: float) -> None:
        now = time.monotonic()
        tenth = 10 * done // total if total else 10
        if tenth == state["tenth"] and now - state["last"] < every_s and done < total:
            return
        state["tenth"], state["last"] = tenth, now
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else float("nan")
        text = f"{description}: step {done}/{total} ({100 * done / total if total else 100:.0f} %), loss {loss:.3e}, " \
               f"{_clock(elapsed)} elapsed" + (f", about {_clock(eta)} left" if done and done < total else "")
        print(text, file=sys.stderr, flush=True)

    return update


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


__all__ = ["ProgressFn", "approximation_progress"]
