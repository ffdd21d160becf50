"""What trains: a LoRA adapter made by an init method of the registry, or a training mode.

Training modes are a registry like the init methods (:mod:`inilora.methods`): ``full`` fine-tunes
every parameter; ``bitfit`` only the biases (plus the classifier head for NLU, which is new and
must learn); ``houlsby`` / ``pfeiffer`` (registered by :mod:`.bottleneck`) insert bottleneck
adapters and train those (plus the head).  :func:`resolve` turns a config's ``method`` into its
registry entry once — a :class:`Mode`, or an init :class:`~inilora.methods.Method` — and that
entry is what the pipeline (and, for LoRA, :func:`inilora.get_peft_model`) is handed from then on.
LoRA runs go through the bridge, so a residual method trains on its residual base with A0/B0
frozen beside it (docs/design.md §4).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from ..config import TrainConfig
from ..errors import InitError
from ..methods import Method, get_method

if TYPE_CHECKING:
    from peft import LoraConfig

#: PEFT task types by pipeline kind: SEQ_CLS also makes PEFT train and save the classifier head
TASK_TYPES = {"nlu": "SEQ_CLS", "nlg": "CAUSAL_LM"}


@dataclass(frozen=True)
class Mode:
    """A way to train that is not a LoRA init (paper Table 1's non-LoRA rows)."""

    name: str
    summary: str
    #: ``apply(model, options, kind) -> info``: set up ``model`` in place (what trains, modules added)
    apply: Callable[[torch.nn.Module, dict[str, Any], str], dict[str, Any]]
    #: accepted ``method_options`` and their defaults
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ``check(options) -> options``: validates resolved options (raises InitError)
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: the pipeline kinds it trains ("nlu", "nlg"), refused before any model loads otherwise
    kinds: tuple[str, ...] = ("nlu", "nlg")
    #: why another kind is refused (one sentence, shown after the mode's name)
    kinds_reason: str = ""
    #: ``save(model, directory, options)``: what trained, written to the run's ``adapter/``
    save: Callable[[torch.nn.Module, Path, dict[str, Any]], None] | None = None
    #: a guard: the parameter names (besides a classifier head) allowed to train; None: any
    trains: Callable[[str], bool] | None = None

    def resolve_options(self, given: Mapping[str, Any], *, check: bool = True) -> dict[str, Any]:
        """Defaults overlaid with ``given``; unknown names (and, unless ``check=False``, bad values)
        fail naming the option — the same contract as :meth:`Method.resolve_options`."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            if not self.options:
                raise InitError(f"method {self.name!r} is a training mode and takes no method_options; "
                                f"got {', '.join(unknown)}.")
            raise InitError(f"training mode {self.name!r} does not take option(s) {', '.join(unknown)}; "
                            f"its options are: {', '.join(self.options)}.")
        opts = {**self.options, **given}
        return self.check(opts) if (check and self.check is not None) else opts

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise InitError(f"{self.name}: {self.kinds_reason or 'not for this kind of model'}")


#: what a config's ``method`` resolves to: a training mode, or an init method (a LoRA run)
Trained = Union[Mode, Method]
_MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Add a training mode; its name must not be an init method's (one name, one meaning)."""
    if mode.name in _MODES:
        raise ValueError(f"training mode {mode.name!r} is registered twice")
    _MODES[mode.name] = mode
    return mode


def available_modes() -> list[str]:
    """Names of the training modes, in registration order."""
    return list(_MODES)


def resolve(name: str) -> Trained:
    """The registry entry ``name`` stands for: a training mode, else an init method (LoRA).  The one
    lookup of a run's method; an unknown name lists the close ones of both registries."""
    if name in _MODES:
        return _MODES[name]
    try:
        return get_method(name)
    except InitError as exc:
        close = difflib.get_close_matches(name, list(_MODES), n=2)
        hint = f" Did you mean the training mode {', '.join(repr(c) for c in close)}?" if close else ""
        raise InitError(f"{exc}{hint} Training modes: {', '.join(_MODES)}.") from None


def is_lora(spec: Trained) -> bool:
    return isinstance(spec, Method)


def lora_config(config: TrainConfig, kind: str) -> LoraConfig:
    """The run's LoraConfig: alpha defaults to r (s = 1); targets default to PEFT's per-architecture
    query/value projections (the bridge fills them in)."""
    from ..chatter import import_peft  # here: resolving a method (a grid's check) needs no peft

    LoraConfig = import_peft().LoraConfig  # noqa: N806 - the class, imported quietly

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


def apply_mode(model: torch.nn.Module, config: TrainConfig, kind: str,
               spec: Trained | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` ready to train under ``spec`` (the resolved ``config.method``; resolved here when
    not given), and a report of what was done."""
    spec = resolve(config.method) if spec is None else spec
    if isinstance(spec, Mode):
        spec.check_kind(kind)
        info = spec.apply(model, spec.resolve_options(config.method_options), kind)
        return model, {"mode": spec.name, "residual": False, **info}
    from ..bridge import get_peft_model

    # shared_fit (the paper fitted IniLoRA once): every training seed starts from the seed-0 fit
    init_seed = 0 if config.shared_fit and spec.fitted else config.seed
    batches = None
    if spec.calibration and config.calibration.spec:
        from .calibration import from_task
        from ..models import load_tokenizer

        batches = from_task(config.calibration.spec, load_tokenizer(config.model), seed=init_seed)
    peft_model = get_peft_model(model, lora_config(config, kind), spec, seed=init_seed, calibration=batches,
                                **config.method_options)
    report = getattr(peft_model, "inilora_report", None)
    info = {"mode": "lora", "residual": bool(getattr(report, "residual", False)), "init_seed": init_seed}
    if report is not None and report.info.get("approx_loss"):
        info["approx_loss"] = report.info["approx_loss"]  # mean fit MSE vs iteration, for the report
    return peft_model, info


def trainable_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameter names → sizes (what the optimizer updates)."""
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------
# full and bitfit (the bottleneck adapters register themselves in .bottleneck)


def _full(model: torch.nn.Module, options: dict[str, Any], kind: str) -> dict[str, Any]:
    for p in model.parameters():
        p.requires_grad_(True)
    return {}


def _bitfit(model: torch.nn.Module, options: dict[str, Any], kind: str) -> dict[str, Any]:
    heads = tuple(f"{h}." for h in head_names(model)) if kind == "nlu" else ()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias") or name.startswith(heads))
    if not any(p.requires_grad and n.endswith("bias") for n, p in model.named_parameters()):
        raise InitError(f"bitfit trains the bias terms, but {type(model).__name__} has none "
                        "(LLaMA-style models are bias-free); choose a LoRA method or full.")
    return {}


register_mode(Mode("full", "full fine-tuning: every parameter trains", _full))
register_mode(Mode("bitfit", "BitFit: only the bias terms train (plus a classifier head)", _bitfit))
