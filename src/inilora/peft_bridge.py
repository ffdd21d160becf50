"""PEFT glue: run an init method on a model, freeze the residual, save and reload safely.

The layout (SPEC §4): training always uses the residual base ``R = W0 - s·B0A0``
plus the rank-r adapter ``default``.  A0, B0 ride along as a second, frozen and
inactive adapter ``inilora_init``: PEFT saves it in its own subfolder with every
``save_pretrained`` and Trainer checkpoint, and switching to it gives back the
original model (:func:`original`).  Saved ``adapter_config.json`` files carry a marker
in ``init_lora_weights`` that vanilla PEFT refuses ("Unknown initialization"), so the
adapter can never be loaded silently wrong on the original base; Trainer's resume
(``load_adapter`` into the live model) still works.  The *live* configs hold
``init_lora_weights=False``, so code that builds new adapters from them (TRL's
``add_adapter("ref", ...)``) neither raises nor re-runs an init.

This module knows no training and no experiments.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import types
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft import get_peft_model as _peft_get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import load_peft_weights, set_peft_model_state_dict

from . import __version__, distributed, quantized
from .cache import FitCache, atomic_write_json, tensor_digest
from .checks import check_lora_numbers
from .errors import FingerprintMismatch, InitError
from .methods import get_method
from .methods.fitting import InitContext
from .methods.registry import BRIDGE_OPTIONS, Method
from .naming import canonical_name, rng_factory

log = logging.getLogger(__name__)

INIT_ADAPTER = "inilora_init"
SIDECAR = "inilora.json"
MARKER = "inilora-residual"
FORMAT = 1
_RESERVED = {INIT_ADAPTER, "ref"}
#: options the bridge consumes itself rather than handing to the method


# --------------------------------------------------------------------------- markers


def marker(method: str) -> str:
    """The ``init_lora_weights`` value written to saved configs; PEFT refuses it by name."""
    return f"{MARKER}({method}): load with inilora.load() or convert with `inilora export`"


def is_marked(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(MARKER)


class InitLoraConfig(LoraConfig):
    """A LoraConfig whose *saved* form is marked; its live ``init_lora_weights`` is False.

    Only :meth:`save_pretrained` differs from PEFT's: it writes the marker and the
    ``inilora.json`` sidecar, both atomically.  Instances are made by swapping the
    class of an existing LoraConfig, so every field stays exactly as the user set it.
    """

    _inilora: dict

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        auto_mapping = kwargs.pop("auto_mapping_dict", None)
        out = {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.to_dict().items()}
        out["init_lora_weights"] = marker(self._inilora["method"])
        if auto_mapping is not None:
            out["auto_mapping"] = auto_mapping
        directory = Path(save_directory)
        atomic_write_json(directory / "adapter_config.json", out)
        atomic_write_json(directory / SIDECAR, self._inilora)


def _mark(config: LoraConfig, meta: dict) -> None:
    config.init_lora_weights = False
    config.__class__ = InitLoraConfig
    config._inilora = meta


# --------------------------------------------------------------------------- layers


@dataclass
class Target:
    """One adapted matrix: its canonical name and PEFT layer."""

    name: str
    layer: LoraLayer
    #: the module's path inside the PeftModel (PEFT's state-dict prefix)
    path: str = ""

    @property
    def base(self) -> torch.nn.Module:
        return self.layer.get_base_layer()

    def w0(self) -> torch.Tensor:
        """The base weight oriented ``(out, in)``: Conv1D (``fan_in_fan_out``) is transposed,
        a bitsandbytes layer dequantized to float32."""
        if quantized.quant_kind(self.base):
            return quantized.dequantize(self.base)
        w = self.base.weight
        return w.T if self.layer.fan_in_fan_out else w

    def set_weight(self, w_out_in: torch.Tensor) -> None:
        if quantized.quant_kind(self.base):  # re-quantized with the layer's own settings
            quantized.requantize(self.base, w_out_in)
            return
        w = w_out_in.T if self.layer.fan_in_fan_out else w_out_in
        self.base.weight.data = w.contiguous()


def targets(model: torch.nn.Module, adapter: str) -> dict[str, Target]:
    """LoRA layers holding ``adapter``, by canonical module name."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in getattr(module, "r", {}):
            found[canonical_name(name)] = Target(canonical_name(name), module, name)
    return found


