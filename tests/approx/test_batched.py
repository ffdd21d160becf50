"""The batched "torch" engine against the reference loop (docs/design.md §3 tolerances) and the public API."""

from __future__ import annotations

import pytest
import torch
from _fixtures import assert_matches, problem, rel

from inilora.approx import ENGINE_VERSION, ENGINES, FitResult, approximate
from inilora.approx.batched import fit_batched
from inilora.approx.reference import fit_reference

SHAPES = {"a": (64, 48), "b": (64, 48), "c": (32, 48), "d": (80, 80)}


@pytest.fixture(scope="module")
def mixed():
    W, init = problem(SHAPES)
    kw = dict(steps=2000, checkpoints=(200, 1000))
    return W, init, approximate(W, init, engine="reference", **kw), approximate(W, init, engine="torch", **kw)


def test_batched_matches_reference(mixed):
    W, _, ref, ours = mixed
    assert list(ours) == list(W)
    assert_matches(ref, ours, W)


def test_results_report(mixed):
    W, _, ref, ours = mixed
    for n, res in ours.items():
        assert isinstance(res, FitResult)
        assert res.engine == "torch" and res.steps == 2000
        assert res.U.shape == (W[n].shape[0], 8) and res.P.shape == (W[n].shape[1], 8)
        assert res.U.dtype == torch.float32 and res.U.is_contiguous()
        assert res.optimum <= res.rel_error + 1e-9
        assert res.optimum == ref[n].optimum
        assert res.rel_error == pytest.approx(ref[n].rel_error, rel=1e-4)
        assert res.losses[-1][0] == 2000 and len(res.losses) == 21


def test_bf16_weights_upcast():
    W, init = problem(SHAPES, dtype=torch.bfloat16)
    ref = approximate(W, init, engine="reference", steps=2000)
    ours = approximate(W, init, engine="torch", steps=2000)
    assert_matches(ref, ours, W)
    # the engine reads bf16 exactly: identical to fitting the fp32 copy
    up = approximate({n: w.float() for n, w in W.items()}, init, engine="torch", steps=2000)
    for n in W:
        assert torch.equal(ours[n].U, up[n].U) and torch.equal(ours[n].P, up[n].P)


def test_each_matrix_keeps_its_own_mean():
    """Eps-sensitive sizes: a mean shared across matrices would change every trajectory."""
    shapes = {"small": (64, 48), "small2": (64, 48), "big": (512, 384)}
    # stds chosen so the per-matrix mean gradients sit near Adam's eps (1e-8)
    stds = {"small": 1.5e-3, "small2": 1.5e-3, "big": 6e-3}
    W, init = problem(shapes, r=4, w_std=stds, f_std=stds, seed=3)
    together = approximate(W, init, engine="torch", steps=300)
    for n in W:
        alone = approximate({n: W[n]}, {n: init[n]}, engine="torch", steps=300)[n]
        assert rel(together[n].U @ together[n].P.T, alone.U @ alone.P.T) <= 1e-6, n
        ref = fit_reference(W[n], *init[n], steps=300)
        assert rel(together[n].U @ together[n].P.T, ref.U @ ref.P.T) <= 1e-3, n


def test_checkpoints_equal_shorter_runs():
    W, init = problem({"a": (64, 48), "d": (80, 80)}, r=4, w_std=0.1, f_std=0.1)
    ws, inits = list(W.values()), list(init.values())
    full = fit_batched(ws, inits, steps=120, checkpoints=(0, 7, 120))
    for t in (7, 120):
        short = fit_batched(ws, inits, steps=t)
        for f, s in zip(full, short):
            assert torch.equal(f.checkpoints[t][0], s.U) and torch.equal(f.checkpoints[t][1], s.P)
    for f, (U0, P0) in zip(full, inits):
        assert torch.equal(f.checkpoints[0][0], U0) and torch.equal(f.checkpoints[0][1], P0)


def test_deterministic():
    W, init = problem(SHAPES, r=4)
    a = approximate(W, init, steps=150)
    b = approximate(W, init, steps=150)
    for n in W:
        assert torch.equal(a[n].U, b[n].U) and torch.equal(a[n].P, b[n].P)
        assert a[n].losses == b[n].losses


def test_progress_and_zero_steps():
    W, init = problem(SHAPES, r=4)
    for engine in ENGINES:
        if engine == "triton":  # CUDA only: its progress/zero-step checks are in test_triton_engine.py
            continue
        seen = []
        approximate(W, init, steps=30, log_every=10, engine=engine, progress=lambda *a: seen.append(a))
        assert seen[-1][0] == seen[-1][1] == 30 * len(W)
        assert all(0 <= done <= total for done, total, _ in seen)
        zero = approximate(W, init, steps=0, engine=engine)
        for n in W:
            assert torch.equal(zero[n].U, init[n][0]) and [t for t, _ in zero[n].losses] == [0]


def test_bad_input():
    W, init = problem({"a": (64, 48)}, r=4)
    with pytest.raises(ValueError, match="reference.*torch"):
        approximate(W, init, engine="triton-nope")
    with pytest.raises(ValueError, match="missing"):
        approximate(W, {}, steps=1)
    with pytest.raises(ValueError, match="factors"):
        approximate(W, {"a": (init["a"][1], init["a"][0])}, steps=1)
    with pytest.raises(ValueError, match="checkpoints"):
        approximate(W, init, steps=5, checkpoints=(6,))
    assert set(ENGINE_VERSION) == set(ENGINES)
