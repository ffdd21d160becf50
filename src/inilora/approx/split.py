"""Deterministic split of matrices over workers (devices, or torchrun ranks).

Every worker must compute the same assignment without talking to the others, so it is a pure
function of the shapes: longest-processing-time first (cost ``d·k·r``, the work of one step),
ties broken by input position, each matrix to the least-loaded worker (lowest index on ties).
"""

from __future__ import annotations

from collections.abc import Sequence


def assign(costs: Sequence[float], parts: int) -> list[int]:
    """``owner[i]`` in ``range(parts)`` for every cost; balanced greedily, deterministic."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    owner = [0] * len(costs)
    load = [0.0] * parts
    for i in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        j = min(range(parts), key=lambda p: (load[p], p))
        owner[i] = j
        load[j] += float(costs[i])
    return owner
