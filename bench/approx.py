"""Speed of the IniLoRA approximation engines against the paper-style loop and the floor (docs/design.md §7).

On the device it runs on (CUDA when available, else the CPU), in one run:

* the **floor**: ``max(bytes of W per step ÷ read bandwidth, FLOPs per step ÷ GEMM peak)``, where
  the read bandwidth is measured by one ``sum()`` pass over the same W tensors and the GEMM
  peak by ``torch.mm`` of two 2048² matrices in W's dtype (best of several repetitions each);
  FLOPs per step = Σ 4·d·k·r (the two products ``W P`` and ``Wᵀ U``);
* the **paper-style loop** (the released method: the "reference" engine, one autograd Adam loop
  per matrix) and, on a GPU, the batched autograd loop, each timed over ``--baseline-steps``
  (≥ 500) and extrapolated linearly to ``--steps``;
* each engine of ``--engines`` over the full ``--steps`` (default 20000), losses logged every
  100 steps as in a real run.  ``min window`` is the fastest 100-step window of that run (a
  shared machine slows some windows down; the full-run time is the figure of record).

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak resident set
size of the process sampled during that measurement (it includes the weights and torch itself).

    python bench/approx.py --preset smollm2-135m --engines torch,cpu-fused
    python bench/approx.py --preset smollm2-135m --real --steps 2000
    python bench/approx.py --preset llama2-7b --engines torch,triton          # on a GPU
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _common import device_name

# (module type, d, k) per layer, number of layers, W dtype, W std.
PRESETS: dict[str, dict] = {
    "smollm2-135m": dict(layers=30, shapes=[("q_proj", 576, 576), ("v_proj", 192, 576)], dtype="float32", std=0.2),
    "llama2-7b": dict(layers=32, shapes=[("q_proj", 4096, 4096), ("v_proj", 4096, 4096)], dtype="bfloat16", std=0.02),
    "llama2-13b": dict(layers=40, shapes=[("q_proj", 5120, 5120), ("v_proj", 5120, 5120)], dtype="bfloat16", std=0.02),
    "llama3-8b": dict(layers=32, shapes=[("q_proj", 4096, 4096), ("v_proj", 1024, 4096)], dtype="bfloat16", std=0.02),
    "gemma-7b": dict(layers=28, shapes=[("q_proj", 4096, 3072), ("v_proj", 4096, 3072)], dtype="bfloat16", std=0.02),
    "roberta-base": dict(layers=12, shapes=[("query", 768, 768), ("value", 768, 768)], dtype="float32", std=0.05),
    "roberta-large": dict(layers=24, shapes=[("query", 1024, 1024), ("value", 1024, 1024)], dtype="float32", std=0.05),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one measurement: the CUDA allocator's peak, or on the CPU the process's
    peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` before the
    measurement; where that is not possible, the process-wide peak so far).  No sampling
    thread: on a 2-core machine an extra runnable thread stalls torch's OpenMP barriers."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.scope = "measurement"

    @staticmethod
    def hwm() -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            except OSError:
                self.scope = "process"
        return self

    def __exit__(self, *exc) -> None:
        self.peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else self.hwm()


def make_problem(args, device: torch.device):
    """Weights and initial factors (U0 ~ P0 ~ N(0, σ̄²), σ̄ per module type rounded to 3 decimals)."""
    g = torch.Generator().manual_seed(args.seed)
    names, weights = [], []
    if args.real:
        if args.preset != "smollm2-135m":
            raise SystemExit("--real is only available for --preset smollm2-135m (the embedded model)")
        from inilora.models import load_model

        model = load_model("embedded:smollm2")
        for name, mod in model.named_modules():
            if name.endswith(("q_proj", "v_proj")) and hasattr(mod, "weight"):
                names.append(name)
                weights.append(mod.weight.detach().to(device).contiguous())
        del model
    else:
        p = PRESETS[args.preset]
        dtype = getattr(torch, args.dtype or p["dtype"])
        for layer in range(p["layers"]):
            for kind, d, k in p["shapes"]:
                names.append(f"layers.{layer}.{kind}")
                weights.append((torch.randn(d, k, generator=g) * p["std"]).to(dtype).to(device))
    by_type: dict[str, list[float]] = {}
    for n, W in zip(names, weights):
        by_type.setdefault(n.rsplit(".", 1)[-1], []).append(W.float().std().item())
    sigma = {t: round(sum(v) / len(v), 3) for t, v in by_type.items()}
    inits = []
    for n, W in zip(names, weights):
        s = sigma[n.rsplit(".", 1)[-1]]
        d, k = W.shape
        U0 = torch.randn(d, args.rank, generator=g) * s
        P0 = torch.randn(k, args.rank, generator=g) * s
        inits.append((U0.to(device), P0.to(device)))
    return names, weights, inits


def best_of(fn, reps: int, device: torch.device) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_floor(weights, rank: int, device: torch.device, reps: int) -> dict:
    nbytes = sum(W.numel() * W.element_size() for W in weights)
    flops = sum(4 * W.shape[0] * W.shape[1] * rank for W in weights)
    read_s = best_of(lambda: [W.sum() for W in weights], reps, device)
    dtype = weights[0].dtype
    x = torch.randn(2, 2048, 2048, device=device).to(dtype)
    mm_s = best_of(lambda: torch.mm(x[0], x[1]), reps, device)
    bandwidth = nbytes / read_s
    peak = 2 * 2048**3 / mm_s
    return dict(
        bytes=nbytes,
        flops=flops,
        bandwidth=bandwidth,
        gemm=peak,
        floor=max(nbytes / bandwidth, flops / peak),
        bound="memory" if nbytes / bandwidth >= flops / peak else "compute",
    )


def batched_autograd(weights, inits, *, steps: int, lr: float = 5e-4, **_):
    """The stronger baseline: the autograd loop batched by shape (one Adam, per-matrix means)."""
    from inilora.approx.result import BETAS, EPS, GAMMA, STEP_SIZE

    groups: dict[tuple, list[int]] = {}
    for i, W in enumerate(weights):
        groups.setdefault((tuple(W.shape), inits[i][0].shape[1]), []).append(i)
    Ws, Us, Ps = [], [], []
    for idx in groups.values():
        Ws.append(torch.stack([weights[i].float() for i in idx]))
        Us.append(torch.stack([inits[i][0].float() for i in idx]).requires_grad_(True))
        Ps.append(torch.stack([inits[i][1].float() for i in idx]).requires_grad_(True))
    opt = torch.optim.Adam(Us + Ps, lr=lr, betas=BETAS, eps=EPS)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_SIZE, gamma=GAMMA)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for _ in range(steps):
            opt.zero_grad()
            loss = sum((U @ P.mT - W).square().mean(dim=(1, 2)).sum() for W, U, P in zip(Ws, Us, Ps))
            loss.backward()
            sched.step()
            opt.step()


def run_engine(name: str, weights, inits, steps: int, device: torch.device) -> dict:
    from inilora.approx import _ENGINES

    marks: list[tuple[float, float]] = []
    if name == "batched-autograd":
        fn, kw = batched_autograd, {}
    else:
        fn = _ENGINES[name]  # progress(t, loss): t = iterations of the whole set done
        kw = dict(lr=5e-4, log_every=100, checkpoints=(), progress=lambda t, loss: marks.append((t, time.perf_counter())))
    sync(device)
    with PeakMemory(device) as mem, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        runs = fn(list(weights), list(inits), steps=steps, **kw)
        sync(device)
        seconds = time.perf_counter() - t0
    for w in caught:
        print(f"  warning ({name}): {w.message}", file=sys.stderr)
    # (the reference engine reports per matrix, one matrix after the other: no per-step windows)
    windows = [(tb - ta) / (sb - sa) for (sa, ta), (sb, tb) in itertools.pairwise(marks) if sb > sa] if name != "reference" else []
    return dict(seconds=seconds, per_step=seconds / max(steps, 1), min_window=min(windows) if windows else None, peak=mem.peak,
                fell_back=any("unavailable" in str(w.message) for w in caught), runs=runs)


def agreement(a, b) -> tuple[float, float]:
    """Largest relative difference of the logged losses and of the final products U Pᵀ."""
    loss = max(abs(la - lb) / lb for ra, rb in zip(a, b) for (_, la), (_, lb) in zip(ra.losses, rb.losses))
    prod = max(((ra.U @ ra.P.T - rb.U @ rb.P.T).norm() / (rb.U @ rb.P.T).norm()).item() for ra, rb in zip(a, b))
    return loss, prod


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def snapshot_cost(args) -> int:
    """What resuming costs a run: one snapshot of the whole engine state (factors and Adam's two
    moments, fp32, as the "torch"/"cpu-fused" engines hold them; logged losses of 20000 steps),
    written atomically with fsync beside the cache, and one load.  Best and median of 5."""
    import statistics
    import tempfile

    from inilora.approx import Resume

    p = PRESETS[args.preset]
    n = p["layers"] * sum(args.rank * (d + k) for _, d, k in p["shapes"])
    mats = p["layers"] * len(p["shapes"])
    bufs = {k: torch.randn(n) for k in ("params", "exp_avg", "exp_avg_sq")}
    losses = [[(t, 0.1) for t in range(0, 20000, 100)] for _ in range(mats)]
    with tempfile.TemporaryDirectory(dir=os.environ.get("INILORA_CACHE")) as tmp:
        r = Resume(os.path.join(tmp, "bench.resume.pt"), "bench")
        saves, loads = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            r.save(1000, bufs, losses, [{} for _ in range(mats)])
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r.load()
            loads.append(time.perf_counter() - t0)
    size = 3 * n * 4
    print(f"# {args.preset}: resume state {fmt_bytes(size)} ({mats} matrices, r={args.rank}) on {device_name(torch.device('cpu'))}")
    print(f"save (atomic, fsync): best {min(saves) * 1e3:.1f} ms, median {statistics.median(saves) * 1e3:.1f} ms; "
          f"load: best {min(loads) * 1e3:.1f} ms, median {statistics.median(loads) * 1e3:.1f} ms")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smollm2-135m")
    ap.add_argument("--real", action="store_true", help="SmolLM2: the embedded model's real q/v weights (fp32)")
    ap.add_argument("--engines", default=None, help="comma-separated (default: torch,cpu-fused on CPU; torch + triton on CUDA)")
    ap.add_argument("--steps", type=int, default=20000, help="engine steps (default 20000)")
    ap.add_argument("--baseline-steps", type=int, default=500, help="steps of each baseline, extrapolated (default 500)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the paper-style loop (no ratio to it)")
    ap.add_argument("--batched-baseline", action="store_true", help="also time the batched autograd loop (default on CUDA)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="override the preset's W dtype")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. all cores)")
    ap.add_argument("--floor-reps", type=int, default=30, help="repetitions of each floor measurement (best kept)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps of each engine first (builds, JIT; default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snapshot-cost", action="store_true",
                    help="only time a resume snapshot (save, fsync, load) of the preset's engine state, then exit")
    args = ap.parse_args(argv)
    if args.snapshot_cost:
        return snapshot_cost(args)
    if args.baseline_steps < 1 or args.steps < 1:
        ap.error("--steps and --baseline-steps must be >= 1")
    if args.baseline_steps < 500 and not args.no_baseline:
        print(f"note: docs/design.md §7 times baselines over >= 500 steps; this run uses {args.baseline_steps}", file=sys.stderr)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    from inilora.approx import ENGINES

    engines = args.engines.split(",") if args.engines else (
        ["torch"] + (["triton"] if "triton" in ENGINES else []) if device.type == "cuda" else ["torch", "cpu-fused"]
    )
    for e in engines:
        if e not in ENGINES and e != "batched-autograd":
            ap.error(f"unknown engine {e!r}; valid: {', '.join(ENGINES)}, batched-autograd")

    if "cpu-fused" in engines:
        from inilora.approx import cpu_fused

        try:
            lib = cpu_fused.load_library()
            print(f"cpu-fused: {lib.ifs_isa().decode()} ISA; the lane layout is chosen by timing at first use "
                  f"(native {lib.ifs_vector_width()} fp32 lanes)", file=sys.stderr)
        except cpu_fused.CpuFusedUnavailable as exc:
            print(f"cpu-fused: unavailable ({exc}); it will run the torch engine", file=sys.stderr)
    _, weights, inits = make_problem(args, device)
    label = args.preset + (" (real W)" if args.real else "")
    dname = device_name(device)
    shapes = sorted({(tuple(W.shape), str(W.dtype).replace("torch.", "")) for W in weights})
    print(f"# {label}: {len(weights)} matrices {shapes}, r={args.rank}, on {dname} ({device.type}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, {_dt.date.today().isoformat()}")

    fl = measure_floor(weights, args.rank, device, args.floor_reps)
    first_floor = fl
    print(f"floor (start): W {fmt_bytes(fl['bytes'])}/step at {fl['bandwidth'] / 1e9:.1f} GB/s (sum pass) = "
          f"{fl['bytes'] / fl['bandwidth'] * 1e3:.3f} ms; {fl['flops'] / 1e6:.0f} MFLOP/step at "
          f"{fl['gemm'] / 1e9:.0f} GFLOP/s (mm 2048² {str(weights[0].dtype).replace('torch.', '')}) = "
          f"{fl['flops'] / fl['gemm'] * 1e3:.3f} ms -> floor {fl['floor'] * 1e3:.3f} ms/step ({fl['bound']}-bound), "
          f"{fl['floor'] * args.steps:.1f} s for {args.steps} steps")

    rows = []
    baselines = []
    if not args.no_baseline:
        baselines.append("reference")
        if device.type == "cuda" or args.batched_baseline:
            baselines.append("batched-autograd")
    paper = None
    for b in baselines:
        if args.warmup:
            run_engine(b, weights, inits, min(args.warmup, 10), device)
        r = run_engine(b, weights, inits, args.baseline_steps, device)
        r["runs"] = None
        r["seconds_full"] = r["per_step"] * args.steps
        if b == "reference":
            paper = r["per_step"]
        rows.append((b + f" (paper-style, {args.baseline_steps} steps, extrapolated)" if b == "reference"
                     else b + f" ({args.baseline_steps} steps, extrapolated)", r))
        print(f"  {b}: {r['per_step'] * 1e3:.2f} ms/step", file=sys.stderr)
    first = None
    for e in engines:
        if args.warmup:  # untimed: builds / JIT-compiles kernels, faults in memory
            run_engine(e, weights, inits, args.warmup, device)
        r = run_engine(e, weights, inits, args.steps, device)
        rows.append((e + (" (FELL BACK to torch)" if r["fell_back"] else ""), r))
        from inilora.approx import engine_detail

        detail = engine_detail(e)
        print(f"  {e}: {r['per_step'] * 1e3:.3f} ms/step" + (f" ({detail})" if detail else ""), file=sys.stderr)
        if r["runs"] is None:
            pass
        elif first is None:
            first = (e, r["runs"])
        else:
            loss, prod = agreement(r["runs"], first[1])
            print(f"  {e} vs {first[0]} after {args.steps} steps: logged losses within {loss:.1e} (relative; "
                  f"docs/design.md §3: 1e-2), products U Pᵀ within {prod:.1e}", file=sys.stderr)
        r["runs"] = None
        r["seconds_full"] = r["seconds"]

    # The floor again at the end: a shared machine's bandwidth and clock drift during a long
    # run; the best of both measurements (the lower floor) is the one reported.
    again = measure_floor(weights, args.rank, device, args.floor_reps)
    fl = dict(first_floor)
    fl["bandwidth"] = max(first_floor["bandwidth"], again["bandwidth"])
    fl["gemm"] = max(first_floor["gemm"], again["gemm"])
    fl["floor"] = max(fl["bytes"] / fl["bandwidth"], fl["flops"] / fl["gemm"])
    fl["bound"] = "memory" if fl["bytes"] / fl["bandwidth"] >= fl["flops"] / fl["gemm"] else "compute"
    print(f"floor (end): {again['bandwidth'] / 1e9:.1f} GB/s, {again['gemm'] / 1e9:.0f} GFLOP/s; best of both: "
          f"{fl['bandwidth'] / 1e9:.1f} GB/s, {fl['gemm'] / 1e9:.0f} GFLOP/s -> floor {fl['floor'] * 1e3:.3f} ms/step "
          f"({fl['bound']}-bound)")
    mem_label = "peak CUDA memory" if device.type == "cuda" else "peak RSS"
    print()
    print(f"| device | preset | engine | s / {args.steps} steps | ms/step | min 100-step window, ms/step "
          f"| speed-up vs paper-style loop | × floor | {mem_label} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        speedup = f"{paper / r['per_step']:.1f}×" if paper else "—"
        mw = f"{r['min_window'] * 1e3:.3f}" if r["min_window"] else "—"
        print(f"| {dname} | {label} | {name} | {r['seconds_full']:.1f} | {r['per_step'] * 1e3:.3f} | {mw} | {speedup} "
              f"| {r['per_step'] / fl['floor']:.2f} | {fmt_bytes(r['peak'])} |")
    speedup = f"{paper / fl['floor']:.1f}×" if paper else "—"
    print(f"| {dname} | {label} | floor ({fl['bound']}-bound) | {fl['floor'] * args.steps:.1f} | {fl['floor'] * 1e3:.3f} "
          f"| — | {speedup} | 1.00 | — |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
