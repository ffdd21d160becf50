"""Trust on first use: a fast engine is compared once with the "torch" engine before it is used.

A cpu-fused build (one lane layout, on one CPU model) or the Triton kernel on a GPU model no one
here has run it on is checked on a short fit of three seeded random matrices (300 steps) against
"torch" on the same device, with docs/design.md §3's tolerances: the factors' product within 1e-3 (relative)
and every logged loss within 1 %.  The verdict is kept in ``$INILORA_CACHE/build/trust.json`` under
a key that names the build and the hardware, so the check (≈ 0.1 s on a CPU) runs once; an engine
that disagrees is warned about and never used there.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .result import Trajectory

log = logging.getLogger("inilora")

#: docs/design.md §3: product of the factors (relative Frobenius) and logged losses (relative)
PRODUCT_TOL, LOSS_TOL = 1e-3, 1e-2
STEPS = 300
VERDICTS = "trust.json"

Run = Callable[[list[Tensor], list[tuple[Tensor, Tensor]]], Sequence[Trajectory]]


def state_dir():
    """Where verdicts (and the cpu-fused layout choices) are kept: beside the builds they are about."""
    from ..fileio import cache_root

    return cache_root() / "build"


def read(name: str) -> dict[str, Any]:
    try:
        return json.loads((state_dir() / name).read_text())
    except (OSError, ValueError):
        return {}


def write(name: str, key: str, value: Any) -> None:
    from ..fileio import atomic_write_json

    data = read(name)
    data[key] = value
    try:
        atomic_write_json(state_dir() / name, data)
    except OSError as exc:  # a read-only cache: decide again next time
        log.debug("inilora: cannot record %s in %s: %s", key, name, exc)


def case(device: str | torch.device = "cpu") -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
    """Three seeded random matrices (two r = 8 shapes, one with r = 3) and their initial factors."""
    g = torch.Generator().manual_seed(0)
    ws, inits = [], []
    for d, k, r in ((96, 160, 8), (160, 96, 8), (40, 72, 3)):
        ws.append((torch.randn(d, k, generator=g) * 0.2).to(device))
        inits.append(((torch.randn(d, r, generator=g) * 0.2).to(device), (torch.randn(k, r, generator=g) * 0.2).to(device)))
    return ws, inits


def compare(got: Sequence[Trajectory], ref: Sequence[Trajectory]) -> str | None:
    """None when ``got`` follows ``ref`` to docs/design.md §3's tolerances, else what differed."""
    for i, (a, b) in enumerate(zip(got, ref)):
        pa, pb = (a.U @ a.P.T).float().cpu(), (b.U @ b.P.T).float().cpu()
        rel = float((pa - pb).norm() / pb.norm())
        if not rel <= PRODUCT_TOL:
            return f"matrix {i}: factors' product {rel:.2g} off the torch engine (tolerance {PRODUCT_TOL})"
        for (t, la), (_, lb) in zip(a.losses, b.losses):
            if not abs(la - lb) <= LOSS_TOL * abs(lb):
                return f"matrix {i}: loss at step {t} {la:.6g} vs {lb:.6g} (tolerance {LOSS_TOL:.0%})"
    return None


def trusted(key: str, run: Run, *, what: str, device: str | torch.device = "cpu") -> bool:
    """Whether the engine behind ``run`` agrees with "torch" here: checked once, then remembered under ``key``."""
    verdict = read(VERDICTS).get(key)
    if verdict is None:
        from .batched import fit_batched

        t0 = time.perf_counter()
        ws, inits = case(device)
        problem = compare(run(ws, inits), fit_batched(ws, inits, steps=STEPS, log_every=100))
        verdict = {"ok": problem is None, "problem": problem, "seconds": round(time.perf_counter() - t0, 2),
                   "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "what": what}
        write(VERDICTS, key, verdict)
        if problem is not None:
            warnings.warn(f"inilora: {what} disagrees with the 'torch' engine here ({problem}); it will not be "
                          "used on this machine.", RuntimeWarning, stacklevel=3)
    return bool(verdict.get("ok"))


__all__ = ["LOSS_TOL", "PRODUCT_TOL", "STEPS", "case", "compare", "read", "state_dir", "trusted", "write"]
