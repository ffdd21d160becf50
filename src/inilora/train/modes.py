"""What trains: a LoRA adapter made by an init method of the registry, or a non-LoRA mode.

``full`` fine-tunes every parameter; ``bitfit`` only the biases (plus the classifier head for
NLU, which is new and must learn); ``houlsby`` / ``pfeiffer`` insert bottleneck adapters
(:mod:`.bottleneck`) and train those (plus the head). LoRA runs go through :func:`inilora.get_peft_model`, so a
residual method trains on its residual base with A0/B0 frozen beside it (SPEC §4).
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig

from ..config import TrainConfig
from ..errors import InitError
from . import bottleneck

#: PEFT task types by pipeline kind: SEQ_CLS also makes PEFT train and save the classifier head
TASK_TYPES = {"nlu": "SEQ_CLS", "nlg": "CAUSAL_LM"}


def lora_config(config: TrainConfig, kind: str) -> LoraConfig:
    """The run's LoraConfig: alpha defaults to r (s = 1); targets default to PEFT's per-architecture
    query/value projections (the bridge fills them in)."""
    lora = config.lora
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets) if lora.targets else None,
        use_rslora=lora.use_rslora,
        task_type=TASK_TYPES[kind],
    )


def head_names(model: torch.nn.Module) -> list[str]:
    """Top-level classification head modules (``classifier``, ``score``) of a sequence classifier."""
    return [n for n, _ in model.named_children() if n in ("classifier", "score")]


def apply_mode(model: torch.nn.Module, config: TrainConfig, kind: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` ready to train under ``config.method``, and a report of what was done."""
    if config.is_lora:
        from ..bridge import get_peft_model
        from ..methods import get_method

        # shared_fit (the paper fitted IniLoRA once): every training seed starts from the seed-0 fit
        init_seed = 0 if config.shared_fit and get_method(config.method).fitted else config.seed
        batches = None
        if get_method(config.method).calibration and config.calibration.spec:
            from ..calibration import from_task
            from ..models import load_tokenizer

            batches = from_task(config.calibration.spec, load_tokenizer(config.model), seed=init_seed)
        peft_model = get_peft_model(model, lora_config(config, kind), config.method, seed=init_seed,
                                    calibration=batches, **config.method_options)
        report = getattr(peft_model, "inilora_report", None)
        info = {"mode": "lora", "residual": bool(getattr(report, "residual", False)), "init_seed": init_seed}
        if report is not None and report.info.get("approx_loss"):
            info["approx_loss"] = report.info["approx_loss"]  # mean fit MSE vs iteration, for the report
        return peft_model, info
    if config.method in bottleneck.MODES:
        if kind != "nlu":
            raise InitError(f"{config.method} adapters are built for the encoder (NLU) models, as in the paper's "
                            "Table 1; use a LoRA method or full for a causal LM.")
        places = bottleneck.add_adapters(model, config.method, config.method_options)
        return model, {"mode": config.method, "residual": False, "adapters": len(places),
                       "adapter_options": bottleneck.check_options(config.method, config.method_options)}
    if config.method_options:
        raise InitError(f"method {config.method!r} is a training mode and takes no method_options; "
                        f"got {', '.join(config.method_options)}.")
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif config.method == "bitfit":
        heads = tuple(f"{h}." for h in head_names(model)) if kind == "nlu" else ()
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias") or name.startswith(heads))
        if not any(p.requires_grad and n.endswith("bias") for n, p in model.named_parameters()):
            raise InitError(f"bitfit trains the bias terms, but {type(model).__name__} has none "
                            "(LLaMA-style models are bias-free); choose a LoRA method or full.")
    else:  # pragma: no cover - TRAINING_MODES and this function move together
        raise InitError(f"unknown training mode {config.method!r}")
    return model, {"mode": config.method, "residual": False}


def trainable_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameter names → sizes (what the optimizer updates)."""
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
