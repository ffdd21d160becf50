"""The reference loop (docs/design.md §3) against an independent numpy implementation, schedule, checkpoints."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from inilora.approx import eckart_young, lr_at, relative_error
from inilora.approx.batched import fit_batched
from inilora.approx.reference import fit_reference


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny matrices: one intra-op thread. With two threads on a loaded 2-core machine the
    reference loop's many small ops spin-wait on each other (measured 15x slower)."""
    if "eps_fixture" in request.fixturenames:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def numpy_fit(W, U0, P0, steps, *, reduction="mean", lr=5e-4, log_every=10):
    """Textbook Adam (float64) on ‖U Pᵀ − W‖² with mean or sum reduction, released schedule."""
    W = np.asarray(W, dtype=np.float64)
    U = np.array(U0, dtype=np.float64)
    P = np.array(P0, dtype=np.float64)
    n = W.size
    b1, b2, eps = 0.9, 0.999, 1e-8
    state = {"U": [np.zeros_like(U), np.zeros_like(U)], "P": [np.zeros_like(P), np.zeros_like(P)]}
    losses = []
    for t in range(steps + 1):
        E = U @ P.T - W
        if t % log_every == 0 or t == steps:
            losses.append((t, float(np.vdot(E, E)) / n))
        if t == steps:
            break
        c = 2.0 / n if reduction == "mean" else 2.0
        grads = {"U": c * (E @ P), "P": c * (E.T @ U)}
        rate = lr * 0.9 ** ((t + 1) // 5000)
        k = t + 1
        for name, param in (("U", U), ("P", P)):
            m, v = state[name]
            g = grads[name]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1**k)
            v_hat = v / (1 - b2**k)
            param -= rate * m_hat / (np.sqrt(v_hat) + eps)
    return U, P, losses


@pytest.fixture(scope="module")
def eps_fixture():
    """2048² ~ N(0, 0.02²), r=8: gradients ≈ 1e-8 ≈ Adam's eps (docs/design.md §3)."""
    g = torch.Generator().manual_seed(1234)
    W = torch.randn(2048, 2048, generator=g) * 0.02
    U0 = torch.randn(2048, 8, generator=g) * 0.02
    P0 = torch.randn(2048, 8, generator=g) * 0.02
    return W, U0, P0


STEPS = 200


@pytest.fixture(scope="module")
def reference_vs_numpy(eps_fixture):
    W, U0, P0 = eps_fixture
    ref = fit_reference(W, U0, P0, steps=STEPS, log_every=10)
    U, P, losses = numpy_fit(W.numpy(), U0.numpy(), P0.numpy(), STEPS, log_every=10)
    return ref, (U, P, losses)


def test_reference_matches_numpy_loss_curve(reference_vs_numpy):
    ref, (_, _, np_losses) = reference_vs_numpy
    assert [t for t, _ in ref.losses] == [t for t, _ in np_losses] == list(range(0, STEPS + 1, 10))
    a = np.array([v for _, v in ref.losses])
    b = np.array([v for _, v in np_losses])
    np.testing.assert_allclose(a, b, rtol=1e-4)
    # the loss barely moves in 200 steps, so also hold the decrease itself to agreement
    np.testing.assert_allclose(a[0] - a[1:], b[0] - b[1:], rtol=1e-3)


def test_reference_matches_numpy_factors(reference_vs_numpy, eps_fixture):
    ref, (U, P, _) = reference_vs_numpy
    _, U0, P0 = eps_fixture
    ours = (ref.U @ ref.P.T).double().numpy()
    theirs = U @ P.T
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-3
    # the displacement from the start (what Adam did) agrees too
    dU_ours = (ref.U - U0).double().numpy()
    dU_theirs = U - U0.double().numpy()
    assert np.linalg.norm(dU_ours - dU_theirs) / np.linalg.norm(dU_theirs) <= 1e-3


def test_batched_engine_matches_numpy_on_eps_fixture(reference_vs_numpy, eps_fixture):
    """The fast engine on the same eps-sensitive fixture (its analytic gradients, own Adam)."""
    W, U0, P0 = eps_fixture
    _, (U, P, np_losses) = reference_vs_numpy
    run = fit_batched([W], [(U0, P0)], steps=STEPS, log_every=10)[0]
    a = np.array([v for _, v in run.losses])
    b = np.array([v for _, v in np_losses])
    np.testing.assert_allclose(a, b, rtol=1e-4)
    np.testing.assert_allclose(a[0] - a[1:], b[0] - b[1:], rtol=1e-3)
    theirs = U @ P.T
    ours = (run.U @ run.P.T).double().numpy()
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-3


