"""Quantized bases: what residual methods can do with them, decided before any work.

A residual method rewrites the base weight (``R = W0 - s·B0A0``).  On a bitsandbytes
4-bit / 8-bit layer that means: dequantize W0, compute R in float32, quantize R again
with the layer's own settings.  Re-quantizing R is lossy (R's quantization grid differs
from W0's), so the output at init is not the quantized model's to fp32 rounding: the
bridge measures that drift, reports it and warns past :data:`DRIFT_WARN`.  With
``residual_dtype=`` the targeted layers instead become float layers holding R exactly
(:func:`unquantize_layer`), at the memory cost of float weights for those layers only.
Non-residual methods (``lora``, ``gaussian``) never touch the base and run as PEFT runs
them (QLoRA).  Other schemes (GPTQ, AWQ, HQQ, torchao, ...) are refused for residual
methods with the alternatives named.  A GGUF model loaded with ``gguf_file=`` is
dequantised to plain float at load; only transformers' quantizer marker remains, and
:func:`drop_gguf_marker` removes it (Trainer and ``save_pretrained`` refuse it).

Layers are recognised by bitsandbytes' parameter class names: importing this module never
imports bitsandbytes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from .errors import InitError

log = logging.getLogger(__name__)

BNB_4BIT = "bnb-4bit"
BNB_8BIT = "bnb-8bit"
#: output drift at init (max relative) above which re-quantizing the residual is warned about
DRIFT_WARN = 0.01

ALTERNATIVES = (
    "use a non-residual method ('lora' or 'gaussian', QLoRA-style: the base stays as it is), "
    "or load the base unquantized (e.g. without quantization_config, or dequantize it explicitly with "
    "model.dequantize()) and initialise that"
)


def quant_kind(module: torch.nn.Module) -> str | None:
    """``"bnb-4bit"``, ``"bnb-8bit"`` or None for a layer whose weight is not bitsandbytes-quantized."""
    weight = getattr(module, "weight", None)
    cls = type(weight).__name__
    if cls == "Params4bit":
        return BNB_4BIT
    if cls == "Int8Params" and weight.dtype == torch.int8:
        return BNB_8BIT
    return None


def model_quant_method(model: torch.nn.Module) -> str | None:
    """The quantization method transformers recorded for ``model`` (``"gguf"``, ``"bitsandbytes"``...)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return None
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    return str(getattr(method, "value", method) or type(quantizer).__name__).lower()


def check_layer(name: str, module: torch.nn.Module, method: Any) -> str | None:
    """Refuse what ``method`` cannot do with this layer's weight; return its quantization kind.

    ``method`` is a registry entry (``name``, ``residual``, ``peft_backed``).
    """
    kind = quant_kind(module)
    weight = getattr(module, "weight", None)
    if kind is not None:
        if method.name == "loftq":
            raise InitError(
                f"{name} is already a bitsandbytes {kind} layer; LoftQ quantizes the full-precision weights itself "
                "and cannot start from quantized ones. Load the base unquantized (without quantization_config) and "
                "initialise that with loftq, or use 'lora' (QLoRA) on this base.")
        if getattr(method, "full_precision", False) and not method.residual:
            raise InitError(
                f"{name} is a bitsandbytes {kind} layer; method {method.name!r} reads the base weight as float numbers (an "
                "SVD, its dtype), which PEFT would take from packed bytes. Dequantize the base first (model.dequantize()) or load it unquantized, "
                "or use 'lora' / 'eva' (they leave the quantized base as it is).")
        if method.residual and method.peft_backed:
            raise InitError(
                f"{name} is a bitsandbytes {kind} layer; method {method.name!r} is PEFT's own init, which "
                "cannot re-quantize its residual consistently here. Use 'milora' (SVD, like pissa) or an "
                f"inilora method, which dequantize, compute the residual in float32 and re-quantize; or {ALTERNATIVES}."
            )
        return kind
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise InitError(
            f"{name} is a {type(module).__name__} with a {getattr(weight, 'dtype', type(weight).__name__)} weight "
            f"that inilora cannot read as numbers; method {method.name!r} needs a float weight or a "
            f"bitsandbytes 4-bit/8-bit layer. Load the base unquantized or dequantize it explicitly "
            "(model.dequantize()) before initializing."
        )
    return None


def check_model(model: torch.nn.Module, method: Any) -> None:
    """Refuse residual methods on a base quantized by a scheme other than bitsandbytes or GGUF."""
    qm = model_quant_method(model)
    if qm is None or qm in ("gguf", "bitsandbytes") or not method.residual:
        return
    raise InitError(
        f"the base model is quantized with {qm!r}; residual method {method.name!r} rewrites base weights and "
        f"supports float bases and bitsandbytes 4-bit/8-bit layers only. Either {ALTERNATIVES}."
    )


