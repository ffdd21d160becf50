"""The marks an adapter carries in its saved files, so it is never loaded silently wrong.

Every adapter inilora makes saves ``inilora.json`` (``SIDECAR``) with the fingerprint of its base's
targeted weights; a non-residual one is otherwise a plain PEFT adapter.  For a residual one:

Saved ``adapter_config.json`` files carry a marker in ``init_lora_weights`` that vanilla PEFT refuses
("Unknown initialization"), so the adapter can never be loaded on the original base by mistake;
Trainer's resume (``load_adapter`` into the live model) still works.  The *live* configs hold
``init_lora_weights=False``, so code that builds new adapters from them (TRL's
``add_adapter("ref", ...)``) neither raises nor re-runs an init.  A0, B0 ride along as a second,
frozen and inactive adapter (``INIT_ADAPTER``); ``inilora.json`` (``SIDECAR``) records the method,
its settings and the base's fingerprint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from peft import LoraConfig

from ..cache import atomic_write_json

log = logging.getLogger(__name__)


INIT_ADAPTER = "inilora_init"


SIDECAR = "inilora.json"


MARKER = "inilora-residual"


FORMAT = 1


_RESERVED = {INIT_ADAPTER, "ref"}


def marker(method: str) -> str:
    """The ``init_lora_weights`` value written to saved configs; PEFT refuses it by name."""
    return f"{MARKER}({method}): load with inilora.load() or convert with `inilora export`"


def is_marked(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(MARKER)


class InitLoraConfig(LoraConfig):
    """A LoraConfig whose *saved* form is marked; its live ``init_lora_weights`` is False.

    Only :meth:`save_pretrained` differs from PEFT's: it writes the marker and the
    ``inilora.json`` sidecar, both atomically.  Instances are made by swapping the
    class of an existing LoraConfig, so every field stays exactly as the user set it.
    """

    _inilora: dict

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        auto_mapping = kwargs.pop("auto_mapping_dict", None)
        out = {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.to_dict().items()}
        if self._inilora.get("residual", True):  # a non-residual adapter loads in vanilla PEFT as saved
            out["init_lora_weights"] = marker(self._inilora["method"])
        if auto_mapping is not None:
            out["auto_mapping"] = auto_mapping
        directory = Path(save_directory)
        atomic_write_json(directory / "adapter_config.json", out)
        atomic_write_json(directory / SIDECAR, self._inilora)


def _mark(config: LoraConfig, meta: dict) -> None:
    config.init_lora_weights = False
    config.__class__ = InitLoraConfig
    config._inilora = meta


def _record(config: LoraConfig, meta: dict) -> None:
    """A non-residual adapter's config: saved unmarked (vanilla PEFT loads it), with the sidecar that
    records the base's fingerprint, so inilora's own load and export can refuse another base."""
    config.__class__ = InitLoraConfig
    config._inilora = {**meta, "residual": False}
