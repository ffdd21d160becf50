"""Helpers shared by the engine tests: seeded small problems and the docs/design.md §3 agreement checks.

Imported as a plain module (``from _fixtures import ...``): pytest puts this folder on the path,
and so does running an engine test file as a script (the Triton interpreter subprocess).
"""

from __future__ import annotations

import torch


def problem(shapes, r=8, w_std=0.02, f_std=0.02, seed=0, dtype=torch.float32, device="cpu"):
    """Seeded W ~ N(0, w_std²) and initial factors ~ N(0, f_std²), drawn in name order (W, U0, P0).

    ``shapes[name]`` is ``(d, k)`` (rank ``r``, dtype ``dtype``) or ``(d, k, r, dtype[, transposed])``;
    a transposed entry is a non-contiguous view (as a Conv1D weight is once oriented).  ``r``,
    ``w_std`` and ``f_std`` may be dicts by name.  W is stored in its dtype on ``device``; the
    factors stay fp32 on the CPU.
    """
    g = torch.Generator().manual_seed(seed)
    W, init = {}, {}
    for name, spec in shapes.items():
        d, k, *rest = spec
        rr = rest[0] if rest else (r[name] if isinstance(r, dict) else r)
        dt = rest[1] if len(rest) > 1 else dtype
        ws = w_std[name] if isinstance(w_std, dict) else w_std
        fs = f_std[name] if isinstance(f_std, dict) else f_std
        if len(rest) > 2 and rest[2]:
            W[name] = (torch.randn(k, d, generator=g) * ws).to(device, dt).T
        else:
            W[name] = (torch.randn(d, k, generator=g) * ws).to(device, dt)
        init[name] = (torch.randn(d, rr, generator=g) * fs, torch.randn(k, rr, generator=g) * fs)
    return W, init


def rel(x, y) -> float:
    """``‖x − y‖ / ‖y‖``."""
    return ((x - y).norm() / y.norm()).item()


def assert_matches(ref, ours, names, tol=1e-3, loss_tol=0.01) -> None:
    """docs/design.md §3 between two ``approximate`` results: ‖B0A0 − ref‖/‖ref‖ ≤ tol, the same log
    steps with every loss within ``loss_tol``, and the same checkpoints within ``tol``."""
    for n in names:
        a, b = ref[n], ours[n]
        assert b.U.shape == a.U.shape and b.P.shape == a.P.shape
        assert b.U.dtype == torch.float32 and b.U.is_contiguous() and b.P.is_contiguous()
        assert rel(b.U.cpu() @ b.P.cpu().T, a.U.cpu() @ a.P.cpu().T) <= tol, n
        assert [t for t, _ in a.losses] == [t for t, _ in b.losses], n
        for (t, la), (_, lb) in zip(a.losses, b.losses):
            assert abs(lb - la) <= loss_tol * la, (n, t, la, lb)
        assert sorted(a.checkpoints) == sorted(b.checkpoints), n
        for t in a.checkpoints:
            ua, pa = a.checkpoints[t]
            ub, pb = b.checkpoints[t]
            assert rel(ub.cpu() @ pb.cpu().T, ua.cpu() @ pa.cpu().T) <= tol, (n, t)


def close(a, b, tol) -> None:
    """Two trajectories: products within ``tol`` relative, same log steps, losses within ``tol``."""
    assert rel(a.U @ a.P.T, b.U @ b.P.T) <= tol
    assert [t for t, _ in a.losses] == [t for t, _ in b.losses]
    for (_, la), (_, lb) in zip(a.losses, b.losses):
        assert abs(la - lb) <= tol * lb
