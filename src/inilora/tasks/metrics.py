"""The paper's NLU metrics from numpy/scipy (no ``evaluate``): one small function each.

Degenerate inputs (a constant prediction or label vector) give 0.0 for the correlations and
Matthews, as sklearn does for Matthews, so best-epoch selection never meets a NaN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(pred == label)) if len(label) else 0.0


def f1(pred: np.ndarray, label: np.ndarray) -> float:
    """Binary F1 of the positive class 1 (MRPC, QQP)."""
    tp = float(np.sum((pred == 1) & (label == 1)))
    fp = float(np.sum((pred == 1) & (label != 1)))
    fn = float(np.sum((pred != 1) & (label == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(pred: np.ndarray, label: np.ndarray) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004); the binary φ coefficient for 2 classes."""
    classes = np.union1d(pred, label)
    conf = np.array([[np.sum((label == t) & (pred == p)) for p in classes] for t in classes], dtype=np.float64)
    s, c = conf.sum(), np.trace(conf)
    t_k, p_k = conf.sum(axis=1), conf.sum(axis=0)
    den = np.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
    return 0.0 if den == 0 else float((c * s - t_k @ p_k) / den)


def _corr(fn: Callable[..., Any], pred: np.ndarray, label: np.ndarray) -> float:
    if len(label) < 2 or np.ptp(pred) == 0 or np.ptp(label) == 0:
        return 0.0
    return float(fn(pred, label)[0])


def pearson(pred: np.ndarray, label: np.ndarray) -> float:
    return _corr(stats.pearsonr, pred.astype(np.float64), label.astype(np.float64))


def spearman(pred: np.ndarray, label: np.ndarray) -> float:
    return _corr(stats.spearmanr, pred.astype(np.float64), label.astype(np.float64))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman,
}
_REGRESSION = {"pearson", "spearman"}


def compute(names: Sequence[str], predictions: Any, labels: Any, regression: bool = False) -> dict[str, float]:
    """``names`` of :data:`METRICS` on predictions — class ids, or logits (argmax taken) for
    classification; scores (a trailing axis of 1 is squeezed) for regression."""
    pred = np.asarray(predictions)
    label = np.asarray(labels)
    if regression:
        pred = pred.reshape(len(pred), -1)[:, 0] if pred.ndim > 1 else pred
    elif pred.ndim > 1:
        pred = pred.argmax(axis=-1)
    if pred.shape != label.shape:
        raise ValueError(f"{pred.shape[0] if pred.ndim else 0} predictions for {label.shape} labels")
    out = {}
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        if regression != (name in _REGRESSION):
            raise ValueError(f"metric {name!r} does not apply to {'regression' if regression else 'classes'}")
        out[name] = METRICS[name](pred, label)
    return out


__all__ = ["METRICS", "accuracy", "compute", "f1", "matthews", "pearson", "spearman"]
