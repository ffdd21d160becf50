"""``engine="auto"`` (the default) and ``devices=[...]``: which engine runs, the one-line notice
when falling back, and the split of the matrices over devices."""

from __future__ import annotations

import warnings

import pytest
import torch
from _fixtures import problem, rel

from inilora import approx
from inilora.approx import approximate, assign, cpu_fused, resolve_engine
from inilora.approx import triton_engine as te


@pytest.fixture
def fresh_notices(monkeypatch):
    monkeypatch.setattr(approx, "_noticed", set())


def test_auto_on_cpu_is_cpu_fused_when_it_builds():
    try:
        cpu_fused.load_library()
    except cpu_fused.CpuFusedUnavailable:
        pytest.skip("no compiler / ninja here")
    assert resolve_engine("auto", [torch.device("cpu")]) == "cpu-fused"
    W, init = problem({"a": (32, 24)}, r=4)
    assert approximate(W, init, steps=5)["a"].engine == "cpu-fused"  # the default


def test_auto_falls_back_to_torch_with_one_notice(monkeypatch, fresh_notices):
    def broken(vector_width):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpu_fused, "_libs", {})
    monkeypatch.setattr(cpu_fused, "_compile", broken)
    W, init = problem({"a": (32, 24)}, r=4)
    with pytest.warns(RuntimeWarning, match="'auto' runs the portable 'torch' engine.*no C\\+\\+ compiler") as seen:
        fit = approximate(W, init, steps=5)["a"]
    assert fit.engine == "torch" and len(seen) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not per call
        assert approximate(W, init, steps=5)["a"].engine == "torch"


def test_auto_on_cuda(monkeypatch, fresh_notices):
    """Only the device *types* matter to the choice, so no GPU is needed to check it."""
    monkeypatch.setattr(te, "_import_triton", lambda: True)
    assert resolve_engine("auto", ["cuda:0", "cuda:1"]) == "triton"
    monkeypatch.setattr(te, "_import_triton", lambda: False)
    with pytest.warns(RuntimeWarning, match="triton is not importable"):
        assert resolve_engine("auto", ["cuda:0"]) == "torch"
    assert resolve_engine("auto", ["cuda:0", "cpu"]) == "torch"  # mixed: the portable engine


def test_named_engines_pass_through_and_unknown_fails():
    for name in approx.ENGINES:
        assert resolve_engine(name, ["cpu"]) == name
    with pytest.raises(ValueError, match="auto, reference, torch"):
        resolve_engine("warp", ["cpu"])


def test_assign_is_balanced_and_deterministic():
    costs = [5, 4, 3, 3, 1, 8]
    owner = assign(costs, 2)
    assert owner == assign(costs, 2)
    loads = [sum(c for c, o in zip(costs, owner) if o == p) for p in range(2)]
    assert sorted(loads) == [12, 12]
    assert assign(costs, 1) == [0] * 6
    assert sorted(set(assign([1] * 7, 3))) == [0, 1, 2]
    with pytest.raises(ValueError):
        assign(costs, 0)


def test_devices_on_one_device_changes_nothing():
    W, init = problem({"a": (64, 48), "b": (32, 48), "c": (64, 48)}, r=4)
    plain = approximate(W, init, steps=50, engine="torch")
    split = approximate(W, init, steps=50, engine="torch", devices=["cpu", "cpu"])
    for n in W:
        assert torch.equal(plain[n].U, split[n].U) and torch.equal(plain[n].P, split[n].P)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_gather_to_the_weights_device():
    W, init = problem({f"m{i}": (256, 192) for i in range(5)}, r=8)
    ref = approximate(W, init, steps=200, engine="torch")
    fits = approximate(W, init, steps=200, devices=["cuda:0", "cuda:1"])
    for n, fit in fits.items():
        assert fit.U.device.type == "cpu" and fit.engine == "triton"
        assert rel(fit.U @ fit.P.T, ref[n].U @ ref[n].P.T) <= 1e-3
