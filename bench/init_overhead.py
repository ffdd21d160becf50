"""The whole init against the engine's floor (docs/design.md §7: fixed cost ≤ 10 % of a 20000-step fit).

In one run, for each shape set:

* the engine's **ms/step**: ``approximate`` on the targeted weights, ``--steps`` steps minus a 1-step
  run, divided by the difference (the engine ``auto`` picks, its layout already chosen);
* the **fixed cost** of an init: the wall time of ``get_peft_model(method="inilora", steps=S,
  cache=False)`` minus ``S × ms/step``, for the reported optimum computed the old way (the full
  float64 SVD, ``optimum="exact"``) and the new way (top r singular values, the default), both
  in this run, interleaved, best of ``--reps`` (a shared machine slows some runs down);
* **overhead** = fixed cost ÷ (20000 × ms/step), the fraction of a full fit;
* the **profile** of the new fixed cost: the time inside each step of ``get_peft_model``.

Shape sets: ``smollm2`` (the embedded SmolLM2-135M's real q/v: 30 × [576², 192×576]) and ``llama2-7b``
(a LLaMA-2-7B-shaped checkpoint built here with ``--layers`` layers, bf16, q/v 4096², r = 8).

    nice python bench/init_overhead.py                       # both
    nice python bench/init_overhead.py --only llama2-7b --layers 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import sys
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _common import device_name, make_llama_checkpoint

import inilora
from inilora import approx
from inilora.models import load_model

FULL_FIT = 20000


@contextlib.contextmanager
def profiled(spots: dict[str, tuple[object, str]]):
    """Time every call of ``getattr(owner, attr)`` for each spot; yields {label: seconds}."""
    spent: dict[str, float] = defaultdict(float)
    saved = []
    for label, (owner, attr) in spots.items():
        fn = getattr(owner, attr)

        def timed(*a, _fn=fn, _label=label, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - t0

        saved.append((owner, attr, fn))
        setattr(owner, attr, timed)
    try:
        yield spent
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)


def spots() -> dict[str, tuple[object, str]]:
    from inilora.approx import cpu_fused, cpu_tuning
    from inilora.bridge import build
    from inilora.methods import inilora as method

    return {
        "engine resolution (with the cpu-fused layout)": (method, "resolve_engine"),
        "σ̄ (init_distribution)": (method, "init_distribution"),
        "draw U, P": (method, "draw_init"),
        "cache key (digests of W and the draw)": (method, "cache_fields"),
        "cpu-fused run (steps + setup)": (cpu_fused, "fit_cpu_fused"),
        "  of which the layout choice": (cpu_tuning, "choose_width"),
        "relative errors": (approx, "relative_error"),
        "Eckart–Young optimum": (approx, "eckart_young"),
        "targets + fingerprint": (build, "fingerprint_modules"),
        "drift probe batch": (build, "_probe"),
        "drift forwards (before, after)": (build, "_output"),
        "PEFT injection": (build, "_inject"),
        "residual R = W − s·BA": (build, "_apply_residual"),
        "A0/B0 adapter + marks": (build, "_finish_residual"),
        "finite checks": (build, "_check_finite"),
    }


def targeted(model, names=("q_proj", "v_proj")):
    return {n: m.weight.detach() for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in names}


def per_step(weights, rank: int, steps: int) -> tuple[float, str]:
    """ms/step of the engine alone (the one ``auto`` picks): ``steps`` steps minus 1 step, best of 2."""
    g = torch.Generator().manual_seed(0)
    init = {n: (torch.randn(w.shape[0], rank, generator=g) * 0.02, torch.randn(w.shape[1], rank, generator=g) * 0.02)
            for n, w in weights.items()}
    chosen = approx.resolve_engine("auto", {w.device for w in weights.values()}, weights=list(weights.values()),
                                   inits=[init[n] for n in weights])

    def run(s: int) -> float:
        t0 = time.perf_counter()
        approx.approximate(weights, init, steps=s, engine=chosen, optimum="none")
        return time.perf_counter() - t0

    run(1)  # warm: the kernel's library, caches
    best = min(run(steps) - run(1) for _ in range(2))
    return best / (steps - 1), str(chosen) + (f" ({chosen.layout} lanes)" if chosen.layout else "")


def one_init(load, rank: int, steps: int, optimum: str, measure_drift: bool):
    from peft import LoraConfig

    base = load()
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj"])
    with profiled(spots()) as spent:
        t0 = time.perf_counter()
        inilora.get_peft_model(base, cfg, "inilora", steps=steps, cache=False, optimum=optimum,
                               measure_drift=measure_drift, progress=lambda *a: None)
        total = time.perf_counter() - t0
    del base
    return total, dict(spent)


def bench(label: str, load, *, rank: int, engine_steps: int, init_steps: int, reps: int) -> dict:
    model = load()
    weights = targeted(model)
    shapes = sorted({(tuple(w.shape), str(w.dtype).split(".")[-1]) for w in weights.values()})
    ms, engine = per_step(weights, rank, engine_steps)
    print(f"  {label}: engine {engine} {ms * 1e3:.3f} ms/step", flush=True)
    del model, weights
    runs = defaultdict(list)
    for _ in range(reps):  # interleaved: a burst of load hits both, not one
        for optimum in ("top-r", "exact"):
            runs[optimum].append(one_init(load, rank, init_steps, optimum, True))
            print(f"  {label}: init with optimum={optimum}: {runs[optimum][-1][0]:.2f} s", flush=True)
    runs["top-r, no drift probe"].append(one_init(load, rank, init_steps, "top-r", False))
    out = {"label": label, "shapes": shapes, "engine": engine, "ms_per_step": ms * 1e3, "rows": {}}
    for key, got in runs.items():
        total, profile = min(got, key=lambda x: x[0])
        fixed = total - init_steps * ms
        out["rows"][key] = {"total": total, "fixed": fixed, "overhead": fixed / (FULL_FIT * ms), "profile": profile}
    return out


def report(res: dict, init_steps: int) -> None:
    print(f"\n## {res['label']}: {len(res['shapes'])} shape(s) {res['shapes']}; engine {res['engine']}, "
          f"{res['ms_per_step']:.3f} ms/step → a {FULL_FIT}-step fit {FULL_FIT * res['ms_per_step'] / 1e3:.1f} s")
    print(f"| reported optimum | get_peft_model ({init_steps} steps) s | fixed cost s | overhead (÷ {FULL_FIT}-step fit) |")
    print("|---|---|---|---|")
    for key, row in res["rows"].items():
        print(f"| {key} | {row['total']:.2f} | {row['fixed']:.2f} | {row['overhead']:.1%} |")
    old, new = res["rows"]["exact"]["fixed"], res["rows"]["top-r"]["fixed"]
    print(f"fixed cost new / old: {new / old:.3f}")
    for key in ("top-r", "exact"):
        prof = res["rows"][key]["profile"]
        print(f"profile ({key}): " + "; ".join(f"{k} {v:.2f} s" for k, v in sorted(prof.items(), key=lambda x: -x[1])
                                             if v >= 0.005))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["smollm2", "llama2-7b"], default=None)
    ap.add_argument("--layers", type=int, default=2, help="layers of the 7B-shaped checkpoint (default 2: 4 × 4096²)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--init-steps", type=int, default=10, help="steps of each timed get_peft_model (default 10)")
    ap.add_argument("--reps", type=int, default=1, help="interleaved repetitions of old and new (best kept)")
    ap.add_argument("--smol-engine-steps", type=int, default=1000, help="steps timing the engine on SmolLM2")
    ap.add_argument("--big-engine-steps", type=int, default=100, help="steps timing the engine on the 7B shapes")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    print(f"# init overhead — {device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    results = []
    if args.only in (None, "smollm2"):
        results.append(bench("smollm2 (embedded SmolLM2-135M, real q/v)", lambda: load_model("embedded:smollm2"),
                             rank=args.rank, engine_steps=args.smol_engine_steps, init_steps=args.init_steps, reps=args.reps))
        report(results[-1], args.init_steps)
    if args.only in (None, "llama2-7b"):
        with tempfile.TemporaryDirectory(prefix="inilora-7b-") as tmp:
            path = make_llama_checkpoint(os.path.join(tmp, "llama2-7b-shaped"), args.layers)
            results.append(bench(f"llama2-7b-shaped checkpoint, {args.layers} layers, bf16",
                                 lambda: load_model(path), rank=args.rank, engine_steps=args.big_engine_steps,
                                 init_steps=args.init_steps, reps=args.reps))
            report(results[-1], args.init_steps)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
