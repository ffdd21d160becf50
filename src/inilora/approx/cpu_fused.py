"""The "cpu-fused" engine: the "torch" engine's math as one C++ kernel (docs/design.md §3, §7).

Per step and matrix, one read of W feeds both ``W P`` and ``Wᵀ U`` (the two products that
dominate the step: 2·d·k·r flops each); the r×r Gram matrices, the analytic gradients
``c (U (PᵀP) − W P)`` / ``c (P (UᵀU) − Wᵀ U)`` with each matrix's own ``c = 2/(d·k)``, and
Adam (torch.optim.Adam's formula, lr from ``lr_at``) follow at once.  All the steps between
two log points / checkpoints run in one call (one OpenMP region, no Python); since matrices
are independent there, each matrix that fits in cache runs those steps in a row, so its W is
read from cache rather than memory.  The kernel is ``csrc/fused_step.cpp``; see its header.

The library is built on first use with ``torch.utils.cpp_extension.load`` (``-O3
-march=native -fopenmp``), cached under ``$INILORA_CACHE/build`` (default
``~/.cache/inilora/build``) in a folder named after the hash of the source, the flags and
the CPU, and loaded with ctypes (the source includes no torch header: it builds in seconds).
Builds are serialised by a file lock (see ``_compile``); where no compiler (or no ninja) is
found or the build fails, ``approx.resolve_engine`` picks the portable "torch" engine instead,
with one warning, before anything runs: installing inilora never needs a compiler.  This module
is the kernel only: which lane layout runs is :mod:`.cpu_tuning`'s choice (which imports this
module, never the other way), and the registry entry is ``cpu_tuning.cpu_fused_engine``.

Numerics: fp32 factors and Adam state, fp32 products with fp32 accumulation; W is read in
fp32, never rounded: bf16 is cast up exactly; up to ``PACK_LIMIT`` bytes of W are copied into
one huge-page buffer, beyond it fp32 W is read in place.  Results are bit-identical on one
machine whatever the thread count (work is split by shape only), and follow the "torch"
engine to fp32 rounding (measured: 2e-7 on the logged losses after 20000 steps on SmolLM2).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .driver import drive
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
    lr_at,
)
from .resume import Resume

__all__ = ["CpuFusedUnavailable", "fit_cpu_fused", "load_library", "time_steps"]

SOURCE = Path(__file__).with_name("csrc") / "fused_step.cpp"
# -ffp-contract=fast: the products are written as a*b + c and must become FMAs (cpp_extension's
# -std=c++17 would otherwise turn contraction off); -fno-math-errno lets sqrt vectorise.
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-std=c++17", "-Wno-psabi")
LDFLAGS = ("-fopenmp",)
#: Most W elements per work item: big matrices are split by rows into items (each with its
#: own Wᵀ·U accumulator), so one matrix can use several cores.  Depends on shapes only.
CHUNK = 1 << 20
#: W up to this many fp32 bytes in all is copied into one buffer on transparent huge pages
#: (≈10 % faster: the kernel streams W from memory every step); beyond it fp32 W is read in
#: place (no second copy of a big model).  bf16 W is always cast up into that buffer.
PACK_LIMIT = 4 << 30
_ALIGN = 16  # floats: every factor block starts on a 64-byte boundary


class CpuFusedUnavailable(RuntimeError):
    """The C++ library could not be built or loaded here."""


_lock = threading.Lock()
_libs: dict[int | None, ctypes.CDLL | BaseException] = {}


def _cpu_tag() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        keep = [ln.strip() for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return f"{platform.machine()}|{platform.processor()}|{platform.platform()}"


def _build_root() -> Path:
    """``$INILORA_CACHE/build`` (default ``~/.cache/inilora/build``)."""
    from ..fileio import cache_root

    return cache_root() / "build"


def _ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ``ninja`` PyPI package (a dependency) installs its
    binary next to the interpreter, which is not on PATH when a venv's python is run directly."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    path = os.environ.get("PATH", "")
    if bin_dir and bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(p for p in (bin_dir, path) if p)


def _flags(vector_width: int | None) -> list[str]:
    return list(CFLAGS) + ([] if vector_width is None else [f"-DINILORA_VL={int(vector_width)}"])


def build_name(vector_width: int | None = None) -> str:
    """The build's name: a hash of the source, the flags (lane layout), the CPU model and
    flags, torch and the compiler; a verdict or timing kept under it is this build's."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update("\0".join(_flags(vector_width) + list(LDFLAGS)).encode())
    key.update(_cpu_tag().encode())
    key.update(f"{torch.__version__}|{os.environ.get('CXX', 'c++')}".encode())
    return f"inilora_fused_step_{key.hexdigest()[:16]}"


