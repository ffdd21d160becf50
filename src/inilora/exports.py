"""Export a trained model into a layout other tools load without inilora (docs/design.md §4).

- ``plain``: a rank-2r LoRA adapter for the *unmodified* base, ``A' = [A; A0]``,
  ``B' = [B, -B0]``, alpha doubled (√2·alpha under rsLoRA; every rank/alpha pattern
  entry likewise) so the scaling is unchanged, computed in fp32.  Then
  ``W0 + s·B'A' = W0 - s·B0A0 + s·BA = R + s·BA``: the trained model.  Serving stacks
  load this.
- ``merged``: the full model with ``R + s·BA`` merged in fp32, then cast.
- ``residual``: the residual base as a full model plus the rank-r adapter in
  ``adapter/`` (PiSSA's hub layout).

Every export is written to a temp folder and renamed into place, and its drift is
measured in the target dtype against the merged weights in that same dtype; past 1 %
it warns and recommends ``merged``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .chatter import import_peft

import_peft()  # first: bitsandbytes' kernel probe stays quiet
from peft import LoraConfig, PeftModel  # noqa: E402
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from .bridge import (
    INIT_ADAPTER,
    Target,
    check_fingerprint,
    is_residual_model,
    load,
    oriented,
    predicted_targets,
    read_metadata,
    targets,
)
from .chatter import quiet
from .checks import LAYOUTS, check_adapter_dir
from .errors import InitError
from .fileio import replace_dir, temp_dir
from .outdir import check_output_dir, write_export_marker

log = logging.getLogger(__name__)
DRIFT_WARN = 0.01


@dataclass
class ExportReport:
    layout: str
    out_dir: Path
    dtype: str
    #: max|out_export − out_merged| / max|out_merged|, both in the target dtype with the adapter
    #: weights cast to it too, as serving stacks load them (None: not measured)
    drift: float | None = None
    #: the same with the adapter kept in fp32 (PEFT's default on a bf16/fp16 base)
    drift_fp32_adapter: float | None = None
    top1_agreement: float | None = None
    #: the base as the export names it (an embedded model's hub name), and its folder on this machine
    base_model: str | None = None
    base_folder: str | None = None


def export(
    model_or_dir: PeftModel | str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "plain",
    *,
    base: torch.nn.Module | str | os.PathLike | None = None,
    adapter_name: str = "default",
    dtype: torch.dtype | str | None = None,
    check: bool = True,
    overwrite: bool = False,
) -> ExportReport:
    """Write ``layout`` of a model (live ``PeftModel`` or a saved adapter folder) to ``out_dir``.

    A folder needs its base: ``base`` (model or name/path), else the base recorded in
    the adapter config.  A live model is never modified (the export works on a copy);
    ``base``, if given, supplies the exact original weights for the drift check,
    otherwise they are rebuilt as ``R + s·B0A0`` in fp32.
    """
    out_dir = Path(out_dir)
    source = _check_inputs(model_or_dir, out_dir, layout, overwrite)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    work, w0_exact, tokenizer_name = _working_model(model_or_dir, base, adapter_name)
    w = _read_weights(work, adapter_name, dtype, w0_exact)
    base_local = _base_local(w)

    tmp = temp_dir(out_dir.parent, out_dir.name)
    try:
        with quiet():
            plain = _unwrap(work, w.tgts, w.dtype)
            _WRITERS[layout](tmp, plain, w, out_dir)
            if layout != "plain":
                _save_tokenizer(tokenizer_name, tmp)
            report = ExportReport(layout, out_dir, str(w.dtype).replace("torch.", ""),
                                  base_model=w.hub_name or w.base_name,
                                  base_folder=base_local["base_model"]["local_folder"] if base_local else None)
            if check and layout != "merged":
                _measure(report, plain, w.tgts, w.merged, w.w0 if layout == "plain" else w.resid32, w.dtype,
                         tmp if layout == "plain" else tmp / "adapter", tokenizer_name)
            write_export_marker(tmp, layout, str(source) if source else w.base_name, **base_local)
            replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


# --------------------------------------------------------------------------- the steps of export, in order


def _check_inputs(model_or_dir, out_dir: Path, layout: str, overwrite: bool) -> Path | None:
    """The layout, the adapter folder (if one), the output folder: checked before any model loads.
    Returns the adapter folder, or None for a live model."""
    if layout not in LAYOUTS:
        raise InitError(f"unknown export layout {layout!r}; layouts: {', '.join(LAYOUTS)}.")
    source = None if isinstance(model_or_dir, PeftModel) else Path(model_or_dir)
    if source is not None:
        check_adapter_dir(source)
    check_output_dir(out_dir, what="export folder", overwrite=overwrite, inputs=[source] if source else [])
    return source


@dataclass
class _Weights:
    """What every layout is made of, read once from the working model (fp32 unless said)."""

    config: LoraConfig
    tgts: dict  # name → Target of the working adapter
    dtype: torch.dtype  # the export's dtype
    trained: dict  # name → (A, B) trained
    start: dict  # name → (A0, B0) (residual models)
    resid32: dict  # name → the base weight as it is (R for a residual model, W0 otherwise)
    merged: dict  # name → R + s·BA
    w0: dict  # name → W0: exact when the original base was given, else R + s·B0A0
    adapter_state: dict  # the working adapter's PEFT state dict
    base_name: str | None  # the base as this machine loads it
    hub_name: str | None  # an embedded base's hub model, which the export names (None otherwise)


def _read_weights(work: PeftModel, adapter_name: str, dtype: torch.dtype | None, w0_exact: dict | None) -> _Weights:
    residual = is_residual_model(work)
    config = work.peft_config[adapter_name]
    if config.use_dora or getattr(config, "lora_bias", False) or type(config).__name__ not in (
            "LoraConfig", "InitLoraConfig"):
        raise InitError("export supports plain LoRA adapters only (no DoRA, no lora_bias, no other variants).")
    tgts = targets(work, adapter_name)
    init = targets(work, INIT_ADAPTER) if residual else {}
    base_model = work.get_base_model()
    target_dtype = dtype or _model_dtype(base_model, tgts)

    with torch.no_grad():
        trained = {n: _factors(t, adapter_name) for n, t in tgts.items()}
        start = {n: _factors(init[n], INIT_ADAPTER) for n in init}
        scal = {n: float(t.layer.scaling[adapter_name]) for n, t in tgts.items()}
        resid32 = {n: t.base_weight().detach().float() for n, t in tgts.items()}
        merged = {n: resid32[n] + scal[n] * (trained[n][1] @ trained[n][0]) for n in tgts}
        if residual:
            w0 = w0_exact or {n: (resid32[n] + scal[n] * (start[n][1] @ start[n][0])) for n in tgts}
        else:
            w0 = resid32
        adapter_state = get_peft_model_state_dict(work, adapter_name=adapter_name)
        base_name = getattr(base_model, "name_or_path", None) or config.base_model_name_or_path
    # an embedded base is a local copy of a hub model: the export names the hub model (it travels to
    # other machines and tools); the local folder stays in inilora's own marker file
    from .models import hub_name_of

    hub_name = hub_name_of(base_name) if base_name else None
    return _Weights(config, tgts, target_dtype, trained, start, resid32, merged, w0, adapter_state, base_name,
                    hub_name)


def _base_local(w: _Weights) -> dict:
    """inilora's marker keeps the embedded base's folder on this machine beside its hub name."""
    if w.hub_name and Path(w.base_name).exists():
        return {"base_model": {"name": w.hub_name, "local_folder": str(Path(w.base_name).resolve())}}
    return {}


def _write_plain(tmp: Path, plain: torch.nn.Module, w: _Weights, out_dir: Path) -> None:
    """A rank-2r adapter for the unmodified base (the base itself is not written), naming the hub model."""
    plain_config, plain_state = _plain_adapter(w.config, w.adapter_state, w.tgts, w.trained, w.start,
                                               w.hub_name or w.base_name)
    plain_config.save_pretrained(str(tmp))
    save_file({k: v.contiguous() for k, v in plain_state.items()}, str(tmp / "adapter_model.safetensors"),
              metadata={"format": "pt"})


def _write_merged(tmp: Path, plain: torch.nn.Module, w: _Weights, out_dir: Path) -> None:
    _set_weights(plain, w.tgts, w.merged, w.dtype)
    plain.save_pretrained(str(tmp))


def _write_residual(tmp: Path, plain: torch.nn.Module, w: _Weights, out_dir: Path) -> None:
    """The residual base as a full model, the rank-r adapter in ``adapter/`` pointing at it."""
    _set_weights(plain, w.tgts, w.resid32, w.dtype)
    plain.save_pretrained(str(tmp))
    res_config = _unmarked(w.config, base_name=str(out_dir))
    res_config.save_pretrained(str(tmp / "adapter"))
    save_file({k: v.contiguous() for k, v in w.adapter_state.items()},
              str(tmp / "adapter" / "adapter_model.safetensors"), metadata={"format": "pt"})


_WRITERS = {"plain": _write_plain, "merged": _write_merged, "residual": _write_residual}


# --------------------------------------------------------------------------- helpers



def _working_model(model_or_dir, base, adapter_name) -> tuple[PeftModel, dict | None, str | None]:
    """A PeftModel the export may modify, the exact W0 if known, and a tokenizer source."""
    from .models import load_model

    if isinstance(model_or_dir, PeftModel):
        _refuse_quantized(model_or_dir)
        work = copy.deepcopy(model_or_dir)
        w0 = None
        if base is not None:
            base_model = load_model(str(base)) if isinstance(base, (str, os.PathLike)) else base
            config = work.peft_config[adapter_name]
            meta = getattr(config, "_inilora", None)
            found = check_fingerprint(base_model, config, meta) if meta else predicted_targets(base_model, config)
            w0 = {n: oriented(m).detach().float().clone() for n, m in found.items()}
        name = getattr(work.get_base_model(), "name_or_path", None)
        return work, w0, name
    directory = Path(model_or_dir)
    meta = read_metadata(directory)
    config = LoraConfig.from_pretrained(str(directory))
    if base is None:
        base = config.base_model_name_or_path
        if not base:
            raise InitError(f"{directory} does not record its base model; pass base=NAME_OR_PATH.")
    base_model = load_model(str(base)) if isinstance(base, (str, os.PathLike)) else base
    _refuse_quantized(base_model)
    config.init_lora_weights = False
    found = predicted_targets(base_model, config)
    w0 = {n: oriented(m).detach().float().clone() for n, m in found.items()} if meta else None
    work = load(base_model, directory, adapter_name=adapter_name)
    name = str(base) if isinstance(base, (str, os.PathLike)) else getattr(base_model, "name_or_path", None)
    return work, w0, name


def _refuse_quantized(model: torch.nn.Module) -> None:
    """Exports write float weights; a bitsandbytes base cannot be cast or merged into in place."""
    from .quantized import quant_kind

    kinds = sorted({k for k in map(quant_kind, model.modules()) if k})
    if kinds:
        raise InitError(
            f"cannot export from a {'/'.join(kinds)} quantized base: the layouts hold float weights. Load the "
            "saved adapter with inilora.load() on the same quantized base to use it, or initialise and train on an "
            "unquantized base to export.")


def _factors(t: Target, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    return t.layer.lora_A[adapter].weight.detach().float(), t.layer.lora_B[adapter].weight.detach().float()


def _model_dtype(model: torch.nn.Module, tgts: Mapping[str, Target]) -> torch.dtype:
    """The dtype of the base model's own (non-LoRA, non-residual) float weights."""
    skip = {id(t.base.weight) for t in tgts.values()}
    for name, p in model.named_parameters():
        if p.is_floating_point() and id(p) not in skip and "lora_" not in name:
            return p.dtype
    return torch.float32


