"""Evaluation of a causal LM after SFT: graded generation and multiple choice by next-token scoring.

Generation is batched with left padding (so every prompt ends where generation starts), greedy
unless a temperature is set, ``num_samples`` completions per prompt (HumanEval's pass@k); the
task grades and scores. Multiple choice (MMLU 0-shot) compares the next-token logits of the
choice letters after the prompt, as the paper's evaluation does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ..config import GenerationSettings
from ..tasks import ChoiceEval, GenerationEval, Task, TaskError, require_columns

REQUIRED = {GenerationEval: ("id", "prompt", "reference"), ChoiceEval: ("id", "prompt", "choices", "answer")}


def load_examples(task: Task, limit: int | None) -> list[dict[str, Any]]:
    """The evaluation examples (data seed 0, as training), checked for the kind's columns."""
    kind = next((k for k in REQUIRED if isinstance(task, k)), None)
    if kind is None:
        raise TaskError(f"task {task.name!r} is a {type(task).__name__}, not an evaluation (GenerationEval or "
                        "ChoiceEval); it cannot be an eval task")
    examples = list(task.load(task.eval_split, limit=limit, seed=0))
    if not examples:
        raise TaskError(f"task {task.name!r}, split {task.eval_split!r} has no examples")
    require_columns(list(examples[0]), REQUIRED[kind], f"task {task.name!r}, split {task.eval_split!r}")
    return examples


@contextlib.contextmanager
def _left_padded(tokenizer: PreTrainedTokenizerBase) -> Iterator[PreTrainedTokenizerBase]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def _autocast(model: torch.nn.Module, bf16: bool):
    device = next(model.parameters()).device
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield list(order[start:start + size])


def _cut(text: str, stops: Sequence[str]) -> str:
    """The completion up to the first stop string."""
    end = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:end]


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             settings: GenerationSettings, *, max_new_tokens: int, stop: Sequence[str] = (),
             bf16: bool = False) -> list[list[str]]:
    """``settings.num_samples`` completions per prompt (new text only, cut at ``stop``).

    Prompts are batched longest-first, so a batch holds similar lengths and padding stays small.
    """
    n = settings.num_samples
    sample = settings.temperature > 0
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=n,
        temperature=settings.temperature if sample else None, top_p=settings.top_p if sample else None,
        top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        stop_strings=list(stop) or None,
    )
    device = next(model.parameters()).device
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with _left_padded(tokenizer), _autocast(model, bf16):
            for idx in _batches(order, settings.batch_size):
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
                ids = model.generate(**enc, generation_config=gen, tokenizer=tokenizer)
                new = ids[:, enc["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    out[i] = [_cut(t, stop) for t in texts[j * n:(j + 1) * n]]
    finally:
        model.train(was_training)
    return out


def _choice_ids(tokenizer: PreTrainedTokenizerBase, choice: str) -> list[int]:
    """Token ids that start the answer ``choice`` right after the prompt: "A" and " A"."""
    ids = {tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (choice, f" {choice}")}
    return sorted(ids)


@torch.no_grad()
def choose(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict[str, Any]],
           batch_size: int, *, bf16: bool = False) -> list[int]:
    """Index of the choice whose first token has the highest next-token logit after each prompt."""
    device = next(model.parameters()).device
    picks: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with _left_padded(tokenizer), _autocast(model, bf16):
            for idx in _batches(range(len(examples)), batch_size):
                batch = [examples[i] for i in idx]
                enc = tokenizer([ex["prompt"] for ex in batch], return_tensors="pt", padding=True).to(device)
                logits = model(**enc).logits[:, -1, :].float()
                for row, ex in zip(logits, batch):
                    scores = [row[_choice_ids(tokenizer, c)].max().item() for c in ex["choices"]]
                    picks.append(max(range(len(scores)), key=scores.__getitem__))
    finally:
        model.train(was_training)
    return picks


def run_eval(task: Task, examples: list[dict[str, Any]], model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
             settings: GenerationSettings, *, bf16: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The task's metrics, and one record per example (completions or pick; ``correct`` where the task
    grades examples one by one) for inspection and item-level paired tests."""
    if isinstance(task, GenerationEval):
        completions = generate(model, tokenizer, [ex["prompt"] for ex in examples], settings,
                               max_new_tokens=min(settings.max_new_tokens, task.max_new_tokens),
                               stop=task.stop, bf16=bf16)
        metrics = task.score(examples, completions)
        records = [{"id": ex["id"], "completions": c} for ex, c in zip(examples, completions)]
        if type(task).score is GenerationEval.score:  # graded one by one: each example's verdict is known
            for rec, ex, c in zip(records, examples, completions):
                rec["correct"] = bool(c) and bool(task.grade(c[0], ex))
        return {k: float(v) for k, v in metrics.items()}, records
    picks = [ex["choices"][i] for ex, i in zip(examples, choose(model, tokenizer, examples, settings.batch_size,
                                                                bf16=bf16))]
    metrics = task.score(examples, picks)
    records = [{"id": ex["id"], "pick": p, "answer": ex["answer"], "correct": p == ex["answer"]}
               for ex, p in zip(examples, picks)]
    return {k: float(v) for k, v in metrics.items()}, records
