"""The one registry of initialization methods.

Every method is a small function with one signature (docs/design.md §2)::

    init(weights, ranks, scalings, rng_for, **options) -> InitResult

``weights[name]`` is W0 oriented ``(out, in)`` (GPT-2's Conv1D already transposed),
``ranks``/``scalings`` are per matrix because PEFT's ``rank_pattern``/``alpha_pattern``
make them so, and ``rng_for(name)`` returns a fresh CPU generator for that matrix.
The function returns ``A0 (r, in)`` and ``B0 (out, r)`` in float32; the bridge turns
them into a residual model.  Methods that PEFT already implements are registered with
``peft_init`` and carried out by the bridge through PEFT itself.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InitError

Tensor = torch.Tensor
RngFor = Callable[[str], torch.Generator]


@dataclass
class InitResult:
    """What a method returns: the factors, and for fitted methods how the fit went."""

    factors: dict[str, tuple[Tensor, Tensor]]
    #: per matrix, for fitted methods: unscaled (U, P), loss curve, rel_error, optimum.
    fit: dict[str, Any] = field(default_factory=dict)
    #: resolved settings worth recording (e.g. sigma/mean per module type, cache hit).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    #: True when the method moves the base weight (R = W0 - s*B0*A0).
    residual: bool
    fn: Callable[..., InitResult] | None = None
    #: For PEFT-backed methods: the value of ``LoraConfig.init_lora_weights``.
    peft_init: str | bool | None = None
    #: accepted keyword options and their defaults (derived from the function's signature).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: a fitted method: it receives an :class:`~inilora.methods.fitting.InitContext` (fit cache,
    #: progress, biases) as ``context=``, and its work splits across ranks under torchrun
    #: (each rank fits a share; see ``fitting.cached_fit``) instead of running on rank 0 alone
    fitted: bool = False
    #: the data a data-driven method needs (docs/design.md §2's signature gains ``calibration``): None, or
    #: ``"activations"`` (forward passes) / ``"gradients"`` (forward and backward: batches need labels)
    calibration: str | None = None
    #: the method reads the base weights as numbers (an SVD, a quantization): a 4-bit/8-bit base
    #: is refused before any work instead of being read as packed bytes
    full_precision: bool = False
    #: PEFT-backed methods with options: ``hooks.configure(config, opts)`` sets PEFT's sub-config,
    #: ``hooks.prepare(model, config, opts, batches)`` runs before injection (CorDA, LoRA-GA),
    #: ``hooks.finish(peft_model, adapter, opts, batches)`` after it (EVA)
    hooks: Any = None
    #: option sets worth exercising besides the defaults (the contract tests each)
    variants: tuple[Mapping[str, Any], ...] = ()
    #: options for a representative cheap run (tests, smoke checks): few fit steps, a value the method requires
    example_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def peft_backed(self) -> bool:
        return self.fn is None

    @property
    def needs(self) -> str:
        """What the method needs besides a LoRA config, for ``inilora methods``."""
        parts = []
        if self.calibration:
            parts.append(f"calibration data ({self.calibration})")
        if self.full_precision:
            parts.append("a full-precision base")
        return ", ".join(parts) or "-"

    #: validates resolved options without weights (raises InitError); :data:`DRY_RUN`: call ``fn``
    #: on one 2×2 matrix (microseconds for the random methods, and it checks every option); None: names only
    check: Callable[[Mapping[str, Any]], None] | str | None = None

    def resolve_options(self, given: Mapping[str, Any], *, check: bool = True) -> dict[str, Any]:
        """Defaults overlaid with ``given``, checked before any weight is read: unknown names
        fail with the valid list, bad values (unless ``check=False``) with the option's name."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise InitError(
                f"method {self.name!r} does not take option(s) {', '.join(unknown)}; "
                f"its options are: {valid}."
            )
        opts = {**self.options, **given}
        if check and self.check is not None:
            self._check(opts)
        return opts

    def _check(self, opts: Mapping[str, Any]) -> None:
        try:
            if self.check != DRY_RUN:
                self.check(opts)
            else:
                w = {"probe": torch.zeros(2, 2)}
                self.fn(w, {"probe": 1}, {"probe": 1.0}, lambda _: torch.Generator().manual_seed(0), **opts)
        except InitError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in opts.items() if v is not None)
            raise InitError(f"method {self.name!r}: invalid option value ({shown}): {exc}") from None


