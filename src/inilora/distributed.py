"""Initialisation under torchrun / accelerate: compute once, broadcast, identical on every rank.

Every rank of a data-parallel job builds the same model and calls ``get_peft_model``.  Left
alone, each rank would run the init on its own: N times the work for IniLoRA's fit, and the
ranks' residuals and adapters agree only as far as their arithmetic does (an SVD or a fit on
different GPUs, thread counts or library builds can round differently) — and DDP/FSDP then
silently train from different starting points.  So, when ``torch.distributed`` is initialised
with more than one rank:

- a method's result is computed on rank 0 (:func:`on_rank0`) and broadcast; IniLoRA's fit is
  split by matrix across the ranks instead (:func:`split_approximate`: each rank fits its share,
  every share is broadcast from its owner) and the cache is read and written by rank 0 only;
- PEFT's own inits (PiSSA, OLoRA, ...) run on every rank and rank 0's adapter and residual
  weights are then broadcast over them (:func:`broadcast_`);
- the ranks first check they hold the same base weights (:func:`check_same`), since a residual
  computed from different W0 would be wrong however well the factors agree.

The residual ``W0 − s·B0A0`` is then computed locally from identical W0 and identical factors
by identical code: bit-identical on every rank.  Knows no training; imports torch only.
Broadcasts go through the CPU with gloo and through the current CUDA device with NCCL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .approx.split import assign
from .errors import InitError

T = TypeVar("T")


def active() -> bool:
    """True under an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def _comm_device() -> torch.device:
    """Where collective buffers must live for the group's backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_cpu(obj: Any) -> Any:
    """Tensors anywhere in ``obj`` moved to the CPU (pickled CUDA tensors would carry the
    sender's device index to the receivers)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_cpu(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(obj, **{f: _to_cpu(getattr(obj, f)) for f in obj.__dataclass_fields__})
    return obj


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; tensors arrive on the CPU)."""
    if not active():
        return obj
    box = [_to_cpu(obj) if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def on_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    An exception on rank 0 is re-raised on every rank (as the same type where it can be
    rebuilt from its message, else ``InitError``), so no rank waits forever for a broadcast.
    """
    if not active():
        return fn()
    outcome: tuple[str, Any]
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # forwarded below, then raised here too
            broadcast_object(("error", (type(exc), str(exc))))
            raise
        return broadcast_object(outcome)[1]
    kind, value = broadcast_object(None)
    if kind == "error":
        cls, message = value
        try:
            raise cls(f"(rank 0) {message}")
        except TypeError:
            raise InitError(f"rank 0 failed: {cls.__name__}: {message}") from None
    return value


def broadcast_(tensors: Sequence[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values, in place."""
    if not active():
        return
    dev = _comm_device()
    with torch.no_grad():
        for t in tensors:
            if t.device == dev and t.is_contiguous():
                dist.broadcast(t, src=src)
            else:
                buf = t.detach().to(dev).contiguous()
                dist.broadcast(buf, src=src)
                t.copy_(buf)


def check_same(digest: str, what: str = "targeted base weights") -> None:
    """Refuse to go on if the ranks' digests differ (e.g. one rank loaded another checkpoint)."""
    if not active():
        return
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, digest)
    if len(set(seen)) > 1:
        bad = [r for r, d in enumerate(seen) if d != seen[0]]
        raise InitError(f"ranks {bad} hold different {what} than rank 0; every rank must load the same base "
                        "model before initialising (a residual from other weights would be wrong).")


def per_rank(resume: Any) -> Any:
    """A :class:`~inilora.approx.Resume` of this rank's own (file and fingerprint name the
    rank and the world size); unchanged outside a multi-rank job, or for None."""
    if resume is None or not active():
        return resume
    from .approx import Resume

    rank, size = rank_and_size()
    path = resume.path.with_name(f"{resume.path.stem}.rank{rank}of{size}{resume.path.suffix}")
    return Resume(path, f"{resume.fingerprint}|rank{rank}of{size}", every_steps=resume.every_steps,
                  every_seconds=resume.every_seconds)


def share_init(compute: Callable[[], T], *, split: bool = False, digest: str | None = None) -> T:
    """A registry method's result, identical on every rank.

    ``split=False``: computed on rank 0 only, then broadcast.  ``split=True`` (IniLoRA, whose
    fit splits itself over the ranks with :func:`split_approximate`): every rank computes, then
    rank 0's result is broadcast anyway, so nothing downstream depends on the ranks' arithmetic.
    ``digest`` (of the targeted weights) is first checked equal on every rank.
    """
    if not active():
        return compute()
    if digest is not None:
        check_same(digest)
    if not split:
        return on_rank0(compute)
    return broadcast_object(compute())


def split_approximate(approximate: Callable[..., dict], weights: Mapping[str, Tensor],
                      init: Mapping[str, tuple[Tensor, Tensor]], **kw: Any) -> dict:
    """``approximate(weights, init, **kw)`` with the matrices split across the ranks.

    The split is :func:`~inilora.approx.split.assign` over ``d·k·r`` (every rank computes the
    same one); each rank fits its share, then each result is broadcast from its owner, so every
    rank returns the same dict (same order as ``weights``), factors on each weight's device.
    Give each rank its own ``kw["resume"]`` (:func:`per_rank`): the ranks' shares differ.
    """
    if not active():
        return approximate(weights, init, **kw)
    rank, size = rank_and_size()
    names = list(weights)
    owner = assign([weights[n].numel() * init[n][0].shape[1] for n in names], size)
    mine = [n for n, o in zip(names, owner) if o == rank]
    progress = kw.pop("progress", None) if rank != 0 else kw.get("progress")
    if progress is not None:
        kw["progress"] = progress
    try:
        local: tuple[str, Any] = ("ok", approximate({n: weights[n] for n in mine}, {n: init[n] for n in mine}, **kw)
                                  if mine else {})
    except Exception as exc:  # every rank must still reach the broadcasts below, then all raise
        local = ("error", f"{type(exc).__name__}: {exc}")
    shares = [broadcast_object(local if rank == src else None, src=src) for src in range(size)]
    failed = [f"rank {src}: {value}" for src, (kind, value) in enumerate(shares) if kind == "error"]
    if failed:
        raise InitError("the approximation failed on " + "; ".join(failed))
    merged: dict = {}
    for _, share in shares:
        merged.update(share)
    out = {}
    for n in names:
        fit = merged[n]
        home = weights[n].device
        out[n] = _to_device(fit, home)
    return out


def _to_device(fit: Any, device: torch.device) -> Any:
    import dataclasses

    def move(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.to(device)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(move(v) for v in x)
        return x

    if hasattr(fit, "__dataclass_fields__"):
        return dataclasses.replace(fit, **{f: move(getattr(fit, f)) for f in fit.__dataclass_fields__})
    return move(fit)
