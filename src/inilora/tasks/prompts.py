"""Prompt templates. The paper fine-tunes and evaluates every NLG task with the Alpaca template, so
the SFT prompt of a task and the prompt of its evaluation are built by the same function: what the
model sees at test time is exactly what it was trained to continue."""

from __future__ import annotations

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# Tulu chat format (the released ShareGPT → MMLU script trains and evaluates with it)
TULU = "<|user|>\n{instruction}\n<|assistant|>\n"


def alpaca(instruction: str, input: str | None = None) -> str:
    """The Alpaca prompt; an empty or missing ``input`` selects the no-input variant (as Alpaca does)."""
    instruction = instruction.strip()
    if input is not None and input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input.strip())
    return ALPACA_NO_INPUT.format(instruction=instruction)


def tulu(instruction: str, input: str | None = None) -> str:
    text = instruction.strip() if not (input and input.strip()) else f"{instruction.strip()}\n\n{input.strip()}"
    return TULU.format(instruction=text)


TEMPLATES = {"alpaca": alpaca, "tulu": tulu}


def render(template: str, instruction: str, input: str | None = None) -> str:
    """``template`` by name ("alpaca" or "tulu")."""
    try:
        fn = TEMPLATES[template]
    except KeyError:
        from .base import TaskError

        raise TaskError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}") from None
    return fn(instruction, input)


#: where the response starts, for completions that run on into a new turn
STOPS = ("\n### Instruction:", "\n### Input:", "\n### Response:", "<|user|>")

__all__ = ["ALPACA_NO_INPUT", "ALPACA_WITH_INPUT", "STOPS", "TEMPLATES", "TULU", "alpaca", "render", "tulu"]