def _compile(vector_width: int | None) -> str:
    """Build (or find) the shared library; returns its path.

    ``cpp_extension.load`` serialises builders of one folder with a lock *file* (created
    with O_EXCL, waited on until it disappears) and links in place, so nobody loads a
    half-written library while it holds the lock.  That lock file outlives a builder killed
    mid-build and would then block every later load forever: we therefore hold our own
    ``flock`` (released by the OS whatever happens to its holder) around ``load``; whoever
    holds it is the only cooperating builder, so a lock file found then is stale and removed.
    """
    from filelock import FileLock
    from torch.utils import cpp_extension

    _ninja_on_path()
    flags = _flags(vector_width)
    name = build_name(vector_width)
    root = _build_root()
    build_dir = root / name
    build_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{name}.flock")):
        stale = build_dir / "lock"
        if stale.exists():
            stale.unlink()
        if not (build_dir / f"{name}.so").exists():  # a silent pause of seconds looks like a hang: say it
            lanes = f"{vector_width} fp32 lanes" if vector_width else "native layout"
            logging.getLogger("inilora").warning("inilora: building the CPU kernel (%s) once for this machine, "
                                                 "~5 s", lanes)
        path = cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=list(LDFLAGS),
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    return str(path)


def _bind(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    vp, i64p, dp, f32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p, ctypes.c_void_p
    lib.ifs_vector_width.restype = ctypes.c_int
    lib.ifs_isa.restype = ctypes.c_char_p
    lib.ifs_padded_rank.argtypes = [ctypes.c_int]
    lib.ifs_padded_rank.restype = ctypes.c_int
    lib.ifs_create.argtypes = [ctypes.c_int, i64p, f32p, f32p, f32p, ctypes.c_int, ctypes.c_int64, ctypes.c_int]
    lib.ifs_create.restype = vp
    lib.ifs_run.argtypes = [vp, ctypes.c_int, dp, dp, ctypes.c_double, ctypes.c_double, ctypes.c_double]
    lib.ifs_run.restype = ctypes.c_int
    lib.ifs_losses.argtypes = [vp, dp]
    lib.ifs_losses.restype = None
    lib.ifs_refresh.argtypes = [vp]
    lib.ifs_refresh.restype = None
    lib.ifs_steps_done.argtypes = [vp]
    lib.ifs_steps_done.restype = ctypes.c_int64
    lib.ifs_destroy.argtypes = [vp]
    lib.ifs_destroy.restype = None
    return lib


def load_library(vector_width: int | None = None) -> ctypes.CDLL:
    """The built library (built on first call; the outcome, success or failure, is kept).

    ``vector_width`` (4, 8 or 16 floats) overrides the native SIMD width — for tests that
    check the other lane layouts on one machine; ``None`` builds for this CPU.
    Raises :class:`CpuFusedUnavailable` with the reason when it cannot be built.
    """
    with _lock:
        got = _libs.get(vector_width)
        if got is None:
            try:
                got = _bind(_compile(vector_width))
            except Exception as exc:  # no compiler, no ninja, build error, unloadable library
                got = exc
            _libs[vector_width] = got
    if isinstance(got, BaseException):
        raise CpuFusedUnavailable(_short(got)) from got
    return got


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}{'…' if len(text) > 200 else ''}"


_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}


