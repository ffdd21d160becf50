"""Adding a fitted init method touches one place: a function registered outside the package, with
``fitted=True``, gets the fit cache, resume, progress and the split across ranks from the bridge and
``methods.fitting`` — no other file names it."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig

import inilora
from inilora import approx, distributed
from inilora.cache import tensor_digest
from inilora.methods import registry
from inilora.methods.fitting import InitContext, cached_fit, resolve_engine
from inilora.methods.registry import InitResult, register
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

NAME = "test-half-fit"


@pytest.fixture(scope="module", autouse=True)
def half_fit():
    """A throwaway fitted method: U, P ~ N(0, 0.1²) fitted for ``steps`` steps, B0 = U/√s, A0 = Pᵀ/√s."""

    @register(NAME, fitted=True, summary="test: a fitted method defined outside the package")
    def fn(weights, ranks, scalings, rng_for, *, steps=40, engine="torch", context: InitContext | None = None):
        init = {}
        for n, w in weights.items():
            g = rng_for(n)
            init[n] = (torch.randn(w.shape[0], ranks[n], generator=g) * 0.1,
                       torch.randn(w.shape[1], ranks[n], generator=g) * 0.1)
        engine = resolve_engine(engine, weights, None)
        fields = {"method": NAME, "weights": tensor_digest(weights), "seed": getattr(rng_for, "seed", None),
                  "ranks": {n: ranks[n] for n in sorted(ranks)}, "steps": steps, "engine": engine}
        unscaled, fit, info = cached_fit(weights, init, fields, context=context or InitContext(), steps=steps,
                                         lr=5e-4, engine=engine)
        factors = {n: ((p.T / math.sqrt(scalings[n])).contiguous(), (u / math.sqrt(scalings[n])).contiguous())
                   for n, (u, p) in unscaled.items()}
        return InitResult(factors=factors, fit=fit, info=info)

    yield
    registry._REGISTRY.pop(NAME)


def _cfg():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def test_options_come_from_the_signature_and_the_context_is_the_bridges():
    spec = inilora.get_method(NAME)
    assert spec.fitted and dict(spec.options) == {"steps": 40, "engine": "torch"}


def test_a_fitted_method_from_outside_gets_the_cache_and_keeps_the_output(tmp_path, monkeypatch):
    base = tiny_model("llama-gqa")
    x = probe_inputs(base)
    before = model_output(base, x)
    seen = []
    model = inilora.get_peft_model(base, _cfg(), NAME, cache=tmp_path, progress=lambda *a: seen.append(a))
    assert model.inilora_report.info["cache"] == "miss"
    assert seen and seen[-1][:2] == (40, 40)  # progress in steps, given by the helper
    assert relative_drift(model_output(model, x), before) < 1e-5  # a residual method like any other
    monkeypatch.setattr(approx, "approximate", lambda *a, **k: pytest.fail("a cached fit ran again"))
    again = inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), NAME, cache=tmp_path)
    assert again.inilora_report.info["cache"] == "hit"


def test_a_fitted_method_is_split_across_ranks(monkeypatch, tmp_path):
    """Under torchrun the bridge lets every rank compute its share (split=True), as for inilora."""
    calls = []
    real = distributed.share_init

    def spy(compute, *, split=False, digest=None):
        calls.append(split)
        return real(compute, split=split, digest=digest)

    monkeypatch.setattr(distributed, "share_init", spy)
    inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), NAME, cache=False)
    inilora.get_peft_model(tiny_model("llama-gqa"), _cfg(), "inilora-alpha", cache=False)
    assert calls == [True, False]
