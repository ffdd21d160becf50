"""NLG fine-tuning data from the hub, as ``prompt`` (Alpaca template) / ``response`` rows.

- ``metamathqa`` (``meta-math/MetaMathQA``: query → response), len 512, evaluated on GSM8K and MATH;
  ``metamathqa-10k`` is the released script's first 10,000 rows.
- ``codealpaca`` (``sahil2801/CodeAlpaca-20k``: instruction + input → output), len 512, HumanEval.
  Its 20,022 rows are the released script's "20k"; ``limit`` subsamples.
- ``sharegpt`` (``anon8231489123/ShareGPT_Vicuna_unfiltered``, ``conversations`` of {from, value}),
  len 2048, MMLU. One row per conversation: its first human turn → the gpt turn right after it
  (the loss is on that one assistant turn; later turns are dropped, since a row holds one prompt and
  one response). Conversations without such a pair, or with an empty turn, are skipped.
  ``sharegpt-tulu`` is the released script's Tulu chat format (evaluated with ``mmlu-tulu``).

``limit`` draws a seeded random subsample; ``head`` (a task field) takes the first rows instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .base import SFTTask, register_task, require_columns
from .prompts import render
from .sources import load_split, subsample


@dataclass(frozen=True)
class HubSFT(SFTTask):
    hub: str = ""
    config: str | None = None
    data_files: str | None = None
    template: str = "alpaca"
    head: int | None = None  # keep the first `head` rows (the released scripts' "first 10k")

    columns: tuple[str, ...] = ()

    def to_pair(self, row: dict[str, Any]) -> tuple[str, str] | None:  # pragma: no cover
        """(prompt, response) of one hub row, or None to skip it."""
        raise NotImplementedError

    def load(self, split: str | None = None, limit: int | None = None, seed: int = 0, source: Any = None) -> Any:
        import datasets

        split = split or self.train_split
        data = load_split(self.name, self.hub, self.config, split, source, data_files=self.data_files)
        require_columns(data.column_names, self.columns, f"{self.name} ({split})")
        if self.head is not None:
            data = data.select(range(min(self.head, len(data))))
        pairs = [p for p in map(self.to_pair, data) if p is not None]
        out = datasets.Dataset.from_dict({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})
        return subsample(out, limit, seed)


@dataclass(frozen=True)
class MetaMathQA(HubSFT):
    def to_pair(self, row: dict[str, Any]) -> tuple[str, str] | None:
        return render(self.template, row["query"]), row["response"]


@dataclass(frozen=True)
class CodeAlpaca(HubSFT):
    def to_pair(self, row: dict[str, Any]) -> tuple[str, str] | None:
        return render(self.template, row["instruction"], row.get("input")), row["output"]


@dataclass(frozen=True)
class ShareGPT(HubSFT):
    def to_pair(self, row: dict[str, Any]) -> tuple[str, str] | None:
        turns = row["conversations"] or []
        for first, second in pairwise(turns):
            if first.get("from") == "human" and second.get("from") == "gpt":
                prompt, response = (first.get("value") or "").strip(), (second.get("value") or "").strip()
                return (render(self.template, prompt), response) if prompt and response else None
        return None


_MM: dict[str, Any] = {"hub": "meta-math/MetaMathQA", "columns": ("query", "response"), "max_length": 512,
                       "eval_tasks": ("gsm8k", "math")}
register_task(MetaMathQA(name="metamathqa", description="MetaMathQA (395k) → GSM8K, MATH",
                         source="hub: meta-math/MetaMathQA", **_MM))
register_task(MetaMathQA(name="metamathqa-10k", description="MetaMathQA, first 10k rows (released scripts)",
                         source="hub: meta-math/MetaMathQA", head=10_000, **_MM))
register_task(CodeAlpaca(name="codealpaca", description="CodeAlpaca-20k → HumanEval",
                         source="hub: sahil2801/CodeAlpaca-20k", hub="sahil2801/CodeAlpaca-20k",
                         columns=("instruction", "input", "output"), max_length=512, eval_tasks=("humaneval",)))
_SG: dict[str, Any] = {
    "hub": "anon8231489123/ShareGPT_Vicuna_unfiltered", "data_files": "ShareGPT_V3_unfiltered_cleaned_split.json",
    "columns": ("conversations",), "max_length": 2048,
    "source": "hub: anon8231489123/ShareGPT_Vicuna_unfiltered (ShareGPT_V3_unfiltered_cleaned_split.json)"}
register_task(ShareGPT(name="sharegpt", description="ShareGPT, first human→gpt turn per conversation → MMLU",
                       eval_tasks=("mmlu",), **_SG))
register_task(ShareGPT(name="sharegpt-tulu", description="ShareGPT in the Tulu chat format (released script)",
                       eval_tasks=("mmlu-tulu",), template="tulu", **_SG))

__all__ = ["CodeAlpaca", "HubSFT", "MetaMathQA", "ShareGPT"]
