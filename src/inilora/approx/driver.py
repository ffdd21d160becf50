"""The one driver loop every batched engine runs under: resume, checkpoints, logging, results.

An engine holds only its arithmetic, behind :class:`EngineState`: advance the fit from iteration
``t0`` to ``t1``, report each matrix's current loss and factors, and name the buffers that the
remaining iterations depend on (for snapshots).  :func:`drive` does the rest, the same way for
every engine, so a resumed run restores the same things and a checkpoint or a log point means
the same iteration whichever engine ran:

- the state is restored from the run's snapshot, if any (``resume.begin``);
- the fit advances from one *event* to the next: every ``log_every`` iterations, every
  checkpoint asked for, every ``resume.every_steps``, and the last iteration; an engine may run
  the steps between two events in one call (the cpu-fused kernel does, in C++);
- at an event: a snapshot if one is due (time or step count; Ctrl-C asks for one at once), the
  checkpoint factors, the log of the losses (and ``progress(t, mean loss)``).

Model-agnostic: torch only, like every engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from .result import EngineProgress, Trajectory
from .resume import Resume, begin


class EngineState(Protocol):
    """An engine's fit in progress (its arithmetic only)."""

    #: the number of matrices
    n: int

    def buffers(self, t: int) -> dict[str, Tensor]:
        """Every tensor the iterations after ``t`` depend on (snapshotted and restored byte for byte)."""

    def restored(self, t: int) -> None:
        """Called once before the first step, with the iteration the fit starts at (0, or a snapshot's):
        re-derive what is not in :meth:`buffers` (Adam's step count, interleaved copies)."""

    def advance(self, t0: int, t1: int) -> None:
        """Run iterations ``t0 .. t1 − 1`` (learning rate ``lr_at(t)``, Adam step ``t + 1``)."""

    def losses(self) -> Sequence[float]:
        """Each matrix's current mean squared error, in input order."""

    def factors(self, i: int) -> tuple[Tensor, Tensor]:
        """Matrix ``i``'s current ``(U, P)``: copies, unpadded, on the weight's device."""


def events(t0: int, steps: int, log_every: int, wanted: set[int], resume: Resume | None) -> list[int]:
    """The iterations ≥ ``t0`` at which the driver stops to log, checkpoint or snapshot."""
    found = set(range(0, steps, log_every)) | wanted | {steps}
    if resume is not None and resume.every_steps is not None:
        found |= set(range(0, steps, resume.every_steps))
    return sorted(e for e in found if e >= t0)


def drive(state: EngineState, *, steps: int, log_every: int, wanted: set[int], progress: EngineProgress | None = None,
          resume: Resume | None = None) -> list[Trajectory]:
    """Run ``state`` to ``steps`` iterations; one :class:`Trajectory` per matrix, in input order."""
    n = state.n
    losses: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    snaps: list[dict[int, tuple[Tensor, Tensor]]] = [{} for _ in range(n)]

    def log(t: int) -> None:
        values = [float(v) for v in state.losses()]
        for i, v in enumerate(values):
            losses[i].append((t, v))
        if progress is not None:
            progress(t, sum(values) / n)

    t = begin(resume, state.buffers, losses, snaps)
    state.restored(t)
    for e in events(t, steps, log_every, wanted, resume):
        if e > t:
            state.advance(t, e)
            t = e
            if resume is not None and t < steps and resume.due(t):
                resume.save(t, state.buffers(t), losses, snaps)
        if t in wanted:
            for i in range(n):
                snaps[i][t] = state.factors(i)
        if t % log_every == 0 or t == steps:
            log(t)
    out = []
    for i in range(n):
        U, P = state.factors(i)
        out.append(Trajectory(U=U, P=P, losses=losses[i], checkpoints=snaps[i]))
    return out


__all__ = ["EngineState", "drive", "events"]
