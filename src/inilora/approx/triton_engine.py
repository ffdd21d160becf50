"""The CUDA engine ("triton"): one fused pass over W per step, Adam in a second kernel.

Same semantics and outputs as ``fit_batched`` (the portable "torch" engine) and the
reference loop (docs/design.md §3). Per step and per group of same-shape matrices (one dtype, one
stride pattern), with ``c = 2/(d·k)`` per matrix::

    products  (grid: row block × matrix)  reads every tile of W once, in its stored dtype,
              and produces both skinny products: W·P (d×r, complete per row block) and
              Wᵀ·U (k×r, summed over the row blocks with fp32 atomics).
    update    (grid: row block of [U; P] × matrix)  gradient c·(U(PᵀP) − W P),
              c·(P(UᵀU) − WᵀU), then Adam with torch.optim.Adam's default formula on the
              flat fp32 buffer of all factors; it also accumulates the Gram matrices UᵀU,
              PᵀP of the *updated* factors for the next step (double-buffered; the products
              kernel clears the next slot) and clears its rows of WᵀU.

Factors, Adam's moments and the product scratch are stored transposed (Uᵀ: r×d, Pᵀ: r×k,
as in the torch engine), so every r-wide access is contiguous along d or k.

W is never copied (not stacked, not cast): the kernels address each matrix through a table
of element offsets from the group's first matrix, so the engine's own memory is the factors,
Adam's two moments and r-wide scratch — a few percent of W (7B preset: ≈ 70 MB next to
2.15 GB of W). Precision:

- bf16 W: tensor cores. Each fp32 factor tile is split into bf16 ``hi`` and ``lo =
  bf16(x − hi)``, laid side by side as one operand of width 2r ([hi | lo]) and multiplied with
  the bf16 W tile in one ``tl.dot`` with fp32 accumulation (bf16·bf16 products are exact in
  fp32); the two halves of the result are added in fp32. Relative error of a product ≈ 2⁻¹⁷
  (emulated: 2e-6 off the fp32 engine after 2000 steps; docs/design.md §3 allows 1e-3).
- fp32 / fp16 W: the tile is used as fp32 (exact) with ``tl.dot(..., input_precision=
  FP32_DOT)``; "tf32x3" (≈ 2⁻²² relative, on tensor cores) by default, "ieee" for plain FMA.

Loss logging forms ``E = U Pᵀ − W`` tile by tile in fp32 in a third kernel (no scratch).
Launch overhead is not hidden by CUDA graphs: at the target sizes a step (≈ 0.7 ms of
reading W) is far longer than the two launches, which overlap it.

Under ``TRITON_INTERPRET=1`` (set before triton is first imported) the same kernels run on
CPU tensors, for tests; slow. The interpreter's bf16 ``tl.dot`` is not usable (it multiplies
the raw bit patterns), so there the split operands are widened to fp32 before the dot — the
values, hence the numerics of the split, are unchanged (the interpreter even truncates instead
of rounding to nearest, which makes the split slightly *less* precise than on a GPU).
"""

from __future__ import annotations

import contextlib
import math
import os
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

# Optional dependency, imported on first use (``_import_triton``) so that importing the package
# stays cheap; the kernels below look ``tl`` up only when Triton compiles or interprets them.
triton = None
tl = None


def _import_triton() -> bool:
    global triton, tl
    if triton is None:
        try:
            import triton as _triton
            import triton.language as _tl
        except ImportError:
            return False
        triton, tl = _triton, _tl
    return True

#: ``input_precision`` of ``tl.dot`` for fp32/fp16 W and for the loss ("tf32x3" or "ieee").
FP32_DOT = "tf32x3"
#: Set to a dict (keys of ``_products_config``'s result) to force a launch configuration,
#: e.g. ``{"BM": 256, "BK": 64, "num_warps": 8, "num_stages": 3}`` — for tuning on a GPU.
CONFIG_OVERRIDE: dict | None = None


