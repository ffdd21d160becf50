"""SFT tasks through the real loader on local copies in the hub schemas."""

from __future__ import annotations

import json

import datasets
import pytest

from inilora.tasks import SFTTask, TaskError, get_task
from inilora.tasks.prompts import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, alpaca, render


def test_alpaca_template_variants():
    assert alpaca("Add 2 and 3.") == ALPACA_NO_INPUT.format(instruction="Add 2 and 3.")
    with_input = alpaca("Sum the list.", "[1, 2]")
    assert with_input == ALPACA_WITH_INPUT.format(instruction="Sum the list.", input="[1, 2]")
    assert "### Input:\n[1, 2]\n\n### Response:\n" in with_input
    assert alpaca("x", "  ") == alpaca("x")  # empty input: the no-input variant, as Alpaca does
    assert alpaca("x").endswith("### Response:\n") and alpaca("x").startswith("Below is an instruction")
    assert render("tulu", "hi") == "<|user|>\nhi\n<|assistant|>\n"
    with pytest.raises(TaskError, match="unknown prompt template"):
        render("chatml", "hi")


def test_defaults_match_the_paper():
    expect = {"metamathqa": (512, ("gsm8k", "math")), "codealpaca": (512, ("humaneval",)),
              "sharegpt": (2048, ("mmlu",))}
    for name, (length, evals) in expect.items():
        task = get_task(name)
        assert isinstance(task, SFTTask) and task.max_length == length and task.eval_tasks == evals
        for ev in evals:
            get_task(ev)  # every default eval exists


def test_metamathqa_rows(tmp_path):
    rows = {"query": [f"What is {i} + 1?" for i in range(30)],
            "response": [f"{i} + 1 = {i + 1}. The answer is: {i + 1}" for i in range(30)],
            "type": ["GSM_AnsAug"] * 30, "original_question": [""] * 30}
    datasets.Dataset.from_dict(rows).to_json(str(tmp_path / "train.jsonl"))
    data = get_task("metamathqa").load(source=tmp_path)
    assert data.column_names == ["prompt", "response"] and len(data) == 30
    assert data[4]["prompt"] == alpaca("What is 4 + 1?") and data[4]["response"].endswith("The answer is: 5")
    assert len(get_task("metamathqa-10k").load(source=tmp_path)) == 30  # head above the size: all rows
    sub = get_task("metamathqa").load(limit=7, seed=1, source=tmp_path)
    assert len(sub) == 7 and sub["prompt"] == get_task("metamathqa").load(limit=7, seed=1, source=tmp_path)["prompt"]


def test_head_takes_the_first_rows(tmp_path):
    import dataclasses

    rows = {"query": [f"q{i}" for i in range(20)], "response": [f"r{i}" for i in range(20)]}
    datasets.Dataset.from_dict(rows).to_json(str(tmp_path / "train.jsonl"))
    task = dataclasses.replace(get_task("metamathqa-10k"), head=5)
    assert task.load(source=tmp_path)["response"] == [f"r{i}" for i in range(5)]


def test_codealpaca_uses_the_input_variant_only_with_input(tmp_path):
    rows = {"instruction": ["Write hello world.", "Reverse the string."], "input": ["", "abc"],
            "output": ["print('hello world')", "'abc'[::-1]"]}
    datasets.Dataset.from_dict(rows).to_json(str(tmp_path / "train.jsonl"))
    data = get_task("codealpaca").load(source=tmp_path)
    assert data[0]["prompt"] == alpaca("Write hello world.") and "### Input:" not in data[0]["prompt"]
    assert data[1]["prompt"] == alpaca("Reverse the string.", "abc") and data[1]["response"] == "'abc'[::-1]"


def test_sharegpt_first_human_gpt_pair(tmp_path):
    convs = [
        {"id": "a", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."},
                                      {"from": "human", "value": "More?"}, {"from": "gpt", "value": "No."}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "I start."}, {"from": "human", "value": "Q"},
                                      {"from": "gpt", "value": "A"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "unanswered"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "  "}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(convs))
    data = get_task("sharegpt").load(source=path)
    assert data["prompt"] == [alpaca("Hi?"), alpaca("Q")] and data["response"] == ["Hello.", "A"]
    tulu = get_task("sharegpt-tulu").load(source=path)
    assert tulu[0]["prompt"] == "<|user|>\nHi?\n<|assistant|>\n"
    assert get_task("sharegpt-tulu").eval_tasks == ("mmlu-tulu",)


def test_missing_columns_are_named(tmp_path):
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).to_json(str(tmp_path / "train.jsonl"))
    with pytest.raises(TaskError, match=r"missing column\(s\) query, response; it has question, answer"):
        get_task("metamathqa").load(source=tmp_path)
    with pytest.raises(TaskError, match="instruction"):
        get_task("codealpaca").load(source=tmp_path)
