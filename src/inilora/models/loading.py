"""Loading by hub name, local path or ``embedded:`` alias, with errors that say what to do.

Hub names are handed to transformers unchanged (they are the defaults users get); without a
network such a load fails, and the error names the offline ``embedded:`` equivalent.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .embedded import EMBEDDED_ALIASES, config_before_copy, embedded_name, is_embedded, resolve

log = logging.getLogger("inilora.models")

KINDS = ("auto", "causal-lm", "encoder", "sequence-classification")


def _is_offline_error(exc: BaseException) -> bool:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 20:
        names = {c.__name__ for c in type(e).__mro__}
        if names & {
            "LocalEntryNotFoundError",
            "OfflineModeIsEnabled",
            "ConnectionError",
            "ConnectError",
            "ConnectTimeout",
            "gaierror",
            "TimeoutException",
        }:
            return True
        msg = str(e).lower()
        if "couldn't connect" in msg or "offline mode" in msg or "outgoing traffic has been disabled" in msg:
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _offline_hint(name: str, exc: BaseException) -> OSError:
    alias = embedded_name(name)
    if alias is not None:
        tip = (
            f"The same model ships offline as {alias!r}: use that name instead "
            f"(e.g. load_model({alias!r}))."
        )
    else:
        tip = "Offline models available here: " + ", ".join(
            f"{a!r} (= {h})" for a, h in EMBEDDED_ALIASES.items()
        ) + "; a local folder path also works."
    return OSError(
        f"Could not load {name!r} from the Hugging Face Hub: no network, or offline mode "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). {tip}"
    )


def call_loader(fn, name: str, path: str, *args, **kwargs):
    """Call a transformers loader (``fn(path, ...)``) for the model the user named ``name``; turn an offline/connection failure into a helpful OSError."""
    try:
        return fn(path, *args, **kwargs)
    except Exception as e:
        if not Path(str(path)).exists() and _is_offline_error(e):
            raise _offline_hint(name, e) from e
        raise


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        d = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(d, torch.dtype):
            return d
    raise ValueError(f"Unknown dtype {dtype!r}: use a torch.dtype, a name like 'bfloat16', or 'auto'.")


_CONFIG_KWARGS = ("revision", "token", "local_files_only", "trust_remote_code", "cache_dir", "subfolder")


def is_causal_config(config) -> bool:
    """Decoder configs: ``architectures`` name a ``...ForCausalLM`` (or GPT-2's ``...LMHeadModel``)."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return True
    # GPT2LMHeadModel & co.; BertLMHeadModel / RobertaForCausalLM-style heads need is_decoder
    if any(a.endswith("LMHeadModel") for a in archs):
        return getattr(config, "model_type", "") not in ("bert", "roberta") or bool(
            getattr(config, "is_decoder", False)
        )
    return False


def model_config(name_or_path: str):
    """The model's transformers config alone (no weights): what a check before the load reads."""
    return call_loader(AutoConfig.from_pretrained, name_or_path, resolve(name_or_path))


def load_model(
    name_or_path: str,
    *,
    kind: str = "auto",
    dtype: torch.dtype | str | None = None,
    num_labels: int | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model by hub name, local path or ``embedded:`` alias, in eval mode.

    ``kind``: ``"causal-lm"`` (AutoModelForCausalLM), ``"encoder"`` (bare AutoModel, whose
    output is ``last_hidden_state``), ``"sequence-classification"``
    (AutoModelForSequenceClassification, a fresh head with ``num_labels`` unless the checkpoint
    has one) or ``"auto"``: a causal LM when the config's ``architectures`` name a
    ``...ForCausalLM`` / ``...LMHeadModel`` class, a sequence classifier when they name
    ``...ForSequenceClassification`` or ``num_labels`` is given, else the bare encoder.

    ``dtype=None``: fp32 for the embedded models (what GGUF dequantisation gives; never cast down
    unless asked); for other models transformers' default, which in transformers 5 is the
    checkpoint's *stored* dtype (bf16 for most recent LLMs). Pass ``dtype=torch.float32`` to
    be sure. Other keyword arguments go to ``from_pretrained`` (``device_map``, ``revision``, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if num_labels is not None and kind not in ("auto", "sequence-classification"):
        raise ValueError(f"num_labels applies only to kind='sequence-classification', not {kind!r}.")
    dtype = _parse_dtype(dtype)
    if dtype is None and is_embedded(name_or_path):
        dtype = torch.float32
    path = resolve(name_or_path)

    config = kwargs.pop("config", None)
    if config is None:
        cfg_kwargs = {k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
        if num_labels is not None:
            cfg_kwargs["num_labels"] = num_labels
        config = call_loader(AutoConfig.from_pretrained, name_or_path, path, **cfg_kwargs)
    elif num_labels is not None:
        config.num_labels = num_labels

    cls = _model_class(config, kind, num_labels)
    if dtype is not None:
        kwargs["dtype"] = dtype
    from ..chatter import quiet

    with quiet():
        model = call_loader(cls.from_pretrained, name_or_path, path, config=config, **kwargs)
    model.eval()
    return model


def _model_class(config, kind: str, num_labels: int | None):
    if kind == "auto":
        archs = getattr(config, "architectures", None) or []
        if is_causal_config(config):
            kind = "causal-lm"
        elif num_labels is not None or any(a.endswith("ForSequenceClassification") for a in archs):
            kind = "sequence-classification"
        else:
            kind = "encoder"
    return {
        "causal-lm": AutoModelForCausalLM,
        "encoder": AutoModel,
        "sequence-classification": AutoModelForSequenceClassification,
    }[kind]


def load_skeleton(name_or_path: str, *, kind: str = "auto") -> PreTrainedModel | None:
    """The model's modules with no weights (on the meta device), built from its config alone.

    Rank, targets and shapes are checked against it before the real load.  The embedded
    SmolLM2 before its plain copy exists: the config is read from the GGUF's header (a few
    seconds, where building the copy takes 15-30), and nothing is written.  None for an
    architecture that cannot be built without weights (its checks then run after the load).
    """
    config = config_before_copy(name_or_path)
    if config is None:
        config = call_loader(AutoConfig.from_pretrained, name_or_path, resolve(name_or_path))
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _model_class(config, kind, None).from_config(config)
    except Exception as exc:  # noqa: BLE001 - an architecture that cannot be built weightless: check after the load
        log.debug("inilora: no weightless skeleton of %s (%s); its targets are checked after loading", name_or_path, exc)
        return None


def load_tokenizer(name_or_path: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a hub name, local path or ``embedded:`` alias."""
    path = resolve(name_or_path)
    return call_loader(AutoTokenizer.from_pretrained, name_or_path, path, **kwargs)
