"""Output preservation at init on the embedded real models (docs/design.md §1), fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
from _util import bound, rho
from peft import LoraConfig

import inilora
from inilora.bridge import targets
from inilora.models import (
    load_model,
    model_output,
    probe_inputs,
    relative_drift,
    top1_agreement,
)

METHODS = [("inilora", {"steps": 10}), ("inilora-alpha", {}), ("inilora-beta-kn", {}), ("inilora-beta-ku", {}),
           ("milora", {}), ("pissa", {}), ("olora", {})]
MODELS = {"embedded:smollm2": ["q_proj", "v_proj"], "embedded:minilm": ["query", "value"]}


def _w0(model, names):
    wanted = {}
    for n, m in model.named_modules():
        if n.rsplit(".", 1)[-1] in names:
            wanted[n] = m.weight.detach().clone()
    return wanted


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method,opts", METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("alpha", [8, 32])
def test_embedded_output_preserved(model_name, method, opts, alpha, smollm2, minilm, smollm2_tokenizer,
                                   minilm_tokenizer):
    """r = 8 with alpha 8 (s = 1) and 32 (s = 4): the §1 metric within 2e-5·(1 + ρ)."""
    tok = smollm2_tokenizer if "smollm2" in model_name else minilm_tokenizer
    reference = smollm2 if "smollm2" in model_name else minilm
    x = probe_inputs(reference, tok)
    expected = model_output(reference, x)
    base = load_model(model_name)
    w0 = _w0(base, MODELS[model_name])
    model = inilora.get_peft_model(base, LoraConfig(r=8, lora_alpha=alpha, target_modules=MODELS[model_name]),
                                   method, seed=0, cache=False, **opts)
    w0 = {name: w0[name] for name in w0}  # canonical names equal the bare model's paths
    drift = relative_drift(model_output(model, x), expected)
    r = rho(model, {n: w0[n] for n in targets(model, "default")})
    assert drift <= bound(r), (drift, r)


def test_bf16_drift_is_reported_and_fp32_residual_removes_it(smollm2, smollm2_tokenizer):
    """bf16 rounding of R moves the output; the report says so and residual_dtype='float32' fixes it.

    At s = 16 (α with alpha = 16·r) R's entries are tens of times W0's, so rounding R to bf16 is
    far above bf16's own noise floor (at s = 1 the two are comparable: ≈2.5 % vs ≈2.3 %).
    """
    x = probe_inputs(smollm2, smollm2_tokenizer)
    ref = model_output(load_model("embedded:smollm2", dtype=torch.bfloat16), x)
    cfg = LoraConfig(r=8, lora_alpha=128, target_modules=["q_proj", "v_proj"])
    plain = inilora.get_peft_model(load_model("embedded:smollm2", dtype=torch.bfloat16), cfg, "inilora-alpha")
    kept = inilora.get_peft_model(load_model("embedded:smollm2", dtype=torch.bfloat16), cfg, "inilora-alpha",
                                  residual_dtype="float32")
    d_plain = relative_drift(model_output(plain, x), ref)
    d_kept = relative_drift(model_output(kept, x), ref)
    assert plain.inilora_report.drift["max_rel"] == pytest.approx(d_plain, rel=1e-6)
    assert plain.inilora_report.drift["dtype"] == "bfloat16"
    assert plain.inilora_report.drift["top1_agreement"] == pytest.approx(
        top1_agreement(model_output(plain, x), ref))
    assert d_kept < d_plain / 3
