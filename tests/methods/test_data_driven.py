"""The data-driven inits (eva, corda, lora-ga) and LoftQ: calibration checked before work, its digest
recorded, PEFT's quirks worked around (one example per CorDA forward, LoftQ's scaling), refusals."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

import inilora
from inilora import calibration as calib
from inilora.bridge import INIT_ADAPTER, targets
from inilora.errors import InitError
from inilora.models import tiny_model

QV = ["q_proj", "v_proj"]


def _cfg(r=4, alpha=8):
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=QV)


def _batches(seed=1, n=3, size=4, length=12):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 250, (size, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


@pytest.mark.parametrize("method", ["eva", "corda", "lora-ga"])
def test_data_driven_method_without_data_fails_in_one_line_before_the_model_is_touched(method):
    model = tiny_model("llama-gqa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InitError, match="data-driven") as err:
        inilora.get_peft_model(model, _cfg(), method)
    assert "\n" not in str(err.value)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any("lora_" in n for n, _ in model.named_modules())


def test_registry_declares_what_each_method_needs():
    get = inilora.get_method
    assert get("eva").calibration == "activations" and not get("eva").residual
    assert get("corda").calibration == "activations" and get("corda").residual and get("corda").full_precision
    assert get("lora-ga").calibration == "gradients" and get("lora-ga").residual
    assert get("loftq").calibration is None and get("loftq").residual and get("loftq").full_precision
    assert get("mica").calibration is None and not get("mica").residual and get("mica").full_precision
    assert get("lora").needs == "-" and "gradients" in get("lora-ga").needs


def test_calibration_refused_where_not_taken_and_bad_batches_named():
    with pytest.raises(InitError, match="takes no calibration"):
        inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "lora", calibration=_batches())
    with pytest.raises(InitError, match="empty"):
        inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "eva", calibration=[])
    no_labels = [{k: v for k, v in b.items() if k != "labels"} for b in _batches()]
    with pytest.raises(InitError, match="needs gradients: calibration batch 0 has no labels"):
        inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "lora-ga", calibration=no_labels)
    with pytest.raises(InitError, match="does not take option"):
        inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "corda", calibration=_batches(), rho=2.0)
    with pytest.raises(InitError, match="corda_method must be one of ipm, kpm"):
        inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "corda", calibration=_batches(), corda_method="x")


def test_lora_ga_on_a_model_without_a_loss_is_refused():
    with pytest.raises(InitError, match="computes none"):
        inilora.get_peft_model(tiny_model("bert"), LoraConfig(r=4, lora_alpha=4, target_modules=["query", "value"]),
                               "lora-ga", calibration=_batches())


def test_calibration_digest_joins_fingerprint_and_report(tmp_path):
    a = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "corda", calibration=_batches(seed=1))
    b = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "corda", calibration=_batches(seed=2))
    ca, cb = a.inilora_report.info["calibration"], b.inilora_report.info["calibration"]
    assert ca["sha256"] != cb["sha256"] and ca["examples"] == 12 and ca["batches"] == 3 and ca["tokens"] == 144
    assert ca == calib.digest(calib.materialize(_batches(seed=1), "corda", "activations"))
    a.save_pretrained(str(tmp_path))
    import json

    meta = json.loads((tmp_path / "inilora.json").read_text())
    assert meta["fingerprint"]["calibration"] == ca["sha256"] and meta["info"]["calibration"] == ca
    la = targets(a, INIT_ADAPTER)["model.layers.0.self_attn.q_proj"].layer.lora_A[INIT_ADAPTER].weight
    lb = targets(b, INIT_ADAPTER)["model.layers.0.self_attn.q_proj"].layer.lora_A[INIT_ADAPTER].weight
    assert not torch.equal(la, lb)  # other data, another init


def test_corda_sees_each_example_once_without_its_padding():
    """PEFT's CorDA hook takes one example per forward: a padded batch must give the init that the same
    examples give one at a time, unpadded."""
    rows = _batches(n=1, size=3, length=10)[0]["input_ids"]
    lengths = [10, 7, 4]
    padded = torch.zeros_like(rows)
    mask = torch.zeros_like(rows)
    for i, n in enumerate(lengths):
        padded[i, :n], mask[i, :n] = rows[i, :n], 1
    batched = [{"input_ids": padded, "attention_mask": mask}]
    singles = [{"input_ids": rows[i:i + 1, :n], "attention_mask": torch.ones(1, n, dtype=torch.long)}
               for i, n in enumerate(lengths)]
    a = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "corda", calibration=batched)
    b = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "corda", calibration=singles)
    for name, t in targets(a, "default").items():
        other = targets(b, "default")[name].layer
        assert torch.allclose(t.layer.lora_A["default"].weight, other.lora_A["default"].weight, atol=1e-5), name


def test_eva_rank_redistribution_keeps_the_budget_and_rho_1_keeps_ranks():
    model = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "eva", calibration=_batches())
    tg = targets(model, "default")
    ranks = {n: t.layer.r["default"] for n, t in tg.items()}
    assert sum(ranks.values()) <= 4 * 4 and max(ranks.values()) <= 8  # budget 4 layers × r, each ≤ rho·r
    flat = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "eva", calibration=_batches(), rho=1.0)
    assert {t.layer.r["default"] for t in targets(flat, "default").values()} == {4}


def test_eva_that_cannot_converge_stops_with_an_error(monkeypatch):
    from inilora.methods import data_driven

    monkeypatch.setattr(data_driven, "EVA_MAX_PASSES", 1)
    with pytest.raises(InitError, match="did not converge"):
        inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "eva", calibration=_batches(n=1), tau=1.0)


bnb = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("alpha", [4, 16])
def test_loftq_factors_are_the_svd_of_the_quantization_error_whatever_the_scaling(alpha):
    """iters=1: s·B0A0 is the rank-r SVD of W − deq(NF4(W)) (PEFT sets B = L, A = R and ignores s)."""
    import bitsandbytes.functional as F

    model = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(r=4, alpha=alpha), "loftq")
    w0 = dict(tiny_model("llama-gqa").named_modules())
    for name, t in targets(model, INIT_ADAPTER).items():
        w = w0[name].weight.detach().float()
        q, state = F.quantize_4bit(w.contiguous(), blocksize=64, compress_statistics=False, quant_type="nf4")
        u, s, vh = torch.linalg.svd(w - F.dequantize_4bit(q, state).float(), full_matrices=False)
        want = (u[:, :4] * s[:4]) @ vh[:4]
        got = t.layer.scaling[INIT_ADAPTER] * (t.layer.lora_B[INIT_ADAPTER].weight @ t.layer.lora_A[INIT_ADAPTER].weight)
        assert t.layer.scaling[INIT_ADAPTER] == alpha / 4
        assert torch.allclose(got, want, atol=1e-5 * max(1.0, float(want.abs().max()))), name
        assert math.isclose(float(got.norm()), float(want.norm()), rel_tol=1e-4)


def test_cli_calibration_errors_are_one_line_and_write_nothing(tmp_path):
    cli = Path(sys.executable).with_name("inilora")
    for args, match in [(["--method", "eva"], "is data-driven"),
                        (["--method", "lora", "--calibration", "offline-topic:4"], "takes no calibration"),
                        (["--method", "eva", "--calibration", "offline-topic:x"], "N must be a whole number")]:
        out = tmp_path / "out"
        done = subprocess.run([str(cli), "init", "--model", "embedded:smollm2", "--out", str(out), *args],
                              capture_output=True, text=True)
        assert done.returncode == 2 and match in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_mica_trains_a_only_and_b_stays_the_minor_singular_vectors():
    model = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "mica")
    layer = targets(model, "default")["model.layers.0.self_attn.q_proj"].layer
    assert layer.lora_A["default"].weight.requires_grad and not layer.lora_B["default"].weight.requires_grad
    b0 = layer.lora_B["default"].weight.detach().clone()
    w = layer.get_base_layer().weight.detach().double()
    u = torch.linalg.svd(w, full_matrices=False)[0][:, -4:]
    assert torch.allclose((u.T @ b0.double()).abs().sum(0), torch.ones(4, dtype=torch.float64), atol=1e-4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batches(n=1)[0]
    model(**batch).loss.backward()
    opt.step()
    assert torch.equal(layer.lora_B["default"].weight, b0) and layer.lora_A["default"].weight.abs().sum() > 0


def test_lora_ga_says_nothing_about_peft_s_backward_hook():
    """PEFT counts backward passes with a full backward hook on each target; torch's note that the hook
    sees module outputs (only the weights need gradients) is noise in every lora-ga run's log."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "lora-ga", calibration=_batches())
    assert not [w for w in seen if "backward hook" in str(w.message)]
    a = targets(model, "default")["model.layers.0.self_attn.q_proj"].layer.lora_A["default"].weight
    assert a.abs().sum() > 0  # the init ran: gradient-shaped factors, not zeros
