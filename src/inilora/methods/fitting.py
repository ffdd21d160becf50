"""Cached, resumable, rank-split fitting: what any *fitted* init method needs, in one place.

A fitted method (``@register(..., fitted=True)``, like ``inilora``) decides *what* to fit — the
initial factors and the fields that identify the fit — and hands the rest here:

- the fit cache (docs/design.md §4): a hit skips the work; a miss stores the final factors and one entry
  per checkpoint, so every point of an iterations sweep is a hit later;
- resume: the fit snapshots its state beside the cache entry and a rerun continues it;
- distribution: under torchrun the matrices are split over the ranks and every rank ends with
  the same factors; the cache is read and written on rank 0 only;
- progress in steps, and the engine that ran recorded (with its layout, for reports).

The method receives these through :class:`InitContext` (the bridge fills it; the method's
function takes ``context`` as a keyword).  Nothing here knows which method calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import approx, distributed
from ..cache import FitCache
from ..errors import InitError

Tensor = torch.Tensor


@dataclass
class InitContext:
    """What the bridge hands a method besides weights and options (docs/design.md §2's signature stays one)."""

    #: the fit cache (None: caching off)
    cache: FitCache | None = None
    #: ``progress(done, total, loss)`` for long work; the fitting helper reports steps
    progress: Callable[[int, int, float], None] | None = None
    #: the targeted modules' bias vectors, by canonical name (absent ones left out)
    biases: Mapping[str, Tensor] = field(default_factory=dict)


def resolve_engine(engine: str, weights: Mapping[str, Tensor], devices: Sequence[str] | None,
                   init: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> approx.ResolvedEngine:
    """The engine that will run (``"auto"`` resolved; with ``init``, the cpu-fused layout for these
    shapes too), decided once, on rank 0 under torchrun: the cache key must name it exactly, and
    every rank must run the same one.  Pass the result on to :func:`cached_fit` as it is."""
    where = [torch.device(d) for d in devices] if devices else [w.device for w in weights.values()]
    names = list(weights)
    ws = [weights[n] for n in names]
    inits = [init[n] for n in names] if init is not None else None
    try:
        return distributed.on_rank0(lambda: approx.resolve_engine(engine, where, weights=ws, inits=inits))
    except ValueError as exc:
        raise InitError(str(exc)) from None


def _in_steps(progress, steps: int):
    """The engines count matrix-iterations; a person counts steps (20000, not 1,200,000)."""
    if progress is None:
        return None
    return lambda done, total, loss: progress(round(done * steps / total) if total else steps, steps, loss)


def _every(resume: bool | int) -> dict[str, Any]:
    """``resume=True``: snapshot every 30 s; an int N: every N steps too."""
    if resume is True:
        return {}
    if isinstance(resume, int) and resume >= 1:
        return {"every_steps": int(resume)}
    raise InitError(f"resume must be True, False or a number of steps ≥ 1, got {resume!r}.")


def _exact_optima(weights: Mapping[str, Tensor], unscaled: Mapping[str, tuple[Tensor, Tensor]],
                  report: Mapping[str, Any]) -> dict[str, Any]:
    """A cached report with its optimum recomputed by the full SVD (``optimum="exact"`` asked for:
    the entry may hold the top-r value, which the cache key does not distinguish — the fit is the same)."""
    return {n: {**f, "optimum": approx.eckart_young(weights[n], unscaled[n][0].shape[1], exact=True)}
            for n, f in report.items()}


def _report(weights: Mapping[str, Tensor], results: Mapping[str, Any], t: int | None = None) -> dict[str, Any]:
    if t is None:
        return {n: {"rel_error": f.rel_error, "optimum": f.optimum, "losses": f.losses} for n, f in results.items()}
    return {n: {"rel_error": approx.relative_error(weights[n], *r.checkpoints[t]), "optimum": r.optimum,
                "losses": [x for x in r.losses if x[0] <= t]} for n, r in results.items()}


def cached_fit(weights: Mapping[str, Tensor], init: Mapping[str, tuple[Tensor, Tensor]], fields: dict[str, Any], *,
               context: InitContext, steps: int, lr: float, engine: str, checkpoints: Sequence[int] = (),
               resume: bool | int = True, devices: Sequence[str] | None = None,
               optimum: str = "top-r") -> tuple[dict, dict, dict]:
    """Fit ``U Pᵀ ≈ W`` from ``init`` (or take it from the cache); ``engine`` is already resolved
    (:func:`resolve_engine`: run as it is, never decided again) and part of ``fields``, the cache
    key.  Returns the unscaled factors ``{name: (U, P)}``, the per-matrix report (rel_error,
    optimum — ``optimum`` says how, see :func:`inilora.approx.approximate` — and losses) and info
    for the report (``cache``: hit / miss / off, ``resumed_from``, ``engine_detail``)."""
    if not isinstance(engine, approx.ResolvedEngine):
        raise TypeError("cached_fit runs an engine resolved by resolve_engine (the cache key must name the engine "
                        f"that runs), got {engine!r}")
    cache = context.cache
    todo = sorted({int(t) for t in checkpoints if 0 < int(t) < int(steps)})
    info: dict[str, Any] = {"cache": "off"}

    def lookup():
        found = cache.get(fields) if cache is not None else None
        if found is not None and any(cache.get({**fields, "steps": t}) is None for t in todo):
            found = None  # checkpoints asked for but not all cached: one run stores them all
        return found

    hit = distributed.on_rank0(lookup)
    if hit is not None:
        unscaled, meta = hit
        info["cache"] = "hit"
        report = meta["report"] if optimum != "exact" else _exact_optima(weights, unscaled, meta["report"])
        return unscaled, report, info
    if cache is not None:
        cache.check_writable()
    snap = distributed.per_rank(
        approx.Resume(cache.resume_path(fields), FitCache.key(fields), **_every(resume))
        if cache is not None and resume else None)
    results = distributed.split_approximate(
        approx.approximate, weights, init, steps=int(steps), lr=float(lr), engine=engine,
        checkpoints=todo, progress=_in_steps(context.progress, int(steps)), resume=snap, devices=devices,
        optimum=optimum)
    unscaled = {n: (r.U, r.P) for n, r in results.items()}
    fit = _report(weights, results)
    detail = approx.engine_detail(engine)
    if detail:
        info["engine_detail"] = detail
    if cache is not None:
        def store() -> None:  # the final entry, then one per checkpoint (Fig. 2's points are hits)
            cache.put(fields, unscaled, fit)
            for t in todo:
                cache.put({**fields, "steps": t}, {n: r.checkpoints[t] for n, r in results.items()},
                          _report(weights, results, t))

        distributed.on_rank0(store)
        info["cache"] = "miss"
    if snap is not None:
        if snap.resumed_from is not None:
            info["resumed_from"] = snap.resumed_from
        snap.clear()  # the entry is written: the snapshot has served its purpose
    return unscaled, fit, info


__all__ = ["InitContext", "cached_fit", "resolve_engine"]