def drop_gguf_marker(model: torch.nn.Module) -> bool:
    """Remove transformers' GGUF quantizer from a model whose weights are plain float.

    ``from_pretrained(..., gguf_file=...)`` dequantises every tensor at load, but keeps a
    quantizer that makes Trainer refuse to train and ``save_pretrained`` refuse to save.
    The weights are the same either way, so dropping it changes no output.  Returns True
    if it was dropped.
    """
    if model_quant_method(model) != "gguf":
        return False
    if any(p.dtype.is_floating_point is False for p in model.parameters()):
        return False  # not the dequantised form we know: leave it to the checks
    quantizer = model.hf_quantizer
    if hasattr(quantizer, "remove_quantization_config"):  # transformers' own undo of the marker
        quantizer.remove_quantization_config(model)
    model.hf_quantizer = None
    model.is_quantized = False
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and "_is_quantized" in vars(config):
            config._is_quantized = False
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    log.info("inilora: the base was loaded from GGUF (dequantised to %s); dropped its quantizer marker so it "
             "trains and saves like a plain model", next(model.parameters()).dtype)
    return True


#: max|layer(x) − x·W0ᵀ| / max|x·W0ᵀ| beyond which a dequantization is not what the layer computes.
#: Measured on the tiny LLaMA: 0 (4-bit, fp32 compute), 6.7e-3 (4-bit CPU-packed, bf16 compute),
#: 6.3e-3 (8-bit, int8 activations); a wrong storage layout gives ≈ 1.4.
GUARD_TOL = 0.05


def is_cpu_packed(module: torch.nn.Module) -> bool:
    """True for a 4-bit layer whose weight bitsandbytes repacked for its AVX512-BF16 CPU kernel.

    bitsandbytes (≥ 0.49) does this in place at the first no-grad eval forward on such a CPU:
    the nibbles are reordered in blocks of 32 output rows and the block scales (absmax) are
    un-nested, transposed and rounded to bf16.  ``dequantize_4bit`` of that data is garbage.
    """
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def _unpacked_view(data: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """The canonical ``(data, quant_state)`` of a CPU-packed 4-bit weight, without touching the layer.

    Goes through bitsandbytes' own inverse on a shallow copy of the state (the inverse only
    rebinds attributes), with re-nesting off: the packed layer computes with the bf16 absmax
    as it is, and re-quantizing it (what the inverse does for a nested state) would change it.
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    state = copy.copy(state)
    state.original_nested = False
    data, state = _convert_weight_packed_for_cpu_inverse(data.clone(), state)
    if state.absmax.dim() == 2:  # still (K/blocksize, N), the packed kernel's order
        state.absmax = state.absmax.T.reshape(-1).float()
    return data, state


def _dequantize_4bit(module: torch.nn.Module, *, absmax_bf16: bool = False) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    w = module.weight
    data, state = w.data, w.quant_state
    if is_cpu_packed(module):
        data, state = _unpacked_view(data, state)
    elif absmax_bf16:
        state = copy.copy(state)
        if state.nested:  # the scales as packing makes them: un-nested, then bf16
            state.absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
            state.nested = False
        state.absmax = state.absmax.float()
    if absmax_bf16:
        state.absmax = state.absmax.to(torch.bfloat16).float()
    return bnbf.dequantize_4bit(data, state).to(torch.float32)


@torch.no_grad()
def dequantize(module: torch.nn.Module, *, absmax_bf16: bool = False) -> torch.Tensor:
    """The layer's weight as float32 ``(out, in)``, in whatever storage layout it is; the layer
    is left exactly as it was.

    ``absmax_bf16=True`` rounds 4-bit block scales to bf16 first, as CPU packing does: the
    result is then the same for a packed and an unpacked copy of one checkpoint (fingerprints).
    (PEFT's ``dequantize_module_weight`` re-wraps an 8-bit CPU weight and drops its scales
    once the layer has run a forward pass, so it is not used here.)
    """
    import bitsandbytes.functional as bnbf

    w = module.weight
    kind = quant_kind(module)
    if kind == BNB_4BIT:
        return _dequantize_4bit(module, absmax_bf16=absmax_bf16)
    if kind == BNB_8BIT:
        state = getattr(module, "state", None)
        scb = w.SCB if getattr(w, "SCB", None) is not None else getattr(state, "SCB", None)
        if scb is None:
            raise InitError(f"{type(module).__name__} has int8 weights but no scales (SCB); it cannot be read.")
        return bnbf.int8_vectorwise_dequant(w.data, scb.to(w.device)).to(torch.float32)
    raise InitError(f"{type(module).__name__} is not a bitsandbytes-quantized layer")


@torch.no_grad()
def check_dequantized(name: str, module: torch.nn.Module, weight: torch.Tensor) -> None:
    """Raise :class:`InitError` unless ``module``'s own forward is ``x·weightᵀ (+ b)`` on a small probe.

    A cheap guard (4 rows) against reading a storage layout wrongly: a residual built from a
    garbage dequantization is a silently wrong model.  The forward runs as the layer's
    user would run it (eval, no grad), checking the layout the layer is in now without
    repacking it (:func:`no_cpu_repack`).
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, weight.shape[1], generator=gen).to(weight.device)
    bias = getattr(module, "bias", None)
    want = x @ weight.T + (bias.float() if bias is not None else 0)
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), no_cpu_repack(module):  # bnb's notes on input casts say nothing here
            warnings.simplefilter("ignore")
            got = module(x.to(_input_dtype(module))).float()
    finally:
        module.train(was_training)
    err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30)
    if not err <= GUARD_TOL:  # also catches NaN
        import bitsandbytes

        layout = "CPU-packed" if is_cpu_packed(module) else "canonical"
        raise InitError(
            f"{name}: the dequantized weight is not what the layer computes (max relative difference "
            f"{err:.3g} on a probe, tolerance {GUARD_TOL}; {quant_kind(module)}, {layout} layout, "
            f"bitsandbytes {bitsandbytes.__version__}). inilora will not build a residual from it. "
            f"Please report this; meanwhile {ALTERNATIVES}."
        )