def _unmarked(config: LoraConfig, *, base_name: str | None) -> LoraConfig:
    out = copy.deepcopy(config)
    out.__class__ = LoraConfig
    out.__dict__.pop("_inilora", None)
    out.init_lora_weights = True
    out.inference_mode = True
    out.base_model_name_or_path = base_name
    return out


def _plain_adapter(config, adapter_state, tgts, trained, start, base_name) -> tuple[LoraConfig, dict]:
    """Rank-2r adapter for the unmodified base; scaling kept (×2 alpha, ×√2 under rsLoRA)."""
    out = _unmarked(config, base_name=base_name)
    state = dict(adapter_state)
    if not start:
        return out, state
    factor = math.sqrt(2.0) if config.use_rslora else 2.0
    out.r = 2 * config.r
    out.lora_alpha = config.lora_alpha * factor
    out.rank_pattern = {k: 2 * v for k, v in (config.rank_pattern or {}).items()}
    out.alpha_pattern = {k: v * factor for k, v in (config.alpha_pattern or {}).items()}
    for name, t in tgts.items():
        a, b = trained[name]
        a0, b0 = start[name]
        state[f"{t.path}.lora_A.weight"] = torch.cat([a, a0], dim=0)
        state[f"{t.path}.lora_B.weight"] = torch.cat([b, -b0], dim=1)
    return out, state


