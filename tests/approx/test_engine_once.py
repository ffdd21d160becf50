"""The engine is resolved once, at the entry point, and passed down: the result and the cache key
name the engine that actually ran — checked by forcing the cpu-fused engine's fallback."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from _fixtures import problem

from inilora import approx
from inilora.approx import ResolvedEngine, approximate, cpu_fused, cpu_tuning, resolve_engine
from inilora.cache import FitCache
from inilora.methods import get_method
from inilora.naming import rng_factory


@pytest.fixture
def no_compiler(monkeypatch):
    def broken(vector_width):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpu_fused, "_libs", {})
    monkeypatch.setattr(cpu_fused, "_compile", broken)
    monkeypatch.setattr(approx, "_noticed", set())


def _run_inilora(weights, cache_dir, **opts):
    ranks = {n: 4 for n in weights}
    fn = get_method("inilora").fn
    from inilora.methods.fitting import InitContext

    return fn(weights, ranks, {n: 1.0 for n in weights}, rng_factory(0), steps=30,
              context=InitContext(cache=FitCache(cache_dir)), **opts)


def _cached_engines(cache_dir) -> list[str]:
    return sorted(json.loads(p.read_text())["key"]["engine"] for p in cache_dir.rglob("*.json")
                  if "key" in json.loads(p.read_text()))


def test_forced_fallback_is_recorded_as_torch_in_the_result_and_the_cache_key(no_compiler, tmp_path):
    W, _ = problem({"model.layers.0.self_attn.q_proj": (48, 40), "model.layers.0.self_attn.v_proj": (24, 40)})
    with pytest.warns(RuntimeWarning, match="cpu-fused engine unavailable .*no C\\+\\+ compiler"):
        result = _run_inilora(W, tmp_path, engine="cpu-fused")
    assert result.info["engine"] == "torch"
    assert _cached_engines(tmp_path) == ["torch"]
    ran = _run_inilora(W, tmp_path / "other", engine="torch")  # the same fit, asked for by name
    for n in W:
        assert torch.equal(result.factors[n][0], ran.factors[n][0])


def test_an_empty_matrix_makes_cpu_fused_resolve_to_torch_before_anything_runs():
    W, init = problem({"a": (32, 24), "b": (0, 24)}, r=2)
    ws, inits = list(W.values()), list(init.values())
    with pytest.warns(RuntimeWarning, match="empty weight matrix"):
        assert resolve_engine("cpu-fused", ["cpu"], weights=ws, inits=inits) == "torch"
    with pytest.raises(ValueError, match="empty"):  # handed to it anyway: an error, never a quiet switch
        cpu_tuning.cpu_fused_engine(ws, inits, steps=1)


def test_a_resolved_engine_is_run_as_given_never_decided_again(monkeypatch):
    try:
        cpu_fused.load_library()
    except cpu_fused.CpuFusedUnavailable:
        pytest.skip("no compiler here")
    W, init = problem({"a": (32, 24), "b": (16, 24)}, r=2)
    chosen = resolve_engine("auto", ["cpu"], weights=list(W.values()), inits=list(init.values()))
    assert chosen == "cpu-fused" and chosen.layout in cpu_tuning.WIDTHS
    assert pickle.loads(pickle.dumps(chosen)).layout == chosen.layout  # broadcast to the ranks as it is
    assert json.dumps({"engine": chosen}) == '{"engine": "cpu-fused"}'  # a cache key sees the name
    monkeypatch.setattr(approx, "_resolve_name", lambda *a: pytest.fail("decided a second time"))
    monkeypatch.setattr(cpu_tuning, "choose_width", lambda *a, **k: pytest.fail("layout chosen a second time"))
    fits = approximate(W, init, steps=20, engine=chosen)
    assert {f.engine for f in fits.values()} == {"cpu-fused"} and type(fits["a"].engine) is str
    forced = approximate(W, init, steps=20, engine=ResolvedEngine("cpu-fused", 4))
    assert forced["a"].engine == "cpu-fused"


def test_cpu_fused_and_tuning_import_one_way():
    """cpu_tuning imports cpu_fused; cpu_fused knows nothing of cpu_tuning (the cycle is gone)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cpu_fused))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("cpu_tuning" in x for x in names)