def _weight_source(W: Tensor, pack: bool) -> tuple[Tensor, int]:
    """What the kernel reads: (tensor with unit column stride, dtype code).  Packing reads
    fp32 and bf16 as they are (the C side casts up); otherwise, and for any other dtype,
    W is cast up to fp32 here (exact for fp16 / bf16)."""
    W = W.detach()
    code = _DTYPE_CODE.get(W.dtype)
    if code is not None and (pack or code == 0) and W.stride(1) == 1 and W.stride(0) >= W.shape[1]:
        return W, code
    return W.to(torch.float32).contiguous(), 0


def _schedule(t0: int, t1: int, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-step ``−step_size`` and ``√(1 − β2^t)`` for iterations [t0, t1), exactly as the
    "torch" engine's Python computes them (Adam step t+1, lr from ``lr_at``)."""
    beta1, beta2 = BETAS
    neg, bc2 = np.empty(t1 - t0), np.empty(t1 - t0)
    rate = lr_at(t0, lr)
    for q, t in enumerate(range(t0, t1)):
        if t > t0 and (t + 1) % STEP_SIZE == 0:
            rate = rate * GAMMA  # lr_at's chain of multiplications, continued (linear, not quadratic)
        step = t + 1
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        neg[q] = -(rate / bias_correction1)
        bc2[q] = bias_correction2**0.5
    return neg, bc2


def fit_cpu_fused(
    weights: Sequence[Tensor],
    inits: Sequence[tuple[Tensor, Tensor]],
    *,
    steps: int = STEPS,
    lr: float = LR,
    log_every: int = LOG_EVERY,
    checkpoints: Sequence[int] = (),
    progress: EngineProgress | None = None,
    lib: ctypes.CDLL | None = None,
    threads: int | None = None,
    resume: Resume | None = None,
) -> list[Trajectory]:
    """Fit every ``U_i P_iᵀ ≈ W_i`` (CPU tensors) with the fused kernel; same semantics and
    outputs as ``fit_batched``.  Raises :class:`CpuFusedUnavailable` if ``lib`` is None and
    the library cannot be built.  ``threads`` defaults to ``torch.get_num_threads()``.
    ``resume``: continue from its snapshot (the padded buffers, byte for byte) and save new
    ones at segment boundaries; the kernel's arithmetic does not depend on how the steps are
    cut into calls, so a resumed run ends bit-identical to an uninterrupted one."""
    wanted = check_run(steps, log_every, checkpoints, weights, inits)
    n = len(weights)
    if n == 0:
        return []
    if lib is None:
        lib = load_library()
    kernel = _Kernel(lib, weights, inits, threads)
    try:
        kernel.schedule = _schedule(0, steps, lr)
        return drive(kernel, steps=steps, log_every=log_every, wanted=wanted, progress=progress, resume=resume)
    finally:
        kernel.close()


class _Kernel:
    """The kernel's plan over these weights and factors: the flat parameter and Adam buffers
    (each factor block 64-byte aligned, rank padded for the lane layout) and the C-side plan
    that points into them.  ``close()`` frees the plan before the tensors it reads go."""

    def __init__(self, lib: ctypes.CDLL, weights: Sequence[Tensor], inits: Sequence[tuple[Tensor, Tensor]],
                 threads: int | None) -> None:
        self.lib = lib
        pack = sum(W.numel() for W in weights) * 4 <= PACK_LIMIT
        self.sources = [_weight_source(W, pack) for W in weights]
        self.Ws = [W for W, _ in self.sources]
        self.ranks = [int(U0.shape[1]) for U0, _ in inits]
        self.rps = [lib.ifs_padded_rank(r) for r in self.ranks]
        self.layout, total = [], 0
        for W, rp in zip(self.Ws, self.rps):
            d, k = W.shape
            offU = total
            offP = offU + -(-d * rp // _ALIGN) * _ALIGN
            total = offP + -(-k * rp // _ALIGN) * _ALIGN
            self.layout.append((offU, offP))
        self.params = torch.zeros(total, dtype=torch.float32)
        self.exp_avg = torch.zeros(total, dtype=torch.float32)
        self.exp_avg_sq = torch.zeros(total, dtype=torch.float32)
        for i, (U0, P0) in enumerate(inits):
            U, P = self.views(i)
            U[:, : self.ranks[i]].copy_(U0.detach().to("cpu", torch.float32))
            P[:, : self.ranks[i]].copy_(P0.detach().to("cpu", torch.float32))
        self.desc = torch.tensor(
            [
                [W.data_ptr(), W.stride(0), W.shape[0], W.shape[1], rp, offU, offP, code]
                for (W, code), rp, (offU, offP) in zip(self.sources, self.rps, self.layout)
            ],
            dtype=torch.int64,
        )
        nthreads = max(1, int(threads if threads is not None else torch.get_num_threads()))
        self.plan = lib.ifs_create(
            len(self.Ws), ctypes.cast(self.desc.data_ptr(), ctypes.POINTER(ctypes.c_int64)), self.params.data_ptr(),
            self.exp_avg.data_ptr(), self.exp_avg_sq.data_ptr(), nthreads, CHUNK, int(pack),
        )
        if not self.plan:
            raise MemoryError("cpu-fused: could not set up the work plan (out of memory?)")
        self.n = len(self.Ws)
        self.schedule: tuple[np.ndarray, np.ndarray] | None = None  # per-step −step_size, √(1 − β2^t)

    # ---- the driver's EngineState (see .driver): the kernel holds the whole state in three flat buffers

    def buffers(self, t: int) -> dict[str, Tensor]:
        return {"params": self.params, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def restored(self, t: int) -> None:
        if t > 0:  # restored from a snapshot (never taken at iteration 0)
            self.lib.ifs_refresh(self.plan)  # re-derive the kernel's interleaved copy of P

    def advance(self, t0: int, t1: int) -> None:
        neg, bc2 = self.schedule
        rc = self.lib.ifs_run(self.plan, t1 - t0, neg[t0:].ctypes.data, bc2[t0:].ctypes.data, BETAS[0], BETAS[1], EPS)
        if rc != 0:
            raise RuntimeError(f"cpu-fused: kernel failed ({rc})")

    def losses(self) -> list[float]:
        out = np.zeros(self.n, dtype=np.float64)
        self.lib.ifs_losses(self.plan, out.ctypes.data)
        return out.tolist()

    def views(self, i: int) -> tuple[Tensor, Tensor]:
        (d, k), rp, (offU, offP) = self.Ws[i].shape, self.rps[i], self.layout[i]
        return self.params[offU : offU + d * rp].view(d, rp), self.params[offP : offP + k * rp].view(k, rp)

    def factors(self, i: int) -> tuple[Tensor, Tensor]:
        U, P = self.views(i)
        r = self.ranks[i]
        return U[:, :r].clone(memory_format=torch.contiguous_format), P[:, :r].clone(memory_format=torch.contiguous_format)

    def close(self) -> None:
        if self.plan:
            self.lib.ifs_destroy(self.plan)  # before sources / Ws / desc, which it may point into, go
            self.plan = None


def time_steps(lib: ctypes.CDLL, weights: Sequence[Tensor], inits: Sequence[tuple[Tensor, Tensor]], *,
               steps: int, threads: int | None = None) -> float:
    """Seconds per step of the kernel alone (set-up excluded) over ``steps`` steps of a fresh fit."""
    import time

    kernel = _Kernel(lib, weights, inits, threads)
    try:
        neg, bc2 = _schedule(0, steps + 1, LR)
        kernel.lib.ifs_run(kernel.plan, 1, neg.ctypes.data, bc2.ctypes.data, BETAS[0], BETAS[1], EPS)  # warm caches
        t0 = time.perf_counter()
        rc = kernel.lib.ifs_run(kernel.plan, steps, neg[1:].ctypes.data, bc2[1:].ctypes.data, BETAS[0], BETAS[1], EPS)
        elapsed = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"cpu-fused: kernel failed ({rc})")
    finally:
        kernel.close()
    return elapsed / steps
