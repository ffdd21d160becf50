"""MiLoRA (docs/design.md §2): the r smallest singular triplets, split √S on each side, divided by √s.

The reference is numpy's float64 SVD of a matrix built with known, well-separated
singular values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inilora.methods import get_method
from inilora.naming import rng_factory


def make_weight(d: int, k: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """W = U diag(S) Vᵀ in float32, S geometric from 8 down to 0.05 (neighbours ≥ 15 % apart)."""
    rng = np.random.default_rng(seed)
    n = min(d, k)
    u, _ = np.linalg.qr(rng.standard_normal((d, n)))
    v, _ = np.linalg.qr(rng.standard_normal((k, n)))
    s = np.geomspace(8.0, 0.05, n)
    w = torch.from_numpy((u * s) @ v.T).float()
    return w, s


def minor_part(w: torch.Tensor, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The rank-r part from the r smallest singular triplets, and all singular values."""
    w64 = w.double().numpy()
    u, s, vt = np.linalg.svd(w64, full_matrices=False)
    return (u[:, -r:] * s[-r:]) @ vt[-r:, :], s


def run(weights, ranks, scalings):
    return get_method("milora").fn(weights, ranks, scalings, rng_factory(0)).factors


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


WEIGHTS = {
    "model.layers.0.self_attn.q_proj": make_weight(48, 32, 0)[0],
    "model.layers.0.self_attn.v_proj": make_weight(32, 48, 1)[0],  # out < in
}


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_product_is_the_minor_part(s):
    ranks = {"model.layers.0.self_attn.q_proj": 4, "model.layers.0.self_attn.v_proj": 6}
    factors = run(WEIGHTS, ranks, {n: s for n in WEIGHTS})
    for name, w in WEIGHTS.items():
        r = ranks[name]
        a0, b0 = factors[name]
        d, k = w.shape
        assert a0.shape == (r, k) and b0.shape == (d, r)
        assert a0.dtype == torch.float32 and b0.dtype == torch.float32
        minor, sv = minor_part(w, r)
        product = s * (b0.double() @ a0.double()).numpy()
        assert rel(product, minor) <= 1e-6
        # √S_r on each side and 1/√s on each: ‖B0‖² = ‖A0‖² = Σ S_r / s (sign-invariant)
        half = sv[-r:].sum() / s
        assert abs(float(b0.double().square().sum()) - half) <= 1e-6 * half
        assert abs(float(a0.double().square().sum()) - half) <= 1e-6 * half


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_residual_keeps_the_top_singular_values(s):
    ranks = {n: 5 for n in WEIGHTS}
    factors = run(WEIGHTS, ranks, {n: s for n in WEIGHTS})
    for name, w in WEIGHTS.items():
        a0, b0 = factors[name]
        residual = w.double().numpy() - s * (b0.double() @ a0.double()).numpy()
        _, sv, _ = np.linalg.svd(w.double().numpy(), full_matrices=False)
        left = np.linalg.svd(residual, compute_uv=False)
        n = len(sv)
        np.testing.assert_allclose(left[: n - 5], sv[: n - 5], rtol=1e-5)
        assert np.all(left[n - 5:] <= 1e-5 * sv[0])


def test_uses_the_smallest_not_the_largest():
    name = "model.layers.0.self_attn.q_proj"
    w = WEIGHTS[name]
    a0, b0 = run({name: w}, {name: 3}, {name: 1.0})[name]
    product = (b0.double() @ a0.double()).numpy()
    # the minor part is tiny next to W; the principal part would carry most of its norm
    assert np.linalg.norm(product) <= 0.01 * np.linalg.norm(w.double().numpy())
    principal = np.linalg.svd(w.double().numpy(), full_matrices=False)
    top = (principal[0][:, :3] * principal[1][:3]) @ principal[2][:3]
    assert rel(product, top) > 0.9


def test_ranks_and_scalings_are_per_matrix():
    q, v = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"
    factors = run(WEIGHTS, {q: 2, v: 7}, {q: 1.0, v: 4.0})
    assert factors[q][0].shape[0] == 2 and factors[v][0].shape[0] == 7
    minor_v, _ = minor_part(WEIGHTS[v], 7)
    assert rel(4.0 * (factors[v][1].double() @ factors[v][0].double()).numpy(), minor_v) <= 1e-6
