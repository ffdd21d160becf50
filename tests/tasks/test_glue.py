"""GLUE tasks through the real loader on tiny local copies in the hub's layout, and the metrics
against independent computations."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from scipy import stats

from inilora.tasks import ClassificationTask, TaskError, get_task
from inilora.tasks.metrics import compute, matthews

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "qnli", "rte", "mnli"]


def _write_hub_layout(root, config, columns, n, regression=False, splits=("train", "validation")):
    """``root/<config>/<split>-00000-of-00001.parquet`` as on ``nyu-mll/glue``."""
    rng = np.random.default_rng(0)
    (root / config).mkdir(parents=True, exist_ok=True)
    for split in splits:
        cols = {c: [f"{split} {c} {i}" for i in range(n)] for c in columns}
        cols["label"] = (rng.uniform(0, 5, n).tolist() if regression else rng.integers(0, 2, n).tolist())
        cols["idx"] = list(range(n))
        datasets.Dataset.from_dict(cols).to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))


def test_all_glue_tasks_registered_with_paper_metrics():
    heads = {"cola": "matthews", "stsb": "pearson", "mrpc": "accuracy", "qqp": "accuracy", "sst2": "accuracy",
             "qnli": "accuracy", "rte": "accuracy", "mnli": "accuracy"}
    for config in GLUE:
        task = get_task(f"glue-{config}")
        assert isinstance(task, ClassificationTask) and task.metrics[0] == heads[config]
        assert task.num_labels == (1 if config == "stsb" else 3 if config == "mnli" else 2)
        assert len(task.label_names) == (0 if config == "stsb" else task.num_labels)
    assert get_task("glue-stsb").metrics == ("pearson", "spearman")
    assert get_task("glue-mrpc").metrics[1] == "f1" and get_task("glue-qqp").metrics[1] == "f1"
    assert get_task("glue-mnli").eval_split == "validation_matched"


def test_loader_reads_a_local_hub_layout_and_subsamples(tmp_path):
    _write_hub_layout(tmp_path, "mrpc", ("sentence1", "sentence2"), 40)
    task = get_task("glue-mrpc")
    train = task.load("train", source=tmp_path)
    assert len(train) == 40 and train[3]["sentence1"] == "train sentence1 3"
    val = task.load("validation", limit=10, seed=4, source=tmp_path)
    assert len(val) == 10 and all(s.startswith("validation") for s in val["sentence2"])
    assert val["idx"] == task.load("validation", limit=10, seed=4, source=tmp_path)["idx"]
    assert val["idx"] == sorted(val["idx"])


def test_environment_variable_source(tmp_path, monkeypatch):
    _write_hub_layout(tmp_path, "stsb", ("sentence1", "sentence2"), 12, regression=True)
    monkeypatch.setenv("INILORA_DATA_GLUE_STSB", str(tmp_path))
    data = get_task("glue-stsb").load("validation")
    assert len(data) == 12 and isinstance(data[0]["label"], float)


def test_missing_column_and_missing_split_are_clear(tmp_path):
    _write_hub_layout(tmp_path, "rte", ("sentence1",), 5)  # sentence2 missing
    with pytest.raises(TaskError, match="missing column.*sentence2"):
        get_task("glue-rte").load("train", source=tmp_path)
    with pytest.raises(TaskError, match="no file for split 'test'"):
        get_task("glue-rte").load("test", source=tmp_path)
    with pytest.raises(TaskError, match="does not exist"):
        get_task("glue-rte").load("train", source=tmp_path / "nope")


def test_single_file_and_dataset_sources(tmp_path):
    rows = {"sentence": ["a", "b", "c"], "label": [0, 1, 1], "idx": [0, 1, 2]}
    path = tmp_path / "cola.jsonl"
    datasets.Dataset.from_dict(rows).to_json(str(path))
    task = get_task("glue-cola")
    assert task.load("validation", source=path)["sentence"] == ["a", "b", "c"]
    assert task.load("train", source=datasets.DatasetDict(train=datasets.Dataset.from_dict(rows)))["label"] == [0, 1, 1]


def test_hub_failure_names_the_fix(monkeypatch):
    from inilora.tasks import sources

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskError, match="INILORA_DATA_GLUE_QNLI") as err:
        get_task("glue-qnli").load("train")
    assert "nyu-mll/glue/qnli" in str(err.value)
    assert sources.env_var("glue-qnli") == "INILORA_DATA_GLUE_QNLI"


# ---------------------------------------------------------------------------------------------- metrics

def test_matthews_binary_equals_the_phi_formula():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 2, 200)
    pred = np.where(rng.uniform(size=200) < 0.7, label, 1 - label)
    tp, tn = np.sum((pred == 1) & (label == 1)), np.sum((pred == 0) & (label == 0))
    fp, fn = np.sum((pred == 1) & (label == 0)), np.sum((pred == 0) & (label == 1))
    phi = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert matthews(pred, label) == pytest.approx(phi, abs=1e-12)
    assert matthews(pred, label) == pytest.approx(np.corrcoef(pred, label)[0, 1], abs=1e-12)
    assert matthews(np.zeros(10, int), label[:10]) == 0.0  # constant prediction: defined as 0


def test_matthews_multiclass_equals_the_covariance_definition():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 3, 300)
    pred = np.where(rng.uniform(size=300) < 0.5, label, rng.integers(0, 3, 300))
    x, y = np.eye(3)[pred], np.eye(3)[label]

    def cov(a, b):
        return np.sum((a - a.mean(0)) * (b - b.mean(0)))

    assert matthews(pred, label) == pytest.approx(cov(x, y) / np.sqrt(cov(x, x) * cov(y, y)), abs=1e-12)


def test_classification_metrics_from_logits_and_ids():
    task = get_task("glue-mrpc")
    label = np.array([1, 1, 0, 0, 1, 0])
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 2], [0, 3], [5, 0]], dtype=float)
    ids = logits.argmax(-1)  # [1, 0, 0, 1, 1, 0]
    precision, recall = 2 / 3, 2 / 3
    expect = {"accuracy": 4 / 6, "f1": 2 * precision * recall / (precision + recall)}
    assert task.compute_metrics(logits, label) == pytest.approx(expect)
    assert task.compute_metrics(ids, label) == pytest.approx(expect)


def test_regression_metrics_match_scipy_and_ranks():
    rng = np.random.default_rng(3)
    label = rng.uniform(0, 5, 50)
    pred = label + rng.normal(0, 1, 50)
    out = get_task("glue-stsb").compute_metrics(pred[:, None], label)  # (n, 1) model output
    assert out["pearson"] == pytest.approx(np.corrcoef(pred, label)[0, 1], abs=1e-10)
    ranks = np.corrcoef(stats.rankdata(pred), stats.rankdata(label))[0, 1]
    assert out["spearman"] == pytest.approx(ranks, abs=1e-10)


def test_metric_misuse_is_refused():
    with pytest.raises(ValueError, match="does not apply"):
        compute(("pearson",), [0, 1], [0, 1], regression=False)
    with pytest.raises(ValueError, match="predictions"):
        compute(("accuracy",), [0, 1, 1], [0, 1])
