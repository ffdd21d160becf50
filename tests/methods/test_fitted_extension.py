"""Adding a fitted init method touches one place: a function registered outside the package, with
``fitted=True``, gets the fit cache, resume, progress and the split across ranks from the bridge and
``methods.fitting`` — no other file names it."""

from __future__ import annotations

import pytest
from peft import LoraConfig

import inilora
from inilora import approx, distributed
from inilora.methods import registry
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

from _extension import NAME


@pytest.fixture(scope="module", autouse=True)
def half_fit():
    """The throwaway fitted method of ``tests/_extension.py`` (registered on import, by conftest too)."""
    import _extension  # noqa: F401

    assert NAME in registry.available_methods()
    yield


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
