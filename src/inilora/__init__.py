"""inilora: better starting points for LoRA, on top of PEFT.

    model = inilora.get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                   method="inilora", seed=0)
    ...train with any trainer, save_pretrained as usual...
    inilora.export(model, "out/plain", layout="plain")   # loads with vanilla PEFT on the unmodified base

Everything but the error types is imported on first use, so ``import inilora.approx`` (the
engine) pulls in neither transformers nor peft, and the command line answers a mistyped
option before torch is even imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import FingerprintMismatch, InitError
from .version import __version__

_LAZY = {
    "available_methods": "methods",
    "get_method": "methods",
    "get_peft_model": "bridge",
    "load": "bridge",
    "original": "bridge",
    "export": "exports",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'inilora' has no attribute {name!r}")


__all__ = [
    "FingerprintMismatch",
    "InitError",
    "__version__",
    "available_methods",
    "export",
    "get_method",
    "get_peft_model",
    "load",
    "original",
]
