"""The oracle: the released per-matrix autograd loop, exactly as docs/design.md §3 describes it.

Slow on purpose (one Adam and one StepLR per matrix, autograd through ``mse_loss``); every
fast engine is tested against it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .result import (
    BETAS,
    EPS,
    GAMMA,
    LOG_EVERY,
    LR,
    STEP_SIZE,
    STEPS,
    EngineProgress,
    Trajectory,
    check_run,
    fp32_matmul,
)


def fit_reference(
    W: Tensor,
    U0: Tensor,
    P0: Tensor,
    *,
    steps: int = STEPS,
    lr: float = LR,
    log_every: int = LOG_EVERY,
    checkpoints: Sequence[int] = (),
    progress: EngineProgress | None = None,
) -> Trajectory:
    """Fit ``U Pᵀ ≈ W`` with ``mse_loss`` (mean over the d·k entries) and Adam + StepLR.

    The loss is taken against ``W.float()``: W is read in its stored dtype and only ever
    cast up. Order per iteration as released: zero_grad, backward, ``scheduler.step()``,
    ``optimizer.step()`` — so iteration t uses ``lr_at(t)``. Logged: the loss computed at
    every t with ``t % log_every == 0`` and the loss of the final factors at ``t = steps``.
    ``checkpoints[t]`` holds the factors after t updates (0: the initial ones).
    """
    wanted = check_run(steps, log_every, checkpoints)
    W32 = W.detach().float()
    U = U0.detach().to(W.device, torch.float32, copy=True).requires_grad_(True)
    P = P0.detach().to(W.device, torch.float32, copy=True).requires_grad_(True)
    opt = torch.optim.Adam([U, P], lr=lr, betas=BETAS, eps=EPS, weight_decay=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_SIZE, gamma=GAMMA)
    losses: list[tuple[int, float]] = []
    snaps: dict[int, tuple[Tensor, Tensor]] = {}

    def log(t: int, loss: Tensor) -> None:
        value = loss.item()
        losses.append((t, value))
        if progress is not None:
            progress(t, value)

    with fp32_matmul(), warnings.catch_warnings():
        # The released code steps the scheduler first; torch warns about that order.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for t in range(steps):
            if t in wanted:
                snaps[t] = (U.detach().clone(), P.detach().clone())
            opt.zero_grad()
            loss = F.mse_loss(U @ P.T, W32)
            if t % log_every == 0:
                log(t, loss.detach())
            loss.backward()
            sched.step()
            opt.step()
        with torch.no_grad():
            log(steps, F.mse_loss(U @ P.T, W32))
    if steps in wanted:
        snaps[steps] = (U.detach().clone(), P.detach().clone())
    return Trajectory(U=U.detach(), P=P.detach(), losses=losses, checkpoints=snaps)
