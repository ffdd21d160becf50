"""The portable fast engine ("torch"): the reference's math, batched, without autograd.

Matrices with the same (device, d, k, r) are stacked and advanced together with ``bmm``.
With ``E = U Pᵀ − W`` and the per-matrix mean ``L = ‖E‖²/(d·k)``::

    ∂L/∂U = c (U (PᵀP) − W P),   ∂L/∂P = c (P (UᵀU) − Wᵀ U),   c = 2/(d·k)

so E (d×k) is never formed on ordinary steps: the only large products are ``W P`` and
``Wᵀ U`` (2·d·k·r flops each). The factors are held transposed (``Uᵀ``: r×d, ``Pᵀ``: r×k)
because ``Uᵀ W`` and ``Pᵀ Wᵀ`` are the faster GEMM shapes on CPU (measured 2–4× faster than
``W P`` with a skinny right operand). Each group divides by its own d·k: matrices never
share a mean (docs/design.md §3 — on big matrices the gradients sit near Adam's eps, so this matters).

Adam is elementwise, so its state lives in one flat fp32 buffer per device holding every
factor of every matrix (one fused update instead of one per tensor), updated with the
same op sequence as ``torch.optim.Adam``'s default single-tensor path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .driver import drive
from .result import (
    BETAS,
    EPS,
    LOG_EVERY,
    LR,
    STEPS,
    EngineProgress,
    Trajectory,
    check_run,
    factor_of,
    fp32_matmul,
    in_input_order,
    lr_at,
)
from .resume import Resume

_LOSS_CHUNK = 1 << 25  # elements of E formed at once when logging (128 MiB in fp32)


@dataclass
class _Group:
    """Matrices of one shape: views into the flat buffers plus GEMM scratch space."""

    index: list[int]  # positions in the caller's list
    W: Tensor  # (n, d, k) fp32
    Ut: Tensor  # (n, r, d) view into the parameter buffer
    Pt: Tensor  # (n, r, k)
    gUt: Tensor  # gradient views, same shapes
    gPt: Tensor
    scale: float  # 2 / (d·k)
    UtU: Tensor  # (n, r, r) scratch
    PtP: Tensor
    UtW: Tensor  # (n, r, k) = (Wᵀ U)ᵀ
    PtWt: Tensor  # (n, r, d) = (W P)ᵀ

    def gradients(self) -> None:
        """Write ∂L/∂Uᵀ, ∂L/∂Pᵀ of every matrix of the group into the gradient buffer."""
        torch.bmm(self.Ut, self.Ut.mT, out=self.UtU)
        torch.bmm(self.Pt, self.Pt.mT, out=self.PtP)
        torch.bmm(self.Ut, self.W, out=self.UtW)
        torch.bmm(self.Pt, self.W.mT, out=self.PtWt)
        c = self.scale
        # (∂L/∂U)ᵀ = c (PᵀP Uᵀ − Pᵀ Wᵀ);  (∂L/∂P)ᵀ = c (UᵀU Pᵀ − Uᵀ W)
        torch.baddbmm(self.PtWt, self.PtP, self.Ut, beta=-c, alpha=c, out=self.gUt)
        torch.baddbmm(self.UtW, self.UtU, self.Pt, beta=-c, alpha=c, out=self.gPt)

    def losses(self) -> Tensor:
        """Per-matrix MSE with E formed explicitly, as the reference does.

        Only on logging steps. The expanded form ‖W‖² − 2 tr(Uᵀ W P) + tr(UᵀU PᵀP) would
        be free but cancels catastrophically once the fit is good; E costs about one step.
        Chunked so the scratch stays ≤ ``_LOSS_CHUNK`` elements (or one matrix).
        """
        n, d, k = self.W.shape
        per = max(1, _LOSS_CHUNK // (d * k))
        out = []
        for s in range(0, n, per):
            E = torch.baddbmm(self.W[s : s + per], self.Ut[s : s + per].mT, self.Pt[s : s + per], beta=-1)
            # torch.sum reduces pairwise (cascade): an fp32 norm of 4M terms drifts ~1e-4
            out.append(E.square_().sum(dim=(1, 2)).div_(d * k))
        return torch.cat(out)

    def factors(self, i: int) -> tuple[Tensor, Tensor]:
        """Copies of (U, P) of the group's i-th matrix in the public (d×r, k×r) layout."""
        return (
            self.Ut[i].mT.clone(memory_format=torch.contiguous_format),
            self.Pt[i].mT.clone(memory_format=torch.contiguous_format),
        )


class _Adam:
    """Adam on one flat fp32 buffer; the op order of torch.optim.Adam (single-tensor path)."""

    def __init__(self, params: Tensor) -> None:
        self.params = params
        self.grad = torch.zeros_like(params)
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.denom = torch.empty_like(params)
        self.step = 0

    def update(self, lr: float) -> None:
        beta1, beta2 = BETAS
        self.step += 1
        bias_correction1 = 1 - beta1**self.step
        bias_correction2 = 1 - beta2**self.step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        torch.sqrt(self.exp_avg_sq, out=self.denom)
        self.denom.div_(bias_correction2_sqrt).add_(EPS)
        self.params.addcdiv_(self.exp_avg, self.denom, value=-step_size)


