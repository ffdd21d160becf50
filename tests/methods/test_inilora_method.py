"""The ``inilora`` method (docs/design.md §3): σ̄ rules, the initial draw, the √s split, the fit report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import inilora
from inilora.methods import get_method
from inilora.methods.inilora import init_distribution
from inilora.naming import rng_factory, seed_for

Q = [f"model.layers.{i}.self_attn.q_proj" for i in range(3)]
V = [f"model.layers.{i}.self_attn.v_proj" for i in range(3)]


def with_stats(shape, std, mean=0.0, seed=0):
    """A float32 matrix whose sample std (ddof=1) and mean are (nearly) exactly the targets."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g, dtype=torch.float64)
    z = (z - z.mean()) / z.std()
    return (z * std + mean).float()


Q_STDS = [0.0213, 0.0241, 0.0227]  # mean 0.0227 → 0.023 (far from a rounding boundary)
V_STDS = [0.0412, 0.0391, 0.0452]  # mean 0.04183 → 0.042


def weights(q_stds=Q_STDS, v_stds=V_STDS, q_means=(0.0, 0.0, 0.0), v_means=(0.0, 0.0, 0.0)):
    out = {}
    for i, (n, sd, mu) in enumerate(zip(Q, q_stds, q_means)):
        out[n] = with_stats((32, 24), sd, mu, seed=i)
    for i, (n, sd, mu) in enumerate(zip(V, v_stds, v_means)):
        out[n] = with_stats((16, 24), sd, mu, seed=10 + i)
    return out


def np_std(t: torch.Tensor) -> float:
    return float(np.std(t.double().numpy(), ddof=1))


def np_mean_std(ts) -> float:
    return float(np.mean([np_std(t) for t in ts]))


# --------------------------------------------------------------------------- σ̄ rules


def test_sigma_per_module_type_rounded():
    w = weights()
    dist = init_distribution(w)
    assert set(dist) == {"q_proj", "v_proj"}
    for group, names in (("q_proj", Q), ("v_proj", V)):
        expected = round(np_mean_std([w[n] for n in names]), 3)
        sigma, mu = dist[group]
        assert sigma == expected
        assert mu == 0.0
    assert dist["q_proj"][0] == 0.023 and dist["v_proj"][0] == 0.042  # sanity of the fixture itself


def test_sigma_unrounded_and_other_precision():
    w = weights()
    exact = init_distribution(w, round_std=None)
    two = init_distribution(w, round_std=2)
    for group, names in (("q_proj", Q), ("v_proj", V)):
        expected = np_mean_std([w[n] for n in names])
        assert exact[group][0] == pytest.approx(expected, rel=1e-6)
        assert exact[group][0] != round(expected, 3)
        assert two[group][0] == round(expected, 2)


def test_sigma_unbiased_std():
    # a matrix so small that ddof=0 and ddof=1 differ by far more than the tolerance
    t = torch.tensor([[0.1, -0.2, 0.3], [0.05, 0.0, -0.4]])
    sigma, _ = init_distribution({"x.q_proj": t}, round_std=None)["q_proj"]
    assert sigma == pytest.approx(float(np.std(t.double().numpy(), ddof=1)), rel=1e-6)
    assert sigma != pytest.approx(float(np.std(t.double().numpy(), ddof=0)), rel=1e-3)


def test_std_scope_all_pools_every_matrix():
    w = weights()
    dist = init_distribution(w, std_scope="all")
    assert set(dist) == {"*"}
    assert dist["*"][0] == round(np_mean_std(list(w.values())), 3)
    assert dist["*"][0] not in (init_distribution(w)["q_proj"][0], init_distribution(w)["v_proj"][0])


def test_std_source_weight_plus_bias():
    w = weights()
    biases = {n: with_stats((w[n].shape[0],), 0.5, seed=100 + i) for i, n in enumerate(Q + V)}
    dist = init_distribution(w, std_source="weight+bias", biases=biases)
    for group, names in (("q_proj", Q), ("v_proj", V)):
        entries = [np_std(w[n]) for n in names] + [np_std(biases[n]) for n in names]
        assert dist[group][0] == round(float(np.mean(entries)), 3)
    # std_source="weight" ignores the biases
    assert init_distribution(w, biases=biases) == init_distribution(w)


def test_sigma_that_rounds_to_zero_keeps_the_unrounded_value():
    w = weights(q_stds=[1e-4, 2e-4, 3e-4])
    with pytest.warns(UserWarning, match="rounds to 0"):
        dist = init_distribution(w)
    assert dist["q_proj"][0] == pytest.approx(np_mean_std([w[n] for n in Q]), rel=1e-6)
    assert dist["q_proj"][0] > 0
    assert dist["v_proj"][0] == 0.042


