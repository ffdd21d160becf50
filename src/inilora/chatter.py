"""Third-party output that tells an inilora user nothing, silenced at our own call sites only.

Used around the calls that emit it, never installed globally: a user's own code around ours
keeps every message the libraries would give it.

- transformers' per-call progress bars ("Loading weights", "Writing model shards"): a small
  model loads in under a second, and a command that loads once shows one line of its own;
- transformers' FutureWarning that ``is_gradient_checkpointing`` is renamed (PEFT reads it);
- PEFT's "Could not find a config file in embedded:smollm2 - will assume that the vocabulary
  was not modified" (our aliases are not hub names; the vocabulary is indeed unmodified).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

_MESSAGES = (
    r".*is_gradient_checkpointing.* is deprecated",
    r"Could not find a config file in .* will assume that the vocabulary was not modified",
    r".*`gradient_checkpointing` is deprecated",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for message in _MESSAGES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


__all__ = ["quiet"]
