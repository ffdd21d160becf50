"""Bottleneck adapters (paper Table 1's "Adapter" rows), registered as training modes beside ``full`` and ``bitfit``.

AdapterHub's ``adapters`` package pins transformers 4.57, which this stack cannot use, so the two
classic placements are built here, on BERT-style encoders (BERT, RoBERTa, MiniLM: every layer
has ``attention.output.dense`` and ``output.dense``):

- **Houlsby** (Houlsby et al., 2019): an adapter after the attention block's output projection
  and one after the feed-forward block's output projection, each before that block's residual
  connection and LayerNorm;
- **Pfeiffer** (Pfeiffer et al., 2021): one adapter, after the feed-forward output projection.

An adapter is ``h + up(f(down(h)))``: a down-projection to ``size`` units, a nonlinearity, an
up-projection back, and a skip connection.  The up-projection starts at zero, so the model
computes exactly what it did before training; the down-projection starts N(0, 0.01²), Houlsby's
near-identity init.  Only the adapters (and, for NLU, the new classifier head) train.  Default
``size`` 64 gives the LoRA paper's larger adapter rows (RoBERTa-large: Houlsby ≈ 6 M, Pfeiffer
≈ 3 M); ``size`` 8 / 16 the smaller ones (0.8 M).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InitError
from .modes import Mode, register_mode

MODES = ("houlsby", "pfeiffer")
#: the sublayer output projections each placement adapts, relative to one encoder layer
PLACES = {"houlsby": ("attention.output.dense", "output.dense"), "pfeiffer": ("output.dense",)}
DEFAULTS: dict[str, Any] = {"size": 64, "nonlinearity": "relu", "init_std": 1e-2}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """``h + up(f(down(h)))``; zero up-projection at init (the identity)."""

    def __init__(self, hidden: int, size: int, nonlinearity: str, init_std: float) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = _ACTIVATIONS[nonlinearity]()
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """A sublayer's output projection followed by its adapter (the projection stays frozen)."""

    def __init__(self, projection: nn.Linear, adapter: Bottleneck) -> None:
        super().__init__()
        self.projection = projection
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.projection(x))


def check_options(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    """The mode's options (``size``, ``nonlinearity``, ``init_std``) with defaults, checked."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InitError(f"training mode {mode!r} does not take option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(DEFAULTS)}.")
    opts = {**DEFAULTS, **options}
    size = opts["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InitError(f"{mode}: size must be a whole number ≥ 1, got {size!r}.")
    if opts["nonlinearity"] not in _ACTIVATIONS:
        raise InitError(f"{mode}: nonlinearity must be one of {', '.join(_ACTIVATIONS)}, got {opts['nonlinearity']!r}.")
    std = opts["init_std"]
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise InitError(f"{mode}: init_std must be a positive number, got {std!r}.")
    return opts


def add_adapters(model: nn.Module, mode: str, options: dict[str, Any] | None = None) -> list[str]:
    """Insert ``mode``'s adapters into every encoder layer of ``model`` (in place); freeze everything
    else except a sequence classifier's head.  Returns the adapted projections' names."""
    if mode not in MODES:
        raise InitError(f"unknown bottleneck mode {mode!r}; modes: {', '.join(MODES)}.")
    opts = check_options(mode, dict(options or {}))
    layers = [(n, m) for n, m in model.named_modules() if _is_encoder_layer(m)]
    if not layers:
        raise InitError(f"{mode} adapters need a BERT-style encoder (layers with attention.output.dense and "
                        f"output.dense); {type(model).__name__} has none. Use a LoRA method or full/bitfit.")
    for p in model.parameters():
        p.requires_grad_(False)
    done = []
    for lname, layer in layers:
        for place in PLACES[mode]:
            parent_name, child = place.rsplit(".", 1)
            parent = layer.get_submodule(parent_name)
            proj = getattr(parent, child)
            adapter = Bottleneck(proj.out_features, opts["size"], opts["nonlinearity"], opts["init_std"])
            adapter.to(device=proj.weight.device, dtype=proj.weight.dtype)
            setattr(parent, child, WithAdapter(proj, adapter))
            done.append(f"{lname}.{place}")
    for name, module in model.named_children():  # a sequence classifier's new head learns too
        if name in ("classifier", "score"):
            for p in module.parameters():
                p.requires_grad_(True)
    return done


def _is_encoder_layer(module: nn.Module) -> bool:
    try:
        attn = module.get_submodule("attention.output.dense")
        ffn = module.get_submodule("output.dense")
    except AttributeError:
        return False
    return isinstance(attn, nn.Linear) and isinstance(ffn, nn.Linear)


STATE = "bottleneck.safetensors"
META = "bottleneck.json"


def save(model: nn.Module, directory, mode: str, options: dict[str, Any] | None = None) -> None:
    """What a bottleneck run trained (the adapters and the head, by parameter name) and how to rebuild
    it; written atomically, so a folder holds a whole adapter or none."""
    from pathlib import Path

    from safetensors.torch import save_file

    from ..fileio import atomic_write, atomic_write_json

    directory = Path(directory)
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    atomic_write(directory / STATE, lambda tmp: save_file(state, tmp))
    atomic_write_json(directory / META, {"mode": mode, "options": check_options(mode, dict(options or {}))})


def load(model: nn.Module, directory) -> nn.Module:
    """``model`` (the same base, fresh) with the saved adapters inserted and their weights loaded."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / META).read_text())
    add_adapters(model, meta["mode"], meta["options"])
    state = load_file(str(directory / STATE))
    missing = sorted(set(state) - {n for n, _ in model.named_parameters()})
    if missing:
        raise InitError(f"{directory} holds parameters this model does not have ({missing[:3]}...): another base.")
    model.load_state_dict(state, strict=False)
    return model


def _mode(mode: str, summary: str) -> Mode:
    def apply(model: nn.Module, options: dict[str, Any], kind: str) -> dict[str, Any]:
        return {"adapters": len(add_adapters(model, mode, options)), "adapter_options": options}

    return Mode(mode, summary, apply, options=DEFAULTS, check=lambda opts: check_options(mode, opts), kinds=("nlu",),
                kinds_reason="adapters are built for the encoder (NLU) models, as in the paper's Table 1; "
                             "use a LoRA method or full for a causal LM.",
                save=lambda model, directory, options: save(model, directory, mode, options),
                trains=lambda name: ".adapter." in name)


register_mode(_mode("houlsby", "Houlsby bottleneck adapters after the attention and feed-forward blocks"))
register_mode(_mode("pfeiffer", "Pfeiffer bottleneck adapters after the feed-forward block"))

__all__ = ["DEFAULTS", "MODES", "Bottleneck", "add_adapters", "check_options", "load", "save"]
