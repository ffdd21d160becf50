"""Random residual methods (docs/design.md §2): distributions, no √s, seeding and draw order.

Expected values come from the formulas of docs/design.md §2 / torch.nn.init documentation, not from
running the methods: e.g. kaiming std = gain/√fan, gain(leaky_relu, a) = √(2/(1+a²)).
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

import inilora
from inilora.methods import get_method
from inilora.naming import canonical_name, generator_for, rng_factory, seed_for

D, K, R = 256, 4096, 64  # A0: 64×4096 (262144 draws), B0: 256×64 (16384 draws)
NAME = "model.layers.0.self_attn.q_proj"
BIG = {NAME: torch.zeros(D, K)}
STD_TOL = 0.02  # B0's 16384 draws estimate a std to ≈0.6 % (1σ); 2 % is > 3σ


def run(method: str, weights=None, *, seed: int = 0, rank: int = R, scaling: float = 1.0, **options):
    weights = BIG if weights is None else weights
    spec = get_method(method)
    opts = spec.resolve_options(options)
    result = spec.fn(weights, {n: rank for n in weights}, {n: scaling for n in weights}, rng_factory(seed), **opts)
    for n, (a0, b0) in result.factors.items():
        d, k = weights[n].shape
        assert a0.shape == (rank, k) and b0.shape == (d, rank)
        assert a0.dtype == torch.float32 and b0.dtype == torch.float32
    return result.factors


def big(method: str, **options):
    return run(method, **options)[NAME]


def assert_std(t: torch.Tensor, expected: float, tol: float = STD_TOL):
    got = t.double().std().item()
    assert abs(got - expected) <= tol * expected, f"std {got:.6g}, expected {expected:.6g}"


def assert_mean(t: torch.Tensor, expected: float, std: float):
    # 5 standard errors of the sample mean
    bound = 5 * std / math.sqrt(t.numel())
    got = t.double().mean().item()
    assert abs(got - expected) <= bound, f"mean {got:.6g}, expected {expected:.6g} ± {bound:.3g}"


def assert_uniform(t: torch.Tensor, bound: float):
    m = t.abs().max().item()
    assert m <= bound
    assert m >= 0.995 * bound  # ≥ 16384 uniform draws: the max is within 0.5 % of the bound
    assert_std(t, bound / math.sqrt(3))
    assert_mean(t, 0.0, bound / math.sqrt(3))


def leaky_gain(a: float) -> float:
    return math.sqrt(2.0 / (1.0 + a * a))


# --------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("std", [None, 0.3])
def test_inilora_alpha(std):
    expected = 0.5 if std is None else std
    a0, b0 = big("inilora-alpha") if std is None else big("inilora-alpha", std=std)
    for t in (a0, b0):
        assert_std(t, expected)
        assert_mean(t, 0.0, expected)


def test_beta_kaiming_normal():
    a0, b0 = big("inilora-beta-kn")
    assert_std(a0, math.sqrt(2 / K))
    assert_std(b0, math.sqrt(2 / R))
    assert_mean(a0, 0.0, math.sqrt(2 / K))


def test_beta_kaiming_uniform():
    a0, b0 = big("inilora-beta-ku")
    assert_uniform(a0, math.sqrt(6 / K))
    assert_uniform(b0, math.sqrt(6 / R))


def test_normal_std_and_mean():
    a0, b0 = big("normal", std=0.2, mean=0.1)
    for t in (a0, b0):
        assert_std(t, 0.2)
        assert_mean(t, 0.1, 0.2)
    a0, _ = big("normal", std=0.05)
    assert_mean(a0, 0.0, 0.05)


def test_normal_needs_a_positive_std():
    with pytest.raises(inilora.InitError, match="std"):
        big("normal")
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(inilora.InitError):
            big("normal", std=bad)


def test_uniform_bound_and_std():
    a0, b0 = big("uniform", bound=0.3)
    assert_uniform(a0, 0.3)
    assert_uniform(b0, 0.3)
    a0, b0 = big("uniform", std=0.2)  # bound = √3·σ, so the std is σ
    assert_uniform(a0, math.sqrt(3) * 0.2)
    assert_std(b0, 0.2)


def test_uniform_option_errors():
    with pytest.raises(inilora.InitError, match="not both"):
        big("uniform", bound=0.3, std=0.1)
    with pytest.raises(inilora.InitError):
        big("uniform")
    with pytest.raises(inilora.InitError):
        big("uniform", bound=-1.0)


def test_kaiming_normal_defaults_and_options():
    a0, b0 = big("kaiming_normal")  # a=0, fan_in, leaky_relu: gain √2
    assert_std(a0, math.sqrt(2 / K))
    assert_std(b0, math.sqrt(2 / R))
    # a = 1, fan_out: gain 1; A0 is (r, k) so fan_out = r, B0 (d, r): fan_out = d
    a0, b0 = big("kaiming_normal", a=1.0, mode="fan_out")
    assert_std(a0, leaky_gain(1.0) / math.sqrt(R))
    assert_std(b0, leaky_gain(1.0) / math.sqrt(D))
    a0, b0 = big("kaiming_normal", nonlinearity="linear")  # gain 1
    assert_std(a0, 1 / math.sqrt(K))
    assert_std(b0, 1 / math.sqrt(R))


def test_kaiming_uniform_options():
    a = math.sqrt(5)  # PEFT's LoRA default: bound = gain·√(3/fan_in) = 1/√fan_in
    a0, b0 = big("kaiming_uniform", a=a)
    assert_uniform(a0, leaky_gain(a) * math.sqrt(3 / K))
    assert_uniform(b0, leaky_gain(a) * math.sqrt(3 / R))
    a0, b0 = big("kaiming_uniform", mode="fan_out")
    assert_uniform(a0, math.sqrt(6 / R))
    assert_uniform(b0, math.sqrt(6 / D))


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_xavier(gain):
    a0, b0 = big("xavier_normal") if gain == 1.0 else big("xavier_normal", gain=gain)
    assert_std(a0, gain * math.sqrt(2 / (K + R)))
    assert_std(b0, gain * math.sqrt(2 / (R + D)))
    a0, b0 = big("xavier_uniform") if gain == 1.0 else big("xavier_uniform", gain=gain)
    assert_uniform(a0, gain * math.sqrt(6 / (K + R)))
    assert_uniform(b0, gain * math.sqrt(6 / (R + D)))


@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_orthogonal(gain):
    weights = {NAME: torch.zeros(96, 160)}
    a0, b0 = run("orthogonal", weights, rank=16, gain=gain)[NAME]
    eye = torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(a0.double() @ a0.double().T, gain**2 * eye, rtol=0, atol=1e-5)  # rows orthonormal
    torch.testing.assert_close(b0.double().T @ b0.double(), gain**2 * eye, rtol=0, atol=1e-5)  # columns orthonormal


# --------------------------------------------------------------------------- scaling

RANDOM_METHODS = {
    "inilora-alpha": {}, "inilora-beta-kn": {}, "inilora-beta-ku": {}, "normal": {"std": 0.1},
    "uniform": {"bound": 0.1}, "kaiming_normal": {}, "kaiming_uniform": {}, "xavier_normal": {},
    "xavier_uniform": {}, "orthogonal": {},
}
SMALL = {"model.layers.0.self_attn.q_proj": torch.zeros(24, 40),
         "model.layers.0.self_attn.v_proj": torch.zeros(12, 40),
         "model.layers.1.self_attn.q_proj": torch.zeros(24, 40)}


@pytest.mark.parametrize("method", sorted(RANDOM_METHODS))
def test_random_methods_do_not_divide_by_sqrt_s(method):
    one = run(method, SMALL, rank=4, scaling=1.0, **RANDOM_METHODS[method])
    four = run(method, SMALL, rank=4, scaling=4.0, **RANDOM_METHODS[method])
    for n in SMALL:
        assert torch.equal(one[n][0], four[n][0]) and torch.equal(one[n][1], four[n][1])


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", sorted(RANDOM_METHODS))
def test_same_seed_identical_different_seed_different(method):
    opts = RANDOM_METHODS[method]
    first = run(method, SMALL, rank=4, seed=7, **opts)
    again = run(method, SMALL, rank=4, seed=7, **opts)
    other = run(method, SMALL, rank=4, seed=8, **opts)
    for n in SMALL:
        assert torch.equal(first[n][0], again[n][0]) and torch.equal(first[n][1], again[n][1])
        assert not torch.equal(first[n][0], other[n][0])
        assert not torch.equal(first[n][1], other[n][1])
    # different matrices of the same shape get different draws
    q0, q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
    assert not torch.equal(first[q0][0], first[q1][0])


@pytest.mark.parametrize("method", sorted(RANDOM_METHODS))
def test_draw_independent_of_other_matrices_and_order(method):
    opts = RANDOM_METHODS[method]
    target = "model.layers.1.self_attn.q_proj"
    alone = run(method, {target: SMALL[target]}, rank=4, seed=5, **opts)[target]
    reordered = dict(reversed(list(SMALL.items())))
    assert list(reordered)[0] == target
    forward = run(method, SMALL, rank=4, seed=5, **opts)[target]
    backward = run(method, reordered, rank=4, seed=5, **opts)[target]
    for got in (forward, backward):
        assert torch.equal(got[0], alone[0]) and torch.equal(got[1], alone[1])


def expected_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_seed_for_is_the_sha256_rule(seed):
    for name in SMALL:
        assert seed_for(seed, name) == expected_seed(seed, name)
        assert generator_for(seed, name).initial_seed() == expected_seed(seed, name)
        assert rng_factory(seed)(name).initial_seed() == expected_seed(seed, name)
    assert expected_seed(seed, "a") != expected_seed(seed, "b")


def test_rng_for_is_fresh_per_call():
    rng = rng_factory(3)
    first = torch.rand(5, generator=rng(NAME))
    second = torch.rand(5, generator=rng(NAME))
    assert torch.equal(first, second)


def test_draw_order_a_then_b_from_the_matrix_generator():
    seed, name = 11, "model.layers.0.self_attn.v_proj"
    a0, b0 = run("inilora-alpha", {name: SMALL[name]}, rank=4, seed=seed)[name]
    gen = torch.Generator().manual_seed(expected_seed(seed, name))
    expect_a = torch.empty(4, 40).normal_(0.0, 0.5, generator=gen)
    expect_b = torch.empty(12, 4).normal_(0.0, 0.5, generator=gen)
    assert torch.equal(a0, expect_a)
    assert torch.equal(b0, expect_b)


def test_canonical_names_strip_wrappers():
    bare = "model.layers.0.self_attn.q_proj"
    for wrapped in ["base_model.model." + bare, "module.base_model.model." + bare,
                    "_orig_mod.base_model.model." + bare, "model.layers.0._fsdp_wrapped_module.self_attn.q_proj"]:
        assert canonical_name(wrapped) == bare
    assert canonical_name(bare) == bare
