"""Output drift of residual methods on a bf16 base: at init, and of the plain export.

For each residual method on the embedded SmolLM2 loaded in bf16:
- init drift: the §1 metric of the initialised model against the *unmodified bf16* model (the
  right reference: bf16 SmolLM2 is itself several % off its fp32 self), with and without
  ``residual_dtype="float32"``;
- export drift: after a stand-in for training (seeded noise on A, B), the ``plain`` export on
  the unmodified bf16 base against the merged model in bf16 — with the adapter cast to bf16 as
  serving stacks load it, and kept in fp32 as PEFT loads it.

    python bench/bf16_drift.py [--model embedded:smollm2] [--methods inilora-alpha,milora,...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
from peft import LoraConfig

import inilora
from inilora.models import (
    load_model,
    load_tokenizer,
    model_output,
    probe_inputs,
    relative_drift,
    top1_agreement,
)

DEFAULT_METHODS = "inilora,inilora-alpha,inilora-beta-kn,inilora-beta-ku,milora,pissa,olora"


def perturb(model, scale: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale * p.detach().float().std().item())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=8)
    ap.add_argument("--inilora-steps", type=int, default=2000, help="approximation steps for inilora (cached)")
    ap.add_argument("--perturb", type=float, default=0.1, help="relative noise on A, B standing in for training")
    args = ap.parse_args()

    tok = load_tokenizer(args.model)
    ref16 = load_model(args.model, dtype=torch.bfloat16)
    x = probe_inputs(ref16, tok)
    out16 = model_output(ref16, x)
    out32 = model_output(load_model(args.model), x)
    print(f"model {args.model}, r={args.rank}, alpha={args.alpha}, probe 2x32 tokens, torch {torch.__version__}")
    print(f"reference: bf16 vs fp32 unmodified model: max rel {relative_drift(out16.float(), out32):.2e}, "
          f"top-1 {top1_agreement(out16, out32):.1%}")
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=args.targets.split(","))
    header = ("method", "init bf16", "top1", "init fp32-res", "export bf16-adapter", "top1", "export fp32-adapter")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for method in args.methods.split(","):
        opts = {"steps": args.inilora_steps} if method == "inilora" else {}
        t0 = time.time()
        model = inilora.get_peft_model(load_model(args.model, dtype=torch.bfloat16), cfg, method, seed=0, **opts)
        init = model.inilora_report.drift
        kept = inilora.get_peft_model(load_model(args.model, dtype=torch.bfloat16), cfg, method, seed=0,
                                      residual_dtype="float32", **opts)
        d_kept = relative_drift(model_output(kept, x).float(), out16.float())
        del kept
        perturb(model, args.perturb)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = inilora.export(model, f"{tmp}/plain", layout="plain")
        print(f"| {method} | {init['max_rel']:.2e} | {init['top1_agreement']:.1%} | {d_kept:.2e} | "
              f"{rep.drift:.2e} | {rep.top1_agreement:.1%} | {rep.drift_fp32_adapter:.2e} |  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
