"""IniLoRA's approximation: fit ``U Pᵀ ≈ W`` per matrix by Adam on the mean squared error.

Model-agnostic (torch only). Engines:

- ``"reference"``: the released per-matrix autograd loop (the oracle, slow);
- ``"torch"``: the same math batched by shape with analytic gradients (portable, fast).

Both follow SPEC §3: per-matrix mean loss, Adam(5e-4, (0.9, 0.999), 1e-8), StepLR(5000, 0.9)
stepped before the optimiser, fp32 factors, W never cast below its stored dtype.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from torch import Tensor

from .batched import fit_batched
from .reference import fit_reference
from .result import (
    LOG_EVERY,
    LR,
    STEPS,
    FitResult,
    Trajectory,
    eckart_young,
    lr_at,
    relative_error,
    validate_checkpoints,
)
from .triton_engine import engine as _triton_engine
from .cpu_fused import cpu_fused_engine as _cpu_fused_engine

__all__ = [
    "ENGINES",
    "ENGINE_VERSION",
    "FitResult",
    "approximate",
    "eckart_young",
    "fit_batched",
    "fit_reference",
    "lr_at",
    "relative_error",
]

#: ``engine(weights, inits, *, steps, lr, log_every, checkpoints, progress) -> [Trajectory]``;
#: ``progress(done, loss)`` counts matrix-iterations.  Add an engine by adding an entry here
#: (and its version below); every engine must match "reference" to SPEC §3's tolerances.
Engine = Callable[..., "list[Trajectory]"]


def _reference_engine(weights, inits, *, steps, progress=None, **kw):
    """The oracle, one matrix after the other."""
    runs = []
    for i, (W, (U0, P0)) in enumerate(zip(weights, inits)):
        cb = None if progress is None else (lambda t, loss, base=i * steps: progress(base + t, loss))
        runs.append(fit_reference(W, U0, P0, steps=steps, progress=cb, **kw))
    return runs


def _torch_engine(weights, inits, *, progress=None, **kw):
    """All matrices at once, batched by shape."""
    n = len(weights)
    cb = None if progress is None else (lambda t, loss: progress(t * n, loss))
    return fit_batched(weights, inits, progress=cb, **kw)


_ENGINES: dict[str, Engine] = {"reference": _reference_engine, "torch": _torch_engine}
_ENGINES["triton"] = _triton_engine  # CUDA (fused Triton kernels); raises TritonUnavailable elsewhere
_ENGINES["cpu-fused"] = _cpu_fused_engine  # CPU, fused C++ kernel built on first use; else warns, runs "torch"
ENGINES: tuple[str, ...] = tuple(_ENGINES)
#: Bumped whenever an engine's numerics change, so cached fits (keyed on it) are recomputed.
ENGINE_VERSION: dict[str, str] = {"reference": "1", "torch": "1"}
ENGINE_VERSION["triton"] = "1"
ENGINE_VERSION["cpu-fused"] = "1"

#: ``progress(done, total, loss)``: done/total count matrix-iterations over the whole call.
Progress = Callable[[int, int, float], None]


def _check(weights: Mapping[str, Tensor], init: Mapping[str, tuple[Tensor, Tensor]]) -> None:
    missing = [n for n in weights if n not in init]
    extra = [n for n in init if n not in weights]
    if missing or extra:
        raise ValueError(f"init must cover exactly the weights: missing {missing}, unexpected {extra}")
    for name, W in weights.items():
        if W.ndim != 2 or not W.is_floating_point():
            raise ValueError(f"{name}: expected a 2-D floating-point weight, got {tuple(W.shape)} {W.dtype}")
        U0, P0 = init[name]
        d, k = W.shape
        if U0.ndim != 2 or P0.ndim != 2 or U0.shape[0] != d or P0.shape[0] != k or U0.shape[1] != P0.shape[1]:
            raise ValueError(
                f"{name}: factors must be U0 (d×r) and P0 (k×r) for W {d}×{k}, "
                f"got {tuple(U0.shape)} and {tuple(P0.shape)}"
            )
        if U0.shape[1] < 1:
            raise ValueError(f"{name}: rank must be >= 1")


def approximate(
    weights: Mapping[str, Tensor],
    init: Mapping[str, tuple[Tensor, Tensor]],
    *,
    steps: int = STEPS,
    lr: float = LR,
    engine: str = "torch",
    log_every: int = LOG_EVERY,
    checkpoints: Sequence[int] = (),
    progress: Progress | None = None,
) -> dict[str, FitResult]:
    """Fit every ``weights[name] ≈ U Pᵀ`` from ``init[name] = (U0, P0)``.

    The factors are moved to W's device (fp32). Returns unscaled fits (B0 = U/√s,
    A0 = Pᵀ/√s are the caller's business) with the loss curve, the relative error and the
    Eckart–Young optimum; ``checkpoints`` adds the factors after each listed iteration
    count (0 = the initial factors), so one run serves every point of a sweep.
    ``progress(done, total, loss)`` counts matrix-iterations (display only).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown approximation engine {engine!r}; valid engines: {', '.join(ENGINES)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    validate_checkpoints(checkpoints, steps)
    _check(weights, init)
    names = list(weights)
    total = steps * len(names)
    cb = None if progress is None else (lambda done, loss: progress(done, total, loss))
    runs = _ENGINES[engine](
        [weights[n] for n in names], [init[n] for n in names],
        steps=steps, lr=lr, log_every=log_every, checkpoints=checkpoints, progress=cb,
    )
    out: dict[str, FitResult] = {}
    for name, run in zip(names, runs):
        W = weights[name]
        out[name] = FitResult(
            U=run.U,
            P=run.P,
            losses=run.losses,
            rel_error=relative_error(W, run.U, run.P),
            optimum=eckart_young(W, run.U.shape[1]),
            checkpoints=run.checkpoints,
            steps=steps,
            engine=engine,
        )
    return out

