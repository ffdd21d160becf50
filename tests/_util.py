"""Helpers shared by the bridge/export tests (imported as a plain module)."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable
from pathlib import Path

import torch

from inilora.bridge import INIT_ADAPTER, targets

TINY_TARGETS = {"gpt2": ["c_attn"], "llama-gqa": ["q_proj", "v_proj"], "roberta": ["query", "value"],
                "bert": ["query", "value"]}


def rho(model, w0: dict[str, torch.Tensor] | None = None, adapter: str = "default") -> float:
    """ρ = max over targeted matrices of s·‖B0A0‖_F / ‖W0‖_F (docs/design.md §1), from the saved A0/B0."""
    init = targets(model, INIT_ADAPTER)
    out = 0.0
    for name, t in targets(model, adapter).items():
        s = float(t.layer.scaling[adapter])
        a0 = init[name].layer.lora_A[INIT_ADAPTER].weight.double()
        b0 = init[name].layer.lora_B[INIT_ADAPTER].weight.double()
        moved = s * (b0 @ a0)
        ref = w0[name].double() if w0 is not None else t.base_weight().double() + moved
        out = max(out, (moved.norm() / ref.norm()).item())
    return out


def bound(r: float) -> float:
    """docs/design.md §1: max|Δout|/max|out| ≤ 2e-5·(1 + ρ) for an fp32 base."""
    return 2e-5 * (1.0 + r)


def perturb(model, scale: float = 0.05, seed: int = 123) -> None:
    """Stand-in for training: move every trainable parameter by seeded noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fork_ranks(target: Callable[[int, int, Path], None], folder: Path, world: int, timeout: float) -> list:
    """Run ``target(rank, port, folder)`` in ``world`` processes forked from this one (which has
    imported torch, transformers and peft already: a fresh interpreter per rank spends most of its
    time importing them); each rank writes ``rank{r}.pt``, or ``rank{r}.err`` and exits non-zero.
    Fails the test naming the rank; returns the ranks' saved objects."""
    import pytest
    import torch

    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=target, args=(rank, port, folder)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    for rank, p in enumerate(procs):
        if p.is_alive():
            p.kill()
        if p.exitcode != 0:
            err = folder / f"rank{rank}.err"
            pytest.fail(f"rank {rank} failed ({p.exitcode}):\n{err.read_text()[-6000:] if err.exists() else ''}")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]
