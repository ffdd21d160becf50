"""IniLoRA's approximation: fit ``U Pᵀ ≈ W`` per matrix by Adam on the mean squared error.

Model-agnostic (torch only). Engines:

- ``"reference"``: the released per-matrix autograd loop (the oracle, slow);
- ``"torch"``: the same math batched by shape with analytic gradients (portable, fast);
- ``"cpu-fused"``: one C++ kernel per step on the CPU (built on first use);
- ``"triton"``: fused CUDA kernels;
- ``"auto"`` (the default) picks one of the last three: "triton" for CUDA weights when triton
  imports, "cpu-fused" for CPU weights when its library builds, else "torch" (one notice).
  :func:`resolve_engine` makes the choice once, at the entry point, and returns a
  :class:`ResolvedEngine` (the name, plus the cpu-fused lane layout) that is passed down and
  run as it is: no engine switches to another inside itself, so the result and a cache key
  always name the engine that really ran.

The report's Eckart–Young optimum comes from the top r singular values (:mod:`.optimum`:
within 1e-4 of the full SVD, no O(d³) step); ``optimum="exact"`` asks for the full SVD.

``resume`` (:class:`Resume`) makes a fit survive interruption; ``devices`` splits the
matrices over several devices and gathers the factors back.

Both follow docs/design.md §3: per-matrix mean loss, Adam(5e-4, (0.9, 0.999), 1e-8), StepLR(5000, 0.9)
stepped before the optimiser, fp32 factors, W never cast below its stored dtype.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from . import cpu_fused as _cpu_fused
from . import cpu_tuning as _cpu_tuning
from . import triton_engine as _triton
from .batched import fit_batched
from .optimum import eckart_young, eckart_young_exact
from .reference import fit_reference
from .result import (
    LOG_EVERY,
    LR,
    STEPS,
    FitResult,
    Trajectory,
    check_run,
    lr_at,
    relative_error,
)
from .resume import FitInterrupted, Resume, run_fingerprint, snapshot_on_interrupt
from .split import assign
from .triton_engine import engine as _triton_engine
from .triton_engine import fit_triton

__all__ = [
    "ENGINES",
    "ENGINE_VERSION",
    "FitInterrupted",
    "FitResult",
    "OPTIMA",
    "Resume",
    "approximate",
    "assign",
    "eckart_young",
    "eckart_young_exact",
    "engine_detail",
    "fit_batched",
    "fit_reference",
    "lr_at",
    "relative_error",
    "ResolvedEngine",
    "resolve_engine",
    "snapshot_on_interrupt",
]

#: ``engine(weights, inits, *, steps, lr, log_every, checkpoints, progress, resume) -> [Trajectory]``;
#: ``progress(t, loss)`` with t the iterations done of the whole set (0 .. steps).  Add an engine by
#: adding an entry here (and its version below): its arithmetic behind ``driver.EngineState``, run by
#: ``driver.drive``; every engine must match "reference" to docs/design.md §3's tolerances.
Engine = Callable[..., "list[Trajectory]"]


def _reference_engine(weights, inits, *, steps, progress=None, resume=None, **kw):
    """The oracle, one matrix after the other (not resumable: it is the slow test oracle)."""
    runs = []
    n = len(weights)
    for i, (W, (U0, P0)) in enumerate(zip(weights, inits)):
        cb = None if progress is None else (lambda t, loss, base=i * steps: progress((base + t) / n, loss))
        runs.append(fit_reference(W, U0, P0, steps=steps, progress=cb, **kw))
    return runs


_ENGINES: dict[str, Engine] = {"reference": _reference_engine, "torch": fit_batched}
_ENGINES["triton"] = _triton_engine  # CUDA (fused Triton kernels); raises TritonUnavailable elsewhere
_ENGINES["cpu-fused"] = _cpu_tuning.cpu_fused_engine  # CPU, fused C++ kernel built on first use (resolve_engine checks)
ENGINES: tuple[str, ...] = tuple(_ENGINES)
#: Bumped whenever an engine's numerics change, so cached fits (keyed on it) are recomputed.
ENGINE_VERSION: dict[str, str] = {"reference": "1", "torch": "1"}
ENGINE_VERSION["triton"] = "1"
ENGINE_VERSION["cpu-fused"] = "1"

#: ``progress(done, total, loss)``: done/total count matrix-iterations over the whole call.
Progress = Callable[[int, int, float], None]

AUTO = "auto"
#: how :func:`approximate` reports the Eckart–Young optimum (see :mod:`.optimum`)
OPTIMA = ("top-r", "exact", "none")
_noticed: set[str] = set()


def _notice(text: str) -> None:
    """One line, once per process and reason: falling back is worth saying, not repeating."""
    if text not in _noticed:
        _noticed.add(text)
        warnings.warn(text, RuntimeWarning, stacklevel=3)


class ResolvedEngine(str):
    """An engine resolved once, at the entry point, and passed down: its name (what runs, what the
    result and a cache key record — a plain ``str`` for both) and what was decided with it, the
    cpu-fused lane ``layout`` when the shapes were known.  :func:`approximate` runs it as given."""

    layout: int | None

    def __new__(cls, name: str, layout: int | None = None) -> ResolvedEngine:
        obj = super().__new__(cls, name)
        obj.layout = layout
        return obj

    def __reduce__(self):  # broadcast to the other ranks under torchrun
        return (ResolvedEngine, (str(self), self.layout))

    def __repr__(self) -> str:
        return f"ResolvedEngine({str(self)!r}, layout={self.layout})"


def resolve_engine(engine: str, devices: Iterable[torch.device | str], *, weights: Sequence[Tensor] | None = None,
                   inits: Sequence[tuple[Tensor, Tensor]] | None = None) -> ResolvedEngine:
    """The engine that will run — the one place that decides it, so a cache key never names an
    engine that did not run: ``engine`` itself, or for ``"auto"`` the fastest available for these
    weight devices — "triton" (all CUDA, triton importable), "cpu-fused" (all CPU, a lane layout
    of its C++ kernel builds here and passed its check against "torch"), else "torch" with a
    notice.  An explicit "cpu-fused" that cannot run here (weights off the CPU, no build, no
    trusted layout, an empty matrix among ``weights``) resolves to "torch" with a warning.
    With ``weights`` and ``inits`` the cpu-fused layout is chosen now, for these shapes
    (:func:`.cpu_tuning.choose_width`).  A :class:`ResolvedEngine` is returned as it is."""
    if isinstance(engine, ResolvedEngine):
        return engine
    name = _resolve_name(engine, list(devices), weights)
    if name == "cpu-fused" and weights is not None and inits is not None:
        layout = _cpu_tuning.choose_width(list(weights), list(inits))
        if layout is None:  # the verdicts changed since _resolve_name looked (another process)
            warnings.warn("cpu-fused engine unavailable (no trusted lane layout); running the portable 'torch' engine",
                          RuntimeWarning, stacklevel=2)
            return ResolvedEngine("torch")
        return ResolvedEngine(name, layout)
    return ResolvedEngine(name)


def _resolve_name(engine: str, devices: list, weights: Sequence[Tensor] | None) -> str:
    kinds = {torch.device(d).type for d in devices}
    if engine != AUTO:
        if engine not in ENGINES:
            raise ValueError(f"unknown approximation engine {engine!r}; valid engines: {AUTO}, {', '.join(ENGINES)}")
        if engine == "cpu-fused":
            problem = "weights are not on the CPU" if not kinds <= {"cpu"} else _cpu_fused_problem(weights)
            if problem:  # asked for by name: said on every call, not once
                warnings.warn(f"cpu-fused engine unavailable ({problem}); running the portable 'torch' engine",
                              RuntimeWarning, stacklevel=4)
                return "torch"
        if engine == "triton" and kinds == {"cuda"} and _triton._import_triton() \
                and not all(_triton_trusted(d) for d in devices):
            warnings.warn("the Triton kernel disagrees with the 'torch' engine on this GPU; running 'torch'",
                          RuntimeWarning, stacklevel=4)
            return "torch"
        return engine
    if kinds == {"cuda"}:
        if not _triton._import_triton():
            _notice("inilora: engine 'auto' runs the portable 'torch' engine: triton is not importable (pip install triton)")
            return "torch"
        if not all(_triton_trusted(d) for d in devices):
            _notice("inilora: engine 'auto' runs the portable 'torch' engine: the Triton kernel disagrees with it on "
                    "this GPU (see the warning above)")
            return "torch"
        return "triton"
    if kinds <= {"cpu"}:
        problem = _cpu_fused_problem(weights)
        if problem is None:
            return "cpu-fused"
        _notice(f"inilora: engine 'auto' runs the portable 'torch' engine: the cpu-fused kernel is unavailable ({problem})")
    return "torch"


def _triton_trusted(device: torch.device | str) -> bool:
    """The Triton kernel agrees with "torch" on this GPU model (checked once per model, Triton
    version and kernel source; see :mod:`.trust`): until it has run on a GPU here, this check is
    what protects the first user of one."""
    import hashlib
    from pathlib import Path

    from . import trust

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return True  # nothing to run the check on (resolve_engine is asked about devices only)
    source = hashlib.sha256(Path(_triton.__file__).read_bytes()).hexdigest()[:16]
    key = f"triton|{torch.cuda.get_device_name(dev)}|triton {_triton.triton.__version__}|{source}"
    run = lambda ws, ins: fit_triton(ws, ins, steps=trust.STEPS, log_every=100)  # noqa: E731
    return trust.trusted(key, run, what=f"the Triton kernel on {torch.cuda.get_device_name(dev)}", device=dev)


def _cpu_fused_problem(weights: Sequence[Tensor] | None = None) -> str | None:
    """Why the cpu-fused engine cannot run here (no build, no layout that passed its trust check,
    an empty matrix among ``weights``), or None."""
    if weights is not None and any(w.numel() == 0 for w in weights):
        return "an empty weight matrix"
    try:
        _cpu_fused.load_library(_cpu_tuning.candidate_widths()[0])
    except _cpu_fused.CpuFusedUnavailable as exc:
        return str(exc)
    if not _cpu_tuning.trusted_widths():
        return "no lane layout of its kernel agrees with the 'torch' engine on this CPU"
    return None


def engine_detail(engine: str) -> str | None:
    """What the last fit of ``engine`` ran as, for reports (the cpu-fused lane layout and its timing)."""
    if engine == "cpu-fused":
        return _cpu_tuning.describe()
    return None


def _placement(weights: Mapping[str, Tensor], init: Mapping[str, tuple[Tensor, Tensor]],
               devices: Sequence[torch.device | str]) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """Weights and initial factors moved to their share of ``devices`` (see :func:`assign`)."""
    devs = [torch.device(d) for d in devices]
    names = list(weights)
    owner = assign([weights[n].numel() * init[n][0].shape[1] for n in names], len(devs))
    placed_w, placed_i = {}, {}
    for n, j in zip(names, owner):
        dev = devs[j]
        placed_w[n] = weights[n].detach().to(dev)
        placed_i[n] = (init[n][0].to(dev), init[n][1].to(dev))
    return placed_w, placed_i


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
    engine: str = AUTO,
    log_every: int = LOG_EVERY,
    checkpoints: Sequence[int] = (),
    progress: Progress | None = None,
    resume: Resume | None = None,
    devices: Sequence[torch.device | str] | None = None,
    optimum: str = "top-r",
) -> dict[str, FitResult]:
    """Fit every ``weights[name] ≈ U Pᵀ`` from ``init[name] = (U0, P0)``.

    The factors are moved to W's device (fp32). Returns unscaled fits (B0 = U/√s,
    A0 = Pᵀ/√s are the caller's business) with the loss curve, the relative error and the
    Eckart–Young optimum; ``checkpoints`` adds the factors after each listed iteration
    count (0 = the initial factors), so one run serves every point of a sweep.
    ``progress(done, total, loss)`` counts matrix-iterations (display only).

    ``engine``: a name (``"auto"`` included), resolved here with :func:`resolve_engine`, or a
    :class:`ResolvedEngine` a caller resolved already (run as given: decided once);
    ``FitResult.engine`` names the engine that ran.  ``resume``: snapshot the state periodically
    and continue from an earlier snapshot of the same run (bit-identical result; not for
    "reference").  ``devices``: fit each matrix on one of these devices (a deterministic,
    balanced split by size; the engines run the devices' shares side by side) and return every
    factor on its weight's own device.  ``optimum``: ``"top-r"`` (the default: from the top r
    singular values, within 1e-4 of the exact value, :mod:`.optimum`), ``"exact"`` (the full
    float64 SVD, O(d³)) or ``"none"`` (NaN: skipped).
    """
    check_run(steps, log_every, checkpoints)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if optimum not in OPTIMA:
        raise ValueError(f"optimum must be one of {', '.join(OPTIMA)}, got {optimum!r}")
    _check(weights, init)
    names = list(weights)
    work_w, work_i = (weights, init) if not devices else _placement(weights, init, devices)
    ws, inits = [work_w[n] for n in names], [work_i[n] for n in names]
    chosen = resolve_engine(engine, {w.device for w in ws}, weights=ws, inits=inits)  # the one decision
    total = steps * len(names)
    cb = None if progress is None else (lambda t, loss: progress(round(t * len(names)), total, loss))
    if resume is not None:
        resume = resume.bind(run_fingerprint(str(chosen), ws, inits, steps=steps, lr=lr, log_every=log_every,
                                             checkpoints=checkpoints))
    extra = {"vector_width": chosen.layout} if chosen == "cpu-fused" else {}
    runs = _ENGINES[chosen](
        ws, inits, steps=steps, lr=lr, log_every=log_every, checkpoints=checkpoints, progress=cb, resume=resume,
        **extra,
    )
    out: dict[str, FitResult] = {}
    for name, run in zip(names, runs):
        W = weights[name]
        home = W.device

        def back(x: Tensor, home=home) -> Tensor:
            return x if x.device == home else x.to(home)

        r = run.U.shape[1]
        out[name] = FitResult(
            U=back(run.U),
            P=back(run.P),
            losses=run.losses,
            rel_error=relative_error(work_w[name], run.U, run.P),
            optimum=math.nan if optimum == "none" else eckart_young(work_w[name], r, exact=optimum == "exact"),
            checkpoints={t: (back(u), back(p)) for t, (u, p) in run.checkpoints.items()},
            steps=steps,
            engine=str(chosen),
        )
    return out
