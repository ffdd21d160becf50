"""Canonical module names and per-matrix random generators.

A seed must give the same A0, B0 whether the model is bare, PEFT-wrapped, compiled
or sharded, and whatever order layers are visited in.  So every random draw comes
from a CPU generator seeded from ``sha256(f"{seed}:{name}")`` where ``name`` is the
module path with every wrapper prefix removed (docs/design.md §2).  Python's ``hash()`` is
salted per process and is never used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

_WRAPPER_PREFIXES = ("base_model.model.", "module.", "_fsdp_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes (anywhere in the path) so one module has one name."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                changed = True
            inner = "." + prefix
            if inner in name:
                name = name.replace(inner, ".")
                changed = True
    return name


def module_type(name: str) -> str:
    """The module type is the last path component (``q_proj``, GPT-2's fused ``c_attn``)."""
    return name.rsplit(".", 1)[-1]


def seed_for(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def generator_for(seed: int, name: str) -> torch.Generator:
    """A fresh CPU generator for one matrix: independent of batching and thread count."""
    return torch.Generator(device="cpu").manual_seed(seed_for(seed, name))


class SeededRng:
    """``rng_for(name)`` as the method signature takes it; each call starts fresh.

    It keeps its seed so that caches can put it in their key.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, name: str) -> torch.Generator:
        return generator_for(self.seed, name)

    def __repr__(self) -> str:
        return f"SeededRng({self.seed})"


def rng_factory(seed: int) -> Callable[[str], torch.Generator]:
    return SeededRng(seed)
