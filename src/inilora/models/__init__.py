"""Models: hub names as the documented defaults, offline embedded models, the probe batch and
tiny test models — one module per concern:

- :mod:`.embedded` — the ``embedded:`` aliases and the plain copy of the embedded SmolLM2;
- :mod:`.loading` — :func:`load_model`, :func:`load_tokenizer`, :func:`load_skeleton` (hub name,
  local path or alias; an offline failure names the alias to use instead);
- :mod:`.probe` — the fixed probe batch and the drift metrics (docs/design.md §1);
- :mod:`.tiny` — tiny random models for tests.
"""

from __future__ import annotations

from .embedded import (
    DEFAULT_CAUSAL_LM,
    DEFAULT_ENCODER,
    EMBEDDED_ALIASES,
    MINILM_ALIAS,
    SMOLLM2_ALIAS,
    config_before_copy,
    embedded_folder,
    embedded_name,
    hub_name_of,
    is_embedded,
    models_cache_dir,
    resolve,
)
from .loading import KINDS, call_loader, is_causal_config, load_model, load_skeleton, load_tokenizer, model_config
from .probe import PROBE_TEXT, model_output, probe_inputs, random_probe_ids, relative_drift, top1_agreement
from .tiny import TINY_ARCHS, tiny_model

__all__ = [
    "DEFAULT_CAUSAL_LM", "DEFAULT_ENCODER", "EMBEDDED_ALIASES", "KINDS", "MINILM_ALIAS", "PROBE_TEXT",
    "SMOLLM2_ALIAS", "TINY_ARCHS", "call_loader", "config_before_copy", "embedded_folder", "hub_name_of", "embedded_name", "is_causal_config", "is_embedded",
    "load_model", "load_skeleton", "load_tokenizer", "model_config", "model_output", "models_cache_dir", "probe_inputs",
    "random_probe_ids", "relative_drift", "resolve", "tiny_model", "top1_agreement",
]
