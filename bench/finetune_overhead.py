"""Fine-tuning step time of a residual-method model vs plain PEFT LoRA (docs/design.md §7).

The residual ``R = W0 - s·B0A0`` lives in the base weight and A0/B0 sit in an inactive
adapter, so a training step should cost what a plain LoRA step costs. This bench builds
both models from the same base in one process and times forward + backward + AdamW step
on identical batches, in interleaved rounds (the order alternates every round so slow
drifts of a shared machine hit both alike), then reports the median per-round ratio
inilora/lora with a 95 % bootstrap interval and a verdict:

* "≤ 1 % slower"        when the interval's upper end is ≤ 1.01;
* "slower by y %"       when its lower end is > 1.01;
* "within noise ±x %"   otherwise (x = the interval's half-width).

``--residual-dtype float32`` is exempt from the 1 % target (its base layers cast by design).

On a 2-core machine shared with other busy processes, torch's 2 OpenMP threads stall each
other (measured: a tiny-model step went from ~10 ms to ~900 ms, SmolLM2 rounds from ~40 s
to > 4 min); ``--threads 1`` keeps such runs usable, ``--round-stat median`` damps the
remaining multi-second stalls.

    python bench/finetune_overhead.py                       # embedded SmolLM2, CPU fp32 / CUDA bf16
    python bench/finetune_overhead.py --model tiny --rounds 10 --steps 20
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from _common import device_name


def load_base(name: str, dtype: torch.dtype):
    from inilora.models import load_model, tiny_model

    if name == "tiny":
        return tiny_model("llama-gqa", dtype=dtype)
    return load_model(name, kind="causal-lm", dtype=dtype)


def build(args, method: str, dtype: torch.dtype, device: torch.device):
    from peft import LoraConfig

    import inilora

    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha if args.alpha is not None else args.rank,
        target_modules=args.targets.split(","),
        lora_dropout=0.0,
    )
    base = load_base(args.model, dtype)
    kwargs = {}
    if method != "lora" and args.residual_dtype:
        kwargs["residual_dtype"] = args.residual_dtype
    model = inilora.get_peft_model(base, config, method=method, seed=args.seed, **kwargs)
    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    return model, optimizer, sum(p.numel() for p in params)


def make_batches(n: int, batch: int, seq_len: int, vocab: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq_len), generator=g).to(device) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model, optimizer, ids) -> None:
    """One training step: forward (causal-LM loss on the batch itself), backward, AdamW."""
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_steps(model, optimizer, batches, device) -> float:
    """Seconds for ``len(batches)`` training steps in a row."""
    sync(device)
    t0 = time.perf_counter()
    for ids in batches:
        step(model, optimizer, ids)
    sync(device)
    return time.perf_counter() - t0


def run_round_stepwise(contenders, batches, device, first: int) -> dict[str, list[float]]:
    """One round with the two models alternating every step (who goes first alternates too).

    Returns each model's per-step seconds.
    """
    keys = list(contenders)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for i, ids in enumerate(batches):
        order = keys if (i + first) % 2 == 0 else keys[::-1]
        for key in order:
            model, opt = contenders[key]
            sync(device)
            t0 = time.perf_counter()
            step(model, opt, ids)
            sync(device)
            times[key].append(time.perf_counter() - t0)
    return times


def bootstrap_median(ratios: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ratios), size=(resamples, len(ratios)))
    medians = np.median(ratios[idx], axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return float(lo), float(hi)


def verdict(median: float, lo: float, hi: float, limit: float = 1.01) -> str:
    """docs/design.md §7: the claim holds when the interval's upper end is ≤ 1.01."""
    if hi <= limit:
        return "≤ 1 % slower"
    if lo > limit:
        return f"slower by {(median - 1) * 100:.2f} %"
    return f"within noise ±{(hi - lo) / 2 * 100:.2f} %"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:smollm2",
                   help="model name/path/embedded alias (default embedded:smollm2), or 'tiny' for a tiny LLaMA-GQA")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (≥ 10 for the docs/design.md §7 claim)")
    p.add_argument("--steps", type=int, default=20, help="training steps per model per round (≥ 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model before the first round")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--method", default="inilora-alpha",
                   help="residual method compared with plain LoRA (default inilora-alpha: no fit, same layout as inilora)")
    p.add_argument("--residual-dtype", default=None, help="e.g. float32 (exempt from the 1 %% target)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None, help="lora_alpha (default: = rank, s = 1)")
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--interleave", choices=("step", "round"), default="step",
                   help="step (default): within each round the models alternate every step, so a load change "
                        "on a shared machine hits both alike; round: each model runs its --steps as one block, "
                        "the block order alternating every round")
    p.add_argument("--round-stat", choices=("total", "median"), default="total",
                   help="per-round time of a model: total (sum of its steps; default) or median step time "
                        "(robust to the multi-second stalls a contended 2-core machine produces; needs "
                        "--interleave step)")
    args = p.parse_args(argv)
    if args.method == "lora":
        p.error("--method must be a residual method; it is compared against method='lora'.")
    if args.rounds < 2 or args.steps < 1:
        p.error("need --rounds ≥ 2 and --steps ≥ 1")
    if args.round_stat == "median" and args.interleave != "step":
        p.error("--round-stat median needs --interleave step (per-step times)")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # bf16 on the GPU (weights stored and run in bf16), fp32 on the CPU
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)

    print(f"device      : {device_name(device)} ({device.type})")
    print(f"torch       : {torch.__version__}, threads {torch.get_num_threads()}, python {platform.python_version()}")
    print(f"model       : {args.model}, dtype {str(dtype).replace('torch.', '')}, r={args.rank}, "
          f"alpha={args.alpha if args.alpha is not None else args.rank}, targets {args.targets}")
    print(f"workload    : batch {args.batch} × seq {args.seq_len}, {args.rounds} rounds × {args.steps} steps per model, "
          f"AdamW lr {args.lr}, forward+backward+step, interleaved by {args.interleave}, "
          f"round statistic {args.round_stat}")
    sys.stdout.flush()

    t_build = time.perf_counter()
    res_model, res_opt, n_res = build(args, args.method, dtype, device)
    torch.manual_seed(args.seed)
    lora_model, lora_opt, n_lora = build(args, "lora", dtype, device)
    vocab = int(res_model.config.get_text_config().vocab_size)
    print(f"built       : {args.method} ({n_res:,} trainable) and lora ({n_lora:,} trainable) "
          f"in {time.perf_counter() - t_build:.1f} s"
          + (f"; residual_dtype={args.residual_dtype} (exempt from the 1 % target)" if args.residual_dtype else ""))
    sys.stdout.flush()

    batches = make_batches(args.steps, args.batch, args.seq_len, vocab, args.seed + 1, device)
    warm = batches[: max(args.warmup, 0)]
    if warm:
        run_steps(res_model, res_opt, warm, device)
        run_steps(lora_model, lora_opt, warm, device)

    contenders = {"res": (res_model, res_opt), "lora": (lora_model, lora_opt)}
    times = {"res": [], "lora": []}
    ratios = []
    for r in range(args.rounds):
        gc.collect()
        if args.interleave == "step":
            for key, ts in run_round_stepwise(contenders, batches, device, first=r).items():
                # stored as "seconds per --steps steps" either way, so ms/step reads the same
                times[key].append(statistics.median(ts) * len(ts) if args.round_stat == "median" else sum(ts))
        else:
            order = ("res", "lora") if r % 2 == 0 else ("lora", "res")
            for key in order:
                model, opt = contenders[key]
                times[key].append(run_steps(model, opt, batches, device))
        ratios.append(times["res"][-1] / times["lora"][-1])
        print(f"round {r + 1:>3}: {args.method} {times['res'][-1] / args.steps * 1e3:8.2f} ms/step   "
              f"lora {times['lora'][-1] / args.steps * 1e3:8.2f} ms/step   ratio {ratios[-1]:.4f}")
        sys.stdout.flush()

    ratios_np = np.asarray(ratios)
    median = float(np.median(ratios_np))
    lo, hi = bootstrap_median(ratios_np, args.resamples, args.seed)
    v = verdict(median, lo, hi)
    res_ms = statistics.median(times["res"]) / args.steps * 1e3
    lora_ms = statistics.median(times["lora"]) / args.steps * 1e3
    print(f"median step : {args.method} {res_ms:.2f} ms, lora {lora_ms:.2f} ms")
    print(f"ratio {args.method}/lora: median {median:.4f}, 95 % bootstrap interval [{lo:.4f}, {hi:.4f}] "
          f"({args.rounds} rounds, {args.resamples} resamples)")
    print(f"verdict     : {v}" + (" (residual_dtype=float32 is exempt)" if args.residual_dtype else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
