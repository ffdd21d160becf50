"""A fitted init method defined outside the package, registered when this module is imported.

``tests/conftest.py`` imports it (as a user's plugin module would be imported), so every test —
the registry contract in ``tests/test_contract.py`` included — sees it without naming it;
``tests/methods/test_fitted_extension.py`` checks what the bridge gives it.
"""

from __future__ import annotations

import math

import torch

from inilora.cache import tensor_digest
from inilora.methods import registry
from inilora.methods.fitting import InitContext, cached_fit, resolve_engine
from inilora.methods.registry import InitResult, register

NAME = "test-half-fit"


def half_fit(weights, ranks, scalings, rng_for, *, steps=40, engine="torch", context: InitContext | None = None):
    """U, P ~ N(0, 0.1²) fitted for ``steps`` steps, B0 = U/√s, A0 = Pᵀ/√s."""
    init = {}
    for n, w in weights.items():
        g = rng_for(n)
        init[n] = (torch.randn(w.shape[0], ranks[n], generator=g) * 0.1,
                   torch.randn(w.shape[1], ranks[n], generator=g) * 0.1)
    engine = resolve_engine(engine, weights, None)
    fields = {"method": NAME, "weights": tensor_digest(weights), "seed": getattr(rng_for, "seed", None),
              "ranks": {n: ranks[n] for n in sorted(ranks)}, "steps": steps, "engine": engine}
    unscaled, fit, info = cached_fit(weights, init, fields, context=context or InitContext(), steps=steps,
                                     lr=5e-4, engine=engine)
    factors = {n: ((p.T / math.sqrt(scalings[n])).contiguous(), (u / math.sqrt(scalings[n])).contiguous())
               for n, (u, p) in unscaled.items()}
    return InitResult(factors=factors, fit=fit, info=info)


if NAME not in registry.available_methods():
    register(NAME, fitted=True, summary="test: a fitted method defined outside the package")(half_fit)
