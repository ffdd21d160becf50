"""Random residual methods: IniLoRA-alpha, IniLoRA-beta and the generic distributions.

A0 ``(r, in)`` and B0 ``(out, r)`` are drawn, A0 first, from the matrix's own CPU
generator and enter the model as ``s * B0 @ A0`` with *no* 1/sqrt(s) (docs/design.md §2): so
``normal(std)`` at s = 1 has the distribution of IniLoRA with 0 approximation steps (not its
draws: IniLoRA draws U = B0 first).  The residual
``W0 - s*B0*A0`` keeps the model's output unchanged at step 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from ..checks import check_positive
from ..errors import InitError
from .registry import DRY_RUN, InitResult, RngFor
from .registry import register as _register

Draw = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def register(name: str, **kw):
    """The registry's decorator; a random draw is cheap, so options are checked by a dry run."""
    return _register(name, check=DRY_RUN, **kw)


def draw_factors(weights: Mapping[str, torch.Tensor], ranks: Mapping[str, int], rng_for: RngFor,
                 draw_a: Draw, draw_b: Draw | None = None) -> InitResult:
    """Fill A0 then B0 for every matrix from its own generator (fixed draw order)."""
    draw_b = draw_b or draw_a
    factors = {}
    for name, w in weights.items():
        out_f, in_f = w.shape
        r = ranks[name]
        gen = rng_for(name)
        a0 = draw_a(torch.empty(r, in_f, dtype=torch.float32), gen)
        b0 = draw_b(torch.empty(out_f, r, dtype=torch.float32), gen)
        factors[name] = (a0, b0)
    return InitResult(factors=factors)


def _positive(name: str, value, what: str) -> float:
    if value is None:
        raise InitError(f"method {name!r} needs {what}=<number>, e.g. {what}=0.02.")
    check_positive(value, f"method {name!r}: {what}")
    return float(value)


@register("inilora-alpha", summary="IniLoRA-α: A, B ~ N(0, σ_α²), σ_α = 0.5; frozen residual",
          options={"std": 0.5})
def inilora_alpha(weights, ranks, scalings, rng_for, *, std=0.5) -> InitResult:
    std = _positive("inilora-alpha", std, "std")
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.normal_(t, 0.0, std, generator=g))


@register("inilora-beta-kn", summary="IniLoRA-β (K-N): Kaiming normal on both A and B; frozen residual")
def inilora_beta_kn(weights, ranks, scalings, rng_for) -> InitResult:
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.kaiming_normal_(t, generator=g))


@register("inilora-beta-ku", summary="IniLoRA-β (K-U): Kaiming uniform on both A and B; frozen residual")
def inilora_beta_ku(weights, ranks, scalings, rng_for) -> InitResult:
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.kaiming_uniform_(t, generator=g))


@register("normal", summary="A, B ~ N(mean, std²) (std sweep, paper Fig. 3); frozen residual",
          options={"std": None, "mean": 0.0}, example_options={"std": 0.02})
def normal(weights, ranks, scalings, rng_for, *, std=None, mean=0.0) -> InitResult:
    std = _positive("normal", std, "std")
    return draw_factors(weights, ranks, rng_for,
                        lambda t, g: torch.nn.init.normal_(t, float(mean), std, generator=g))


@register("uniform", summary="A, B ~ U(-bound, bound); give bound, or std (bound = √3·std); frozen residual",
          options={"bound": None, "std": None}, example_options={"std": 0.02})
def uniform(weights, ranks, scalings, rng_for, *, bound=None, std=None) -> InitResult:
    if bound is not None and std is not None:
        raise InitError("method 'uniform': give bound or std, not both (bound = √3·std).")
    bound = _positive("uniform", bound, "bound") if std is None else math.sqrt(3.0) * _positive("uniform", std, "std")
    return draw_factors(weights, ranks, rng_for,
                        lambda t, g: torch.nn.init.uniform_(t, -bound, bound, generator=g))


_KAIMING = {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"}


@register("kaiming_normal", summary="torch kaiming_normal_ on A and B (options a, mode, nonlinearity); frozen residual",
          options=_KAIMING)
def kaiming_normal(weights, ranks, scalings, rng_for, *, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.kaiming_normal_(
        t, a=a, mode=mode, nonlinearity=nonlinearity, generator=g))


@register("kaiming_uniform", summary="torch kaiming_uniform_ on A and B (options a, mode, nonlinearity); frozen residual",
          options=_KAIMING)
def kaiming_uniform(weights, ranks, scalings, rng_for, *, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.kaiming_uniform_(
        t, a=a, mode=mode, nonlinearity=nonlinearity, generator=g))


@register("xavier_normal", summary="torch xavier_normal_ on A and B (option gain); frozen residual",
          options={"gain": 1.0})
def xavier_normal(weights, ranks, scalings, rng_for, *, gain=1.0):
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.xavier_normal_(t, gain=gain, generator=g))


@register("xavier_uniform", summary="torch xavier_uniform_ on A and B (option gain); frozen residual",
          options={"gain": 1.0})
def xavier_uniform(weights, ranks, scalings, rng_for, *, gain=1.0):
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.xavier_uniform_(t, gain=gain, generator=g))


@register("orthogonal", summary="torch orthogonal_ on A and B (option gain); frozen residual",
          options={"gain": 1.0})
def orthogonal(weights, ranks, scalings, rng_for, *, gain=1.0):
    return draw_factors(weights, ranks, rng_for, lambda t, g: torch.nn.init.orthogonal_(t, gain=gain, generator=g))