def _stack_fp32(ws: list[Tensor]) -> Tensor:
    """Stack as fp32 (exact for bf16/fp16/fp32 weights: W is only ever cast up)."""
    if len(ws) == 1:
        return ws[0].detach().to(torch.float32).unsqueeze(0).contiguous()
    return torch.stack([w.detach().to(torch.float32) for w in ws])


def _build(
    weights: Sequence[Tensor], inits: Sequence[tuple[Tensor, Tensor]]
) -> tuple[list[_Group], list[_Adam]]:
    keys: dict[tuple, list[int]] = {}
    for i, (W, (U0, _)) in enumerate(zip(weights, inits)):
        d, k = W.shape
        keys.setdefault((W.device, d, k, U0.shape[1]), []).append(i)
    sizes: dict[torch.device, int] = {}
    for (dev, d, k, r), idx in keys.items():
        sizes[dev] = sizes.get(dev, 0) + len(idx) * r * (d + k)
    adams = {dev: _Adam(torch.empty(n, dtype=torch.float32, device=dev)) for dev, n in sizes.items()}
    offsets = dict.fromkeys(sizes, 0)
    groups = []
    for (dev, d, k, r), idx in keys.items():
        n, o, adam = len(idx), offsets[dev], adams[dev]
        nu, npp = n * r * d, n * r * k
        Ut = adam.params[o : o + nu].view(n, r, d)
        Pt = adam.params[o + nu : o + nu + npp].view(n, r, k)
        for j, i in enumerate(idx):
            U0, P0 = inits[i]
            Ut[j].copy_(U0.detach().to(dev, torch.float32).T)
            Pt[j].copy_(P0.detach().to(dev, torch.float32).T)
        f32 = dict(dtype=torch.float32, device=dev)
        groups.append(
            _Group(
                index=idx,
                W=_stack_fp32([weights[i] for i in idx]),
                Ut=Ut,
                Pt=Pt,
                gUt=adam.grad[o : o + nu].view(n, r, d),
                gPt=adam.grad[o + nu : o + nu + npp].view(n, r, k),
                scale=2.0 / (d * k),
                UtU=torch.empty(n, r, r, **f32),
                PtP=torch.empty(n, r, r, **f32),
                UtW=torch.empty(n, r, k, **f32),
                PtWt=torch.empty(n, r, d, **f32),
            )
        )
        offsets[dev] = o + nu + npp
    return groups, list(adams.values())


def _buffers(adams: list[_Adam]) -> dict[str, Tensor]:
    """The whole optimisation state (besides the step count): factors and Adam's moments."""
    out = {}
    for j, adam in enumerate(adams):
        out[f"{j}.params"], out[f"{j}.exp_avg"], out[f"{j}.exp_avg_sq"] = adam.params, adam.exp_avg, adam.exp_avg_sq
    return out


def fit_batched(
    weights: Sequence[Tensor],
    inits: Sequence[tuple[Tensor, Tensor]],
    *,
    steps: int = STEPS,
    lr: float = LR,
    log_every: int = LOG_EVERY,
    checkpoints: Sequence[int] = (),
    progress: EngineProgress | None = None,
    resume: Resume | None = None,
) -> list[Trajectory]:
    """Fit every ``U_i P_iᵀ ≈ W_i`` at once; same semantics and outputs as ``fit_reference``.

    ``inits[i] = (U0, P0)`` (d×r, k×r). Returns one Trajectory per matrix, in input order.
    ``progress(t, loss)`` is called at every logged iteration with the mean of the
    matrices' losses (display only: each matrix is optimised on its own mean).
    ``resume`` (see :mod:`.resume`): continue from its snapshot and save new ones periodically.
    """
    wanted = check_run(steps, log_every, checkpoints, weights, inits)
    if not weights:
        return []
    with fp32_matmul(), torch.no_grad():
        groups, adams = _build(weights, inits)
        return drive(_State(groups, adams, lr, len(weights)), steps=steps, log_every=log_every, wanted=wanted,
                     progress=progress, resume=resume)


class _State:
    """The batched fit behind the shared driver: groups of stacked matrices, one Adam per device."""

    def __init__(self, groups: list[_Group], adams: list[_Adam], lr: float, n: int) -> None:
        self.groups, self.adams, self.lr, self.n = groups, adams, lr, n

    def buffers(self, t: int) -> dict[str, Tensor]:
        return _buffers(self.adams)

    def restored(self, t: int) -> None:
        for adam in self.adams:
            adam.step = t  # Adam's step is the iteration count, not a saved buffer

    def advance(self, t0: int, t1: int) -> None:
        for t in range(t0, t1):
            for g in self.groups:
                g.gradients()
            rate = lr_at(t, self.lr)
            for adam in self.adams:
                adam.update(rate)

    def losses(self) -> list[float]:
        return in_input_order(self.groups, torch.cat([g.losses() for g in self.groups]).tolist())

    def factors(self, i: int) -> tuple[Tensor, Tensor]:
        return factor_of(self.groups, i)
