"""Checks of user input that need no model library: the first thing every entry point runs.

Kept free of torch, transformers and peft so the command line answers a typo in a fraction of
a second, and so the Python API and the CLI refuse the same values with the same words.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import InitError


def check_positive(value: Any, what: str, *, whole: bool = False) -> None:
    """``value`` is a finite number > 0 (a whole one with ``whole``); None passes (a default applies)."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (whole and value != int(value)):
        kind = "a whole number ≥ 1" if whole else "a positive number"
        raise InitError(f"{what} must be {kind}, got {value!r}.")


def check_lora_numbers(config: Any) -> None:
    """r and lora_alpha of a ``LoraConfig`` (and their per-module patterns) must be positive:
    α ≤ 0 gives a dead adapter or NaN factors (÷√s), r ≤ 0 no adapter at all."""
    check_positive(config.r, "LoRA rank r (--rank)", whole=True)
    check_positive(config.lora_alpha, "lora_alpha (--lora-alpha)")
    for key, value in (getattr(config, "rank_pattern", None) or {}).items():
        check_positive(value, f"rank_pattern[{key!r}]", whole=True)
    for key, value in (getattr(config, "alpha_pattern", None) or {}).items():
        check_positive(value, f"alpha_pattern[{key!r}]")


#: the layouts ``inilora export`` writes (see :mod:`inilora.exports`)
LAYOUTS = ("plain", "merged", "residual")


def check_adapter_dir(directory: Path) -> None:
    """A saved adapter folder that can be read: its config is JSON, its weights a whole safetensors file."""
    from safetensors import safe_open

    config = directory / "adapter_config.json"
    if not config.is_file():
        raise InitError(f"{directory} is not an adapter folder (no adapter_config.json); give the folder "
                        "`inilora init` or save_pretrained wrote.")
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise InitError(f"{config} is not valid JSON ({exc}); the adapter folder is damaged.") from None
    weights = directory / "adapter_model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise InitError(f"{weights} cannot be read ({exc}); the file is damaged or truncated.") from None


#: the ``embedded:`` model aliases (``inilora.models.EMBEDDED_ALIASES`` maps them to hub names)
EMBEDDED_NAMES = ("embedded:smollm2", "embedded:minilm")


def check_model_name(name: str, what: str = "model") -> None:
    """An ``embedded:`` name must be one of the aliases: a typo is the user's (exit 2), with the close one."""
    import difflib

    if not isinstance(name, str) or not name.strip().lower().startswith("embedded:"):
        return
    if name.strip().lower() in EMBEDDED_NAMES:
        return
    close = difflib.get_close_matches(name.strip().lower(), EMBEDDED_NAMES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise InitError(f"{what}: unknown embedded model {name!r}; {hint}known: {', '.join(EMBEDDED_NAMES)}.")
