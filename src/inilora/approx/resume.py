"""Resumable approximation: periodic, atomic snapshots of an engine's whole state.

A 20000-step fit of a 7B model's matrices, or of SmolLM2 on a laptop, can be interrupted (a
pre-empted job, a closed lid, Ctrl-C).  An engine handed a :class:`Resume` saves, every
``every_steps`` iterations or ``every_seconds`` seconds (whichever comes first), everything
the remaining iterations depend on: the factors, Adam's two moments and the iteration count
``t`` — which is also the LR schedule's position (``lr_at(t)``) and Adam's step — plus the
losses and checkpoint factors recorded so far.  A rerun with the same ``Resume`` (same path,
same fingerprint) continues from there and ends with *bit-identical* factors to an
uninterrupted run on the same engine, device and thread count: the state is the engine's own
buffers, byte for byte, and every engine's arithmetic at iteration t depends only on them.

The file is one ``torch.save`` written to a temp file, fsynced and renamed over the previous
one, so a kill at any point leaves either the old or the new snapshot, never half of one.  A
snapshot whose fingerprint differs (other weights, init, steps, engine, ...) or that cannot be
read is ignored with a warning.  The caller removes the file once the final result is safe.

Model-agnostic: torch, the stdlib and the package's own exception types (the cache decides where the file
lives).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import Terminated

FORMAT = 1

#: Ctrl-C or SIGTERM during a fit that snapshots: the first asks the running engine to save at its
#: next iteration boundary and stop (:class:`FitInterrupted`); a second stops at once. ``asked``: the
#: signal's number, 0 until one came.
_interrupt = {"asked": 0, "last_due": -1e9, "gap": 0.0}


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``signum``) stopped a fit after its state was saved; rerunning the same
    call resumes it."""

    def __init__(self, t: int, path: Path, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted after iteration {t}; state saved in {path}")
        self.t, self.path, self.signum = t, path, signum


def _on_stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    # a fit that snapshots asks `due` at every event (log point); none asked for a while (twice the
    # last gap, and 2 s): no such fit is running
    if _interrupt["asked"] or time.monotonic() - _interrupt["last_due"] > 2.0 + 2 * _interrupt["gap"]:
        # no snapshotting fit is running, or asked twice: stop now
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    _interrupt["asked"] = signum


@contextlib.contextmanager
def snapshot_on_interrupt() -> Iterator[None]:
    """Within this block (main thread), Ctrl-C or SIGTERM (a job's time limit) during a resumable fit
    saves its state at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    _interrupt["asked"] = 0
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _interrupt["asked"] = 0


class Resume:
    """Where and how often an engine snapshots its state; ``fingerprint`` identifies the run.

    Engines call :meth:`load` once at the start, :meth:`due` at iteration boundaries and
    :meth:`save` when it answers True.  ``every_steps=None`` / ``every_seconds=None`` turn
    that trigger off.  The default is time only, every 30 s: a save costs ≈ 50–70 ms for
    SmolLM2's state (5.5 MB, fsynced; measured on the shared 2-core dev machine), i.e. ≈ 0.2 % of a
    fit, where every 1000 steps of the cpu-fused engine (≈ 2.6 s) would cost ≈ 2 %.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str = "", *, every_steps: int | None = None,
                 every_seconds: float | None = 30.0) -> None:
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.path = Path(path)
        self.fingerprint = str(fingerprint)
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self._last_t: int | None = None
        self._last_time = time.monotonic()
        self.saves = 0
        #: the iteration a load resumed from (None: started from scratch)
        self.resumed_from: int | None = None
        self._parent: Resume | None = None

    def bind(self, run_fingerprint: str) -> Resume:
        """A copy whose fingerprint also covers the engine call (engine, shapes, steps, ...)."""
        other = Resume(self.path, f"{self.fingerprint}|{run_fingerprint}", every_steps=self.every_steps,
                       every_seconds=self.every_seconds)
        other._parent = self
        return other

    def _note(self, **values: Any) -> None:
        node: Resume | None = self
        while node is not None:
            for k, v in values.items():
                setattr(node, k, v)
            node = node._parent

    # ------------------------------------------------------------------ engine side

    def due(self, t: int) -> bool:
        """Whether iteration boundary ``t`` should be saved (never the start of a (re)run)."""
        now = time.monotonic()
        _interrupt["gap"], _interrupt["last_due"] = min(now - _interrupt["last_due"], 600.0), now
        if _interrupt["asked"] and self._last_t is not None:
            return True
        if self._last_t is None:
            self._last_t = t
            self._last_time = time.monotonic()
            return False
        if t <= self._last_t:
            return False
        if self.every_steps is not None and t - self._last_t >= self.every_steps:
            return True
        return self.every_seconds is not None and time.monotonic() - self._last_time >= self.every_seconds

    def start(self, t: int) -> None:
        """Mark the first boundary of this (re)run: the next save is measured from here."""
        self._last_t = t
        self._last_time = time.monotonic()

    def save(self, t: int, tensors: dict[str, Tensor], losses: list, snaps: list) -> None:
        """Snapshot after ``t`` iterations (before iteration t's log / checkpoint is taken)."""
        state = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "t": int(t),
            "tensors": {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()},
            "losses": [[(int(s), float(v)) for s, v in run] for run in losses],
            "snaps": [{int(s): (u.detach().cpu(), p.detach().cpu()) for s, (u, p) in d.items()} for d in snaps],
        }
        from ..fileio import atomic_write

        atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        self._note(saves=self.saves + 1)
        self.start(t)
        if _interrupt["asked"]:
            raise FitInterrupted(int(t), self.path, _interrupt["asked"])

    def load(self) -> dict[str, Any] | None:
        """The saved state of this run, or None (none, unreadable, or another run's)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated / edited file: start over
            warnings.warn(f"inilora: ignoring unreadable resume state {self.path.name} ({type(exc).__name__}); "
                          "starting the approximation from the beginning", RuntimeWarning, stacklevel=3)
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("fingerprint") != self.fingerprint:
            warnings.warn(f"inilora: resume state {self.path.name} belongs to another run; starting from the beginning",
                          RuntimeWarning, stacklevel=3)
            return None
        self._note(resumed_from=int(state["t"]))
        return state

    def clear(self) -> None:
        """Remove the snapshot and any temp file a killed save left (the result is safe now)."""
        self.path.unlink(missing_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def run_fingerprint(engine: str, weights, inits, *, steps: int, lr: float, log_every: int,
                    checkpoints) -> str:
    """What an engine call depends on besides its buffers: engine, shapes, dtypes, devices,
    hyper-parameters, and a digest of the initial factors (cheap: they are small)."""
    h = hashlib.sha256()
    for U0, P0 in inits:
        for t in (U0, P0):
            h.update(memoryview(t.detach().to("cpu", torch.float32).contiguous().view(torch.uint8).numpy()))
    desc = {
        "engine": engine,
        "shapes": [[list(W.shape), str(W.dtype), str(W.device), int(U0.shape[1])] for W, (U0, _) in zip(weights, inits)],
        "steps": int(steps),
        "lr": float(lr),
        "log_every": int(log_every),
        "checkpoints": sorted(int(c) for c in checkpoints),
        "threads": torch.get_num_threads(),
        "init": h.hexdigest(),
    }
    return json.dumps(desc, sort_keys=True)


def begin(resume: Resume | None, buffers: Callable[[int], dict[str, Tensor]], losses: list, snaps: list) -> int:
    """The iteration an engine's loop starts at: 0, or that of this run's snapshot, with the
    engine's state tensors (``buffers(t)``: they may depend on t), the losses and the checkpoint
    factors restored in place.  Starts the save clock.  One place for every engine, so a resumed
    run restores the same things whichever engine ran it."""
    if resume is None:
        return 0
    t0 = 0
    state = resume.load()
    if state is not None:
        t0 = int(state["t"])
        restore(buffers(t0), state)
        losses[:] = [list(x) for x in state["losses"]]
        snaps[:] = [dict(x) for x in state["snaps"]]
    resume.start(t0)
    return t0


def restore(buffers: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Copy saved buffers into the engine's own (same names, shapes and dtypes, or fail)."""
    saved = state["tensors"]
    if set(saved) != set(buffers):
        raise ValueError(f"resume state holds buffers {sorted(saved)}, the engine has {sorted(buffers)}")
    for name, buf in buffers.items():
        src = saved[name]
        if src.shape != buf.shape or src.dtype != buf.dtype:
            raise ValueError(f"resume buffer {name}: saved {tuple(src.shape)} {src.dtype}, engine {tuple(buf.shape)} {buf.dtype}")
        buf.copy_(src.to(buf.device))
