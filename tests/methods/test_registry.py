"""The method registry (docs/design.md §2): names, lookup errors, options, registration."""

from __future__ import annotations

import re

import pytest
import torch
from peft import LoraConfig

import inilora
from inilora.methods import registry
from inilora.methods.registry import InitResult, get_method, register, register_peft
from inilora.models import tiny_model
from inilora.naming import generator_for

SPEC_NAMES = [
    "lora", "gaussian", "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta-kn",
    "inilora-beta-ku", "normal", "uniform", "kaiming_normal", "kaiming_uniform", "xavier_normal",
    "xavier_uniform", "orthogonal", "olora", "peft-orthogonal",
]

#: docs/design.md §2: the PEFT-backed entries and the ``init_lora_weights`` value each one hands PEFT.
PEFT_INIT = {"lora": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora",
             "peft-orthogonal": "orthogonal"}


def test_every_spec_method_is_registered():
    names = inilora.available_methods()
    missing = [n for n in SPEC_NAMES if n not in names]
    assert not missing, f"registry lacks {missing}"
    assert len(names) == len(set(names))
    for n in SPEC_NAMES:
        assert get_method(n).name == n


def test_peft_backed_entries_carry_peft_init():
    for name in SPEC_NAMES:
        m = get_method(name)
        if name in PEFT_INIT:
            assert m.peft_backed and m.fn is None
            assert m.peft_init == PEFT_INIT[name]
        else:
            assert not m.peft_backed and callable(m.fn), name


def test_residual_flags_follow_spec_table():
    # lora / gaussian leave the base alone (B0 = 0); every method that draws or fits both
    # factors moves the base weight.
    assert not get_method("lora").residual
    assert not get_method("gaussian").residual
    for name in ["pissa", "milora", "inilora", "inilora-alpha", "inilora-beta-kn", "inilora-beta-ku",
                 "normal", "uniform", "kaiming_normal", "kaiming_uniform", "xavier_normal",
                 "xavier_uniform", "orthogonal"]:
        assert get_method(name).residual, name


@pytest.mark.parametrize("n", [4, 16])
def test_pissa_niter(n):
    m = get_method(f"pissa_niter_{n}")
    assert m.peft_backed and m.residual
    assert m.peft_init == f"pissa_niter_{n}"
    assert f"pissa_niter_{n}" not in registry._REGISTRY  # resolved on the fly, not registered


def _suggestions(message: str) -> str:
    match = re.search(r"Did you mean ([^?]*)\?", message)
    return match.group(1) if match else ""


def test_unknown_method_lists_known_and_suggests_close_match():
    with pytest.raises(inilora.InitError) as exc:
        get_method("inilora-alfa")
    message = str(exc.value)
    assert "'inilora-alfa'" in message
    assert "'inilora-alpha'" in _suggestions(message)
    for name in SPEC_NAMES:
        assert name in message


def test_unknown_method_without_close_match_has_no_suggestion():
    with pytest.raises(inilora.InitError) as exc:
        get_method("zzqqxx")
    assert _suggestions(str(exc.value)) == ""
    assert "milora" in str(exc.value)


def test_malformed_pissa_niter_is_unknown():
    with pytest.raises(inilora.InitError):
        get_method("pissa_niter_")
    with pytest.raises(inilora.InitError):
        get_method("pissa_niter_x")


def test_unknown_option_names_valid_options():
    with pytest.raises(inilora.InitError) as exc:
        get_method("inilora-alpha").resolve_options({"stdd": 0.3})
    assert "stdd" in str(exc.value) and "std" in str(exc.value).replace("stdd", "")
    with pytest.raises(inilora.InitError) as exc:
        get_method("inilora").resolve_options({"step": 10})
    for valid in ["steps", "lr", "std", "round_std", "std_source", "std_scope", "mean", "engine", "checkpoints"]:
        assert valid in str(exc.value)
    with pytest.raises(inilora.InitError):
        get_method("inilora-beta-kn").resolve_options({"std": 0.1})  # takes no options


