"""Rebuilding a saved residual adapter on its base (``load``), checked by the base's fingerprint,
and the original model back (``original``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict

from .. import quantized
from ..errors import FingerprintMismatch, InitError
from .build import InitReport, _attach_init_adapter, _inject, _set_trainable
from .markers import _RESERVED, INIT_ADAPTER, SIDECAR, _mark, is_marked
from .residual import _apply_residual, _factors_of
from .targeting import fingerprint_modules, predicted_targets, targets

log = logging.getLogger(__name__)


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
        from ..models import load_model

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
    """Refuse a base other than the one the adapter was made on; warn across dtypes.

    A non-residual adapter (``meta["residual"]`` False) made or loaded on a quantized base is only
    warned about: a QLoRA adapter on the full-precision checkpoint is a legitimate use, and its
    quantized weights cannot match the float ones exactly."""
    found = predicted_targets(model, config)
    want = meta["fingerprint"]
    residual = meta.get("residual", True)
    if sorted(found) != want["names"]:
        raise FingerprintMismatch(
            f"this adapter targets {len(want['names'])} modules ({want['names'][:3]}...) but the base model "
            f"has {len(found)} matching ones; it was made on another architecture."
        )
    have = fingerprint_modules(found, scales=want.get("scales", "stored"))
    if have["sha256"] != want["sha256"]:
        if not residual and (meta.get("quantized") or any(quantized.quant_kind(m) for m in found.values())):
            warnings.warn("this adapter's base fingerprint differs from this base model's; one of them is quantized, "
                          "so they cannot be compared exactly. Make sure it is the checkpoint the adapter was made on.")
            return found
        raise FingerprintMismatch(
            "this adapter was initialised on a different base model (fingerprint of the targeted weights "
            f"differs: {have['sha256'][:12]} here, {want['sha256'][:12]} recorded). An adapter is only "
            "meaningful on its own base: load the base it was made on (export: pass it with --base)."
        )
    if not residual:
        return found
    if have["dtype"] != want["dtype"]:
        warnings.warn(
            f"base weights are {have['dtype']} but the adapter was made on {want['dtype']}; the residual is "
            "recomputed in float32 and cast, so the output at init drifts by rounding (reported at load)."
        )
    return found


def check_plain_base(model: torch.nn.Module, adapter_dir: str | os.PathLike) -> None:
    """A non-residual adapter inilora wrote is checked against its recorded base fingerprint; a plain
    PEFT adapter made elsewhere records none: a warning says it cannot be checked."""
    directory = Path(adapter_dir)
    sidecar = directory / SIDECAR
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    except (OSError, ValueError):
        raise InitError(f"{sidecar} is not valid JSON; the adapter folder is damaged.") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("fingerprint"), dict)):
        warnings.warn(f"{directory} records no base fingerprint (a PEFT adapter not written by inilora), so it "
                      "cannot be checked against this base model; make sure it is the one it was trained on.",
                      stacklevel=3)
        return
    check_fingerprint(model, _plain_config(directory), {**meta, "residual": False})


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
        check_plain_base(model, directory)
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
