"""``get_peft_model``: run an init method of the registry on a model through PEFT (docs/design.md §4).

Training always uses the residual layout: the residual base ``R = W0 − s·B0A0`` plus the rank-r
adapter ``default``, with A0, B0 kept as a frozen, inactive second adapter.  Knows no training.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft import get_peft_model as _peft_get_peft_model

from .. import distributed, quantized
from ..cache import FitCache
from ..errors import InitError
from ..methods import Method, get_method
from ..methods.fitting import InitContext
from ..methods.registry import BRIDGE_OPTIONS
from ..naming import rng_factory
from ..version import __version__
from .drift import _drift, _output, _probe, _warn_drift
from .markers import FORMAT, INIT_ADAPTER, InitLoraConfig, _mark, _record
from .residual import (
    _apply_residual,
    _check_finite,
    _factors_of,
    _set_factors,
    _share_peft_init,
)
from .targeting import (
    _check_config,
    _check_targets,
    _default_targets,
    _rank_of,
    fingerprint_modules,
    oriented,
    predicted_targets,
    targets,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG without disturbing the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _inject(model: torch.nn.Module, config: LoraConfig, adapter_name: str, seed: int) -> PeftModel:
    from ..chatter import quiet

    with _seeded(seed), quiet():
        return _peft_get_peft_model(model, config, adapter_name=adapter_name)


def _attach_init_adapter(peft_model: PeftModel, config: LoraConfig, seed: int) -> None:
    init_config = copy.deepcopy(config)
    if isinstance(init_config, InitLoraConfig):
        init_config.__class__ = LoraConfig
    init_config.init_lora_weights = False
    init_config.inference_mode = True
    from ..chatter import quiet

    with _seeded(seed), quiet():
        peft_model.add_adapter(INIT_ADAPTER, init_config)


def _set_trainable(peft_model: PeftModel, adapter: str, trainable: bool) -> None:
    """Only the working adapter (factors and modules_to_save) may train; A0/B0 never do."""
    peft_model.set_adapter(adapter)  # PEFT: the active adapter trainable, the others frozen
    for name, p in peft_model.named_parameters():
        parts = name.split(".")
        if INIT_ADAPTER in parts or (not trainable and adapter in parts):
            p.requires_grad_(False)


def _json_safe(options: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        if k in BRIDGE_OPTIONS:  # the context (cache, progress) is not a setting
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return json.loads(json.dumps(out, default=str))


def _mean_curve(curves: list) -> list[list[float]]:
    """The fit's loss curve averaged over matrices, at the iterations every matrix logged: one
    small curve per run (Fig. 2's approximation loss) instead of one per matrix."""
    if not curves:
        return []
    common = set.intersection(*({int(t) for t, _ in c} for c in curves))
    sums: dict[int, float] = {}
    for c in curves:
        for t, v in c:
            if int(t) in common:
                sums[int(t)] = sums.get(int(t), 0.0) + float(v)
    return [[t, sums[t] / len(curves)] for t in sorted(sums)]


@dataclass
class InitReport:
    """What an init did: method, resolved settings, fit quality, output drift at init."""

    method: str
    residual: bool
    info: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    drift: dict | None = None


def get_peft_model(
    model: torch.nn.Module,
    peft_config: LoraConfig,
    method: str | Method = "lora",
    *,
    seed: int = 0,
    adapter_name: str = "default",
    residual_dtype: torch.dtype | str | None = None,
    cache: bool | str | os.PathLike | FitCache = True,
    measure_drift: bool = True,
    progress: Any = None,
    calibration: Any = None,
    **options: Any,
) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter initialised by ``method``; a regular ``PeftModel``.

    Residual methods freeze ``R = W0 - s·B0A0`` as the base, so the model computes what
    it computed before.  ``options`` are the method's own (see ``inilora methods``),
    e.g. ``steps``, ``lr``, ``std``, ``engine`` for ``inilora``.  ``residual_dtype=
    "float32"`` keeps replaced base weights in fp32 on a bf16/fp16 model (on a bitsandbytes
    4/8-bit model: the targeted layers become fp32 layers holding R, instead of re-quantizing R).  ``cache``
    (inilora only): True for ``$INILORA_CACHE``, a folder, or False.  The report of
    what was done is ``model.inilora_report``.  ``method`` is a name, or its registry entry
    (:func:`inilora.get_method`) when the caller has already resolved it (the training pipeline).
    ``calibration`` (data-driven methods: eva, corda, lora-ga; see ``inilora methods``): an iterable
    of batches the model's forward accepts (``input_ids``, ``attention_mask``, and ``labels`` where
    the method needs gradients).
    """
    spec = method if isinstance(method, Method) else get_method(method)
    opts = _resolve_options(spec, options, calibration)
    config = _check_config(copy.deepcopy(peft_config), adapter_name, spec)
    residual_dtype = _residual_dtype(residual_dtype, spec)
    before = _look_before(model, config, spec, cache, measure_drift, calibration)
    if spec.peft_backed:
        peft_model, factors, report = _init_by_peft(model, config, adapter_name, seed, spec, opts, before,
                                                    residual_dtype)
    else:
        peft_model, factors, report = _init_by_method(model, config, adapter_name, seed, spec, opts, before,
                                                      residual_dtype, progress)
    if before.calib is not None:
        report.info["calibration"] = before.calib
    if before.gguf:
        report.info["gguf"] = "dequantised GGUF base; transformers' quantizer marker dropped (weights unchanged)"
    if spec.residual:
        _finish_and_measure(peft_model, adapter_name, factors, spec, opts, seed, residual_dtype, before, report)
    else:
        _record(peft_model.peft_config[adapter_name], {
            "format": FORMAT, "inilora_version": __version__, "method": spec.name, "seed": seed,
            "adapter": adapter_name, "fingerprint": before.base_fp, "quantized": "/".join(before.quant) or None})
    _check_finite(targets(peft_model, adapter_name), adapter_name, spec, report.drift)
    peft_model.inilora_report = report
    return peft_model


# ------------------------------------------------------------------------------------------------
# the steps of get_peft_model, in order


def _resolve_options(spec: Method, options: Mapping[str, Any], calibration: Any) -> dict[str, Any]:
    """The method's options with defaults, and calibration data given exactly when the method needs
    it: checked before any weight is read."""
    if spec.peft_backed and options and not spec.options:
        raise InitError(f"method {spec.name!r} is PEFT's own and takes no options; got {', '.join(options)}.")
    opts = spec.resolve_options(options)
    if spec.calibration and calibration is None:
        raise InitError(f"method {spec.name!r} is data-driven: pass calibration=<batches of {spec.calibration}> "
                        "(CLI: --calibration TASK[:N]); nothing was changed.")
    if calibration is not None and not spec.calibration:
        raise InitError(f"method {spec.name!r} takes no calibration data; only {', '.join(_data_methods())} do.")
    return opts


def _residual_dtype(residual_dtype: torch.dtype | str | None, spec: Method) -> torch.dtype | None:
    if isinstance(residual_dtype, str):
        residual_dtype = getattr(torch, residual_dtype)
    if residual_dtype is not None and not spec.residual:
        raise InitError(f"residual_dtype applies to residual methods only; {spec.name!r} leaves the base unchanged.")
    return residual_dtype


@dataclass
class _Before:
    """What the model was before the init: its targets and their weights, the calibration data, and
    what gets compared after."""

    found: dict  # name → targeted module, as inilora predicts PEFT will wrap them
    quant: list[str]  # quantization kinds among the targets (bitsandbytes)
    gguf: bool  # a dequantised GGUF base whose quantizer marker was dropped
    fitcache: FitCache | None
    batches: Any  # the calibration batches on the model's device (data-driven methods), or None
    calib: dict | None  # their digest, or None
    weights: dict  # name → W0 (out, in)
    base_fp: dict  # the fingerprint of the targeted weights (and calibration data), recorded by every adapter
    fp: dict | None  # the same, for residual methods only (checked in share_init)
    probe: Any  # the probe batch for the drift at init, or None
    output: Any  # the model's output on it before the init, or None


def _look_before(model: torch.nn.Module, config: LoraConfig, spec: Method, cache, measure_drift: bool,
                 calibration: Any) -> _Before:
    """Every check that needs the model but no init (targets, ranks, a writable cache), the calibration
    batches, then the fingerprint and the output that the init will be measured against."""
    _default_targets(model, config)
    found = predicted_targets(model, config)
    _check_targets(spec, found, model, config, {n: _rank_of(config, n) for n in found})
    quant = sorted({k for k in map(quantized.quant_kind, found.values()) if k})
    gguf = quantized.drop_gguf_marker(model)
    fitcache = _fit_cache(cache) if spec.fitted else None
    if fitcache is not None:  # docs/design.md §8: an unwritable cache is refused before any work
        fitcache.check_writable()

    batches = calib = None
    if spec.calibration:
        from .. import calibration as _calibration

        device = next((p.device for p in model.parameters() if not p.is_meta), None)
        batches = _calibration.materialize(calibration, spec.name, spec.calibration, device)
        calib = _calibration.digest(batches)

    weights = {n: oriented(m) for n, m in found.items()}
    base_fp = fingerprint_modules(found)  # every adapter records its base (residual ones check it in share_init)
    if calib is not None:
        base_fp["calibration"] = calib["sha256"]  # beside the weights' hash: same base, other data ≠ same init
    fp = base_fp if spec.residual else None
    probe = _probe(model) if (measure_drift and spec.residual) else None
    output = _output(model, probe) if probe is not None else None
    return _Before(found, quant, gguf, fitcache, batches, calib, weights, base_fp, fp, probe, output)


def _init_by_peft(model, config: LoraConfig, adapter_name: str, seed: int, spec: Method, opts: dict,
                  before: _Before, residual_dtype) -> tuple[PeftModel, dict, InitReport]:
    """PEFT's own init (``init_lora_weights``, with the method's hooks around the injection), its
    residual recomputed the way ``load`` does, kept in ``residual_dtype`` if asked."""
    # PEFT computes its residual its own way (``(s·B)@A``, in place, in the base dtype); ``load``
    # recomputes ``R = W0 − s·(B0@A0)`` in fp32.  To reload bit for bit, R is recomputed here the
    # load's way from a copy of W0 (the targeted weights only).
    w0_copy = {n: w.detach().clone() for n, w in before.weights.items()} if spec.residual else None
    config.init_lora_weights = spec.peft_init
    hooks = spec.hooks
    if hooks is not None:
        hooks.configure(config, opts)
        if hooks.prepare is not None:
            with _seeded(seed), quantized.no_cpu_repack(model):  # calibration forwards: base layout kept
                hooks.prepare(model, config, opts, before.batches)
    peft_model = _inject(model, config, adapter_name, seed)
    if hooks is not None and hooks.finish is not None:
        with _seeded(seed), quantized.no_cpu_repack(peft_model):
            hooks.finish(peft_model, adapter_name, opts, before.batches)
    tgts = targets(peft_model, adapter_name)
    _share_peft_init(tgts, adapter_name, spec.residual, before.fp)  # torchrun: rank 0's init everywhere
    factors = _factors_of(tgts, adapter_name) if spec.residual else {}
    if w0_copy is not None:
        for name, t in tgts.items():
            t.set_base_weight(w0_copy[name])
        _apply_residual(tgts, adapter_name, factors, residual_dtype)
    return peft_model, factors, InitReport(spec.name, spec.residual)


def _init_by_method(model, config: LoraConfig, adapter_name: str, seed: int, spec: Method, opts: dict,
                    before: _Before, residual_dtype, progress) -> tuple[PeftModel, dict, InitReport]:
    """An init function of the registry: zero adapters injected, the function run on W0 (once, or
    split across ranks), its factors set and the residual base written."""
    config.init_lora_weights = False
    peft_model = _inject(model, config, adapter_name, seed)
    tgts = targets(peft_model, adapter_name)
    if set(tgts) != set(before.found):
        raise RuntimeError(f"inilora predicted targets {sorted(before.found)} but PEFT wrapped {sorted(tgts)}")
    if spec.fitted:  # what a fitted method needs beyond weights and options (methods/fitting.py)
        opts["context"] = InitContext(
            cache=before.fitcache, progress=progress if progress is not None else _default_progress(),
            biases={n: t.base.bias.detach() for n, t in tgts.items() if t.base.bias is not None})
    ranks = {n: t.layer.r[adapter_name] for n, t in tgts.items()}
    scalings = {n: t.layer.scaling[adapter_name] for n, t in tgts.items()}
    w0s = {n: t.base_weight().detach() for n, t in tgts.items()}
    # torchrun/accelerate: computed once (rank 0, or inilora's fit split by matrix), broadcast
    fp = before.fp
    result = distributed.share_init(lambda: spec.fn(w0s, ranks, scalings, rng_factory(seed), **opts),
                                    split=spec.fitted, digest=fp["sha256"] if fp else None)
    factors = result.factors
    _set_factors(tgts, adapter_name, factors)
    requant = _apply_residual(tgts, adapter_name, factors, residual_dtype)
    report = InitReport(spec.name, True, info=result.info,
                        fit={n: {k: v for k, v in f.items() if k not in ("losses", "U", "P")}
                             for n, f in result.fit.items()})
    curve = _mean_curve([f["losses"] for f in result.fit.values() if f.get("losses")])
    if curve:
        report.info["approx_loss"] = curve
    quant = before.quant
    if requant:
        report.info["quantized"] = {"kind": "/".join(quant), "layers": len(requant),
                                    "requant_rel_error_max": max(requant.values()),
                                    "requant_rel_error_mean": sum(requant.values()) / len(requant)}
    elif quant and residual_dtype is not None:
        report.info["quantized"] = {"kind": "/".join(quant), "layers": len(tgts),
                                    "kept_unquantized": str(residual_dtype).replace("torch.", "")}
    return peft_model, factors, report


def _finish_and_measure(peft_model: PeftModel, adapter_name: str, factors, spec: Method, opts: dict, seed: int,
                        residual_dtype, before: _Before, report: InitReport) -> None:
    """A residual init: the marks and the frozen A0/B0 adapter, then the output drift at init."""
    meta = {
        "format": FORMAT,
        "inilora_version": __version__,
        "method": spec.name,
        "options": _json_safe(opts),
        "seed": seed,
        "adapter": adapter_name,
        "init_adapter": INIT_ADAPTER,
        "residual_dtype": str(residual_dtype).replace("torch.", "") if residual_dtype else None,
        "fingerprint": before.fp,
        "info": report.info,
        "fit": report.fit,
    }
    _finish_residual(peft_model, adapter_name, factors, meta, seed, trainable=True)
    if before.output is not None:
        report.drift = _drift(before.output, _output(peft_model, before.probe))
        meta["init_drift"] = report.drift
        q = report.info.get("quantized", {})
        _warn_drift(report.drift, quant_mode="requantized" if "requant_rel_error_max" in q else
                    "kept" if q else None)


def _finish_residual(peft_model: PeftModel, adapter: str, factors, meta: dict, seed: int, trainable: bool) -> None:
    config = peft_model.peft_config[adapter]
    _attach_init_adapter(peft_model, config, seed)
    _set_factors(targets(peft_model, INIT_ADAPTER), INIT_ADAPTER, factors)
    _mark(config, meta)
    _mark(peft_model.peft_config[INIT_ADAPTER], {**meta, "role": "initial factors A0, B0"})
    _set_trainable(peft_model, adapter, trainable)


def _data_methods() -> list[str]:
    from ..methods import methods

    return [m.name for m in methods() if m.calibration]


def _fit_cache(cache: bool | str | os.PathLike | FitCache) -> FitCache | None:
    if cache is False or cache is None:
        return None
    if isinstance(cache, FitCache):
        return cache
    return FitCache() if cache is True else FitCache(cache)


def _default_progress():
    from ..progress import approximation_progress

    return approximation_progress()
