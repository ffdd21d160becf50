"""IniLoRA: fit ``U Pᵀ ≈ W0`` by gradient descent, then ``B0 = U/√s``, ``A0 = Pᵀ/√s``.

The fit itself lives in :mod:`inilora.approx` (which knows nothing of models); this
module decides *what* to fit, exactly as the released code does (docs/design.md §3):
U, P ~ N(μ, σ̄²) with σ̄ the mean over layers of each module type's unbiased weight
std, rounded to 3 decimals; per-matrix mean-MSE, Adam 5e-4, StepLR(5000, 0.9).
Because ``s·B0A0 = U Pᵀ`` for every s, the cache keeps the unscaled fit.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import approx
from ..cache import tensor_digest
from ..checks import check_positive
from ..errors import InitError
from ..naming import module_type
from .fitting import InitContext, cached_fit, resolve_engine
from .registry import InitResult, get_method, register

SCHEDULE = "StepLR(step_size=5000,gamma=0.9),stepped-before-optimizer"



def init_distribution(
    weights: Mapping[str, torch.Tensor],
    *,
    std: float | str = "auto",
    round_std: int | None = 3,
    std_source: str = "weight",
    std_scope: str = "module_type",
    mean: float | str = 0.0,
    biases: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, tuple[float, float]]:
    """(σ, μ) per group: module type (``q_proj``, ...) or ``"*"`` for ``std_scope="all"``.

    ``std_source="weight+bias"`` reproduces the released RoBERTa script, which appended
    each bias vector's std to the same list (kept only for faithfulness).
    """
    if std_scope not in ("module_type", "all"):
        raise InitError(f"std_scope must be 'module_type' or 'all', got {std_scope!r}.")
    if std_source not in ("weight", "weight+bias"):
        raise InitError(f"std_source must be 'weight' or 'weight+bias', got {std_source!r}.")
    if std_source == "weight+bias" and not biases:
        warnings.warn("std_source='weight+bias' but the targeted modules have no biases; using weights only.")
    stds: dict[str, list[float]] = defaultdict(list)
    means: dict[str, list[float]] = defaultdict(list)
    for name, w in weights.items():
        group = module_type(name) if std_scope == "module_type" else "*"
        tensors = [w]
        if std_source == "weight+bias" and biases and biases.get(name) is not None:
            tensors.append(biases[name])
        for t in tensors:
            t32 = t.detach().float()  # no copy of fp32 W
            stds[group].append(t32.std().item())  # unbiased, as torch.std() in the released code
            if mean == "auto":  # one more pass over W, only when the mean is used
                means[group].append(t32.mean().item())

    def resolve(values: list[float], what: str, group: str, guard_zero: bool) -> float:
        exact = sum(values) / len(values)
        if round_std is None:
            return exact
        rounded = round(exact, round_std)
        if guard_zero and rounded == 0.0:
            warnings.warn(
                f"the average {what} of {group!r} weights ({exact:.3g}) rounds to 0 at {round_std} decimals; "
                "keeping the unrounded value (U = P = 0 would never move)."
            )
            return exact
        return rounded

    out = {}
    for group in stds:
        if std == "auto":
            sigma = resolve(stds[group], "std", group, guard_zero=True)
        else:
            sigma = float(std)
            if not math.isfinite(sigma) or sigma <= 0:
                raise InitError(f"std must be 'auto' or a positive number, got {std!r}.")
        if mean == "auto":
            mu = resolve(means[group], "mean", group, guard_zero=False)
        else:
            mu = float(mean)
        out[group] = (sigma, mu)
    return out


def draw_init(weights: Mapping[str, torch.Tensor], ranks: Mapping[str, int], rng_for: Callable,
              dist: Mapping[str, tuple[float, float]], std_scope: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """U ~ N(μ, σ²) (out×r) then P ~ N(μ, σ²) (in×r), on the CPU from each matrix's generator."""
    init = {}
    for name, w in weights.items():
        sigma, mu = dist[module_type(name) if std_scope == "module_type" else "*"]
        gen = rng_for(name)
        u = torch.empty(w.shape[0], ranks[name]).normal_(mu, sigma, generator=gen)
        p = torch.empty(w.shape[1], ranks[name]).normal_(mu, sigma, generator=gen)
        init[name] = (u, p)
    return init


