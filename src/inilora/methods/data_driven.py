"""PEFT's data-driven inits (EVA, CorDA, LoRA-GA) and LoftQ, registered behind the bridge's contract.

EVA, CorDA and LoRA-GA run through PEFT's own code; what is here is the glue PEFT leaves to the
caller (its sub-config, the calibration pass) and the workarounds for what PEFT 0.21.2 does not
do on our inputs:

- CorDA's covariance hook (``peft/tuners/lora/corda.py``, ``calib_cov_distribution.hook``)
  squeezes dimension 0 and transposes, so it only works one example per forward: the calibration
  batches are fed one example at a time, padding cut off by the attention mask.
- EVA (``peft/tuners/lora/eva.py``, ``_get_eva_state_dict``) cycles the data until every layer's
  components converge and never stops otherwise: its forward is counted and stopped, with a
  one-line error, after :data:`EVA_MAX_PASSES` passes.
- LoftQ (``peft/utils/loftq_utils.py``, ``loftq_init``) moves the weight to ``"cuda"`` unconditionally
  and sets ``lora_A = R, lora_B = L`` without dividing by the LoRA scaling, so ``Q + s·LR ≠ W`` unless
  ``lora_alpha = r``.  It is implemented here (the same alternation, with bitsandbytes' own NF4 / int8
  quantizers, on the weight's device) and returns factors with ``s·B0A0 = LR``; the bridge's residual
  ``R = W0 − s·B0A0`` is then LoftQ's ``Q`` up to the SVD's rounding, and the model starts exactly
  where the base is.  Quantize R (``inilora export --layout residual`` then a 4-bit load, or a
  4-bit base initialised with another method) to get LoftQ's point.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import InitError
from .registry import InitResult, register, register_peft

#: EVA stops with an error after this many passes over the calibration batches without converging
EVA_MAX_PASSES = 50


@dataclass(frozen=True)
class PeftHooks:
    """How the bridge hands a PEFT-backed method its options and calibration data."""

    configure: Callable[[Any, Mapping[str, Any]], None]
    prepare: Callable[..., None] | None = None
    finish: Callable[..., None] | None = None


def _choice(opts: Mapping[str, Any], key: str, allowed: Sequence[Any], method: str) -> None:
    if opts[key] not in allowed:
        raise InitError(f"{method} option {key} must be one of {', '.join(map(str, allowed))}; got {opts[key]!r}.")


def _number(opts: Mapping[str, Any], key: str, method: str, lo: float, hi: float = math.inf) -> None:
    v = opts[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise InitError(f"{method} option {key} must be a number in [{lo}, {hi}], got {v!r}.")


def _flag(opts: Mapping[str, Any], key: str, method: str) -> None:
    if not isinstance(opts[key], bool):
        raise InitError(f"{method} option {key} must be true or false, got {opts[key]!r}.")


@contextlib.contextmanager
def _keeping_mode(model: torch.nn.Module) -> Iterator[None]:
    """PEFT's CorDA and LoRA-GA preprocessing switch the model's train/eval mode: give it back as it was."""
    training = model.training
    try:
        yield
    finally:
        model.train(training)


def _rows(batches: Sequence[Mapping[str, torch.Tensor]]):
    """Each example of each batch alone, padding cut off (CorDA's hook takes one example a forward)."""
    for batch in batches:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        for i in range(ids.shape[0]):
            keep = mask[i].bool() if mask is not None else torch.ones_like(ids[i], dtype=torch.bool)
            yield {k: v[i:i + 1][:, keep] if v.dim() == 2 and v.shape[1] == ids.shape[1] else v[i:i + 1]
                   for k, v in batch.items() if k != "labels"}


# ----------------------------------------------------------------------------------------- EVA

def _eva_check(opts):
    _number(opts, "rho", "eva", 1.0, 1000.0)
    _number(opts, "tau", "eva", 0.0, 1.0)
    for key in ("whiten", "adjust_scaling_factors", "use_label_mask"):
        _flag(opts, key, "eva")


def _eva_configure(config, opts):
    from peft import EvaConfig

    config.eva_config = EvaConfig(rho=float(opts["rho"]), tau=float(opts["tau"]), whiten=opts["whiten"],
                                  adjust_scaling_factors=opts["adjust_scaling_factors"],
                                  use_label_mask=opts["use_label_mask"])


def _eva_finish(peft_model, adapter, opts, batches):
    from peft import initialize_lora_eva_weights

    limit = EVA_MAX_PASSES * len(batches)
    calls = [0]

    def forward(model, inputs):
        calls[0] += 1
        if calls[0] > limit:
            raise InitError(f"eva: the activations' top components did not converge within {EVA_MAX_PASSES} passes "
                            f"over the {len(batches)} calibration batches; give more calibration examples or a lower "
                            "tau (option tau, e.g. 0.9).")
        return model(**{k: v for k, v in inputs.items() if k != "labels"})  # labels: for the mask only

    tokens = min(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    config = peft_model.peft_config[adapter]
    need = max(round(r * float(opts["rho"])) for r in [config.r, *config.rank_pattern.values()])
    if tokens < need:
        raise InitError(f"eva: every calibration batch needs at least r·rho = {need} tokens (the smallest has "
                        f"{tokens}); use larger batches or longer examples.")
    # labels only serve EVA's mask of ignored tokens; a classifier's (one per example) would break it
    batches = [{k: v for k, v in b.items() if k != "labels" or v.shape == b["input_ids"].shape} for b in batches]
    initialize_lora_eva_weights(peft_model, dataloader=batches, forward_fn=forward, adapter_name=adapter,
                                gather_distributed_inputs=False, show_progress_bar=False)


register_peft("eva", "eva", residual=False, calibration="activations",
              options={"rho": 2.0, "tau": 0.99, "whiten": False, "adjust_scaling_factors": True,
                       "use_label_mask": True},
              check=_eva_check, hooks=PeftHooks(_eva_configure, finish=_eva_finish),
              variants=({"rho": 1.0},),
              summary="EVA (PEFT): A = top right-singular vectors of each layer's input activations, B = 0; "
                      "rho > 1 redistributes ranks across layers; base unchanged")


# --------------------------------------------------------------------------------------- CorDA

def _corda_check(opts):
    _choice(opts, "corda_method", ("ipm", "kpm"), "corda")


def _corda_configure(config, opts):
    from peft.tuners.lora.config import CordaConfig

    config.corda_config = CordaConfig(corda_method=opts["corda_method"], verbose=False)


@torch.no_grad()
def _corda_prepare(model, config, opts, batches):
    from peft.tuners.lora.corda import preprocess_corda

    def run():
        for row in _rows(batches):
            model(**row)

    with _keeping_mode(model):
        preprocess_corda(model, config, run_model=run)


register_peft("corda", "corda", residual=True, calibration="activations", full_precision=True,
              options={"corda_method": "ipm"}, check=_corda_check,
              hooks=PeftHooks(_corda_configure, prepare=_corda_prepare), variants=({"corda_method": "kpm"},),
              summary="CorDA (PEFT): A, B from the SVD of W·C (C: input covariance); ipm adapts the principal, "
                      "kpm the minor components; frozen residual")


# ------------------------------------------------------------------------------------- LoRA-GA

def _ga_check(opts):
    _choice(opts, "direction", ("ArBr", "A2rBr", "ArB2r", "random"), "lora-ga")
    _choice(opts, "scale", ("stable", "weight_svd", "gd_scale", "unit"), "lora-ga")
    _number(opts, "stable_gamma", "lora-ga", 1e-12)


def _ga_configure(config, opts):
    from peft import LoraGAConfig

    config.lora_ga_config = LoraGAConfig(direction=opts["direction"], scale=opts["scale"],
                                         stable_gamma=opts["stable_gamma"])


def _ga_prepare(model, config, opts, batches):
    import inspect

    from peft.tuners.lora.loraga import preprocess_loraga

    if "labels" not in inspect.signature(model.forward).parameters:
        raise InitError(f"lora-ga needs gradients of a loss, and {type(model).__name__} computes none (no labels); "
                        "load the model with its head (e.g. AutoModelForSequenceClassification / ForCausalLM) or "
                        "use eva or corda, which need activations only.")

    def step():
        for batch in batches:
            out = model(**batch)
            loss = getattr(out, "loss", None)
            if loss is None:
                raise InitError("lora-ga needs a model that returns a loss: calibration batches with labels on a "
                                "model with a head (causal LM or sequence classifier).")
            loss.backward()

    with _keeping_mode(model), warnings.catch_warnings():
        # PEFT counts backward passes with a full backward hook on each target; only the weights need
        # gradients, so torch warns that the hook sees module outputs — harmless for a counter, noise for users
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        preprocess_loraga(model, config, train_step=step)


register_peft("lora-ga", "lora_ga", residual=True, calibration="gradients", full_precision=True,
              options={"direction": "ArB2r", "scale": "stable", "stable_gamma": 16}, check=_ga_check,
              hooks=PeftHooks(_ga_configure, prepare=_ga_prepare),
              summary="LoRA-GA (PEFT): A, B from the SVD of the full weight's gradient on the calibration "
                      "batches; frozen residual")


# --------------------------------------------------------------------------------------- LoftQ

def _quant_dequant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` through bitsandbytes' NF4 (blocksize 64, no double quantization, as PEFT's LoftQ) or
    row-wise int8 quantizer and back, in float32."""
    try:
        import bitsandbytes.functional as F
    except ImportError:
        raise InitError("loftq quantizes with bitsandbytes: pip install bitsandbytes (or pick another method).") from None

    if bits == 4:
        q, state = F.quantize_4bit(w.contiguous(), blocksize=64, compress_statistics=False, quant_type="nf4")
        return F.dequantize_4bit(q, state).float()
    cb, scb, _ = F.int8_vectorwise_quant(w.to(torch.float16).contiguous())
    return F.int8_vectorwise_dequant(cb, scb).float()


def _loftq_check(opts):
    _choice(opts, "bits", (4, 8), "loftq")
    iters = opts["iters"]
    if isinstance(iters, bool) or not isinstance(iters, int) or not 1 <= iters <= 100:
        raise InitError(f"loftq option iters must be a whole number in [1, 100], got {iters!r}.")


@register("loftq", check=_loftq_check, full_precision=True, variants=({"iters": 2},),
          summary="LoftQ: alternate NF4/int8 quantization Q of W and an SVD of W − Q; s·B0A0 = the rank-r part, "
                  "residual ≈ Q (quantize it for LoftQ's point); frozen residual")
def loftq(weights, ranks, scalings, rng_for, *, bits=4, iters=1) -> InitResult:
    factors = {}
    for name, w in weights.items():
        r, s = ranks[name], scalings[name]
        w32 = w.detach().float()
        res = w32
        for i in range(iters):
            res = w32 - _quant_dequant(res, bits)
            u, sv, vh = torch.linalg.svd(res, full_matrices=False)
            root = sv[:r].sqrt()
            left, right = u[:, :r] * root, root[:, None] * vh[:r]
            if i + 1 < iters:
                res = w32 - left @ right
        factors[name] = ((right / math.sqrt(s)).cpu().contiguous(), (left / math.sqrt(s)).cpu().contiguous())
    return InitResult(factors=factors, info={"loftq": {"bits": bits, "iters": iters}})
