"""Which build of the "cpu-fused" kernel runs here: checked once, then timed on the caller's shapes.

Two decisions, both made on the user's own machine, never by ISA name (docs/design.md §7):

- **Trust on first use** (:mod:`.trust`). A build (one lane layout: 16, 8 or 4 fp32 lanes) that
  has not been checked on this CPU is compared once with "torch"; the verdict is kept under the
  build's name (a hash of the source, flags, CPU model and flags, torch).  A build that fails it
  is never used; if none passes, "cpu-fused" resolves to "torch" with a warning, before any
  cache key is made, so the key names the engine that really ran.
- **Autotune.** Among the trusted layouts, each is timed on the caller's matrices (all of
  them, or one per distinct shape for big models) for a few steps, interleaved over three
  rounds, minimum per layout (robust to a noisy shared machine; ≲ 2 s in all); the fastest
  is kept beside the builds, keyed by the builds, the shapes and the thread count.  On an
  AMD EPYC Zen 4 the native 16-lane layout is 1.8× slower than the 8-lane one (bench/RESULTS.md).

``INILORA_CPU_LANES=16|8|4`` forces a layout (tests, bisecting); it is still trust-checked.

:func:`cpu_fused_engine` is the engine registry's entry: the layout (chosen here, usually already
by ``approx.resolve_engine``, which passes it down) and the kernel run with it — never another
engine under this one's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import cpu_fused, trust

log = logging.getLogger("inilora")

WIDTHS = (16, 8, 4)
ENV = "INILORA_CPU_LANES"
#: seconds one layout's timing aims at per round (3 rounds × 3 layouts ≈ 1–2 s)
TIME_BUDGET_S = 0.15

#: what the last :func:`choose_width` decided (for reports): width, ms/step per layout, source
last_choice: dict[str, Any] = {}


def candidate_widths() -> tuple[int, ...]:
    """The layouts to consider: the forced one, else all three (each builds anywhere: a wider
    layout than the ISA's is emulated, and timing, not the ISA name, decides)."""
    forced = os.environ.get(ENV)
    if forced:
        if forced.strip() not in {str(w) for w in WIDTHS}:
            raise ValueError(f"{ENV}={forced!r}: expected one of {', '.join(map(str, WIDTHS))}")
        return (int(forced),)
    return WIDTHS


def _fused_run(lib, ws, inits):
    return cpu_fused.fit_cpu_fused(ws, inits, steps=trust.STEPS, log_every=100, lib=lib, threads=1)


def trusted_widths() -> list[int]:
    """The candidate layouts that build here and passed (now or before) the check against "torch"."""
    out = []
    for width in candidate_widths():
        try:
            lib = cpu_fused.load_library(width)
        except cpu_fused.CpuFusedUnavailable:
            continue
        if trust.trusted(cpu_fused.build_name(width), lambda ws, ins, lib=lib: _fused_run(lib, ws, ins),
                         what=f"the cpu-fused kernel with {width} fp32 lanes"):
            out.append(width)
    return out


def _sample(weights: Sequence[Tensor], inits: Sequence[tuple[Tensor, Tensor]]):
    """All matrices when their W is small (≤ 256 MiB); else one per distinct (shape, rank)."""
    if sum(w.numel() for w in weights) * 4 <= 256 << 20:
        return list(weights), list(inits)
    seen, ws, ins = set(), [], []
    for w, i in zip(weights, inits):
        key = (tuple(w.shape), i[0].shape[1])
        if key not in seen and len(ws) < 4:
            seen.add(key)
            ws.append(w)
            ins.append(i)
    return ws, ins


def choose_width(weights: Sequence[Tensor], inits: Sequence[tuple[Tensor, Tensor]], *,
                 threads: int | None = None, timer=None) -> int | None:
    """The fastest trusted layout for these shapes (measured once, then remembered); None when
    no layout is trusted here.  ``timer(width, lib, ws, inits, steps) -> s/step`` is for tests."""
    widths = trusted_widths()
    if not widths:
        return None
    nthreads = max(1, int(threads if threads is not None else torch.get_num_threads()))
    shapes = sorted({(tuple(w.shape), str(w.dtype), int(i[0].shape[1])) for w, i in zip(weights, inits)})
    key = hashlib.sha256(json.dumps([[cpu_fused.build_name(w) for w in widths], shapes, nthreads,
                                     len(weights)]).encode()).hexdigest()[:24]
    known = trust.read("layouts.json").get(key)
    if known is not None and known.get("width") in widths:
        last_choice.clear()
        last_choice.update(known, source="remembered")
        return int(known["width"])
    if len(widths) == 1:
        last_choice.clear()
        last_choice.update(width=widths[0], ms_per_step={}, source="only trusted layout" if not os.environ.get(ENV)
                           else f"forced by {ENV}")
        return widths[0]
    timer = timer or (lambda width, lib, ws, ins, steps: cpu_fused.time_steps(lib, ws, ins, steps=steps,
                                                                              threads=nthreads))
    ws, ins = _sample(weights, inits)
    flops = sum(4 * w.shape[0] * w.shape[1] * i[0].shape[1] for w, i in zip(ws, ins))
    steps = int(max(2, min(30, TIME_BUDGET_S / max(flops / 100e9, 1e-6))))  # assume ~100 GFLOP/s to size it
    best: dict[int, float] = {}
    t0 = time.perf_counter()
    for _ in range(3):  # interleaved rounds, minimum per layout: robust to a neighbour's burst
        for width in widths:
            per_step = timer(width, cpu_fused.load_library(width), ws, ins, steps)
            best[width] = min(best.get(width, float("inf")), per_step)
    chosen = min(widths, key=lambda w: best[w])
    record = {"width": chosen, "ms_per_step": {str(w): round(best[w] * 1e3, 4) for w in widths},
              "timed_on": f"{len(ws)} of {len(weights)} matrices, {steps} steps × 3 rounds",
              "seconds": round(time.perf_counter() - t0, 2), "threads": nthreads,
              "chosen": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    trust.write("layouts.json", key, record)
    last_choice.clear()
    last_choice.update(record, source="measured now")
    log.info("inilora: cpu-fused layout: %d fp32 lanes (%s ms/step measured here)", chosen,
             ", ".join(f"{w} lanes {best[w] * 1e3:.2f}" for w in widths))
    return chosen


def cpu_fused_engine(weights: Sequence[Tensor], inits: Sequence[tuple[Tensor, Tensor]], *,
                     vector_width: int | None = None, **kw: Any) -> list:
    """Registry entry: every matrix on the CPU at once, with the lane layout ``vector_width``
    (decided by ``approx.resolve_engine``), or when None the fastest trusted one for these shapes.
    ``resolve_engine`` has already decided that this engine runs (CPU weights, none empty, a
    trusted build); anything else is an error here, never a quiet switch to another engine."""
    if any(w.device.type != "cpu" for w in weights):
        raise ValueError("the cpu-fused engine runs on CPU weights only; resolve_engine picks another engine")
    if any(w.numel() == 0 for w in weights):
        raise ValueError("the cpu-fused engine does not fit empty matrices; resolve_engine picks 'torch' for them")
    if vector_width is None:
        vector_width = choose_width(weights, inits, threads=kw.get("threads"))
        if vector_width is None:
            raise cpu_fused.CpuFusedUnavailable("no lane layout of the kernel passed its check against 'torch' here")
    lib = cpu_fused.load_library(vector_width)
    if kw.get("resume") is not None:  # the padded buffers depend on the layout: never restore across layouts
        kw = {**kw, "resume": kw["resume"].bind(f"lanes:{vector_width}")}
    return cpu_fused.fit_cpu_fused(weights, inits, lib=lib, **kw)


def describe() -> str | None:
    """One line for reports: the layout that ran and what the timing measured."""
    if not last_choice:
        return None
    ms = last_choice.get("ms_per_step") or {}
    timing = ", ".join(f"{w} lanes {v:.2f} ms/step" for w, v in ms.items())
    return f"{last_choice['width']} fp32 lanes ({last_choice.get('source')}{': ' + timing if timing else ''})"


__all__ = ["ENV", "WIDTHS", "candidate_widths", "choose_width", "cpu_fused_engine", "describe", "trusted_widths"]
