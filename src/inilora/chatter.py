"""Third-party output that tells an inilora user nothing, silenced at our own call sites only.

Used around the calls that emit it, never installed globally: a user's own code around ours
keeps every message the libraries would give it.

- transformers' per-call progress bars ("Loading weights", "Writing model shards"): a small
  model loads in under a second, and a command that loads once shows one line of its own;
- transformers' FutureWarning that ``is_gradient_checkpointing`` is renamed (PEFT reads it);
- PEFT's "Could not find a config file in embedded:smollm2 - will assume that the vocabulary
  was not modified" (our aliases are not hub names; the vocabulary is indeed unmodified);
- PEFT's hint that EVA's batches could be larger with ``low_cpu_mem_usage=True`` (a PEFT option inilora
  does not expose; the user chooses the calibration batches);
- bitsandbytes' optional-kernel probe: on CPUs with AVX512-BF16, importing bitsandbytes (which
  ``import peft`` does) asks the hub for ``kernels-community/quantization-bitsandbytes``; offline,
  the ``kernels`` package logs "Skipping publisher trust check …" and bitsandbytes "Failed to load
  CPU gemm_4bit_forward …", then falls back to its own kernel. Both records name
  ``kernels-community``; only those, on those two loggers, while *we* import (:func:`import_peft`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

_MESSAGES = (
    r".*is_gradient_checkpointing.* is deprecated",
    r"Could not find a config file in .* will assume that the vocabulary was not modified",
    r".*`gradient_checkpointing` is deprecated",
    r"lora with eva initialization used with low_cpu_mem_usage=False",  # a memory hint for PEFT's own EVA driver
)

#: the loggers of the kernel probe (filters act on the logger that makes the record, not its parents)
_PROBE_LOGGERS = ("kernels._internals.hf_hub", "bitsandbytes.backends.cpu.ops")


def _not_probe(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


@contextlib.contextmanager
def quiet_kernel_probe() -> Iterator[None]:
    """Drop the kernel probe's two records (see the module docstring) inside the block."""
    loggers = [logging.getLogger(name) for name in _PROBE_LOGGERS]
    for logger in loggers:
        logger.addFilter(_not_probe)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(_not_probe)


def import_peft() -> ModuleType:
    """``import peft`` with the kernel probe silenced: the modules of ours that need PEFT call this
    before ``from peft import …``, so the first import (the only one that probes) is ours."""
    if "peft" not in sys.modules:
        with quiet_kernel_probe():
            import peft  # noqa: F401 - imported for its side effect: bitsandbytes' probe runs here
    return sys.modules["peft"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), quiet_kernel_probe():  # a 4-bit load imports bitsandbytes
            for message in _MESSAGES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


__all__ = ["import_peft", "quiet", "quiet_kernel_probe"]
