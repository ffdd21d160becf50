"""One prepared check for a CUDA machine (docs/design.md §7's GPU row), within 10 minutes:

1. the Triton trust check (the kernel against the "torch" engine on this GPU model, once);
2. a LLaMA-2-7B-shaped checkpoint made on the spot (``--layers``, default 32: 64 q/v matrices of
   4096², bf16, random), then ``inilora approximate`` on it end to end (load, fingerprint, the
   20000-step fit, the report), in this process so its peak GPU memory is seen;
3. the engine alone on the same shapes (``--engine-steps`` steps): ms/step, × the floor measured
   in the same run (one bf16 read of W ÷ read bandwidth, or FLOPs ÷ bf16 GEMM peak), peak memory.

Prints one summary block.  Without a GPU (or with ``--dry-run``) it runs the same steps on the CPU
with a tiny LLaMA-shaped model and few steps, so CI keeps the script working; no GPU figure comes
from that path.

    bash bench/gpu_check.sh                 # on the GPU machine
    python bench/gpu_check.py --dry-run     # the CPU dry path (what CI runs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _common import device_name, make_llama_checkpoint

#: a tiny LLaMA for the dry path (same code path, seconds on a CPU)
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
            max_position_embeddings=256)


def trust_check(device: torch.device) -> str:
    from inilora import approx
    from inilora.approx import trust

    chosen = approx.resolve_engine("auto", [device])  # runs the check on first use of this GPU model
    if device.type != "cuda":
        return f"no CUDA device: Triton trust check not run ('auto' here is {chosen})"
    verdicts = {k: v for k, v in trust.read(trust.VERDICTS).items() if k.startswith("triton|")}
    mine = [v for k, v in verdicts.items() if torch.cuda.get_device_name(device) in k]
    verdict = mine[-1] if mine else {}
    return (f"'auto' → {chosen}; Triton verdict: {'trusted' if verdict.get('ok') else 'NOT trusted'}"
            f" ({verdict.get('problem') or 'agrees with torch'}, {verdict.get('seconds', '?')} s)")


def run_cli(args: list[str]) -> float:
    """``inilora approximate ARGS`` in this process; its wall time."""
    from typer.main import get_command

    from inilora.cli import app

    t0 = time.perf_counter()
    try:
        get_command(app).main(args=args, prog_name="inilora", standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"inilora approximate exited {exc.code}") from None
    return time.perf_counter() - t0


def engine_alone(shapes, rank: int, steps: int, device: torch.device, dtype, floor_reps: int) -> dict:
    """ms/step of the engine 'auto' picks on random W of these shapes, the floor, peak memory."""
    sys.path.insert(0, os.path.dirname(__file__))
    from approx import measure_floor

    from inilora import approx

    g = torch.Generator().manual_seed(0)
    weights = {f"m{i}": (torch.randn(d, k, generator=g) * 0.02).to(device, dtype) for i, (d, k) in enumerate(shapes)}
    init = {n: (torch.randn(w.shape[0], rank, generator=g) * 0.02, torch.randn(w.shape[1], rank, generator=g) * 0.02)
            for n, w in weights.items()}
    chosen = approx.resolve_engine("auto", [device], weights=list(weights.values()), inits=list(init.values()))
    floor = measure_floor(list(weights.values()), rank, device, reps=floor_reps)

    def run(s: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        approx.approximate(weights, init, steps=s, engine=chosen, optimum="none")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    run(2)  # warm: kernels compiled, caches filled
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step = (run(steps) - run(1)) / (steps - 1)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"engine": str(chosen), "ms_per_step": per_step * 1e3, "floor_ms": floor["floor"] * 1e3,
            "bound": floor["bound"], "peak": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the CPU path with a tiny model (CI)")
    ap.add_argument("--layers", type=int, default=None, help="layers of the 7B-shaped checkpoint (default 32; dry: 2)")
    ap.add_argument("--steps", type=int, default=None, help="fit steps of the end-to-end run (default 20000; dry: 30)")
    ap.add_argument("--engine-steps", type=int, default=None, help="steps of the engine-alone timing (2000; dry: 20)")
    ap.add_argument("--engine", default=None, help="engine for the end-to-end run (default auto)")
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    layers = args.layers or (2 if dry else 32)
    steps = args.steps if args.steps is not None else (30 if dry else 20000)
    engine_steps = args.engine_steps or (20 if dry else 2000)
    print(f"# gpu_check — {device_name(device)}{' (DRY RUN on the CPU: no GPU figure)' if dry else ''}, "
          f"torch {torch.__version__}")
    t_all = time.perf_counter()
    print("trust:", trust_check(device))
    with tempfile.TemporaryDirectory(prefix="inilora-gpu-check-") as tmp:
        os.environ["INILORA_CACHE"] = os.path.join(tmp, "cache")  # a fresh cache: the fit really runs
        t0 = time.perf_counter()
        shape = TINY if dry else {}
        path = make_llama_checkpoint(os.path.join(tmp, "llama2-7b-shaped"), layers, device=device.type, **shape)
        made = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        report = os.path.join(tmp, "report.json")
        cli = ["approximate", "--model", path, "--targets", "q_proj,v_proj", "--rank", str(args.rank),
               "--steps", str(steps), "--device", device.type, "--report", report]
        if args.engine:
            cli += ["--engine", args.engine]
        end_to_end = run_cli(cli)
        peak_e2e = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        rep = json.loads(open(report).read())
        fits = rep["fit"].values()
        hidden = shape.get("hidden_size", 4096)
        # dry: fp32 (a CPU without native bf16 GEMMs takes seconds per 2048² bf16 product of the floor)
        alone = engine_alone([(hidden, hidden)] * (2 * layers), args.rank, engine_steps, device,
                             torch.float32 if dry else torch.bfloat16, floor_reps=1 if dry else 10)
    gib = lambda b: "n/a (CPU)" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
    print(f"checkpoint: {layers} layers, {2 * layers} q/v matrices of {hidden}², bf16, made in {made:.1f} s")
    print(f"end to end: inilora approximate, {steps} steps, engine {rep['info'].get('engine')}: {end_to_end:.1f} s; "
          f"peak GPU memory {gib(peak_e2e)} (model on the GPU included); mean rel_error "
          f"{sum(f['rel_error'] for f in fits) / len(fits):.4f}, optimum {sum(f['optimum'] for f in fits) / len(fits):.4f}")
    print(f"engine alone ({alone['engine']}, {engine_steps} steps): {alone['ms_per_step']:.3f} ms/step, "
          f"{alone['ms_per_step'] / alone['floor_ms']:.2f} × floor ({alone['floor_ms']:.3f} ms, {alone['bound']}-bound), "
          f"peak GPU memory {gib(alone['peak'])} (W included); 20000 steps ≈ {alone['ms_per_step'] * 20:.1f} s")
    print(f"total {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
