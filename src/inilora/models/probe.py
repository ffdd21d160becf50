"""The fixed probe batch and the drift metrics of docs/design.md §1.

Output preservation is measured as ``max|Δout| / max|out|`` over one fixed batch: 2 sequences ×
32 tokens of fixed English text through the model's tokenizer, or random ids (seed 1) for tiny
random models that have no tokenizer.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

#: Fixed English text of the probe batch; each sentence is well over 32 tokens in every
#: tokenizer used here, so ``probe_inputs`` truncates and never pads.
PROBE_TEXT: tuple[str, str] = (
    "The old lighthouse keeper climbed the narrow stairs every evening at sunset, carrying a "
    "small lamp and a notebook in which he recorded the weather, the ships that passed along "
    "the rocky coast, and the strange lights he sometimes saw far out over the dark water.",
    "In the spring of that year, the village council decided to rebuild the stone bridge over "
    "the river, because the heavy autumn floods had washed away its eastern arch and the "
    "farmers could no longer bring their grain and vegetables to the market in town.",
)



def random_probe_ids(vocab_size: int, seq_len: int = 32, batch: int = 2) -> Tensor:
    """Random ids in ``[0, vocab_size)`` from ``torch.Generator().manual_seed(1)``: the probe of a
    model without a tokenizer (and the check of the embedded copy)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=g)


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _vocab_size(model) -> int:
    config = model.config
    vocab = getattr(config, "vocab_size", None)
    if vocab is None and hasattr(config, "get_text_config"):
        vocab = getattr(config.get_text_config(), "vocab_size", None)
    if not vocab:
        raise ValueError("The model's config has no vocab_size: pass a tokenizer to probe_inputs.")
    return int(vocab)


def probe_inputs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    seq_len: int = 32,
    batch: int = 2,
) -> dict[str, Tensor]:
    """The fixed probe batch of docs/design.md §1: ``input_ids`` and ``attention_mask``, ``batch × seq_len``.

    With a tokenizer: :data:`PROBE_TEXT` (cycled if ``batch > 2``) through it, truncated to
    exactly ``seq_len`` tokens (special tokens as the tokenizer adds them). Without one: random
    ids in ``[0, model.config.vocab_size)`` from ``torch.Generator().manual_seed(1)`` and an
    all-ones mask. Tensors are on the model's device.
    """
    if seq_len < 1 or batch < 1:
        raise ValueError("seq_len and batch must be positive.")
    device = _model_device(model)
    if tokenizer is None:
        ids = random_probe_ids(_vocab_size(model), seq_len, batch)
        mask = torch.ones_like(ids)
    else:
        texts = [PROBE_TEXT[i % len(PROBE_TEXT)] for i in range(batch)]
        rows, masks = [], []
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=seq_len)["input_ids"]
            enc = list(enc)[:seq_len]
            n = len(enc)
            if n < seq_len:  # only for seq_len longer than the probe text
                pad = tokenizer.pad_token_id
                if pad is None:
                    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
                enc = enc + [pad] * (seq_len - n)
            rows.append(enc)
            masks.append([1] * n + [0] * (seq_len - n))
        ids = torch.tensor(rows, dtype=torch.long)
        mask = torch.tensor(masks, dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def model_output(model: torch.nn.Module, inputs: dict[str, Tensor], *, with_kind: bool = False):
    """Run ``model(**inputs)`` under ``torch.no_grad()``; return the logits if the output has
    them, else ``last_hidden_state`` (bare encoders) — detached, in the dtype the model computed.
    ``with_kind=True`` returns ``(tensor, "logits" | "last_hidden_state" | "output")``: a top-1
    agreement means something for logits only.
    bitsandbytes layers are not repacked for the CPU by this forward (see ``quantized.no_cpu_repack``).
    """
    from ..quantized import no_cpu_repack

    with torch.no_grad(), no_cpu_repack(model):
        out = model(**inputs)
    found: tuple[Tensor, str] | None = None
    if isinstance(out, Tensor):
        found = out.detach(), "output"
    else:
        for key in ("logits", "last_hidden_state"):
            value = out.get(key) if hasattr(out, "get") else getattr(out, key, None)
            if value is not None:
                found = value.detach(), key
                break
        if found is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            found = out[0].detach(), "output"
    if found is None:
        raise TypeError(f"Model output {type(out).__name__} has neither logits nor last_hidden_state.")
    return found if with_kind else found[0]


def relative_drift(out: Tensor, ref: Tensor) -> float:
    """``max|out − ref| / max|ref|``, computed in float64 (docs/design.md §1's output-preservation metric)."""
    if out.shape != ref.shape:
        raise ValueError(f"Shape mismatch: {tuple(out.shape)} vs {tuple(ref.shape)}.")
    r = ref.detach().to(torch.float64)
    o = out.detach().to(device=r.device, dtype=torch.float64)
    num = float((o - r).abs().max()) if r.numel() else 0.0
    den = float(r.abs().max()) if r.numel() else 0.0
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def top1_agreement(out: Tensor, ref: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of positions whose argmax over the last dimension (the vocabulary) agrees.

    ``mask`` (e.g. the probe's attention mask, shape ``out.shape[:-1]``) restricts the positions.
    """
    if out.shape != ref.shape:
        raise ValueError(f"Shape mismatch: {tuple(out.shape)} vs {tuple(ref.shape)}.")
    agree = out.detach().argmax(-1).to(ref.device) == ref.detach().argmax(-1)
    if mask is not None:
        m = mask.to(device=agree.device, dtype=torch.bool)
        total = int(m.sum())
        return float((agree & m).sum()) / total if total else float("nan")
    return float(agree.float().mean())