def predicted_targets(model: torch.nn.Module, config: LoraConfig) -> dict[str, torch.nn.Module]:
    """The modules PEFT will wrap, found before injection with PEFT's own matcher."""
    found = {}
    for name, module in model.named_modules():
        if not name or isinstance(module, LoraLayer) or not hasattr(module, "weight"):
            continue
        hit = check_target_module_exists(config, name)
        if hit and type(hit).__name__ != "_ExcludedModule":
            found[canonical_name(name)] = module
    return found


def _oriented(module: torch.nn.Module) -> torch.Tensor:
    if quantized.quant_kind(module):
        return quantized.dequantize(module)
    w = module.weight
    return w.T if type(module).__name__ == "Conv1D" else w


def fingerprint(weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Hash of the targeted weights rounded to bf16 (an fp32 and a bf16 copy of one checkpoint
    match; a different checkpoint does not), with the stored dtype recorded beside it."""
    return {
        "sha256": tensor_digest({n: w.detach().to(torch.bfloat16) for n, w in weights.items()}),
        "dtype": sorted({str(w.dtype).replace("torch.", "") for w in weights.values()}),
        "names": sorted(weights),
    }


def fingerprint_modules(found: Mapping[str, torch.nn.Module], *, scales: str = "bf16") -> dict[str, Any]:
    """:func:`fingerprint` of the targeted modules' weights.

    4-bit layers are read with their block scales rounded to bf16 (``scales="bf16"``), as
    bitsandbytes' CPU packing rounds them: a layer packed by an eval forward on an
    AVX512-BF16 CPU and a freshly loaded one then give the same fingerprint.  Adapters
    saved before this rule have no ``"scales"`` entry and are checked the old way.
    """
    bf16 = scales == "bf16"
    weights = {n: quantized.dequantize(m, absmax_bf16=bf16) if quantized.quant_kind(m) == quantized.BNB_4BIT
               else _oriented(m) for n, m in found.items()}
    fp = fingerprint(weights)
    if bf16 and any(quantized.quant_kind(m) == quantized.BNB_4BIT for m in found.values()):
        fp["scales"] = "bf16"
    return fp


# --------------------------------------------------------------------------- validation


def _check_config(config: Any, adapter_name: str, method: Method) -> LoraConfig:
    if not isinstance(config, LoraConfig):
        raise InitError(f"inilora works with peft.LoraConfig; got {type(config).__name__}.")
    check_lora_numbers(config)
    if adapter_name in _RESERVED:
        raise InitError(
            f"adapter name {adapter_name!r} is reserved: {INIT_ADAPTER!r} holds A0/B0 and TRL names its "
            "reference adapter 'ref'. Use another name, e.g. 'default'."
        )
    init = config.init_lora_weights
    if init is not True and init is not False and not is_marked(init) and init != method.peft_init:
        raise InitError(
            f"LoraConfig(init_lora_weights={init!r}) conflicts with method={method.name!r}: "
            f"leave init_lora_weights at its default and choose the init with method=."
        )
    if method.residual and (config.use_dora or getattr(config, "lora_bias", False)):
        raise InitError(
            f"method {method.name!r} is a residual method; DoRA and lora_bias are not supported with it "
            "(the residual and the exports assume plain LoRA layers). Use method='lora' for DoRA."
        )
    return config


def _check_targets(method: Method, found: Mapping[str, torch.nn.Module], model: torch.nn.Module,
                   config: LoraConfig, ranks: Mapping[str, int] | None = None) -> None:
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
        raise InitError(
            f"target_modules={config.target_modules!r} match no module of this model. "
            f"Its linear layers are named: {', '.join(linear[:30])}."
        )
    quantized.check_model(model, method)
    for name, module in found.items():
        quantized.check_layer(name, module, method)  # non-float / unsupported quantization: refused here
        w = _oriented(module)
        kind = type(module).__name__
        if kind == "Conv1D" and method.name == "olora":
            raise InitError(f"{name} is a GPT-2 Conv1D layer; PEFT's OLoRA mis-shapes its factors on Conv1D "
                            "(fan_in_fan_out). Use pissa, milora or an inilora method for this model.")
        if not (isinstance(module, torch.nn.Linear) or kind == "Conv1D") and method.residual:
            raise InitError(f"{name} is a {kind}; residual methods support Linear and GPT-2 Conv1D layers only.")
        if w.dim() != 2:
            raise InitError(f"{name} has a {w.dim()}-D weight; only 2-D weights can be adapted.")
        if not w.is_meta and not torch.isfinite(w).all():
            raise InitError(f"{name}.weight contains NaN or Inf; the base checkpoint is broken.")
        if ranks is not None:
            r, (d, k) = ranks[name], w.shape
            if r >= min(d, k):
                raise InitError(
                    f"rank {r} for {name} is not below min(out, in) = {min(d, k)} (weight {d}×{k}); "
                    "a low-rank adapter needs r < min(d, k). Lower r (--rank) or rank_pattern."
                )


def check_plan(model: torch.nn.Module, peft_config: LoraConfig, method: str,
               adapter_name: str = "default") -> list[str]:
    """Every check of :func:`get_peft_model` that needs no weight values, returning the target
    names.  ``model`` may be a skeleton on the meta device (``models.load_skeleton``), so a
    wrong rank or target fails before the real model loads."""
    spec = get_method(method)
    config = _check_config(copy.deepcopy(peft_config), adapter_name, spec)
    _default_targets(model, config)
    found = predicted_targets(model, config)
    _check_targets(spec, found, model, config, {n: _rank_of(config, n) for n in found})
    return sorted(found)


#: query/value projections under the names common architectures give them, for model types PEFT
#: has no default for (its own per-architecture mapping comes first)
QV_NAMES = (("q_proj", "v_proj"), ("query", "value"), ("c_attn",), ("q", "v"), ("Wqkv",))


def default_targets(model: torch.nn.Module) -> list[str]:
    """The attention query and value projections of ``model`` (SPEC: the default targets), the one
    rule for every entry point: PEFT's per-architecture mapping, else the module names above."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    found = mapping.get(model_type)
    if found is not None:
        return [found] if isinstance(found, str) else list(found)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    for group in QV_NAMES:
        if all(g in names for g in group):
            return list(group)
    raise InitError(f"no default target modules for model type {model_type!r} (PEFT knows none and no query/value "
                    "projections were found by name); pass target_modules=[...] / --targets NAME[,NAME...].")


def _default_targets(model: torch.nn.Module, config: LoraConfig) -> None:
    """Fill ``target_modules`` with :func:`default_targets` when the config has none."""
    if config.target_modules is not None or config.target_parameters:
        return
    config.target_modules = set(default_targets(model))


def _rank_of(config: LoraConfig, name: str) -> int:
    """The rank PEFT will give ``name`` (rank_pattern keys match by suffix or regex)."""
    from peft.utils.other import get_pattern_key

    if config.rank_pattern:
        key = get_pattern_key(config.rank_pattern.keys(), name)
        return config.rank_pattern.get(key, config.r)
    return config.r


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG without disturbing the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _inject(model: torch.nn.Module, config: LoraConfig, adapter_name: str, seed: int) -> PeftModel:
    from .chatter import quiet

    with _seeded(seed), quiet():
        return _peft_get_peft_model(model, config, adapter_name=adapter_name)


def _attach_init_adapter(peft_model: PeftModel, config: LoraConfig, seed: int) -> None:
    init_config = copy.deepcopy(config)
    if isinstance(init_config, InitLoraConfig):
        init_config.__class__ = LoraConfig
    init_config.init_lora_weights = False
    init_config.inference_mode = True
    from .chatter import quiet

    with _seeded(seed), quiet():
        peft_model.add_adapter(INIT_ADAPTER, init_config)


def _set_factors(tgts: Mapping[str, Target], adapter: str, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for name, (a0, b0) in factors.items():
        layer = tgts[name].layer
        for mod, value in ((layer.lora_A[adapter], a0), (layer.lora_B[adapter], b0)):
            mod.weight.data.copy_(value.to(mod.weight.device, mod.weight.dtype))


def _factors_of(tgts: Mapping[str, Target], adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (t.layer.lora_A[adapter].weight.detach().float().clone(),
                t.layer.lora_B[adapter].weight.detach().float().clone()) for n, t in tgts.items()}


@torch.no_grad()
def _apply_residual(tgts: Mapping[str, Target], adapter: str, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                    residual_dtype: torch.dtype | None) -> dict[str, float]:
    """``R = W0 - s·B0A0`` in float32 on the weight's device, then cast (SPEC §1).

    A bitsandbytes layer gets R re-quantized; returned per such layer:
    ``‖deq(R_q) − R‖_F / ‖W0‖_F``, the error the re-quantization added.
    """
    requant = {}
    for name, (a0, b0) in factors.items():
        t = tgts[name]
        w = t.w0()
        if quantized.quant_kind(t.base):  # a misread storage layout must never become a residual
            quantized.check_dequantized(name, t.base, w)
        s = t.layer.scaling[adapter]
        dev = w.device
        stored = w.dtype  # read before set_weight: it changes the same Parameter in place
        r = w.float() - s * (b0.to(dev, torch.float32) @ a0.to(dev, torch.float32))
        if residual_dtype is not None and quantized.quant_kind(t.base):  # R kept exactly, unquantized
            quantized.unquantize_layer(t.layer, r.to(residual_dtype))
            _keep_in(t, residual_dtype)
            continue
        t.set_weight(r.to(residual_dtype or stored))
        if quantized.quant_kind(t.base):
            r_q = t.w0()
            quantized.check_dequantized(name, t.base, r_q)
            requant[name] = float((r_q - r).norm()) / max(float(w.float().norm()), 1e-30)
        elif residual_dtype is not None:  # also when it is the stored dtype: autocast would round R·x and s·BA·x
            _keep_in(t, residual_dtype)
    return requant


def _keep_in(target: Target, dtype: torch.dtype) -> None:
    """Run one replaced layer in ``dtype`` (an fp32 residual on a bf16 model, or on an fp32 model
    trained under bf16 autocast, TRL's default), autocast or not.

    The whole LoRA layer is wrapped, not just its base: ``R·x`` and ``s·BA·x`` can be
    large and nearly cancel, so they must be summed in fp32 and rounded once.  The input
    is cast up, autocast is off inside, and the output goes back to the input's dtype,
    so the rest of the model never notices.
    """
    base = target.base
    if base.bias is not None:
        base.bias.data = base.bias.data.to(dtype)
    inner = type(target.layer).forward

    def forward(self, x, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return inner(self, x.to(dtype), *args, **kwargs).to(x.dtype)

    target.layer.forward = types.MethodType(forward, target.layer)


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
    method: str = "lora",
    *,
    seed: int = 0,
    adapter_name: str = "default",
    residual_dtype: torch.dtype | str | None = None,
    cache: bool | str | os.PathLike | FitCache = True,
    measure_drift: bool = True,
    progress: Any = None,
    **options: Any,
) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter initialised by ``method``; a regular ``PeftModel``.

    Residual methods freeze ``R = W0 - s·B0A0`` as the base, so the model computes what
    it computed before.  ``options`` are the method's own (see ``inilora methods``),
    e.g. ``steps``, ``lr``, ``std``, ``engine`` for ``inilora``.  ``residual_dtype=
    "float32"`` keeps replaced base weights in fp32 on a bf16/fp16 model (on a bitsandbytes
    4/8-bit model: the targeted layers become fp32 layers holding R, instead of re-quantizing R).  ``cache``
    (inilora only): True for ``$INILORA_CACHE``, a folder, or False.  The report of
    what was done is ``model.inilora_report``.
    """
    spec = get_method(method)
    if spec.peft_backed and options:
        raise InitError(f"method {method!r} is PEFT's own and takes no options; got {', '.join(options)}.")
    opts = {} if spec.peft_backed else spec.resolve_options(options)
    config = _check_config(copy.deepcopy(peft_config), adapter_name, spec)
    if isinstance(residual_dtype, str):
        residual_dtype = getattr(torch, residual_dtype)
    if residual_dtype is not None and not spec.residual:
        raise InitError(f"residual_dtype applies to residual methods only; {method!r} leaves the base unchanged.")

    _default_targets(model, config)
    found = predicted_targets(model, config)
    _check_targets(spec, found, model, config, {n: _rank_of(config, n) for n in found})
    quant = sorted({k for k in map(quantized.quant_kind, found.values()) if k})
    gguf = quantized.drop_gguf_marker(model)
    fitcache = _fit_cache(cache) if spec.fitted else None  # checked writable before the fit (fitting.py)

    weights = {n: _oriented(m) for n, m in found.items()}
    fp = fingerprint_modules(found) if spec.residual else None
    probe = _probe(model) if (measure_drift and spec.residual) else None
    before = _output(model, probe) if probe is not None else None

    if spec.peft_backed:
        # PEFT rounds its residual to the base dtype in place; to keep it in another dtype we
        # need W0 back, so hold a copy of the targeted weights only in that case.
        w0_copy = {n: w.detach().clone() for n, w in weights.items()} if residual_dtype is not None else None
        config.init_lora_weights = spec.peft_init
        peft_model = _inject(model, config, adapter_name, seed)
        tgts = targets(peft_model, adapter_name)
        _share_peft_init(tgts, adapter_name, spec.residual, fp)  # torchrun: rank 0's init everywhere
        factors = _factors_of(tgts, adapter_name) if spec.residual else {}
        if w0_copy is not None:
            for name, t in tgts.items():
                t.set_weight(w0_copy[name])
            _apply_residual(tgts, adapter_name, factors, residual_dtype)
        report = InitReport(spec.name, spec.residual)
    else:
        config.init_lora_weights = False
        peft_model = _inject(model, config, adapter_name, seed)
        tgts = targets(peft_model, adapter_name)
        if set(tgts) != set(found):
            raise RuntimeError(f"inilora predicted targets {sorted(found)} but PEFT wrapped {sorted(tgts)}")
        if spec.fitted:  # what a fitted method needs beyond weights and options (methods/fitting.py)
            opts["context"] = InitContext(
                cache=fitcache, progress=progress if progress is not None else _default_progress(),
                biases={n: t.base.bias.detach() for n, t in tgts.items() if t.base.bias is not None})
        ranks = {n: t.layer.r[adapter_name] for n, t in tgts.items()}
        scalings = {n: t.layer.scaling[adapter_name] for n, t in tgts.items()}
        oriented = {n: t.w0().detach() for n, t in tgts.items()}
        # torchrun/accelerate: computed once (rank 0, or inilora's fit split by matrix), broadcast
        result = distributed.share_init(lambda: spec.fn(oriented, ranks, scalings, rng_factory(seed), **opts),
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
        if requant:
            report.info["quantized"] = {"kind": "/".join(quant), "layers": len(requant),
                                        "requant_rel_error_max": max(requant.values()),
                                        "requant_rel_error_mean": sum(requant.values()) / len(requant)}
        elif quant and residual_dtype is not None:
            report.info["quantized"] = {"kind": "/".join(quant), "layers": len(tgts),
                                        "kept_unquantized": str(residual_dtype).replace("torch.", "")}
    if gguf:
        report.info["gguf"] = "dequantised GGUF base; transformers' quantizer marker dropped (weights unchanged)"

    if spec.residual:
        meta = {
            "format": FORMAT,
            "inilora_version": __version__,
            "method": spec.name,
            "options": _json_safe(opts),
            "seed": seed,
            "adapter": adapter_name,
            "init_adapter": INIT_ADAPTER,
            "residual_dtype": str(residual_dtype).replace("torch.", "") if residual_dtype else None,
            "fingerprint": fp,
            "info": report.info,
            "fit": report.fit,
        }
        _finish_residual(peft_model, adapter_name, factors, meta, seed, trainable=True)
        if before is not None:
            report.drift = _drift(before, _output(peft_model, probe))
            meta["init_drift"] = report.drift
            q = report.info.get("quantized", {})
            _warn_drift(report.drift, quant_mode="requantized" if "requant_rel_error_max" in q else
                        "kept" if q else None)
    _check_finite(targets(peft_model, adapter_name), adapter_name, spec, report.drift)
    peft_model.inilora_report = report
    return peft_model


@torch.no_grad()
def _check_finite(tgts: Mapping[str, Target], adapter: str, spec: Method, drift: dict | None) -> None:
    """NaN/Inf anywhere in an init is an error, never a model that trains or saves (SPEC §8)."""
    for name, t in tgts.items():
        parts = {"A0": t.layer.lora_A[adapter].weight, "B0": t.layer.lora_B[adapter].weight}
        if spec.residual:
            parts["residual R"] = t.w0()
        for what, tensor in parts.items():
            if not torch.isfinite(tensor).all():
                raise InitError(f"method {spec.name!r} produced NaN or Inf in {what} of {name}; nothing was "
                                "saved. Check lora_alpha (> 0), the method's options and the base weights.")
    if drift is not None and not math.isfinite(drift["max_rel"]):
        raise InitError(f"the output drift at init is {drift['max_rel']} (method {spec.name!r}): the initialised "
                        "model does not compute finite outputs; nothing was saved.")


def _finish_residual(peft_model: PeftModel, adapter: str, factors, meta: dict, seed: int, trainable: bool) -> None:
    config = peft_model.peft_config[adapter]
    _attach_init_adapter(peft_model, config, seed)
    _set_factors(targets(peft_model, INIT_ADAPTER), INIT_ADAPTER, factors)
    _mark(config, meta)
    _mark(peft_model.peft_config[INIT_ADAPTER], {**meta, "role": "initial factors A0, B0"})
    _set_trainable(peft_model, adapter, trainable)


def _share_peft_init(tgts: Mapping[str, Target], adapter: str, residual: bool, fp: dict | None) -> None:
    """Under torchrun: every rank takes rank 0's PEFT-made factors (and residual base weights),
    so an SVD that rounds differently on another GPU cannot make the ranks diverge."""
    if not distributed.active():
        return
    distributed.check_same(fp["sha256"] if fp else "")
    tensors = []
    for t in tgts.values():
        tensors += [t.layer.lora_A[adapter].weight.data, t.layer.lora_B[adapter].weight.data]
        if residual and t.base.weight.is_floating_point():
            tensors.append(t.base.weight.data)
    distributed.broadcast_(tensors)


def _fit_cache(cache: bool | str | os.PathLike | FitCache) -> FitCache | None:
    if cache is False or cache is None:
        return None
    if isinstance(cache, FitCache):
        return cache
    return FitCache() if cache is True else FitCache(cache)


def _default_progress():
    from .progress import approximation_progress

    return approximation_progress()


# --------------------------------------------------------------------------- drift probe


def _probe(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    try:
        from .models import load_tokenizer, probe_inputs
    except ImportError:  # pragma: no cover
        return None
    tokenizer = None
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if name:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = load_tokenizer(name, local_files_only=True)  # never reach for a hub here
    try:
        return probe_inputs(model, tokenizer)
    except Exception as exc:  # a model without vocab (vision, custom): no drift report
        log.info("no output-drift probe for this model: %s", exc)
        return None


def _output(model: torch.nn.Module, inputs) -> tuple[torch.Tensor, str]:
    from .models import model_output

    modes = [(m, m.training) for m in model.modules()]  # a PeftModel's flags differ from its base's
    model.eval()
    try:
        return model_output(model, inputs, with_kind=True)
    finally:
        for module, mode in modes:
            module.training = mode


def _drift(before: tuple[torch.Tensor, str], after: tuple[torch.Tensor, str]) -> dict[str, float]:
    """SPEC §1's metric, and for logits the top-1 agreement (an argmax over hidden units means nothing)."""
    from .models import relative_drift, top1_agreement

    (ref, kind), (out, _) = before, after
    drift = {"max_rel": relative_drift(out, ref), "dtype": str(out.dtype).replace("torch.", "")}
    if kind == "logits" and out.dim() == 3:
        drift["top1_agreement"] = top1_agreement(out, ref)
    return drift


def _warn_drift(drift: dict, quant_mode: str | None = None) -> None:
    """Say how far the output moved at init, and why; ``quant_mode``: "requantized", "kept" or None."""
    msg = f"inilora: output drift at init max|Δout|/max|out| = {drift['max_rel']:.2e} ({drift['dtype']})"
    if "top1_agreement" in drift:
        msg += f", top-1 agreement {drift['top1_agreement']:.1%}"
    if quant_mode == "requantized":
        if drift["max_rel"] > quantized.DRIFT_WARN:
            warnings.warn(msg + ". The residual was re-quantized into the quantized base layers, which moved the "
                          "output at init; to start exactly from the pretrained model, pass residual_dtype='float32' (the "
                          f"targeted layers then stay unquantized), {quantized.ALTERNATIVES}.",
                          stacklevel=3)
        else:
            log.debug(msg + " (residual re-quantized)")
        return
    if quant_mode == "kept":
        (log.warning if drift["max_rel"] > 1e-3 else log.debug)(
            msg + ". The targeted layers hold R in float now; the quantized layers they replace computed with "
            "quantized weights (and, for LLM.int8, int8-rounded inputs), so this is the quantized model's own "
            "error on those layers, not a fault of the init.")
        return
    if drift["max_rel"] > 1e-3:
        log.warning(msg + ". The residual was rounded to a low-precision dtype; pass residual_dtype='float32' "
                    "to keep replaced base weights in fp32.")
    else:
        log.debug(msg)  # fine: the report (and the CLI's summary) carries it


# --------------------------------------------------------------------------- original model


@contextlib.contextmanager
def original(model: PeftModel, base: torch.nn.Module | str | os.PathLike | None = None) -> Iterator[PeftModel]:
    """Inside the block the model computes the *starting* model.

    By default through the frozen A0/B0 adapter: ``R + s·B0A0`` = W0 to fp32 rounding.
    ``disable_adapter()`` would give the bare residual base instead, which is not the
    pretrained model for residual methods.  On a bf16 base ``R + s·B0A0`` rounds
    differently from the checkpoint; pass ``base`` (the unmodified model, or its name or
    folder) to swap the checkpoint's own weights in instead: bit-exact W0.
    """
    if INIT_ADAPTER not in model.peft_config:
        with model.disable_adapter():
            yield model
        return
    if base is not None:
        with _exact_base_weights(model, base), model.disable_adapter():
            yield model
        return
    active = model.active_adapter
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.set_adapter(INIT_ADAPTER)
    try:
        yield model
    finally:
        model.set_adapter(active)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


@contextlib.contextmanager
def _exact_base_weights(model: PeftModel, base: torch.nn.Module | str | os.PathLike) -> Iterator[None]:
    """Swap the checkpoint's exact targeted weights in for the residual, then back."""
    if not isinstance(base, torch.nn.Module):
        from .models import load_model

        base = load_model(str(base))
    adapter = model.active_adapter
    if any(quantized.quant_kind(t.base) for t in targets(model, adapter).values()):
        raise InitError("original(model, base=...) swaps stored weights and cannot do so on a quantized base; "
                        "use original(model) (the A0/B0 adapter) instead.")
    config = model.peft_config[adapter]
    found = check_fingerprint(base, config, config._inilora) if hasattr(config, "_inilora") else \
        predicted_targets(base, config)
    tgts = targets(model, adapter)
    saved = {n: t.base.weight.data for n, t in tgts.items()}
    try:
        for name, t in tgts.items():
            w = found[name].weight.data.to(t.base.weight.device)
            t.base.weight.data = w  # stored layout and dtype: the checkpoint's own bytes
        yield
    finally:
        for name, t in tgts.items():
            t.base.weight.data = saved[name]


# --------------------------------------------------------------------------- load


def read_metadata(adapter_dir: str | os.PathLike) -> dict | None:
    """The sidecar of a residual-method adapter, or None for a plain PEFT adapter.

    A marked config without its sidecar is damaged and refused.
    """
    directory = Path(adapter_dir)
    config_path = directory / "adapter_config.json"
    if not config_path.exists():
        raise InitError(f"{directory} holds no adapter_config.json; is it an adapter folder?")
    raw = json.loads(config_path.read_text())
    sidecar = directory / SIDECAR
    if not is_marked(raw.get("init_lora_weights")):
        return None
    if not sidecar.exists():
        raise InitError(f"{directory} is a marked inilora adapter but its {SIDECAR} is missing; the save is damaged.")
    meta = json.loads(sidecar.read_text())
    if not (directory / INIT_ADAPTER / "adapter_config.json").exists():
        raise InitError(f"{directory} lacks the {INIT_ADAPTER}/ subfolder with A0, B0; the save is damaged.")
    return meta


def _plain_config(adapter_dir: Path) -> LoraConfig:
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.init_lora_weights = False
    return config


def check_fingerprint(model: torch.nn.Module, config: LoraConfig, meta: dict) -> dict[str, torch.nn.Module]:
    """Refuse a base other than the one the adapter was made on; warn across dtypes."""
    found = predicted_targets(model, config)
    want = meta["fingerprint"]
    if sorted(found) != want["names"]:
        raise FingerprintMismatch(
            f"this adapter targets {len(want['names'])} modules ({want['names'][:3]}...) but the base model "
            f"has {len(found)} matching ones; it was made on another architecture."
        )
    have = fingerprint_modules(found, scales=want.get("scales", "stored"))
    if have["sha256"] != want["sha256"]:
        raise FingerprintMismatch(
            "this adapter was initialised on a different base model (fingerprint of the targeted weights "
            f"differs: {have['sha256'][:12]} here, {want['sha256'][:12]} recorded). A residual-method adapter is "
            "only meaningful on its own base; load the base it was made on."
        )
    if have["dtype"] != want["dtype"]:
        warnings.warn(
            f"base weights are {have['dtype']} but the adapter was made on {want['dtype']}; the residual is "
            "recomputed in float32 and cast, so the output at init drifts by rounding (reported at load)."
        )
    return found


def load(
    model: torch.nn.Module,
    adapter_dir: str | os.PathLike,
    *,
    is_trainable: bool = False,
    adapter_name: str = "default",
    residual_dtype: torch.dtype | str | None = None,
) -> PeftModel:
    """Rebuild a saved model on its base, like ``PeftModel.from_pretrained`` does.

    For residual-method adapters it recomputes ``R = W0 - s·B0A0`` from the base and the
    saved A0, B0, after checking the base's fingerprint.  Plain PEFT adapters are
    handed to PEFT unchanged.
    """
    directory = Path(adapter_dir)
    meta = read_metadata(directory)
    if meta is None:
        return PeftModel.from_pretrained(model, str(directory), adapter_name=adapter_name, is_trainable=is_trainable)
    if adapter_name in _RESERVED:
        raise InitError(f"adapter name {adapter_name!r} is reserved.")
    config = _plain_config(directory)
    config.inference_mode = not is_trainable  # as PEFT's from_pretrained does
    check_fingerprint(model, config, meta)
    quantized.drop_gguf_marker(model)
    if isinstance(residual_dtype, str):
        residual_dtype = getattr(torch, residual_dtype)
    if residual_dtype is None and meta.get("residual_dtype"):
        residual_dtype = getattr(torch, meta["residual_dtype"])
    seed = int(meta.get("seed", 0))
    peft_model = _inject(model, config, adapter_name, seed)
    init_state = load_peft_weights(str(directory / INIT_ADAPTER))
    _attach_init_adapter(peft_model, config, seed)
    _load_state(peft_model, init_state, INIT_ADAPTER)
    factors = _factors_of(targets(peft_model, INIT_ADAPTER), INIT_ADAPTER)
    _apply_residual(targets(peft_model, adapter_name), adapter_name, factors, residual_dtype)
    _load_state(peft_model, load_peft_weights(str(directory)), adapter_name)
    peft_model.peft_config[adapter_name] = config
    _mark(config, meta)
    _mark(peft_model.peft_config[INIT_ADAPTER], {**meta, "role": "initial factors A0, B0"})
    _set_trainable(peft_model, adapter_name, is_trainable)
    if not is_trainable:
        peft_model.eval()
    peft_model.inilora_report = InitReport(meta["method"], True, info=meta.get("info", {}), fit=meta.get("fit", {}),
                                           drift=meta.get("init_drift"))
    return peft_model


def _load_state(peft_model: PeftModel, state: dict, adapter: str) -> None:
    result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter)
    bad = list(getattr(result, "unexpected_keys", []))
    bad += [k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{adapter}." in k]
    if bad:
        raise InitError(f"saved adapter weights do not fit this model (e.g. {bad[:3]}); was it saved from another model?")


def is_residual_model(model: PeftModel) -> bool:
    return INIT_ADAPTER in getattr(model, "peft_config", {})


__all__ = [
    "INIT_ADAPTER", "InitLoraConfig", "InitReport", "check_fingerprint", "check_plan", "default_targets",
    "fingerprint", "fingerprint_modules", "get_peft_model",
    "is_residual_model", "load", "marker", "original", "read_metadata", "targets",
]
