"""The cpu-fused layout is chosen by measurement on the user's machine and trusted only after a check
against the "torch" engine (docs/design.md §3, §7): injected timings and an injected mismatch, no real timing."""

from __future__ import annotations

import pytest
import torch
from _fixtures import problem

from inilora import approx
from inilora.approx import approximate, cpu_fused, cpu_tuning, resolve_engine, trust


def _builds(width: int) -> bool:
    try:
        cpu_fused.load_library(width)
        return True
    except cpu_fused.CpuFusedUnavailable:
        return False


pytestmark = pytest.mark.skipif(not all(_builds(w) for w in cpu_tuning.WIDTHS), reason="no C++ compiler here")


@pytest.fixture
def state(tmp_path, monkeypatch):
    """Fresh verdicts and choices (the builds themselves are shared with the session)."""
    monkeypatch.setattr(trust, "state_dir", lambda: tmp_path)
    monkeypatch.setattr(approx, "_noticed", set())
    monkeypatch.delenv(cpu_tuning.ENV, raising=False)
    cpu_tuning.last_choice.clear()
    return tmp_path


def _ws(seed=0):
    W, init = problem({"a": (64, 48), "b": (32, 48)}, r=4, seed=seed)
    return list(W.values()), list(init.values())


def test_autotune_picks_the_fastest_measured_layout_and_remembers_it(state):
    fake = {16: 3e-3, 8: 1e-3, 4: 2e-3}
    calls = []

    def timer(width, lib, ws, ins, steps):
        calls.append(width)
        assert lib.ifs_vector_width() == width and steps >= 2
        noisy = len(calls) % 9 in (1, 2, 3)  # each decision's first round: a neighbour's burst
        return fake[width] * (5 if noisy and width == 8 else 1)  # minima over rounds decide

    ws, inits = _ws()
    assert cpu_tuning.choose_width(ws, inits, threads=2, timer=timer) == 8
    assert calls[:3] == [16, 8, 4] and len(calls) == 9  # interleaved, three rounds
    assert "8 fp32 lanes (measured now" in cpu_tuning.describe()
    fake.update({8: 9e-3})  # remembered: not timed again, even if it would now lose
    assert cpu_tuning.choose_width(ws, inits, threads=2, timer=timer) == 8 and len(calls) == 9
    assert "remembered" in cpu_tuning.describe()
    # other shapes or another thread count are measured afresh
    assert cpu_tuning.choose_width(ws, inits, threads=1, timer=timer) == 4


def test_a_forced_layout_is_used_and_still_checked(state, monkeypatch):
    monkeypatch.setenv(cpu_tuning.ENV, "16")
    ws, inits = _ws()
    assert cpu_tuning.choose_width(ws, inits, timer=lambda *a: pytest.fail("a forced layout is not timed")) == 16
    assert "forced" in cpu_tuning.describe()
    assert list(trust.read("trust.json"))  # checked against torch all the same
    monkeypatch.setenv(cpu_tuning.ENV, "12")
    with pytest.raises(ValueError, match="INILORA_CPU_LANES"):
        cpu_tuning.candidate_widths()


def test_a_layout_that_disagrees_with_torch_is_never_used(state, monkeypatch):
    real = cpu_tuning._fused_run

    def wrong_for_16(lib, ws, inits):
        runs = real(lib, ws, inits)
        if lib.ifs_vector_width() == 16:
            runs[1].U.mul_(1.01)  # a kernel variant that is 1 % off
        return runs

    monkeypatch.setattr(cpu_tuning, "_fused_run", wrong_for_16)
    with pytest.warns(RuntimeWarning, match="16 fp32 lanes disagrees with the 'torch' engine.*matrix 1"):
        assert cpu_tuning.trusted_widths() == [8, 4]
    verdicts = trust.read("trust.json")
    assert sorted(v["ok"] for v in verdicts.values()) == [False, True, True]
    assert cpu_tuning.trusted_widths() == [8, 4]  # the verdict is kept: no second check, no second warning


def test_no_trusted_layout_falls_back_to_torch_and_the_key_says_so(state, monkeypatch):
    monkeypatch.setattr(trust, "compare", lambda got, ref: "injected mismatch")
    with pytest.warns(RuntimeWarning):
        assert resolve_engine("cpu-fused", ["cpu"]) == "torch"
    W, init = problem({"a": (32, 24)}, r=4)
    with pytest.warns(RuntimeWarning, match="'auto' runs the portable 'torch' engine.*agrees"):
        assert approximate(W, init, steps=5)["a"].engine == "torch"  # what inilora's cache key records


def test_cpu_fused_with_weights_on_another_device_is_resolved_to_torch(state):
    """It used to resolve to "cpu-fused" and then quietly run the batched engine under that name."""
    with pytest.warns(RuntimeWarning, match="weights are not on the CPU.*'torch'"):
        assert resolve_engine("cpu-fused", ["cuda:0"]) == "torch"
    with pytest.raises(ValueError, match="CPU weights only"):
        cpu_tuning.cpu_fused_engine([torch.zeros(4, 4, device="meta")], [(torch.zeros(4, 1), torch.zeros(4, 1))],
                                   steps=1)


def test_every_layout_gives_the_torch_result_through_the_engine(state, monkeypatch):
    from inilora.approx.batched import fit_batched

    ws, inits = _ws(seed=3)
    ref = fit_batched(ws, inits, steps=120, log_every=40)
    for width in cpu_tuning.WIDTHS:
        monkeypatch.setenv(cpu_tuning.ENV, str(width))
        runs = cpu_tuning.cpu_fused_engine(ws, inits, steps=120, log_every=40)
        for a, b in zip(runs, ref):
            assert float((a.U @ a.P.T - b.U @ b.P.T).norm() / (b.U @ b.P.T).norm()) <= 1e-5


def test_triton_on_a_gpu_model_not_checked_here_is_compared_once(state, monkeypatch):
    """No GPU here: the check is stood in for, the decision in resolve_engine is what is tested."""
    from inilora.approx import triton_engine as te

    monkeypatch.setattr(te, "_import_triton", lambda: True)
    monkeypatch.setattr(approx, "_triton_trusted", lambda device: False)
    with pytest.warns(RuntimeWarning, match="'auto' runs the portable 'torch' engine: the Triton kernel disagrees"):
        assert resolve_engine("auto", ["cuda:0"]) == "torch"
    monkeypatch.setattr(approx, "_triton_trusted", lambda device: True)
    assert resolve_engine("auto", ["cuda:0"]) == "triton"


def test_a_verdict_is_taken_once_and_kept(state):
    calls = []

    def run(ws, inits):
        from inilora.approx.batched import fit_batched

        calls.append(1)
        out = fit_batched(ws, inits, steps=trust.STEPS, log_every=100)
        out[0].U.mul_(1.05)
        return out

    with pytest.warns(RuntimeWarning, match="a test engine disagrees with the 'torch' engine here.*matrix 0"):
        assert not trust.trusted("test-engine", run, what="a test engine")
    assert not trust.trusted("test-engine", run, what="a test engine") and len(calls) == 1
    assert trust.read("trust.json")["test-engine"]["ok"] is False
