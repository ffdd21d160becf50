"""Progress bars for long work (the approximation), kept out of the engines.

Engines report ``progress(step, total, loss)``; this turns that into a rich bar when
stderr is a terminal and into nothing otherwise (tests, CI logs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def approximation_progress(description: str = "IniLoRA fit", force: bool = False) -> Callable[[int, int, float], None] | None:
    if not (force or sys.stderr.isatty()):
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3e}"), TimeRemainingColumn(), transient=False)
    state: dict = {}

    def update(step: int, total: int, loss: float) -> None:
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(description, total=total, loss=float("nan"))
        bar.update(state["task"], completed=step, loss=loss)
        if step >= total:
            bar.stop()

    return update