def _input_dtype(module: torch.nn.Module) -> torch.dtype:
    dtype = getattr(module, "compute_dtype", None)
    bias = getattr(module, "bias", None)
    return dtype or (bias.dtype if bias is not None else torch.float32)


@contextlib.contextmanager
def no_cpu_repack(model: torch.nn.Module) -> Iterator[None]:
    """Run inilora's own forwards (probes, data-driven calibration) without triggering
    bitsandbytes' CPU repacking.

    Repacking rounds a 4-bit layer's scales to bf16 and switches later forwards to a bf16
    kernel, so a forward of ours that packed the base would make the init, and the output the
    user compares against, depend on the CPU it ran on (AVX512-BF16 or not).  Layers the user's own
    forwards already packed stay packed; :func:`dequantize` reads them as they are.
    """
    flagged = [m for m in model.modules() if getattr(m, "support_avx512bf16_for_cpu", False)]
    for m in flagged:
        m.support_avx512bf16_for_cpu = False
    try:
        yield
    finally:
        for m in flagged:
            m.support_avx512bf16_for_cpu = True


@torch.no_grad()
def requantize(module: torch.nn.Module, weight: torch.Tensor) -> None:
    """Quantize ``weight`` (``(out, in)``, any float dtype) into ``module`` with its own settings."""
    old = module.weight
    kind = quant_kind(module)
    if kind == BNB_4BIT:
        state = old.quant_state  # packing replaces .dtype with bf16 and keeps the original beside it
        dtype = getattr(state, "original_dtype", None) if is_cpu_packed(module) else getattr(state, "dtype", None)
        dtype = dtype or weight.dtype  # what the original was quantized from
        new = type(old)(
            weight.detach().to(dtype).contiguous(), requires_grad=False, quant_type=old.quant_type,
            quant_storage=old.quant_storage, compress_statistics=old.compress_statistics,
            blocksize=old.blocksize, module=module,
        ).to(old.device)
    elif kind == BNB_8BIT:
        new = type(old)(weight.detach().cpu().contiguous(), requires_grad=False,
                        has_fp16_weights=False).to(old.device)  # quantizes on the move off the CPU
        state = getattr(module, "state", None)
        if state is not None:  # stale scales would be used with the new int8 values
            state.CB = None
            state.SCB = None
    else:
        raise InitError(f"{type(module).__name__} is not a bitsandbytes-quantized layer")
    module.weight = new


@torch.no_grad()
def unquantize_layer(lora_layer: torch.nn.Module, weight: torch.Tensor) -> None:
    """Swap the bitsandbytes base of a PEFT LoRA layer for a float ``nn.Linear`` holding ``weight``.

    What ``residual_dtype=`` means on a quantized base: the replaced layers keep R exactly
    (no re-quantization drift) at the memory cost of float weights for those layers only.
    """
    base = lora_layer.get_base_layer()
    linear = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                             device=weight.device, dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    if base.bias is not None:
        linear.bias = torch.nn.Parameter(base.bias.detach().to(weight.dtype), requires_grad=False)
    lora_layer.base_layer = linear


__all__ = [
    "ALTERNATIVES", "BNB_4BIT", "BNB_8BIT", "DRIFT_WARN", "GUARD_TOL", "check_dequantized", "check_layer",
    "check_model", "dequantize", "drop_gguf_marker", "is_cpu_packed", "model_quant_method", "no_cpu_repack",
    "quant_kind", "requantize", "unquantize_layer",
]
