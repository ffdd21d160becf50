"""Shared pieces of the approximation engines: hyper-parameters, schedule, result and report.

Everything here is model-agnostic (torch, stdlib only), as every engine must be.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

# The released code's optimiser and schedule (docs/design.md §3): Adam + StepLR, nothing else.
LR = 5e-4
BETAS = (0.9, 0.999)
EPS = 1e-8
STEP_SIZE = 5000
GAMMA = 0.9
STEPS = 20000
LOG_EVERY = 100

#: ``progress(t, loss)`` as the per-engine functions call it (t = iterations done).
EngineProgress = Callable[[int, float], None]


@dataclass
class Trajectory:
    """What an engine returns for one matrix: the raw fit, before the report is added."""

    U: Tensor
    P: Tensor
    losses: list[tuple[int, float]]
    checkpoints: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


@dataclass
class FitResult:
    """One fitted matrix: ``U Pᵀ ≈ W`` (unscaled; B0 = U/√s, A0 = Pᵀ/√s).

    ``losses`` holds ``(t, mse)`` every ``log_every`` iterations plus the final one;
    ``rel_error`` is ``‖W − U Pᵀ‖_F / ‖W‖_F`` and ``optimum`` the Eckart–Young floor for
    the same rank, so users see how far gradient descent ended from the SVD optimum.
    """

    U: Tensor
    P: Tensor
    losses: list[tuple[int, float]]
    rel_error: float
    optimum: float
    checkpoints: dict[int, tuple[Tensor, Tensor]]
    steps: int
    engine: str


def lr_at(t: int, lr: float = LR, step_size: int = STEP_SIZE, gamma: float = GAMMA) -> float:
    """Learning rate used by iteration ``t`` (counted from 0).

    The released loop steps StepLR *before* ``optimizer.step()``, so iteration t already
    sees ``t + 1`` scheduler steps: ``lr · γ^⌊(t+1)/step_size⌋`` (first decay at t = 4999).
    The power is applied by repeated multiplication, exactly as StepLR chains it, so the
    value is bit-identical to the one torch's optimiser holds.
    """
    if t < 0:
        raise ValueError(f"iteration must be >= 0, got {t}")
    value = lr
    for _ in range((t + 1) // step_size):
        value = value * gamma
    return value


def relative_error(W: Tensor, U: Tensor, P: Tensor) -> float:
    """``‖W − U Pᵀ‖_F / ‖W‖_F`` in float64 (the fp32 residual would round away small errors)."""
    W64 = W.detach().to(torch.float64)
    R = torch.addmm(W64, U.detach().to(W64.device, torch.float64), P.detach().to(W64.device, torch.float64).T, beta=1, alpha=-1)
    norm = torch.linalg.matrix_norm(W64).item()
    if norm == 0.0:
        return 0.0 if torch.linalg.matrix_norm(R).item() == 0.0 else math.inf
    return torch.linalg.matrix_norm(R).item() / norm


def check_run(steps: int, log_every: int, checkpoints: Sequence[int], weights: Sequence = (),
              inits: Sequence = ()) -> set[int]:
    """The argument checks every engine makes before any work; the checkpoint iterations asked for."""
    if len(weights) != len(inits):
        raise ValueError("weights and inits must have the same length")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    return set(validate_checkpoints(checkpoints, steps))


def validate_checkpoints(checkpoints: Sequence[int], steps: int) -> list[int]:
    """Sorted, de-duplicated checkpoint iterations; each must lie in ``[0, steps]``."""
    out = sorted({int(c) for c in checkpoints})
    bad = [c for c in out if c < 0 or c > steps]
    if bad:
        raise ValueError(f"checkpoints must lie in [0, steps={steps}], got {bad}")
    return out


@contextlib.contextmanager
def fp32_matmul() -> Iterator[None]:
    """Force true-fp32 GEMMs (no TF32 / bf16 shortcuts) for the duration of a fit.

    The engines promise fp32 accumulation of fp32 products; a caller who enabled TF32
    globally would otherwise silently break the §3 tolerance.
    """
    try:
        previous = torch.get_float32_matmul_precision()
    except Exception:  # pragma: no cover - exotic torch configuration
        previous = None
    if previous in (None, "highest"):
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def in_input_order(groups: Sequence, values: Sequence[float]) -> list[float]:
    """Per-matrix ``values`` given in group order, put back in the caller's order (groups have ``.index``)."""
    flat = [i for g in groups for i in g.index]
    out = [0.0] * len(flat)
    for i, value in zip(flat, values):
        out[i] = value
    return out


def factor_of(groups: Sequence, i: int) -> tuple[Tensor, Tensor]:
    """Matrix ``i``'s (U, P) from the group holding it (groups have ``.index`` and ``.factors(j)``)."""
    for g in groups:
        if i in g.index:
            return g.factors(g.index.index(i))
    raise IndexError(i)