#: ``register(..., check=DRY_RUN)``: options are checked by running the method on a 2×2 matrix
DRY_RUN = "dry-run"
#: what the bridge passes itself (not a user option): the fitted methods' InitContext
BRIDGE_OPTIONS = frozenset({"context"})
_REGISTRY: dict[str, Method] = {}
_PISSA_NITER = re.compile(r"^pissa_niter_(\d+)$")


def register(name: str, *, summary: str, residual: bool = True, options: Mapping[str, Any] | None = None,
             check: Callable[[Mapping[str, Any]], None] | str | None = None, fitted: bool = False,
             calibration: str | None = None, full_precision: bool = False,
             variants: tuple[Mapping[str, Any], ...] = (), example_options: Mapping[str, Any] | None = None):
    """Decorator: add ``fn`` to the registry under ``name``.

    Its options are the keyword-only parameters of ``fn`` with their defaults (``options``
    overrides that, for a function taking ``**kwargs``); ``check`` validates them without
    weights (a function of the options, or :data:`DRY_RUN`); ``fitted=True`` declares a fitted
    method (see :class:`Method`): the bridge then hands it an ``InitContext``.
    """

    def wrap(fn: Callable[..., InitResult]) -> Callable[..., InitResult]:
        opts = dict(options) if options is not None else _signature_options(fn)
        _add(Method(name=name, summary=summary, residual=residual, fn=fn, options=opts, check=check,
                    fitted=fitted, calibration=_calibration_kind(calibration), full_precision=full_precision,
                    variants=tuple(variants), example_options=dict(example_options or {})))
        return fn

    return wrap


def _signature_options(fn: Callable[..., Any]) -> dict[str, Any]:
    """Keyword-only parameters and their defaults, less the bridge's ``context``."""
    import inspect

    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in BRIDGE_OPTIONS}


def register_peft(name: str, peft_init: str | bool, *, summary: str, residual: bool,
                  options: Mapping[str, Any] | None = None, check: Callable[[Mapping[str, Any]], None] | None = None,
                  calibration: str | None = None, full_precision: bool = False, hooks: Any = None,
                  variants: tuple[Mapping[str, Any], ...] = ()) -> None:
    """Register a method that PEFT itself carries out (``init_lora_weights=peft_init``); ``options``
    (checked by ``check``) reach PEFT through ``hooks.configure``."""
    _add(Method(name=name, summary=summary, residual=residual, peft_init=peft_init, options=dict(options or {}),
                check=check, calibration=_calibration_kind(calibration), full_precision=full_precision, hooks=hooks,
                variants=tuple(variants)))


CALIBRATION_KINDS = ("activations", "gradients")


def _calibration_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in CALIBRATION_KINDS:
        raise ValueError(f"calibration must be None or one of {CALIBRATION_KINDS}, got {kind!r}")
    return kind


def _add(method: Method) -> None:
    if method.name in _REGISTRY:
        raise ValueError(f"init method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method


def get_method(name: str) -> Method:
    """Look a method up by name; ``pissa_niter_N`` is PiSSA with N fast-SVD iterations."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    match = _PISSA_NITER.match(name)
    if match:
        base = _REGISTRY["pissa"]
        return Method(name=name, summary=f"{base.summary} (randomized SVD, {match.group(1)} iterations)",
                      residual=True, peft_init=name, full_precision=True)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InitError(
        f"unknown init method {name!r}.{hint} Known methods: {', '.join(available_methods())} "
        "(and pissa_niter_N). `inilora methods` lists them with descriptions."
    )


def available_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return list(_REGISTRY)


def methods() -> list[Method]:
    return list(_REGISTRY.values())
