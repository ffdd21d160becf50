"""The Eckart–Young optimum from the top r singular values agrees with the full SVD within the stated
accuracy (1e-4 absolute), on real and random spectra — the flat one (Gaussian W) the hard case — and
never reports a floor below the true one."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from inilora.approx import optimum
from inilora.approx.optimum import ACCURACY, eckart_young, eckart_young_exact


def _spectrum(d, k, singular, seed=0):
    """W = U diag(s) Vᵀ with random orthonormal U, V (numpy-free, seeded)."""
    g = torch.Generator().manual_seed(seed)
    n = len(singular)
    U = torch.linalg.qr(torch.randn(d, n, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(k, n, generator=g, dtype=torch.float64)).Q
    return (U * torch.as_tensor(singular, dtype=torch.float64)) @ V.T


def _cases():
    g = torch.Generator().manual_seed(7)
    n = 768
    low = torch.randn(n, 16, generator=g) @ torch.randn(16, n, generator=g)
    return {
        # Marchenko–Pastur: the top singular values nearly tied (the hard case for iterative methods)
        "gaussian 768²": torch.randn(n, n, generator=g),
        "gaussian 400×1200 (wide)": torch.randn(400, 1200, generator=g),
        "power law σ_i = i^-0.3": _spectrum(n, n, [i ** -0.3 for i in range(1, n + 1)]).float(),
        # a cluster straddling σ_r: r − 3 large values, then 40 values tied to 1e-3
        "tie at σ_r": _spectrum(n, 640, [10.0] * 5 + [1.0 + 1e-3 * i for i in range(40)] + [0.5] * 300).float(),
        "low rank + 1e-2 noise": low + 1e-2 * torch.randn(n, n, generator=g),
        "low rank + 1e-4 noise (e small)": low + 1e-4 * torch.randn(n, n, generator=g),
        "rank 4 (< r)": low[:, :4] @ torch.randn(4, n, generator=g),
        "bf16 gaussian": torch.randn(n, 512, generator=g).to(torch.bfloat16),
    }


CASES = _cases()


@functools.cache
def _singular_values(name):
    return torch.linalg.svdvals(CASES[name].double())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("r", [8, 12])
def test_matches_the_full_svd(name, r):
    W = CASES[name]
    assert min(W.shape) > optimum.EXACT_BELOW * r  # the Krylov path, not the exact fallback
    s2 = _singular_values(name) ** 2
    exact = math.sqrt(s2[r:].sum().item() / s2.sum().item())
    fast = eckart_young(W, r)
    assert abs(fast - exact) <= ACCURACY, (fast, exact)
    assert fast >= exact - 1e-6  # an upper bound: never a floor better than exists (fp32 rounding aside)


def test_real_smollm2_weights(smollm2):
    """Every q/v matrix of the embedded SmolLM2 that takes the Krylov path (the 576² q_proj)."""
    seen = 0
    for name, module in smollm2.named_modules():
        if name.endswith(("q_proj", "v_proj")):
            W = module.weight.detach()
            if min(W.shape) <= optimum.EXACT_BELOW * 8:
                continue
            seen += 1
            if seen > 6:  # six layers (first, middle, last) are enough and keep the test fast
                continue
            assert abs(eckart_young(W, 8) - eckart_young_exact(W, 8)) <= ACCURACY, name
    assert seen == 30


def test_small_or_full_rank_uses_the_exact_svd_and_trivial_cases():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(50, 40, generator=g)
    assert eckart_young(W, 5) == eckart_young_exact(W, 5)  # small: exact, bit for bit
    assert eckart_young(W, 40) == 0.0
    assert eckart_young(torch.zeros(600, 600), 8) == 0.0
    big = torch.randn(600, 600, generator=g)
    assert eckart_young(big, 8) == eckart_young(big.clone(), 8)  # deterministic
    before = torch.random.get_rng_state()
    eckart_young(big, 8)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG is left alone
    assert eckart_young(big, 8, exact=True) == eckart_young_exact(big, 8)
    bad = big.clone()
    bad[3, 4] = math.inf
    assert math.isnan(eckart_young(bad, 8))


def test_approximate_reports_the_optimum_the_way_asked():
    from inilora.approx import approximate

    g = torch.Generator().manual_seed(3)
    W = {"a": torch.randn(600, 520, generator=g), "b": torch.randn(40, 30, generator=g)}
    init = {n: (torch.randn(w.shape[0], 8, generator=g) * 0.1, torch.randn(w.shape[1], 8, generator=g) * 0.1)
            for n, w in W.items()}
    fast = approximate(W, init, steps=2, engine="torch")
    exact = approximate(W, init, steps=2, engine="torch", optimum="exact")
    assert exact["a"].optimum == eckart_young_exact(W["a"], 8) != fast["a"].optimum
    assert abs(fast["a"].optimum - exact["a"].optimum) <= ACCURACY
    assert math.isnan(approximate(W, init, steps=2, engine="torch", optimum="none")["a"].optimum)
    with pytest.raises(ValueError, match="optimum must be one of"):
        approximate(W, init, steps=2, engine="torch", optimum="svd")
