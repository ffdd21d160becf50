"""What gets adapted: the targeted layers, their weights oriented ``(out, in)``, and every check on
them that can be made before any work (also on a weightless skeleton of the model).

One orientation rule: GPT-2's ``Conv1D`` stores its weight ``(in, out)``, every other layer
``(out, in)`` (PEFT's ``fan_in_fan_out`` follows the same rule); a bitsandbytes layer is read
through ``quantized.dequantize``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists

from .. import quantized
from ..cache import tensor_digest
from ..checks import check_lora_numbers
from ..errors import InitError
from ..methods import get_method
from ..methods.registry import Method
from ..naming import canonical_name
from .markers import _RESERVED, INIT_ADAPTER, is_marked

log = logging.getLogger(__name__)


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

    def base_weight(self) -> torch.Tensor:
        """The base layer's weight as it is now, oriented ``(out, in)``: W0 before an init, the
        residual R after one (see :func:`oriented`)."""
        return oriented(self.base)

    def set_base_weight(self, w_out_in: torch.Tensor) -> None:
        """Write ``(out, in)`` into the base layer in its own layout (re-quantized for bitsandbytes)."""
        if quantized.quant_kind(self.base):  # re-quantized with the layer's own settings
            quantized.requantize(self.base, w_out_in)
            return
        w = w_out_in.T if _transposed(self.base) else w_out_in
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


def _transposed(module: torch.nn.Module) -> bool:
    """The one orientation rule: GPT-2's Conv1D stores ``(in, out)`` (PEFT's ``fan_in_fan_out``
    follows the same rule and resets it for any other layer); everything else ``(out, in)``."""
    return type(module).__name__ == "Conv1D"


def oriented(module: torch.nn.Module) -> torch.Tensor:
    """``module``'s weight as ``(out, in)``; a bitsandbytes layer dequantized to float32."""
    if quantized.quant_kind(module):
        return quantized.dequantize(module)
    w = module.weight
    return w.T if _transposed(module) else w


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
               else oriented(m) for n, m in found.items()}
    fp = fingerprint(weights)
    if bf16 and any(quantized.quant_kind(m) == quantized.BNB_4BIT for m in found.values()):
        fp["scales"] = "bf16"
    return fp


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
        w = oriented(module)
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
    """The attention query and value projections of ``model`` (docs/design.md §3: the default targets), the one
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
