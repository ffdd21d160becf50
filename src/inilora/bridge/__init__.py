"""PEFT glue: run an init method on a model, freeze the residual, save and reload safely.

The layout (docs/design.md §4): training always uses the residual base ``R = W0 - s·B0A0`` plus the
rank-r adapter ``default``; A0, B0 ride along as a frozen, inactive second adapter
``inilora_init`` that PEFT saves with every ``save_pretrained`` and Trainer checkpoint, and
that gives back the original model (:func:`original`).  One file per concern:

- ``markers`` — the marks saved configs carry, so vanilla PEFT refuses a residual adapter;
- ``targeting`` — the targeted layers, their weights ``(out, in)``, the checks made before any work;
- ``residual`` — ``R = W0 − s·B0A0`` in fp32, the factors set, non-finite values refused;
- ``drift`` — the output drift at init on the probe batch;
- ``build`` — ``get_peft_model``;
- ``loading`` — ``load`` (with the fingerprint check) and ``original``.

This package knows no training and no experiments.

Internal API: the underscored names the modules above share among themselves (not for users, hence
the underscore; ``tests/test_layers.py`` fails on any other cross-module import of a private name):

- ``markers``: ``_mark`` (write the marks on a LoraConfig), ``_record`` (a non-residual adapter's
  config: unmarked, with the sidecar that records its base), ``_RESERVED`` (adapter names inilora owns);
- ``targeting``: ``_check_config``, ``_check_targets``, ``_default_targets``, ``_rank_of`` (the checks
  and the target/rank rules :func:`get_peft_model` and :func:`check_plan` share);
- ``residual``: ``_apply_residual``, ``_set_factors``, ``_factors_of``, ``_check_finite``,
  ``_share_peft_init`` (the residual layout, written by ``build`` and rebuilt by ``loading``);
- ``drift``: ``_probe``, ``_output``, ``_drift``, ``_warn_drift`` (the output drift at init);
- ``build``: ``_inject``, ``_attach_init_adapter``, ``_set_trainable`` (PEFT injection and the
  frozen second adapter, reused by ``loading``).
"""

from __future__ import annotations

from ..chatter import import_peft

import_peft()  # before any module of ours imports it: bitsandbytes' kernel probe stays quiet

from .build import InitReport, get_peft_model
from .loading import check_fingerprint, is_residual_model, load, original, read_metadata
from .markers import INIT_ADAPTER, SIDECAR, InitLoraConfig, is_marked, marker
from .targeting import (
    Target,
    check_plan,
    default_targets,
    fingerprint,
    fingerprint_modules,
    oriented,
    predicted_targets,
    targets,
)

__all__ = [
    "INIT_ADAPTER", "SIDECAR", "InitLoraConfig", "InitReport", "Target", "check_fingerprint", "check_plan",
    "default_targets", "fingerprint", "fingerprint_modules", "get_peft_model", "is_marked", "is_residual_model", "load",
    "marker", "oriented", "original", "predicted_targets", "read_metadata", "targets",
]
