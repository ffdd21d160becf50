"""NLG supervised fine-tuning data: prompt + response, loss on the response only.

Prompt and response are tokenised separately and concatenated (then EOS), so the prompt's ids
are exactly those the model sees at evaluation time, when it continues the prompt alone.
"""

from __future__ import annotations

import uuid
from typing import Any

from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from ..tasks import SFTTask, TaskError, require_columns

IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips


def load_split(task: SFTTask, limit: int | None) -> Any:
    """The training rows, checked for ``prompt`` and ``response`` before any work (data seed 0, as NLU)."""
    ds = task.load(task.train_split, limit=limit, seed=0)
    require_columns(list(ds.column_names), ["prompt", "response"], f"task {task.name!r}, split {task.train_split!r}")
    if len(ds) == 0:
        raise TaskError(f"task {task.name!r}, split {task.train_split!r} has no rows")
    return ds


def encode_example(prompt: str, response: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list[int]]:
    """``input_ids`` = prompt + response + EOS, truncated to ``max_length``; ``labels`` = the same with
    the prompt's positions set to -100."""
    if tokenizer.eos_token_id is None:
        raise TaskError("the tokenizer has no EOS token; SFT appends one to every response")
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + r)[:max_length]
    labels = ([IGNORE_INDEX] * len(p) + r)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize(ds: Any, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Any:
    """Encoded rows; rows whose prompt fills ``max_length`` (no response token left) are dropped."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        rows = [encode_example(p, r, tokenizer, max_length) for p, r in zip(batch["prompt"], batch["response"])]
        return {k: [row[k] for row in rows] for k in ("input_ids", "attention_mask", "labels")}

    # fresh fingerprints: hashing the tokenizer (datasets' default) costs seconds; in-memory data is never cached
    out = ds.map(encode, batched=True, remove_columns=list(ds.column_names), new_fingerprint=uuid.uuid4().hex)
    out = out.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"]),
                     new_fingerprint=uuid.uuid4().hex)
    if len(out) == 0:
        raise TaskError(f"every training prompt is longer than max_length={max_length}: nothing to learn")
    return out


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Pads ids with the pad token and labels with -100 (padding never counts in the loss)."""
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
