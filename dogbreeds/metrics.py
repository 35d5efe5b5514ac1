"""The figures every command reports: log loss, accuracy, top-k accuracy, the confusion matrix.

scikit-learn computes accuracy, top-k accuracy and the confusion matrix. Log loss is the one
written here: scikit-learn's `log_loss` checks and renormalises its input on every call, about
a thousand times slower than this on a validation set (docs/design.md), and calibration calls
it a hundred times per fit. The two agree on rows that sum to one.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk

TINY = 1e-40  # a float32 softmax rounds to exact 0 below about 1e-45; log needs a number
KAGGLE_EPSILON = 1e-15  # Kaggle clips every probability to [1e-15, 1 - 1e-15] before scoring


def clip(probabilities: np.ndarray, epsilon: float) -> np.ndarray:
    """Each probability clipped to [epsilon, 1 - epsilon], each row renormalised: what Kaggle
    does before scoring (epsilon 1e-15), and what a submission's floor does (calibration)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), epsilon, 1.0 - epsilon)
    return p / p.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Kaggle's multi-class log loss of rows that already sum to 1."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, TINY))))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(sk.accuracy_score(labels, probabilities.argmax(axis=1)))


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    n_classes = probabilities.shape[1]
    if k >= n_classes:
        return 1.0
    return float(sk.top_k_accuracy_score(labels, probabilities, k=k, labels=np.arange(n_classes)))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    return sk.confusion_matrix(labels, predicted, labels=np.arange(n_classes))


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """The two figures a run is judged by, as Kaggle computes them: rows clipped to
    [1e-15, 1 - 1e-15] and renormalised, then {"log_loss": ..., "accuracy": ...}."""
    labels = np.asarray(labels)
    p = clip(probabilities, KAGGLE_EPSILON)
    return {"log_loss": log_loss(p, labels), "accuracy": accuracy(p, labels)}