class TritonUnavailable(RuntimeError):
    """The "triton" engine cannot run here (no triton package, or no CUDA tensors)."""


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    if _import_triton():
        try:
            return bool(triton.knobs.runtime.interpret)
        except AttributeError:  # pragma: no cover - older triton
            pass
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# --------------------------------------------------------------------------------------------
# Kernels. Plain functions here, wrapped with ``triton.jit`` on first use (see ``_kernels``), so
# this module imports without triton (annotations are strings, which Triton accepts). Interpreted
# or compiled is fixed per process: TRITON_INTERPRET must be set before triton is first imported
# (triton.language binds its own @jit helpers then). No helper functions: everything is inlined.
# --------------------------------------------------------------------------------------------


def _products_kernel(
    w_ptr,  # the group's first W (its dtype is W's stored dtype)
    w_off_ptr,  # int64 [n]: element offset of matrix i from w_ptr
    stride_wd,
    stride_wk,
    x_ptr,  # fp32 factors, transposed: Uᵀ (n, r, d) then Pᵀ (n, r, k)
    b_ptr,  # fp32, same layout: (W·P)ᵀ then (Wᵀ·U)ᵀ; the latter must be zero on entry
    gclr_ptr,  # fp32 (n, 2, R, R): the Gram slot the update kernel accumulates into; cleared
    p_off,  # n·r·d: where Pᵀ starts in x_ptr (and (Wᵀ·U)ᵀ in b_ptr)
    d,
    k,
    r,
    BM: tl.constexpr,
    BK: tl.constexpr,
    R: tl.constexpr,  # next power of two >= r (Gram padding)
    FW: tl.constexpr,  # width of the factor tiles: >= R, padded for tl.dot's minimum
    SPLIT: tl.constexpr,  # bf16 W: hi/lo split of the factors, one dot of width 2·FW
    PREC: tl.constexpr,  # input_precision of the fp32 dots (not SPLIT)
    EMULATE: tl.constexpr,  # interpreter: widen the split operands to fp32 before tl.dot
    ALIGN: tl.constexpr,  # every matrix offset is a multiple of ALIGN elements
    EVEN: tl.constexpr,  # d % BM == 0 and k % BK == 0: W loads without masks
):
    pid = tl.program_id(0)
    i = tl.program_id(1).to(tl.int64)
    off = tl.load(w_off_ptr + i)
    if ALIGN > 1:
        off = tl.multiple_of(off, ALIGN)

    if pid == 0:  # nothing reads this slot before the update kernel accumulates into it
        gi = tl.arange(0, 2 * R * R)
        tl.store(gclr_ptr + i * (2 * R * R) + gi, tl.zeros((2 * R * R,), tl.float32))

    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < d
    cols = tl.arange(0, FW)
    cmask = cols < r
    if SPLIT:
        # operands of width 2·FW: column c holds the hi part of factor column c (c < FW),
        # column FW + c its lo part. Built by loading each column twice (no join/reshape:
        # those trip Triton's shared-layout rewrite of dot operands on sm_90).
        cols2 = tl.arange(0, 2 * FW)
        src2 = cols2 % FW
        mask2 = src2 < r
        hi2 = cols2 < FW
        u2 = tl.load(x_ptr + i * r * d + src2[None, :] * d + rows[:, None], mask=rmask[:, None] & mask2[None, :], other=0.0)
        u_hi = u2.to(w_ptr.dtype.element_ty)
        u_op = tl.where(hi2[None, :], u_hi, (u2 - u_hi.to(tl.float32)).to(w_ptr.dtype.element_ty))
        if EMULATE:
            u_op = u_op.to(tl.float32)
        acc = tl.zeros((BM, 2 * FW), tl.float32)
    else:
        # U tile (BM × FW) read from Uᵀ: contiguous along the rows
        u_op = tl.load(x_ptr + i * r * d + cols[None, :] * d + rows[:, None], mask=rmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.zeros((BM, FW), tl.float32)

    w_rows = w_ptr + off + rows.to(tl.int64)[:, None] * stride_wd
    p_base = x_ptr + p_off + i * r * k
    t_base = b_ptr + p_off + i * r * k
    for k0 in range(0, k, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < k
        if EVEN:
            w = tl.load(w_rows + kk[None, :] * stride_wk)
        else:
            w = tl.load(w_rows + kk[None, :] * stride_wk, mask=rmask[:, None] & kmask[None, :], other=0.0)
        if SPLIT:
            p2 = tl.load(p_base + src2[None, :] * k + kk[:, None], mask=kmask[:, None] & mask2[None, :], other=0.0)
            p_hi = p2.to(w_ptr.dtype.element_ty)
            p_op = tl.where(hi2[None, :], p_hi, (p2 - p_hi.to(tl.float32)).to(w_ptr.dtype.element_ty))
            if EMULATE:
                w_op = w.to(tl.float32)
                p_op = p_op.to(tl.float32)
            else:
                w_op = w
            acc = tl.dot(w_op, p_op, acc)
            t = tl.sum(tl.reshape(tl.dot(tl.trans(w_op), u_op), (BK, 2, FW)), axis=1)  # hi + lo
        else:
            p = tl.load(p_base + cols[None, :] * k + kk[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
            w_op = w.to(tl.float32)
            acc = tl.dot(w_op, p, acc, input_precision=PREC)
            t = tl.dot(tl.trans(w_op), u_op, input_precision=PREC)
        # partial Wᵀ·U of this row block, summed over the row blocks in fp32
        tl.atomic_add(t_base + cols[None, :] * k + kk[:, None], t, mask=kmask[:, None] & cmask[None, :], sem="relaxed")

    if SPLIT:
        wp = tl.sum(tl.reshape(acc, (BM, 2, FW)), axis=1)  # hi + lo
    else:
        wp = acc
    tl.store(b_ptr + i * r * d + cols[None, :] * d + rows[:, None], wp, mask=rmask[:, None] & cmask[None, :])


def _update_kernel(
    x_ptr,  # fp32 factors Uᵀ (n, r, d) then Pᵀ (n, r, k); updated in place
    m_ptr,  # Adam's exp_avg, same layout
    v_ptr,  # Adam's exp_avg_sq, same layout
    b_ptr,  # (W·P)ᵀ then (Wᵀ·U)ᵀ, same layout; (Wᵀ·U)ᵀ is cleared after use
    gcur_ptr,  # (n, 2, R, R): UᵀU, PᵀP of the current factors
    gnext_ptr,  # (n, 2, R, R): zero on entry; receives UᵀU, PᵀP of the updated factors
    p_off,  # n·r·d: where Pᵀ starts
    d,
    k,
    r,
    c,  # 2 / (d·k)
    step_size,  # lr / bias_correction1
    bc2_sqrt,  # sqrt(bias_correction2)
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    BR: tl.constexpr,
    R: tl.constexpr,
    GRAM_DOT: tl.constexpr,  # R >= 16: the r×r products with tl.dot (fp32, "ieee")
):
    pid = tl.program_id(0)
    i = tl.program_id(1).to(tl.int64)
    nbu = tl.cdiv(d, BR)
    is_u = (pid < nbu).to(tl.int64)  # 1: a block of U's rows, 0: of P's
    not_u = 1 - is_u
    blk = pid - not_u * nbu
    nrows = is_u * d + not_u * k
    base = is_u * (i * r * d) + not_u * (p_off + i * r * k)

    rows = blk * BR + tl.arange(0, BR)
    ls = tl.arange(0, R)
    mask = (ls < r)[:, None] & (rows < nrows)[None, :]
    o = base + ls[:, None] * nrows + rows[None, :]  # tile (R, BR): row l = factor column l
    x = tl.load(x_ptr + o, mask=mask, other=0.0)
    b = tl.load(b_ptr + o, mask=mask, other=0.0)
    # rows of U take PᵀP (slot 1), rows of P take UᵀU (slot 0); G[l, j], zero-padded
    G = tl.load(gcur_ptr + i * (2 * R * R) + is_u * (R * R) + ls[:, None] * R + ls[None, :])
    # (X G)ᵀ[j, a] = Σ_l G[l, j] Xᵀ[l, a]
    if GRAM_DOT:
        xg = tl.dot(tl.trans(G), x, input_precision="ieee")
    else:
        xg = tl.sum(G[:, :, None] * x[:, None, :], axis=0)
    # as baddbmm(b, G, x, beta=-c, alpha=c) in the torch engine
    grad = c * xg - c * b

    # torch.optim.Adam, single-tensor path: lerp_, mul_/addcmul_, sqrt/div_/add_, addcdiv_
    m = tl.load(m_ptr + o, mask=mask, other=0.0)
    v = tl.load(v_ptr + o, mask=mask, other=0.0)
    m = m + one_minus_beta1 * (grad - m)
    v = v * beta2 + one_minus_beta2 * grad * grad
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    x = x - step_size * tl.div_rn(m, denom)
    x = tl.where(mask, x, 0.0)
    tl.store(x_ptr + o, x, mask=mask)
    tl.store(m_ptr + o, m, mask=mask)
    tl.store(v_ptr + o, v, mask=mask)
    if pid >= nbu:  # rows of P: clear their Wᵀ·U for the next products kernel
        tl.store(b_ptr + o, tl.zeros((R, BR), tl.float32), mask=mask)

    # this block's share of the next Gram: Σ_a Xᵀ[l, a] Xᵀ[j, a]
    if GRAM_DOT:
        gp = tl.dot(x, tl.trans(x), input_precision="ieee")
    else:
        gp = tl.sum(x[:, None, :] * x[None, :, :], axis=2)
    gmask = (ls < r)[:, None] & (ls < r)[None, :]
    gdst = gnext_ptr + i * (2 * R * R) + not_u * (R * R) + ls[:, None] * R + ls[None, :]
    tl.atomic_add(gdst, gp, mask=gmask, sem="relaxed")


def _loss_kernel(
    w_ptr,
    w_off_ptr,
    stride_wd,
    stride_wk,
    x_ptr,  # Uᵀ (n, r, d) then Pᵀ (n, r, k)
    out_ptr,  # fp32 [n], zero on entry: receives Σ (U Pᵀ − W)²
    p_off,  # n·r·d: where Pᵀ starts
    d,
    k,
    r,
    BM: tl.constexpr,
    BK: tl.constexpr,
    FW: tl.constexpr,
    PREC: tl.constexpr,
    ALIGN: tl.constexpr,
    EVEN: tl.constexpr,
):
    pid = tl.program_id(0)
    i = tl.program_id(1).to(tl.int64)
    off = tl.load(w_off_ptr + i)
    if ALIGN > 1:
        off = tl.multiple_of(off, ALIGN)
    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < d
    cols = tl.arange(0, FW)
    cmask = cols < r
    u = tl.load(x_ptr + i * r * d + cols[None, :] * d + rows[:, None], mask=rmask[:, None] & cmask[None, :], other=0.0)
    w_rows = w_ptr + off + rows.to(tl.int64)[:, None] * stride_wd
    p_base = x_ptr + p_off + i * r * k
    acc = tl.zeros((BM,), tl.float32)
    for k0 in range(0, k, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < k
        if EVEN:
            w = tl.load(w_rows + kk[None, :] * stride_wk).to(tl.float32)
        else:
            w = tl.load(w_rows + kk[None, :] * stride_wk, mask=rmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        pt = tl.load(p_base + cols[:, None] * k + kk[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        e = tl.dot(u, pt, input_precision=PREC) - w
        acc += tl.sum(e * e, axis=1)
    tl.atomic_add(out_ptr + i, tl.sum(acc, axis=0), sem="relaxed")


_KERNELS: dict[bool, tuple] = {}


def _kernels() -> tuple:
    """(products, update, loss) jitted for the current mode (compiled or interpreted)."""
    mode = interpreting()
    if mode not in _KERNELS:
        _KERNELS[mode] = tuple(triton.jit(f) for f in (_products_kernel, _update_kernel, _loss_kernel))
    return _KERNELS[mode]


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _products_config(d: int, k: int, r: int, dtype: torch.dtype, interpret: bool) -> dict:
    """Launch configuration of the products kernel.

    Chosen from sm_90 builds (``triton.compile`` for an H100 target, no GPU): the largest tiles
    that compile without register spills. Not tuned on hardware: ``CONFIG_OVERRIDE`` is for that.
    """
    R = _next_pow2(r)
    split = dtype == torch.bfloat16
    FW = max(8 if split else 16, R)
    if interpret:  # small tiles: several row blocks, masks and k-loop trips on tiny matrices
        cfg = dict(BM=32, BK=32, num_warps=4, num_stages=1)
    elif split:
        # bf16, r=8: 256×64 W tiles, 2 stages: 82 KB shared (2 CTAs/SM), 76 registers;
        # the accumulator BM × 2·FW stays near 4K fp32 values
        BM = max(32, min(256, 4096 // (2 * FW)))
        cfg = dict(BM=BM, BK=64, num_warps=8, num_stages=2)
    else:
        # fp32 / fp16 W through tf32x3: three operand pairs; 128×32 keeps 240 registers, no spill
        BM = max(32, min(128, 2048 // FW))
        cfg = dict(BM=BM, BK=32, num_warps=8, num_stages=3)
    if not interpret:  # no tile larger than the matrix (tl.arange needs powers of two)
        cfg["BM"] = max(16, min(cfg["BM"], _next_pow2(d)))
        cfg["BK"] = max(16, min(cfg["BK"], _next_pow2(k)))
    if CONFIG_OVERRIDE:
        cfg.update(CONFIG_OVERRIDE)
    cfg.update(R=R, FW=FW, SPLIT=split)
    return cfg


def _check_devices(weights: Sequence[Tensor]) -> bool:
    """Raise TritonUnavailable unless the engine can run on these weights; return interpret."""
    if not _import_triton():
        raise TritonUnavailable(
            "the 'triton' approximation engine needs the triton package (pip install triton; "
            "Linux + CUDA GPU), which is not importable here; use engine='torch'"
        )
    interpret = interpreting()
    if interpret:
        bad = sorted({str(w.device) for w in weights if w.device.type != "cpu"})
        if bad:
            raise TritonUnavailable(
                f"under TRITON_INTERPRET=1 the 'triton' engine runs on CPU tensors only, got {', '.join(bad)}"
            )
        return True
    bad = sorted({str(w.device) for w in weights if w.device.type != "cuda"})
    if bad:
        raise TritonUnavailable(
            f"the 'triton' approximation engine needs CUDA tensors, got weights on {', '.join(bad)}; "
            "move them to a GPU or use engine='torch'"
        )
    if not torch.cuda.is_available():  # pragma: no cover - CUDA tensors imply CUDA
        raise TritonUnavailable("the 'triton' approximation engine needs a CUDA device")
    return False


@dataclass
class _Group:
    """Matrices of one (device, shape, rank, dtype, strides): kernel arguments and views."""

    index: list[int]
    weights: list[Tensor]  # kept alive: the kernels address them through w_off
    w0: Tensor  # the first matrix (base pointer)
    w_off: Tensor  # int64 [n] element offsets from w0
    align: int
    d: int
    k: int
    r: int
    x: Tensor  # slice of the flat parameter buffer: Uᵀ (n, r, d) then Pᵀ (n, r, k)
    m: Tensor  # Adam's moments, same layout
    v: Tensor
    b: Tensor  # same layout: (W·P)ᵀ then (Wᵀ·U)ᵀ
    grams: Tensor  # (2, n, 2, R, R) double buffer
    loss: Tensor  # (n,)
    cfg: dict

    @property
    def n(self) -> int:
        return len(self.index)

    def Ut(self) -> Tensor:
        n, d, r = self.n, self.d, self.r
        return self.x[: n * r * d].view(n, r, d)

    def Pt(self) -> Tensor:
        n, d, k, r = self.n, self.d, self.k, self.r
        return self.x[n * r * d :].view(n, r, k)

    def factors(self, j: int) -> tuple[Tensor, Tensor]:
        """Copies of (U, P) of the group's j-th matrix in the public (d×r, k×r) layout."""
        return (
            self.Ut()[j].mT.clone(memory_format=torch.contiguous_format),
            self.Pt()[j].mT.clone(memory_format=torch.contiguous_format),
        )


def _build(weights: Sequence[Tensor], inits: Sequence[tuple[Tensor, Tensor]], interpret: bool):
    keys: dict[tuple, list[int]] = {}
    for i, (W, (U0, _)) in enumerate(zip(weights, inits)):
        d, k = W.shape
        keys.setdefault((W.device, d, k, U0.shape[1], W.dtype, W.stride()), []).append(i)
    sizes: dict[torch.device, int] = {}
    for (dev, d, k, r, _, _), idx in keys.items():
        sizes[dev] = sizes.get(dev, 0) + len(idx) * r * (d + k)
    flat = {
        dev: tuple(torch.zeros(s, dtype=torch.float32, device=dev) for _ in range(3)) for dev, s in sizes.items()
    }
    offsets = dict.fromkeys(sizes, 0)
    groups = []
    for (dev, d, k, r, dtype, _), idx in keys.items():
        n, o = len(idx), offsets[dev]
        size = n * r * (d + k)
        x, m, v = (buf[o : o + size] for buf in flat[dev])
        offsets[dev] = o + size
        Ut = x[: n * r * d].view(n, r, d)
        Pt = x[n * r * d :].view(n, r, k)
        for j, i in enumerate(idx):
            U0, P0 = inits[i]
            Ut[j].copy_(U0.detach().to(dev, torch.float32).T)
            Pt[j].copy_(P0.detach().to(dev, torch.float32).T)
        ws = [weights[i].detach() for i in idx]
        es = ws[0].element_size()
        base = ws[0].data_ptr()
        deltas = [w.data_ptr() - base for w in ws]
        if any(delta % es for delta in deltas):  # pragma: no cover - torch never does this
            raise ValueError("weights are not aligned to their element size")
        align = 16 // es if all(delta % 16 == 0 for delta in deltas) and base % 16 == 0 else 1
        R = _next_pow2(r)
        f32 = dict(dtype=torch.float32, device=dev)
        grams = torch.zeros(2, n, 2, R, R, **f32)  # [parity, matrix, (UᵀU, PᵀP)]
        grams[0, :, 0, :r, :r] = Ut @ Ut.mT
        grams[0, :, 1, :r, :r] = Pt @ Pt.mT
        groups.append(
            _Group(
                index=idx,
                weights=ws,
                w0=ws[0],
                w_off=torch.tensor([delta // es for delta in deltas], dtype=torch.int64, device=dev),
                align=align,
                d=d,
                k=k,
                r=r,
                x=x,
                m=m,
                v=v,
                b=torch.zeros(size, **f32),
                grams=grams,
                loss=torch.zeros(n, **f32),
                cfg=_products_config(d, k, r, dtype, interpret),
            )
        )
    return groups


def _update_config(R: int, interpret: bool) -> dict:
    """Rows per program of the update kernel (from sm_90 builds: no spills, ≤ ~128 registers)."""
    if interpret:  # the interpreter's cost is per program and op, not per element
        return dict(BR=64)
    if R < 16:  # broadcast r×r products: R·R·BR values, ~32 per thread at 4 warps
        return dict(BR=max(32, min(1024, 4096 // (R * R))), num_warps=4)
    if R <= 32:  # tl.dot
        return dict(BR=64, num_warps=4)
    return dict(BR=16, num_warps=8)


def fit_triton(
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
    """Fit every ``U_i P_iᵀ ≈ W_i`` with the fused Triton kernels; same outputs as ``fit_batched``.

    Needs triton and CUDA weights (``TritonUnavailable`` otherwise: the caller decides any
    fallback), or ``TRITON_INTERPRET=1`` and CPU weights (tests). Factors are returned on
    W's device. ``progress(t, loss)`` gets the mean of the matrices' losses at logged steps.
    ``resume``: continue from its snapshot — factors, moments and the Gram matrices of the
    current step's slot (they are accumulated with atomics: recomputing them could round
    differently) — and save new ones periodically.
    """
    wanted = check_run(steps, log_every, checkpoints, weights, inits)
    n_all = len(weights)
    if n_all == 0:
        return []
    interpret = _check_devices(weights)
    products, update, loss_k = _kernels()
    beta1, beta2 = BETAS

    with fp32_matmul(), torch.no_grad():
        groups = _build(weights, inits, interpret)

        def run_products(g: _Group, parity: int) -> None:
            cfg = g.cfg
            grid = (triton.cdiv(g.d, cfg["BM"]), g.n)
            R = cfg["R"]
            gclr = g.grams[1 - parity]
            even = g.d % cfg["BM"] == 0 and g.k % cfg["BK"] == 0
            products[grid](
                g.w0, g.w_off, g.w0.stride(0), g.w0.stride(1), g.x, g.b, gclr,
                g.n * g.r * g.d, g.d, g.k, g.r,
                BM=cfg["BM"], BK=cfg["BK"], R=R, FW=cfg["FW"], SPLIT=cfg["SPLIT"], PREC=FP32_DOT,
                EMULATE=interpret, ALIGN=g.align, EVEN=even,
                **({} if interpret else dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                                             enable_fp_fusion=True)),
            )  # fmt: skip

        def run_update(g: _Group, parity: int, step_size: float, bc2_sqrt: float) -> None:
            R = g.cfg["R"]
            ucfg = _update_config(R, interpret)
            BR = ucfg["BR"]
            grid = (triton.cdiv(g.d, BR) + triton.cdiv(g.k, BR), g.n)
            update[grid](
                g.x, g.m, g.v, g.b, g.grams[parity], g.grams[1 - parity],
                g.n * g.r * g.d, g.d, g.k, g.r,
                2.0 / (g.d * g.k), step_size, bc2_sqrt, 1 - beta1, beta2, 1 - beta2, EPS,
                BR=BR, R=R, GRAM_DOT=R >= 16,
                **({} if interpret else dict(num_warps=ucfg["num_warps"], enable_fp_fusion=True)),
            )  # fmt: skip

        def group_losses(g: _Group) -> Tensor:
            g.loss.zero_()
            BM, BK = (32, 32) if interpret else (64, 64)
            FW = max(16, g.cfg["R"])
            grid = (triton.cdiv(g.d, BM), g.n)
            even = g.d % BM == 0 and g.k % BK == 0
            loss_k[grid](
                g.w0, g.w_off, g.w0.stride(0), g.w0.stride(1), g.x, g.loss, g.n * g.r * g.d, g.d, g.k, g.r,
                BM=BM, BK=BK, FW=FW, PREC=FP32_DOT, ALIGN=g.align, EVEN=even,
                **({} if interpret else dict(num_warps=4, num_stages=3, enable_fp_fusion=True)),
            )  # fmt: skip
            return g.loss / (g.d * g.k)

        def losses_of(g: _Group) -> Tensor:
            with _on_device(g, interpret):
                return group_losses(g)

        class State:
            """The Triton fit behind the shared driver (the kernels above are its arithmetic)."""

            n = n_all

            def buffers(self, t: int) -> dict[str, Tensor]:
                if not interpret:
                    torch.cuda.synchronize()  # a snapshot reads what the kernels wrote
                out = {}
                for j, g in enumerate(groups):
                    out[f"{j}.x"], out[f"{j}.m"], out[f"{j}.v"] = g.x, g.m, g.v
                    out[f"{j}.grams"] = g.grams[t % 2]
                return out

            def restored(self, t: int) -> None:
                pass  # the state is all in the buffers: the step count is t itself

            def advance(self, t0: int, t1: int) -> None:
                for t in range(t0, t1):
                    parity = t % 2
                    for g in groups:
                        with _on_device(g, interpret):
                            run_products(g, parity)
                    # torch.optim.Adam (default, single-tensor): python-float scalars, as it computes them
                    step = t + 1
                    step_size = lr_at(t, lr) / (1 - beta1**step)
                    bc2_sqrt = math.sqrt(1 - beta2**step)
                    for g in groups:
                        with _on_device(g, interpret):
                            run_update(g, parity, step_size, bc2_sqrt)

            def losses(self) -> list[float]:
                return in_input_order(groups, [v for g in groups for v in losses_of(g).tolist()])

            def factors(self, i: int) -> tuple[Tensor, Tensor]:
                return factor_of(groups, i)

        return drive(State(), steps=steps, log_every=log_every, wanted=wanted, progress=progress, resume=resume)


def _on_device(g: _Group, interpret: bool):
    """Triton launches on the current CUDA device: make it the group's."""
    if interpret:
        return contextlib.nullcontext()
    return torch.cuda.device(g.x.device)


#: ``_ENGINES["triton"]``: all matrices at once
engine = fit_triton
