"""The residual: ``R = W0 − s·B0A0`` in float32 on the weight's device, then cast (docs/design.md §1), the
factors set into PEFT's layers, and nothing non-finite let through.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Mapping

import torch

from .. import distributed, quantized
from ..errors import InitError
from ..methods.registry import Method
from .targeting import Target

log = logging.getLogger(__name__)


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
    """``R = W0 - s·B0A0`` in float32 on the weight's device, then cast (docs/design.md §1).

    A bitsandbytes layer gets R re-quantized; returned per such layer:
    ``‖deq(R_q) − R‖_F / ‖W0‖_F``, the error the re-quantization added.
    """
    requant = {}
    for name, (a0, b0) in factors.items():
        t = tgts[name]
        w = t.base_weight()
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
        t.set_base_weight(r.to(residual_dtype or stored))
        if quantized.quant_kind(t.base):
            r_q = t.base_weight()
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


@torch.no_grad()
def _check_finite(tgts: Mapping[str, Target], adapter: str, spec: Method, drift: dict | None) -> None:
    """NaN/Inf anywhere in an init is an error, never a model that trains or saves (docs/design.md §8)."""
    for name, t in tgts.items():
        parts = {"A0": t.layer.lora_A[adapter].weight, "B0": t.layer.lora_B[adapter].weight}
        if spec.residual:
            parts["residual R"] = t.base_weight()
        for what, tensor in parts.items():
            if not torch.isfinite(tensor).all():
                raise InitError(f"method {spec.name!r} produced NaN or Inf in {what} of {name}; nothing was "
                                "saved. Check lora_alpha (> 0), the method's options and the base weights.")
    if drift is not None and not math.isfinite(drift["max_rel"]):
        raise InitError(f"the output drift at init is {drift['max_rel']} (method {spec.name!r}): the initialised "
                        "model does not compute finite outputs; nothing was saved.")


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