def test_resolve_options_overlays_defaults():
    opts = get_method("inilora-alpha").resolve_options({})
    assert opts == {"std": 0.5}
    opts = get_method("inilora-alpha").resolve_options({"std": 0.3})
    assert opts == {"std": 0.3}
    assert get_method("inilora").resolve_options({"steps": 7})["steps"] == 7
    assert get_method("inilora").resolve_options({})["steps"] == 20000


def test_unknown_option_through_get_peft_model():
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    with pytest.raises(inilora.InitError, match="std"):
        inilora.get_peft_model(tiny_model("llama-gqa"), cfg, method="normal", sd=0.1)
    with pytest.raises(inilora.InitError):
        inilora.get_peft_model(tiny_model("llama-gqa"), cfg, method="pissa", steps=3)


def test_duplicate_registration_raises():
    before = dict(registry._REGISTRY)
    original = get_method("inilora-alpha").fn

    def other(weights, ranks, scalings, rng_for):  # pragma: no cover - never registered
        raise AssertionError

    with pytest.raises(ValueError, match="inilora-alpha"):
        register("inilora-alpha", summary="impostor")(other)
    with pytest.raises(ValueError, match="pissa"):
        register_peft("pissa", "pissa", summary="impostor", residual=True)
    assert registry._REGISTRY == before
    assert get_method("inilora-alpha").fn is original


@pytest.fixture
def scratch_method():
    name = "test-scratch-const"
    calls = []
    yield name, calls
    registry._REGISTRY.pop(name, None)


def test_new_method_with_one_decorated_function(scratch_method):
    name, calls = scratch_method
    assert name not in inilora.available_methods()

    @register(name, summary="test: A0 constant, B0 from the matrix generator", options={"value": 0.01})
    def scratch(weights, ranks, scalings, rng_for, *, value=0.01) -> InitResult:
        calls.append({"weights": {n: w.detach().clone() for n, w in weights.items()},
                      "ranks": dict(ranks), "scalings": dict(scalings), "rng_for": rng_for, "value": value})
        factors = {}
        for n, w in weights.items():
            gen = rng_for(n)
            a0 = torch.full((ranks[n], w.shape[1]), float(value))
            b0 = torch.randn(w.shape[0], ranks[n], generator=gen) * 0.1
            factors[n] = (a0, b0)
        return InitResult(factors=factors)

    assert name in inilora.available_methods()
    assert get_method(name).residual

    base = tiny_model("llama-gqa")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_out = base(ids).logits
    w0 = {n: m.weight.detach().clone() for n, m in base.named_modules()
          if n.endswith(("q_proj", "v_proj"))}

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = inilora.get_peft_model(base, cfg, method=name, seed=3, value=0.02, measure_drift=False)

    assert len(calls) == 1
    call = calls[0]
    assert call["value"] == 0.02
    assert set(call["weights"]) == set(w0)  # canonical names: no PEFT wrapper prefix
    for n in w0:
        torch.testing.assert_close(call["weights"][n], w0[n], rtol=0, atol=0)
    assert set(call["ranks"].values()) == {4}
    assert set(call["scalings"].values()) == {2.0}
    some = sorted(w0)[0]
    assert torch.equal(call["rng_for"](some).get_state(), generator_for(3, some).get_state())

    layers = {n: m for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))}
    assert len(layers) == len(w0)
    for path, layer in layers.items():
        n = path.removeprefix("base_model.model.")
        a0 = layer.lora_A["default"].weight.detach()
        b0 = layer.lora_B["default"].weight.detach()
        assert torch.equal(a0, torch.full_like(a0, 0.02))
        expect_b0 = torch.randn(b0.shape, generator=generator_for(3, n)) * 0.1
        assert torch.equal(b0, expect_b0)
        resid = layer.get_base_layer().weight.detach()
        torch.testing.assert_close(resid, w0[n] - 2.0 * (expect_b0 @ a0), rtol=1e-6, atol=1e-6)

    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref_out).abs().max() <= 1e-4 * ref_out.abs().max()