def test_fixture_is_eps_sensitive(eps_fixture):
    """Sum instead of mean reduction must visibly change the trajectory on this fixture."""
    W, U0, P0 = (x.numpy() for x in eps_fixture)
    steps = 5
    Um, Pm, _ = numpy_fit(W, U0, P0, steps, reduction="mean")
    Us, Ps, _ = numpy_fit(W, U0, P0, steps, reduction="sum")
    dm, ds = Um - U0, Us - U0
    assert np.linalg.norm(ds - dm) / np.linalg.norm(dm) > 0.2
    dm, ds = Pm - P0, Ps - P0
    assert np.linalg.norm(ds - dm) / np.linalg.norm(dm) > 0.2
    # and the reason: the mean-reduced gradients are of the order of eps
    E = U0.astype(np.float64) @ P0.T - W
    g = 2.0 / W.size * (E @ P0)
    assert 1e-10 < np.median(np.abs(g)) < 1e-7


def test_lr_at_matches_steplr_order():
    """StepLR stepped before optimizer.step(): iteration t uses lr·0.9^⌊(t+1)/5000⌋."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([p], lr=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5000, gamma=0.9)
    used = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(10010):
            opt.zero_grad()
            p.grad = torch.ones(1)
            sched.step()
            used.append(opt.param_groups[0]["lr"])
            opt.step()
    assert used == [lr_at(t) for t in range(10010)]  # bit-exact
    assert lr_at(4998) == 5e-4 and lr_at(4999) == 5e-4 * 0.9
    assert lr_at(9999) == 5e-4 * 0.9 * 0.9


def _small(seed=0, d=96, k=64, r=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(d, k, generator=g) * 0.1).to(dtype)
    return W, torch.randn(d, r, generator=g) * 0.1, torch.randn(k, r, generator=g) * 0.1


def test_checkpoints_equal_shorter_runs():
    W, U0, P0 = _small()
    full = fit_reference(W, U0, P0, steps=60, checkpoints=(0, 1, 25, 60), log_every=10)
    assert sorted(full.checkpoints) == [0, 1, 25, 60]
    assert torch.equal(full.checkpoints[0][0], U0) and torch.equal(full.checkpoints[0][1], P0)
    for t in (1, 25, 60):
        short = fit_reference(W, U0, P0, steps=t)
        assert torch.equal(full.checkpoints[t][0], short.U)
        assert torch.equal(full.checkpoints[t][1], short.P)
    assert torch.equal(full.checkpoints[60][0], full.U)
    with pytest.raises(ValueError):
        fit_reference(W, U0, P0, steps=10, checkpoints=(11,))


def test_log_schedule_and_progress():
    W, U0, P0 = _small()
    seen = []
    run = fit_reference(W, U0, P0, steps=65, log_every=10, progress=lambda t, loss: seen.append((t, loss)))
    assert [t for t, _ in run.losses] == [0, 10, 20, 30, 40, 50, 60, 65]
    assert seen == run.losses
    assert run.losses[-1][1] == pytest.approx(torch.mean((W - run.U @ run.P.T) ** 2).item(), rel=1e-6)
    zero = fit_reference(W, U0, P0, steps=0)
    assert [t for t, _ in zero.losses] == [0] and torch.equal(zero.U, U0)


def test_reference_deterministic_and_low_precision_exact():
    W, U0, P0 = _small(dtype=torch.bfloat16)
    a = fit_reference(W, U0, P0, steps=50)
    b = fit_reference(W, U0, P0, steps=50)
    assert torch.equal(a.U, b.U) and torch.equal(a.P, b.P) and a.losses == b.losses
    # bf16 W is upcast exactly: same fit as its fp32 copy
    c = fit_reference(W.float(), U0, P0, steps=50)
    assert torch.equal(a.U, c.U) and torch.equal(a.P, c.P)
    assert a.U.dtype == torch.float32 and W.dtype == torch.bfloat16


def test_relative_error_and_optimum_match_numpy():
    W, U0, P0 = _small(d=50, k=40, r=5)
    run = fit_reference(W, U0, P0, steps=300)
    rel = relative_error(W, run.U, run.P)
    opt = eckart_young(W, 5)
    Wn = W.double().numpy()
    s = np.linalg.svd(Wn, compute_uv=False)
    assert opt == pytest.approx(np.sqrt(np.sum(s[5:] ** 2)) / np.linalg.norm(Wn), rel=1e-12)
    R = Wn - run.U.double().numpy() @ run.P.double().numpy().T
    assert rel == pytest.approx(np.linalg.norm(R) / np.linalg.norm(Wn), rel=1e-12)
    assert opt <= rel
    # an exactly rank-r matrix has optimum 0
    assert eckart_young(U0 @ P0.T, 5) < 1e-6