def test_mean_auto_and_fixed():
    w = weights(q_means=(0.0123, 0.0150, 0.0101), v_means=(-0.2, -0.21, -0.19))
    auto = init_distribution(w, mean="auto")
    for group, names in (("q_proj", Q), ("v_proj", V)):
        expected = round(float(np.mean([w[n].double().mean().item() for n in names])), 3)
        assert auto[group][1] == expected
    assert auto["q_proj"][1] == 0.012 and auto["v_proj"][1] == -0.2
    assert init_distribution(w)["q_proj"][1] == 0.0  # default μ = 0 (paper §4)
    assert init_distribution(w, mean=0.25)["v_proj"][1] == 0.25


def test_fixed_std_number():
    w = weights()
    dist = init_distribution(w, std=0.1)
    assert dist == {"q_proj": (0.1, 0.0), "v_proj": (0.1, 0.0)}
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(inilora.InitError):
            init_distribution(w, std=bad)


def test_bad_scope_or_source():
    with pytest.raises(inilora.InitError):
        init_distribution(weights(), std_scope="layer")
    with pytest.raises(inilora.InitError):
        init_distribution(weights(), std_source="bias")


# --------------------------------------------------------------------------- factors

SMALL = {Q[0]: with_stats((32, 24), 0.05, seed=1), V[0]: with_stats((16, 24), 0.04, seed=2)}
RANKS = {Q[0]: 4, V[0]: 3}


def run(weights_, ranks, scalings, seed=0, **options):
    spec = get_method("inilora")
    opts = spec.resolve_options(options)
    return spec.fn(weights_, ranks, scalings, rng_factory(seed), **opts)


def expected_init(name, w, r, seed, sigma, mu=0.0):
    """U (d×r) then P (k×r) ~ N(μ, σ²) from the matrix's own sha256-seeded CPU generator."""
    gen = torch.Generator().manual_seed(seed_for(seed, name))
    u = torch.empty(w.shape[0], r).normal_(mu, sigma, generator=gen)
    p = torch.empty(w.shape[1], r).normal_(mu, sigma, generator=gen)
    return u, p


@pytest.mark.parametrize("s", [1.0, 4.0, 2.0])
def test_zero_steps_is_the_scaled_random_draw(s):
    result = run(SMALL, RANKS, {n: s for n in SMALL}, seed=5, steps=0)
    dist = {"q_proj": round(np_std(SMALL[Q[0]]), 3), "v_proj": round(np_std(SMALL[V[0]]), 3)}
    for name, w in SMALL.items():
        u, p = expected_init(name, w, RANKS[name], 5, dist[name.rsplit(".", 1)[1]])
        a0, b0 = result.factors[name]
        assert a0.shape == (RANKS[name], w.shape[1]) and b0.shape == (w.shape[0], RANKS[name])
        torch.testing.assert_close(b0, u / math.sqrt(s), rtol=1e-6, atol=0)
        torch.testing.assert_close(a0, p.T / math.sqrt(s), rtol=1e-6, atol=0)
        torch.testing.assert_close(s * (b0.double() @ a0.double()), (u.double() @ p.double().T),
                                   rtol=1e-6, atol=1e-9)
    assert result.info["init"] == {"q_proj": {"std": dist["q_proj"], "mean": 0.0},
                                   "v_proj": {"std": dist["v_proj"], "mean": 0.0}}


def test_zero_steps_mean_auto_shifts_the_draw():
    w = {Q[0]: with_stats((64, 64), 0.01, mean=0.5, seed=3)}
    result = run(w, {Q[0]: 8}, {Q[0]: 1.0}, steps=0, mean="auto", std=0.01)
    a0, b0 = result.factors[Q[0]]
    u, p = expected_init(Q[0], w[Q[0]], 8, 0, 0.01, 0.5)
    torch.testing.assert_close(b0, u, rtol=1e-6, atol=0)
    torch.testing.assert_close(a0, p.T, rtol=1e-6, atol=0)
    assert abs(b0.mean().item() - 0.5) < 0.01


def test_seed_changes_the_draw():
    one = run(SMALL, RANKS, {n: 1.0 for n in SMALL}, seed=0, steps=0).factors
    two = run(SMALL, RANKS, {n: 1.0 for n in SMALL}, seed=1, steps=0).factors
    again = run(SMALL, RANKS, {n: 1.0 for n in SMALL}, seed=0, steps=0).factors
    for n in SMALL:
        assert not torch.equal(one[n][0], two[n][0])
        assert torch.equal(one[n][0], again[n][0]) and torch.equal(one[n][1], again[n][1])