def _unwrap(work: PeftModel, tgts: Mapping[str, Target], dtype: torch.dtype) -> torch.nn.Module:
    """The bare transformers model (trained modules_to_save kept), in ``dtype``."""
    plain = work.unload()  # drops the LoRA layers (and any fp32-residual wrappers with them)
    return plain.to(dtype)


def _modules_by_name(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from .naming import canonical_name

    return {canonical_name(n): m for n, m in model.named_modules() if n}


@torch.no_grad()
def _set_weights(model: torch.nn.Module, tgts, weights: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    modules = _modules_by_name(model)
    for name, t in tgts.items():
        module = modules[name]
        w = weights[name].to(module.weight.device, dtype)
        module.weight.data = (w.T if t.layer.fan_in_fan_out else w).contiguous()


def _save_tokenizer(name: str | None, out: Path) -> None:
    if not name:
        return
    try:
        from .models import load_tokenizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_tokenizer(name, local_files_only=True).save_pretrained(str(out))
    except Exception as exc:  # a tokenizer is a convenience here, not a requirement
        log.info("no tokenizer saved with the export: %s", exc)


def _measure(report: ExportReport, plain: torch.nn.Module, tgts, merged, candidate_weights, dtype, adapter_dir,
             tokenizer_name) -> None:
    """Drift of the export against the merged model, both in ``dtype`` (docs/design.md §4)."""
    from .models import (
        load_tokenizer,
        model_output,
        probe_inputs,
        relative_drift,
        top1_agreement,
    )

    tokenizer = None
    if tokenizer_name:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tokenizer = load_tokenizer(tokenizer_name, local_files_only=True)
        except Exception:
            tokenizer = None
    plain.eval()
    try:
        inputs = probe_inputs(plain, tokenizer)
    except Exception as exc:
        log.info("export drift not measured (no probe for this model): %s", exc)
        return
    _set_weights(plain, tgts, merged, dtype)
    reference, kind = model_output(plain, inputs, with_kind=True)
    _set_weights(plain, tgts, candidate_weights, dtype)
    candidate = PeftModel.from_pretrained(plain, str(adapter_dir))  # vanilla PEFT, as users load it
    candidate.eval()
    # PEFT keeps fp32 adapter weights in fp32 on a bf16 base; serving stacks (vLLM, TGI) cast
    # them to the model's dtype.  Report both; warn on the serving-stack figure.
    upcast = model_output(candidate, inputs)
    with torch.no_grad():
        for name, p in candidate.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(dtype)
    out = model_output(candidate, inputs)
    candidate.unload()
    report.drift = relative_drift(out, reference)
    report.drift_fp32_adapter = relative_drift(upcast, reference)
    if kind == "logits" and out.dim() == 3:  # an argmax over an encoder's hidden units means nothing
        report.top1_agreement = top1_agreement(out, reference)
    if report.drift > DRIFT_WARN:
        warnings.warn(
            f"the {report.layout} export differs from the merged model by {report.drift:.1%} "
            f"(max relative, {report.dtype}); the low-precision base cancels badly here. Export layout='merged' "
            "for this model, or keep the base in float32.", stacklevel=3)
    else:
        log.info("%s export drift vs merged (%s): %.2e", report.layout, report.dtype, report.drift)


__all__ = ["LAYOUTS", "ExportReport", "export"]


