"""The output drift at init (docs/design.md §1's metric) on a fixed probe batch, and what is said about it."""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch

from .. import quantized

log = logging.getLogger(__name__)


def _probe(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    try:
        from ..models import load_tokenizer, probe_inputs
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
    from ..models import model_output

    modes = [(m, m.training) for m in model.modules()]  # a PeftModel's flags differ from its base's
    model.eval()
    try:
        return model_output(model, inputs, with_kind=True)
    finally:
        for module, mode in modes:
            module.training = mode


def _drift(before: tuple[torch.Tensor, str], after: tuple[torch.Tensor, str]) -> dict[str, float]:
    """docs/design.md §1's metric, and for logits the top-1 agreement (an argmax over hidden units means nothing)."""
    from ..models import relative_drift, top1_agreement

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