def rel_error(w, u, p):
    w64 = w.double()
    return (torch.linalg.matrix_norm(w64 - u.double() @ p.double().T) / torch.linalg.matrix_norm(w64)).item()


def eckart_young_np(w, r):
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    return math.sqrt(float(np.sum(s[r:] ** 2)) / float(np.sum(s**2)))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("s", [1.0, 4.0])
def test_fit_improves_and_reports(s, one_thread):
    result = run(SMALL, RANKS, {n: s for n in SMALL}, seed=2, steps=50, engine="torch")
    assert set(result.fit) == set(SMALL)
    for name, w in SMALL.items():
        r = RANKS[name]
        sigma = round(np_std(w), 3)
        u0, p0 = expected_init(name, w, r, 2, sigma)
        start = rel_error(w, u0, p0)
        fit = result.fit[name]
        assert fit["rel_error"] < start - 1e-3
        assert fit["optimum"] == pytest.approx(eckart_young_np(w, r), rel=1e-9)
        assert fit["optimum"] <= fit["rel_error"]
        a0, b0 = result.factors[name]
        # rel_error is the error of what enters the model, s·B0A0
        achieved = (torch.linalg.matrix_norm(w.double() - s * (b0.double() @ a0.double()))
                    / torch.linalg.matrix_norm(w.double())).item()
        assert achieved == pytest.approx(fit["rel_error"], rel=1e-5)
        losses = [loss for _, loss in fit["losses"]]
        assert losses[-1] < losses[0]


def test_fit_independent_of_scaling(one_thread):
    one = run(SMALL, RANKS, {n: 1.0 for n in SMALL}, seed=2, steps=20)
    four = run(SMALL, RANKS, {n: 4.0 for n in SMALL}, seed=2, steps=20)
    for n in SMALL:
        torch.testing.assert_close(four.factors[n][0] * 2.0, one.factors[n][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(four.factors[n][1] * 2.0, one.factors[n][1], rtol=1e-6, atol=0)
        assert four.fit[n]["rel_error"] == one.fit[n]["rel_error"]


@pytest.mark.parametrize("bad", [[60], [-1], [10, 51]])
def test_checkpoints_outside_range(bad):
    with pytest.raises(inilora.InitError, match="checkpoints"):
        run(SMALL, RANKS, {n: 1.0 for n in SMALL}, steps=50, checkpoints=bad)


def test_checkpoints_inside_range_accepted(one_thread):
    result = run(SMALL, RANKS, {n: 1.0 for n in SMALL}, steps=10, checkpoints=[0, 5, 10])
    assert set(result.factors) == set(SMALL)


def test_negative_steps_and_unknown_engine():
    with pytest.raises(inilora.InitError, match="steps"):
        run(SMALL, RANKS, {n: 1.0 for n in SMALL}, steps=-1)
    with pytest.raises(inilora.InitError, match="engine") as exc:
        run(SMALL, RANKS, {n: 1.0 for n in SMALL}, steps=5, engine="warp-drive")
    assert "torch" in str(exc.value) and "reference" in str(exc.value)


def test_factor_rms_keeps_each_fits_direction_at_the_asked_size(one_thread):
    """The direction-vs-size control: one factor for all A, one for all B, so each family's RMS is the
    target; every A (B) is the unscaled fit's times the same number (direction and layer ratios kept)."""
    plain = run(SMALL, RANKS, {n: 2.0 for n in SMALL}, seed=4, steps=20)
    small = run(SMALL, RANKS, {n: 2.0 for n in SMALL}, seed=4, steps=20, factor_rms=0.03)
    for i, part in enumerate("AB"):
        entries = torch.cat([small.factors[n][i].double().flatten() for n in SMALL])
        assert entries.pow(2).mean().sqrt().item() == pytest.approx(0.03, rel=1e-6), part
        before = torch.cat([plain.factors[n][i].double().flatten() for n in SMALL]).pow(2).mean().sqrt().item()
        assert small.info["factor_rms"]["before"][part] == pytest.approx(before, rel=1e-9)
        for n in SMALL:
            torch.testing.assert_close(small.factors[n][i], plain.factors[n][i] * (0.03 / before), rtol=1e-5, atol=0)
    with pytest.raises(inilora.InitError, match="factor_rms"):
        run(SMALL, RANKS, {n: 1.0 for n in SMALL}, steps=5, factor_rms=-1.0)
