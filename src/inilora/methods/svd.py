"""MiLoRA: adapt the *minor* singular components, freeze the rest as the residual."""

from __future__ import annotations

import math

import torch

from .registry import InitResult, register


@register("milora", summary="MiLoRA: A, B from the r smallest singular triplets (SVD in float64); frozen residual")
def milora(weights, ranks, scalings, rng_for) -> InitResult:
    """With ``W = U S Vᵀ``: ``B0 = U_r √S_r / √s``, ``A0 = √S_r V_rᵀ / √s`` so ``s·B0A0`` is
    exactly the minor rank-r part of W and the residual holds the principal rest."""
    factors = {}
    for name, w in weights.items():
        r, s = ranks[name], scalings[name]
        u, sv, vh = torch.linalg.svd(w.detach().to(device="cpu", dtype=torch.float64), full_matrices=False)
        root = sv[-r:].sqrt()
        b0 = u[:, -r:] * root / math.sqrt(s)
        a0 = root[:, None] * vh[-r:, :] / math.sqrt(s)
        factors[name] = (a0.float().contiguous(), b0.float().contiguous())
    return InitResult(factors=factors)