def cache_fields(weights, ranks, rng_for, dist, init, *, steps, lr, engine) -> dict[str, Any]:
    """Everything the fit depends on (docs/design.md §4): a different value is a different entry."""
    return {
        "method": "inilora",
        "weights": tensor_digest(weights),
        "dtypes": sorted({str(w.dtype) for w in weights.values()}),
        "targets": sorted(weights),
        "ranks": {k: int(ranks[k]) for k in sorted(ranks)},
        "init": {g: [s, m] for g, (s, m) in sorted(dist.items())},
        "init_digest": tensor_digest({f"{n}::{i}": t for n, f in init.items() for i, t in enumerate(f)}),
        "seed": getattr(rng_for, "seed", None),
        "steps": int(steps),
        "lr": float(lr),
        "schedule": SCHEDULE,
        "engine": engine,
        "engine_version": approx.ENGINE_VERSION[engine],
    }


#: far past any useful fit (the paper's curve is flat after ~5000); guards int64 step counters too
MAX_STEPS = 10**9


def _finite(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InitError(f"inilora option {what} must be a finite number, got {value!r}.")


def _count(value: Any, what: str, *, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InitError(f"inilora option {what} must be a whole number ≥ {least}, got {value!r}.")
    return value


def check_options(opts: Mapping[str, Any]) -> None:
    """Every inilora option checked without weights, so a typo fails before a model loads."""
    opts = {**OPTIONS, **opts}  # the defaults, as the registry derived them from the signature
    steps = _count(opts["steps"], "steps")
    if steps > MAX_STEPS:
        raise InitError(f"inilora option steps must be at most {MAX_STEPS:,} (the paper uses 20,000), got {steps:,}.")
    check_positive(opts["lr"], "inilora option lr")
    std = opts["std"]
    if std != "auto":
        if isinstance(std, str):
            raise InitError(f"inilora option std must be 'auto' or a positive number, got {std!r}.")
        check_positive(std, "inilora option std")
    if opts["round_std"] is not None:
        _count(opts["round_std"], "round_std")
    for key, allowed in (("std_source", ("weight", "weight+bias")), ("std_scope", ("module_type", "all"))):
        if opts[key] not in allowed:
            raise InitError(f"inilora option {key} must be one of {', '.join(allowed)}; got {opts[key]!r}.")
    mean = opts["mean"]
    if mean != "auto":
        if isinstance(mean, str):
            raise InitError(f"inilora option mean must be 'auto' or a number, got {mean!r}.")
        _finite(mean, "mean")
    engine = opts["engine"]
    if engine != approx.AUTO and engine not in approx.ENGINES:
        raise InitError(f"unknown approximation engine {engine!r}; engines: {approx.AUTO}, {', '.join(approx.ENGINES)}.")
    checkpoints = opts["checkpoints"]
    if isinstance(checkpoints, (str, bytes)) or not isinstance(checkpoints, Sequence):
        raise InitError(f"inilora option checkpoints must be a list of iterations, got {checkpoints!r}.")
    bad_ckpt = [t for t in checkpoints if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= steps]
    if bad_ckpt:
        raise InitError(f"checkpoints must be whole numbers in [0, steps={steps}], got {bad_ckpt}.")
    resume = opts["resume"]
    if resume is not True and resume is not False:
        _count(resume, "resume (True, False or a number of steps)", least=1)
    devices = opts["devices"]
    if devices is not None and (isinstance(devices, str) or not all(isinstance(d, str) for d in devices)):
        raise InitError(f"inilora option devices must be a list of device names, got {devices!r}.")
    if opts["optimum"] not in ("top-r", "exact"):
        raise InitError(f"inilora option optimum must be 'top-r' or 'exact', got {opts['optimum']!r}.")
    if opts["factor_rms"] is not None:
        check_positive(opts["factor_rms"], "inilora option factor_rms")


@register("inilora", check=check_options, fitted=True, example_options={"steps": 40},
          summary="IniLoRA: A, B fitted to W0 by Adam on the per-matrix mean MSE (cached); frozen residual")
def inilora(weights, ranks, scalings, rng_for, *, steps=20000, lr=5e-4, std="auto", round_std=3,
            std_source="weight", std_scope="module_type", mean=0.0, engine="auto",
            checkpoints: Sequence[int] = (), resume: bool | int = True, devices: Sequence[str] | None = None,
            optimum: str = "top-r", factor_rms: float | None = None, context: InitContext | None = None) -> InitResult:
    """The registry entry.  ``engine="auto"`` picks the fastest engine available (the key
    records the one that ran); ``resume``: with a cache, the fit snapshots its state next to
    the entry (every 30 s, and every ``resume`` steps when it is a number) and a
    rerun with the same key continues from it; ``devices``: split the matrices over these
    devices.  Under torchrun the matrices are split over the ranks.  ``optimum``: how the
    reported Eckart–Young optimum is computed — ``"top-r"`` (top r singular values, ≤ 1e-4 off) or
    ``"exact"`` (the full float64 SVD, O(d³) per matrix).  Caching, resuming and splitting are
    :func:`~inilora.methods.fitting.cached_fit`'s; this decides what is fitted.  The engine is
    resolved once, here, and passed down (the cache key names the engine that runs).
    ``factor_rms``: a study's control, not the paper's method — all A0 (and all B0) entries scaled
    by one factor each so their RMS is this value: the fit's *direction* at another *size* (e.g.
    LoRA's A size, 1/√(3·fan_in)); the residual follows the scaled factors, so the output at init
    is still the pretrained one. The cache keeps the unscaled fit either way."""
    context = context or InitContext()
    check_options(dict(steps=steps, lr=lr, std=std, round_std=round_std, std_source=std_source,
                       std_scope=std_scope, mean=mean, engine=engine, checkpoints=checkpoints, resume=resume,
                       devices=devices, optimum=optimum, factor_rms=factor_rms))
    dist = init_distribution(weights, std=std, round_std=round_std, std_source=std_source,
                             std_scope=std_scope, mean=mean, biases=context.biases)
    init = draw_init(weights, ranks, rng_for, dist, std_scope)
    info: dict[str, Any] = {"init": {g: {"std": s, "mean": m} for g, (s, m) in dist.items()},
                            "steps": int(steps), "engine": engine, "cache": "off"}
    fit: dict[str, Any] = {}
    if int(steps) == 0:
        unscaled = init
    else:
        engine = resolve_engine(engine, weights, devices, init)
        info["engine"] = str(engine)
        fields = cache_fields(weights, ranks, rng_for, dist, init, steps=steps, lr=lr, engine=str(engine))
        unscaled, fit, more = cached_fit(weights, init, fields, context=context, steps=int(steps), lr=float(lr),
                                         engine=engine, checkpoints=checkpoints, resume=resume, devices=devices,
                                         optimum=optimum)
        info.update(more)
    factors, fits = {}, {}
    for name, (u, p) in unscaled.items():
        root = math.sqrt(scalings[name])
        factors[name] = ((p.T / root).contiguous().float(), (u / root).contiguous().float())
        # docs/design.md §2: the unscaled (U, P) beside the curve and errors; with 0 steps the fit is the draw itself
        known = fit.get(name) or {"rel_error": approx.relative_error(weights[name], u, p),
                                  "optimum": approx.eckart_young(weights[name], u.shape[1], exact=optimum == "exact"),
                                  "losses": []}
        fits[name] = {**known, "U": u, "P": p}
    if factor_rms is not None:
        factors, info["factor_rms"] = _rescaled(factors, float(factor_rms))
    return InitResult(factors=factors, fit=fits, info=info)


def _rescaled(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], target: float):
    """Every A by one factor and every B by another, so each family's RMS over all matrices is ``target``
    (the layers keep their relative sizes and each B·A its direction). Returns the factors and the
    RMS they had before."""
    def rms(i: int) -> float:
        return math.sqrt(sum(float(f[i].double().pow(2).sum()) for f in factors.values())
                         / sum(f[i].numel() for f in factors.values()))

    before = {"A": rms(0), "B": rms(1)}
    if min(before.values()) == 0.0:
        raise InitError("inilora option factor_rms: a fitted factor is all zeros; it has no direction to rescale.")
    ka, kb = target / before["A"], target / before["B"]
    return {n: ((a * ka).contiguous(), (b * kb).contiguous()) for n, (a, b) in factors.items()}, \
        {"target": target, "before": before}


#: the options and their defaults, as the registry derived them from the signature above
OPTIONS = get_method("inilora").options
